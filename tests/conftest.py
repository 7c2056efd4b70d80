"""Shared fixtures: offline settings, the shared data, tiny models and one Prefect harness."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from support import ByteTokenizer, build_tiny_llama, tokenizer_corpus

# Offline and quiet before anything imports huggingface or prefect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Runs recorded by tests go to a store of their own, never into the user's history, removed at exit.
_RUNS_DIR = tempfile.mkdtemp(prefix="ragpress-test-runs-")
atexit.register(shutil.rmtree, _RUNS_DIR, ignore_errors=True)
os.environ["RAGPRESS_RUNS"] = str(Path(_RUNS_DIR) / "runs.sqlite")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # as the CLI: errors are its one line

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAGPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (the Chroma chunking benchmark subset); skips when absent."""
    if not (SHARED_DATA / "chroma" / "questions.csv").is_file():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA} (set RAGPRESS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect server for the whole session (it is slow to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])):
        yield


@pytest.fixture
def tiny_llama():
    """Factory fixture: ``tiny_llama(seed=..., **config_overrides)``."""
    return build_tiny_llama


def build_tiny_kv_engine(seed: int):
    """A ``KVReuseEngine`` over a tiny random Llama and the byte tokenizer, caches in memory."""
    from types import SimpleNamespace

    from compression.kv.generate import KVReuseEngine
    from compression.kv.store import MemoryStore

    lm = SimpleNamespace(model=build_tiny_llama(seed=seed, max_position_embeddings=1024), tokenizer=ByteTokenizer(),
                         model_id=f"tiny@{seed}", weights_hash=str(seed) * 64, dtype="float32")
    return KVReuseEngine(lm, MemoryStore(2**26))


@pytest.fixture
def tiny_kv_engine():
    """Factory fixture: ``tiny_kv_engine(seed)``."""
    return build_tiny_kv_engine


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run ~20x faster on one thread on this shared 2-core machine (no oversubscription)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level BPE trained in memory: offline, deterministic, with a BOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny random Llama over ``tiny_tokenizer``'s 320 ids."""
    return build_tiny_llama(seed=0, vocab_size=320)

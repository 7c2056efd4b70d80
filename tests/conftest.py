"""Shared fixtures: offline settings, the shared data, tiny models and one Prefect harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline and quiet before anything imports huggingface or prefect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
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


def build_tiny_llama(seed: int = 0, **overrides):
    """A randomly initialised Llama small enough for exact mechanics tests on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.eval()
    return model


@pytest.fixture
def tiny_llama():
    """Factory fixture: ``tiny_llama(seed=..., **config_overrides)``."""
    return build_tiny_llama


def build_tiny_kv_engine(seed: int):
    """A ``KVReuseEngine`` over a tiny random Llama and the byte tokenizer, caches in memory."""
    from types import SimpleNamespace

    from compression.kv.generate import KVReuseEngine
    from compression.kv.store import MemoryStore
    from eval.testing import ByteTokenizer

    lm = SimpleNamespace(model=build_tiny_llama(seed=seed, max_position_embeddings=1024), tokenizer=ByteTokenizer(),
                         model_id=f"tiny@{seed}", weights_hash=str(seed) * 64, dtype="float32")
    return KVReuseEngine(lm, MemoryStore(2**26))


@pytest.fixture
def tiny_kv_engine():
    """Factory fixture: ``tiny_kv_engine(seed)``."""
    return build_tiny_kv_engine

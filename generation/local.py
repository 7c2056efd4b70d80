"""A local causal LM: the packaged SmolLM2, any Hugging Face causal-LM folder or any GGUF file.

Models load through ``compression.lm.load_causal_lm`` (one loader, memoised); answers come from
the chunk-cache engine ``compression.kv.generate.KVReuseEngine``. That engine re-rotates cached
keys and runs decoder layers itself, so reuse is offered only for architectures whose attention
and RoPE it reproduces (``REUSE_MODEL_TYPES``, with a RoPE type ``compression.kv.rope`` can
re-rotate exactly). Both are read from the model's config (``config.json`` or the GGUF header)
before anything loads, so a refused request costs no model load. ``--kv-reuse none`` (a plain
full prefill) works for every causal LM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compression.lm import DEFAULT_LM, check_device, resolve_dtype, resolve_model_dir, smollm2_gguf_path
from generation.base import NO_REUSE, Answer, KeptSpans, ReuseOptions

# Decoder layers of these types are pre-norm q/k/v/o attention with rotate-half RoPE and a gated MLP,
# which compression.kv.blockwise reproduces (checked against each model's own forward in the tests).
REUSE_MODEL_TYPES = ("llama", "qwen2", "mistral")
DEFAULT_MEMORY_BUDGET = 2 * 2**30


def _gguf_config(path: Path) -> dict[str, Any]:
    """``model_type`` and RoPE scaling from a GGUF header (no tensor is read)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    arch = str(fields["general.architecture"].contents())
    scaling = fields.get(f"{arch}.rope.scaling.type")
    return {"model_type": arch, "rope_scaling": {"rope_type": str(scaling.contents())} if scaling else None}


def model_config(source: str) -> dict[str, Any]:
    """The config of a model source as a dict, without loading (or converting) the model."""
    if source == DEFAULT_LM:
        return _gguf_config(smollm2_gguf_path())
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return _gguf_config(path)
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"--lm {source}: not '{DEFAULT_LM}', a .gguf file nor a Hugging Face model folder with a config.json")
    return json.loads(config.read_text(encoding="utf-8"))


def reuse_refusal(config: dict[str, Any], source: str) -> str | None:
    """Why chunk-cache reuse cannot serve this model (None when it can)."""
    from compression.kv.rope import check_rope

    model_type = config.get("model_type")
    if model_type not in REUSE_MODEL_TYPES:
        return (f"chunk-cache reuse handles {', '.join(REUSE_MODEL_TYPES)} models only and {source} is "
                f"'{model_type}'; use --kv-reuse none")
    try:
        check_rope(SimpleNamespace(**config))
    except ValueError as exc:
        return f"{source}: {exc}"
    return None


class LocalGenerator:
    """Answers with a local causal LM, reusing chunk caches (kept in ``cache_dir`` too, when given)."""

    name = "local"

    def __init__(self, model: str = DEFAULT_LM, *, dtype: str = "auto", device: str = "cpu", threads: int | None = None,
                 cache_dir: str | Path | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 engine_factory: Callable[[], Any] | None = None) -> None:
        """``engine_factory`` builds the chunk-cache engine instead of loading ``model`` (stand-in models)."""
        self.model, self.dtype, self.device, self.threads = model, dtype, device, threads
        self._engine_factory = engine_factory
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory_budget = memory_budget
        self._engine: Any = None
        self._identity: dict[str, Any] | None = None
        self._config: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        """The model id with its weights hash, the resolved dtype and the device (a GGUF is converted once)."""
        if self._identity is None:
            directory, model_id, _ = resolve_model_dir(self.model)
            self._identity = {"backend": self.name, "model": model_id, "dtype": resolve_dtype(directory, self.dtype),
                              "device": self.device}
        return self._identity

    def preflight(self, reuse: ReuseOptions) -> None:
        """ValueError unless ``reuse`` (its recovery settings, the device, the model's architecture) can run."""
        from compression.kv.recovery import recovery_for

        recovery_for(reuse.mode, reuse.blend_r, reuse.edge_tokens, reuse.blend_score)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        check_device(self.device)
        if not reuse.reuses:
            return
        if self.device != "cpu":
            raise ValueError(f"chunk-cache reuse runs on the CPU only, not on '{self.device}'; use --device cpu or --kv-reuse none")
        refusal = reuse_refusal(self.config(), self.model)
        if refusal:
            raise ValueError(refusal)

    def config(self) -> dict[str, Any]:
        """The model's config: the loaded model's when there is one, else read from its files (no load)."""
        if self._engine is None and self._engine_factory is not None:
            self.engine()  # a stand-in's config is its own
        if self._config is None:
            self._config = self._engine.lm.model.config.to_dict() if self._engine is not None else model_config(self.model)
        return self._config

    def engine(self) -> Any:
        """The chunk-cache engine over the loaded model, built on first use."""
        if self._engine is None and self._engine_factory is not None:
            self._engine, self._config = self._engine_factory(), None
        if self._engine is None:
            from compression.kv.generate import KVReuseEngine
            from compression.kv.store import DiskStore, MemoryStore, TieredStore
            from compression.lm import load_causal_lm

            memory = MemoryStore(self.memory_budget)
            store = TieredStore(memory, DiskStore(self.cache_dir)) if self.cache_dir else memory
            self._engine = KVReuseEngine(load_causal_lm(self.model, self.dtype, self.device, self.threads), store)
        return self._engine

    def answer(self, contexts: Sequence[str], question: str, *, reuse: ReuseOptions = NO_REUSE,
               max_new_tokens: int = 64, kept: KeptSpans | None = None) -> Answer:
        """Greedy answer; missing chunk caches are computed first and timed apart (indexing-time work)."""
        from compression.kv.recovery import recovery_for
        from compression.kv.subset import kept_tokens

        self.preflight(reuse)
        recovery = recovery_for(reuse.mode, reuse.blend_r, reuse.edge_tokens, reuse.blend_score)
        engine = self.engine()
        prompt = engine.prompt(contexts, question)
        started = time.perf_counter()
        computed = engine.warm(prompt) if recovery is not None else 0
        warm_s = time.perf_counter() - started
        keep = None if kept is None else kept_tokens(engine.lm.tokenizer, prompt, contexts, kept)
        begin = time.perf_counter()
        generation = engine.generate(prompt, recovery, max_new_tokens, keep=keep)
        total_s = time.perf_counter() - begin
        read = prompt if keep is None else prompt.keep(keep)
        return Answer(text=generation.text, prompt_tokens=len(read.all_ids), completion_tokens=len(generation.token_ids),
                      ttft_s=generation.ttft_s, total_s=total_s, chunk_caches_reused=generation.reused_tokens > 0,
                      prefilled_tokens=generation.prefilled_tokens, reused_tokens=generation.reused_tokens,
                      context_tokens=len(read.context_ids), retrieved_tokens=len(prompt.context_ids),
                      chunk_caches_computed=computed, chunk_cache_compute_s=warm_s)

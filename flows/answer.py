"""The answer flow: retrieve -> optional compression -> generation with reused chunk caches.

Tasks only wrap library functions (``retrieval``, ``compression``, ``generation``). ``llm``: the
generator's options (``generation.registry.generator_from_options``), the local LM by default.
``kv_reuse``: ``none`` (full prefill, no reuse), ``naive`` (reuse, no recovery), ``edge``
(recompute each chunk's first tokens), ``blend`` (recompute the fraction r of context tokens, by
default those the question attends to most; ``blend_score="deviation"``: CacheBlend's most-deviating ones).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task

from compression.kv.modes import DEFAULT_BLEND_SCORE, recovery_for  # noqa: F401  (recovery_for: re-exported for callers)
from eval.defaults import BEST_CONFIG, BEST_HYBRID_WEIGHT


def kv_cache_dir(index: str, cache_dir: str | None) -> Path:
    """Chunk caches live next to the index unless another directory is given."""
    return Path(cache_dir) if cache_dir else Path(index) / "kv-cache"


def llm_options(llm: dict | None, lm_name: str) -> dict:
    """The generator options: ``llm`` as given, else the local LM ``lm_name``."""
    return dict(llm) if llm else {"backend": "local", "model": lm_name}


def make_generator(index: str, cache_dir: str | None, llm: dict) -> Any:
    """The generator of ``llm``; a local one keeps chunk caches in memory and on disk next to the index."""
    from generation.registry import generator_from_options

    return generator_from_options(llm, str(kv_cache_dir(index, cache_dir)))


def make_engine(index: str, cache_dir: str | None, lm_name: str, llm: dict | None = None) -> Any:
    """The chunk-cache engine of the local LM, chunk caches in memory and on disk next to the index."""
    return make_generator(index, cache_dir, llm_options(llm, lm_name)).engine()


@task(name="retrieve")
def retrieve(question: str, index: str, k: int, hybrid_weight: float | None = BEST_HYBRID_WEIGHT,
             distinct: bool = BEST_CONFIG.distinct) -> list[dict]:
    """Top-``k`` hits as ``ragpress query`` finds them; ``hybrid_weight=None`` is plain dense (FAISS) search."""
    from retrieval.encoder import load_encoder
    from retrieval.index_store import IndexStore
    from retrieval.indexing import index_model, search_texts

    store = IndexStore.open(index)
    encoder = load_encoder(index_model(store))  # search_texts refuses it if its weights differ
    hits = search_texts(store, encoder, [question], k, hybrid_weight, distinct)[0]
    return [asdict(hit) for hit in hits]


@task(name="compress")
def compress(contexts: list[str], question: str, method: str, rate: float) -> dict:
    """Compress the retrieved contexts; the kept spans as JSON values."""
    from compression.base import Budget
    from compression.registry import make_compressor

    result = make_compressor(method).compress(contexts, Budget(rate=rate), question=question)
    return {"text": result.text, "kept": [asdict(span) for span in result.kept], "original_tokens": result.original_tokens,
            "compressed_tokens": result.compressed_tokens}


@task(name="generate")
def generate(contexts: list[str], question: str, index: str, reuse: dict, cache_dir: str | None, llm: dict,
             max_new_tokens: int, kept: list[dict] | None = None) -> dict:
    """Answer from ``contexts``; with ``kept`` (a compressor's spans) only the kept text is read (a local
    LM takes the kept tokens' KV from the chunks' caches, ``compression.kv.subset``)."""
    from generation.base import ReuseOptions

    generator = make_generator(index, cache_dir, llm)
    spans = None if kept is None else [(s["context"], s["start"], s["end"]) for s in kept]
    result = generator.answer(contexts, question, reuse=ReuseOptions(**reuse), max_new_tokens=max_new_tokens, kept=spans)
    return {"answer": result.text, "tokens_sent": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "ttft_s": result.ttft_s, "total_s": result.total_s, "prefilled_tokens": result.prefilled_tokens,
            "reused_tokens": result.reused_tokens, "chunk_caches_reused": result.chunk_caches_reused,
            "chunk_caches_computed": result.chunk_caches_computed, "chunk_cache_compute_s": result.chunk_cache_compute_s,
            "kv_reuse": reuse["mode"], "generator": generator.identity()}


@task(name="prune-kv-cache")
def prune_kv_cache(index: str, cache_dir: str | None, max_mb: float) -> dict:
    """Evict the least recently used chunk caches beyond ``max_mb`` (the ones just used are the most recent)."""
    from compression.kv.store import DiskStore

    return asdict(DiskStore(kv_cache_dir(index, cache_dir)).prune(int(max_mb * 1e6)))


@flow(name="ragpress-answer", validate_parameters=False)
def answer_flow(question: str, index: str, k: int = 4, kv_reuse: str = "blend", compression: str | None = None,
                rate: float = 0.5, cache_dir: str | None = None, lm_name: str = "smollm2", max_new_tokens: int = 64,
                blend_r: float = 0.15, edge_tokens: int = 16, kv_cache_max_mb: float | None = None,
                blend_score: str = DEFAULT_BLEND_SCORE, hybrid_weight: float | None = BEST_HYBRID_WEIGHT,
                distinct: bool = BEST_CONFIG.distinct, llm: dict | None = None) -> dict:
    """Answer ``question`` from the index in ``index``; returns the answer, contexts with spans and costs.
    ``kv_cache_max_mb``: afterwards, keep at most this many MB of chunk caches on disk (LRU).
    Retrieval defaults to the evaluated ``eval.defaults.BEST_CONFIG`` (hybrid, distinct texts), as ``ragpress query``.
    ``llm``: generator options (default: the local ``lm_name``); ``tokens_sent`` is the prompt's tokens
    as the model counted them (the server's ``usage`` over HTTP)."""
    from generation.base import ReuseOptions

    llm = llm_options(llm, lm_name)
    reuse = ReuseOptions(kv_reuse, blend_r, edge_tokens, blend_score)
    make_generator(index, cache_dir, llm).preflight(reuse)  # refuse a bad mode or model before any model loads
    if kv_cache_max_mb is not None and kv_cache_max_mb < 0:
        raise ValueError(f"kv_cache_max_mb must be >= 0 (or None for no limit), got {kv_cache_max_mb}")
    hits = retrieve(question, index, k, hybrid_weight, distinct)
    contexts = [hit["text"] for hit in hits]
    compressed = compress(contexts, question, compression, rate) if compression else None
    output = generate(contexts, question, index, asdict(reuse), cache_dir, llm, max_new_tokens,
                      compressed["kept"] if compressed else None)
    pruned = prune_kv_cache(index, cache_dir, kv_cache_max_mb) if kv_cache_max_mb is not None and kv_reuse != "none" else None
    return {"question": question, **output, "contexts": hits, "compression": compressed, "kv_cache_pruned": pruned}


@flow(name="ragpress-kv-precompute", validate_parameters=False)
def precompute_flow(index: str, cache_dir: str | None = None, lm_name: str = "smollm2", llm: dict | None = None) -> dict:
    """The optional indexing step: compute every chunk's cache of ``index`` once, on disk (local LM only)."""
    from retrieval.index_store import IndexStore

    engine = make_engine(index, cache_dir, lm_name, llm)
    texts = [chunk.text for chunk in IndexStore.open(index).chunks()]
    computed = engine.warm(engine.prompt(texts, "?")) if texts else 0  # one prompt: missing caches are prefilled packed
    return {"chunks": len(texts), "computed": computed, "cache_dir": str(kv_cache_dir(index, cache_dir))}

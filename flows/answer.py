"""The answer flow: ``pipeline.Pipeline``'s stages (retrieve -> compress -> generate) as tasks.

The configuration is one flat ``pipeline.config.PipelineConfig`` mapping, validated before any
task runs; ``llm``: the generator's options (``generation.registry.generator_from_options``), the
local LM by default. Chunk caches live next to the index unless ``cache_dir`` says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from compression.base import CompressionResult
from pipeline.config import PipelineConfig
from pipeline.pipeline import Pipeline, kv_cache_dir, make_generator
from retrieval.base import Hit


@task(name="retrieve", cache_policy=NO_CACHE)
def retrieve(pipeline: Pipeline, question: str, index: str) -> list[Hit]:
    """Top-k hits as ``ragpress query`` finds them, with the index's own embedding model."""
    from retrieval.encoder import load_encoder
    from retrieval.index_store import IndexStore
    from retrieval.indexing import index_model

    store = IndexStore.open(index)
    return pipeline.retrieve(store, load_encoder(index_model(store)), question)  # a model other than the index's is refused


@task(name="compress", cache_policy=NO_CACHE)
def compress(pipeline: Pipeline, question: str, contexts: list[str]) -> CompressionResult | None:
    """The configured compressor's kept spans (None: nothing to compress)."""
    return pipeline.compress(question, contexts)


@task(name="generate", cache_policy=NO_CACHE)
def generate(pipeline: Pipeline, question: str, contexts: list[str], compressed: CompressionResult | None) -> dict:
    """Answer from ``contexts``; with a compressor's output only the kept text is read (a local LM takes
    the kept tokens' KV from the chunks' caches, ``compression.kv.subset``)."""
    result = pipeline.generate(question, contexts, compressed.kept if compressed else None)
    return {"answer": result.text, "tokens_sent": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "ttft_s": result.ttft_s, "total_s": result.total_s, "prefilled_tokens": result.prefilled_tokens,
            "reused_tokens": result.reused_tokens, "chunk_caches_reused": result.chunk_caches_reused,
            "chunk_caches_computed": result.chunk_caches_computed, "chunk_cache_compute_s": result.chunk_cache_compute_s,
            "kv_reuse": pipeline.config.generation.kv_mode, "generator": pipeline.generator().identity()}


@task(name="prune-kv-cache")
def prune_kv_cache(index: str, cache_dir: str | None, max_mb: float) -> dict:
    """Evict the least recently used chunk caches beyond ``max_mb`` (the ones just used are the most recent)."""
    from compression.kv.store import DiskStore

    return asdict(DiskStore(kv_cache_dir(index, cache_dir)).prune(int(max_mb * 1e6)))


def answer_pipeline(config: dict[str, Any], index: str, cache_dir: str | None = None, llm: dict | None = None) -> Pipeline:
    """The pipeline of ``config`` (flat form) answering from ``index``; refuses a bad value, reuse mode or
    model before any model loads."""
    pipeline = Pipeline(PipelineConfig.from_dict(config), llm=llm, kv_dir=kv_cache_dir(index, cache_dir))
    pipeline.preflight()
    return pipeline


@flow(name="ragpress-answer", validate_parameters=False)
def answer_flow(question: str, index: str, config: dict[str, Any], cache_dir: str | None = None, llm: dict | None = None,
                kv_cache_max_mb: float | None = None) -> dict:
    """Answer ``question`` from the index in ``index``; returns the answer, contexts with spans and costs.
    ``kv_cache_max_mb``: afterwards, keep at most this many MB of chunk caches on disk (LRU).
    ``tokens_sent`` is the prompt's tokens as the model counted them (the server's ``usage`` over HTTP)."""
    if kv_cache_max_mb is not None and kv_cache_max_mb < 0:
        raise ValueError(f"kv_cache_max_mb must be >= 0 (or None for no limit), got {kv_cache_max_mb}")
    pipeline = answer_pipeline(config, index, cache_dir, llm)
    hits = retrieve(pipeline, question, index)
    contexts = [hit.text for hit in hits]
    compressed = compress(pipeline, question, contexts)
    output = generate(pipeline, question, contexts, compressed)
    reuses = pipeline.config.generation.kv_mode != "none"
    pruned = prune_kv_cache(index, cache_dir, kv_cache_max_mb) if kv_cache_max_mb is not None and reuses else None
    kept = None if compressed is None else {"text": compressed.text, "kept": [asdict(span) for span in compressed.kept],
                                            "original_tokens": compressed.original_tokens, "compressed_tokens": compressed.compressed_tokens}
    return {"question": question, **output, "contexts": [asdict(hit) for hit in hits], "compression": kept, "kv_cache_pruned": pruned}


@flow(name="ragpress-kv-precompute", validate_parameters=False)
def precompute_flow(index: str, cache_dir: str | None = None, llm: dict | None = None) -> dict:
    """The optional indexing step: compute every chunk's cache of ``index`` once, on disk (local LM only)."""
    from retrieval.index_store import IndexStore

    engine = make_generator(llm, kv_cache_dir(index, cache_dir)).engine()  # type: ignore[attr-defined]
    texts = [chunk.text for chunk in IndexStore.open(index).chunks()]
    computed = engine.warm(engine.prompt(texts, "?")) if texts else 0  # one prompt: missing caches are prefilled packed
    return {"chunks": len(texts), "computed": computed, "cache_dir": str(kv_cache_dir(index, cache_dir))}

"""The query flow: embed the questions, search the index, optionally compress the hits."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import flow, task

from compression.base import CompressionResult
from flows.indexing import io_error
from retrieval.base import Hit
from retrieval.config import BEST_HYBRID_WEIGHT, BEST_RETRIEVAL
from retrieval.encoder import load_encoder
from retrieval.index_store import IndexStore
from retrieval.indexing import index_model, search_texts


@dataclass(frozen=True)
class Answered:
    """One question's hits (best first), its optional compressed context and timings in seconds."""

    question: str
    hits: tuple[Hit, ...]
    compressed: CompressionResult | None
    seconds: dict[str, float]


@task(name="search", retries=1, retry_delay_seconds=1, retry_condition_fn=io_error)
def search_task(index_dir: str, questions: list[str], k: int, model: str | None,
                hybrid_weight: float | None, distinct: bool = BEST_RETRIEVAL.distinct) -> tuple[list[list[Hit]], float]:
    """The hits of every question and the search time."""
    started = time.perf_counter()
    store = IndexStore.open(index_dir)
    encoder = load_encoder(model or index_model(store))  # the index's own model unless one is named
    hits = search_texts(store, encoder, questions, k, hybrid_weight, distinct)
    return hits, (time.perf_counter() - started) / max(len(questions), 1)


@task(name="compress")
def compress_task(hits: list[Hit], question: str, method: str, rate: float) -> tuple[CompressionResult, float]:
    """The compressed hits of one question (the pipeline's compression stage) and the compression time."""
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import Pipeline

    started = time.perf_counter()
    result = Pipeline(PipelineConfig.from_dict({"compression": method, "rate": rate})).compress(question, [hit.text for hit in hits])
    assert result is not None, "query compresses only when a method is given"
    return result, time.perf_counter() - started


@flow(name="ragpress-query")
def query_flow(questions: list[str], index_dir: str, k: int = BEST_RETRIEVAL.fixed_k, model: str | None = None,
               compression: str | None = None, rate: float = 0.33,
               hybrid_weight: float | None = BEST_HYBRID_WEIGHT, distinct: bool = BEST_RETRIEVAL.distinct) -> list[Answered]:
    """Top-``k`` hits per question; with ``compression`` set, also the compressed context.

    ``hybrid_weight=None`` is plain FAISS (dense) search; the default is the evaluated best
    hybrid dense + BM25 mix (``retrieval.config.BEST_RETRIEVAL``). ``distinct``: ``k`` different texts,
    each hit listing the places of the identical texts collapsed into it (``Hit.copies``).
    """
    all_hits, search_seconds = search_task(index_dir, list(questions), k, model, hybrid_weight, distinct)
    answered = []
    for question, hits in zip(questions, all_hits):
        compressed, compress_seconds = (None, 0.0)
        if compression:
            compressed, compress_seconds = compress_task(hits, question, compression, rate)
        seconds = {"search": search_seconds, "compress": compress_seconds}
        answered.append(Answered(question, tuple(hits), compressed, seconds))
    return answered

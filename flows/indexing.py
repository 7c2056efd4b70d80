"""The indexing flow: load -> chunk -> embed -> index, as Prefect tasks over the retrieval library.

Chunking and embedding are cached by Prefect on the document's content hash (plus the chunker
configuration, plus the model id for embeddings), so a run that was killed before its commit
re-uses the work already done. Commits happen every ``commit_every`` documents; each one is an
atomic version of the index (see ``retrieval.index_store``), so a killed run resumes from the
last commit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import numpy as np
from prefect import flow, task, unmapped
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from eval.defaults import BEST_CONFIG
from retrieval.base import Chunk, Document
from retrieval.chunkers import make_chunker
from retrieval.encoder import load_encoder
from retrieval.index_store import IndexStore, config_fingerprint
from retrieval.indexing import (
    IndexPlan,
    IndexSummary,
    SkippedFile,
    apply_update,
    chunk_documents,
    embed_documents,
    index_config,
    plan_update,
    require_documents,
)


@dataclass(frozen=True)
class ChunkerSpec:
    """The CLI-level chunker choice; ``build()`` gives the library chunker."""

    name: str = BEST_CONFIG.chunker
    chunk_size: int = BEST_CONFIG.chunk_size
    overlap: int = BEST_CONFIG.overlap
    context_chunks: int = BEST_CONFIG.context_chunks

    def build(self):
        """The chunker this spec describes."""
        return make_chunker(self.name, chunk_size=self.chunk_size, overlap=self.overlap)


def _chunk_key(_context: Any, parameters: dict[str, Any]) -> str:
    document: Document = parameters["document"]
    return f"chunk-{document.content_hash}-{config_fingerprint(parameters['chunker_config'])}"


def _embed_key(_context: Any, parameters: dict[str, Any]) -> str:
    document: Document = parameters["document"]
    config = config_fingerprint(parameters["chunker_config"])
    return f"embed-{document.content_hash}-{config}-{config_fingerprint({'model': parameters['model_id']})}"


def io_error(_task: Any, _run: Any, state: Any) -> bool:
    """Retry only transient I/O failures; bad input fails at once with its message."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(name="load-documents", retries=2, retry_delay_seconds=1, retry_condition_fn=io_error)
def load_task(paths: list[str]) -> tuple[list[Document], list[SkippedFile]]:
    """The documents under ``paths`` and the files skipped (with why)."""
    return require_documents(paths)


@task(name="chunk-document", cache_key_fn=_chunk_key, persist_result=True)
def chunk_task(document: Document, spec: ChunkerSpec, chunker_config: dict[str, Any]) -> list[Chunk]:
    """One document's chunks (cached by its content and the chunker)."""
    return chunk_documents([document], spec.build())[0][1]


@task(name="embed-document", cache_key_fn=_embed_key, persist_result=True)
def embed_task(document: Document, chunks: list[Chunk], spec: ChunkerSpec, model: str | None, model_id: str,
               chunker_config: dict[str, Any]) -> np.ndarray:
    """One document's chunk vectors (cached by its content, the chunker and the model)."""
    return embed_documents([(document, chunks)], load_encoder(model), spec.context_chunks)


@task(name="commit-batch", retries=2, retry_delay_seconds=1, retry_condition_fn=io_error)
def commit_task(store: IndexStore, batch: IndexPlan, chunked: list[tuple[Document, list[Chunk]]],
                vectors: np.ndarray) -> int:
    """Stage the batch and commit it; a retry after a failed write only repeats the commit."""
    if store.dirty:  # an earlier attempt staged the batch, then failed to write it
        store.commit()
    else:
        apply_update(store, batch, chunked, vectors)
    return store.version


def _summary_rows(summary: IndexSummary) -> list[dict[str, Any]]:
    return [
        {"metric": name, "value": value}
        for name, value in (
            ("index", summary.index_dir), ("version", summary.version), ("added docs", summary.added),
            ("updated docs", summary.updated), ("relocated docs", summary.relocated), ("deleted docs", summary.deleted),
            ("unchanged docs", summary.unchanged), ("chunks added", summary.chunks_added),
            ("chunks in index", summary.chunks_total), ("commits", summary.commits),
            ("skipped files", len(summary.skipped)), ("seconds", round(summary.timings.get("total", 0.0), 2)),
        )
    ]


# One worker thread by default: the shared embedding model's tokenizer is not thread-safe, and
# two cores gain nothing from it. flows/dask_runner.py swaps in a Dask runner to fan the map out.
@flow(name="ragpress-index", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]  # Prefect's generic runner type
def index_flow(paths: list[str], index_dir: str, chunker: str = ChunkerSpec.name,
               chunk_size: int = ChunkerSpec.chunk_size, overlap: int = ChunkerSpec.overlap,
               model: str | None = None, factory: str = "Flat", commit_every: int = 64,
               rebuild: bool = False, context_chunks: int = ChunkerSpec.context_chunks,
               kv_cache: str | None = None) -> IndexSummary:
    """Bring the index in ``index_dir`` up to date with the text files under ``paths``.

    The defaults are the evaluated best configuration (``eval.defaults.BEST_CONFIG``). With
    ``kv_cache`` (a directory), every chunk's causal-LM KV cache is also precomputed there, so
    ``ragpress ask`` reuses instead of prefilling (chunks already cached are skipped).
    """
    started = time.perf_counter()
    spec = ChunkerSpec(chunker, chunk_size, overlap, context_chunks)
    chunker_config = index_config(spec.build(), context_chunks)
    encoder = load_encoder(model)
    documents, skipped = load_task([str(p) for p in paths])
    store = IndexStore(index_dir, encoder.model_id, encoder.dim, factory, rebuild=rebuild)
    plan = plan_update(store, documents, chunker_config)
    progress_id = cast(UUID, create_progress_artifact(progress=0.0, description=f"documents embedded into {index_dir}"))
    done, chunks_added, commits = 0, 0, 0
    for batch in plan.batches(commit_every):
        docs = list(batch.to_embed)
        chunk_futures = chunk_task.map(document=docs, spec=unmapped(spec), chunker_config=unmapped(chunker_config))
        vector_futures = embed_task.map(document=docs, chunks=chunk_futures, spec=unmapped(spec), model=unmapped(model),
                                        model_id=unmapped(encoder.model_id), chunker_config=unmapped(chunker_config))
        chunked = list(zip(docs, chunk_futures.result()))
        vectors = vector_futures.result()
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), dtype=np.float32)
        commit_task(store, batch, chunked, stacked)  # called, not submitted: only the flow process writes
        done, chunks_added, commits = done + len(batch.to_embed), chunks_added + len(stacked), commits + 1
        update_progress_artifact(progress_id, 100.0 * done / max(len(plan.to_embed), 1))
    update_progress_artifact(progress_id, 100.0)
    summary = IndexSummary(str(index_dir), store.version, len(plan.new), len(plan.changed), len(plan.deleted),
                           len(plan.unchanged), chunks_added, store.ntotal, commits, tuple(skipped),
                           {"total": time.perf_counter() - started}, relocated=len(plan.relocated))
    create_table_artifact(table=_summary_rows(summary), key="ragpress-index-summary",
                          description=f"ragpress index of {', '.join(map(str, paths))}")
    if kv_cache is not None:
        from flows.answer import precompute_flow

        precompute_flow(index_dir, kv_cache)
    return summary

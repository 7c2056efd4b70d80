"""The indexing flow: load -> chunk -> embed -> index, as Prefect tasks over the retrieval library.

Chunking and embedding results are cached on the document's content hash (plus the chunker
configuration and the code that computes them, plus the model id for embeddings), so a run that
was killed before its commit re-uses the work already done. The cache is ragpress's own
(``eval.stage_cache`` under ``$RAGPRESS_CACHE/stages/index-*``), not Prefect's result storage:
Prefect reads its results back with whatever serializer the stored record names, pickle
included, so a planted record would run code. Here chunks are JSON, vectors base64 float32 in
JSON, each entry checksummed, and cached chunks are checked against the document's text; a bad
entry is recomputed with a warning. Commits happen every ``commit_every`` documents; each one
is an atomic version of the index (see ``retrieval.index_store``), so a killed run resumes from
the last commit.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import numpy as np
from prefect import flow, task, unmapped
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from eval.stage_cache import StageCache, code_fingerprint, default_stage_cache_dir
from flows import progress
from retrieval.base import Chunk, Document
from retrieval.chunkers import make_chunker
from retrieval.config import BEST_RETRIEVAL as BEST_CONFIG
from retrieval.encoder import load_encoder
from retrieval.errors import InputError
from retrieval.index_store import IndexStore, config_fingerprint
from retrieval.indexing import (
    IndexPlan,
    IndexSummary,
    SkippedFile,
    apply_update,
    check_tokenizer,
    chunk_documents,
    embed_documents,
    index_config,
    plan_update,
    require_documents,
)
from retrieval.tokenizer import load_tokenizer


@dataclass(frozen=True)
class ChunkerSpec:
    """The CLI-level chunker choice; ``build()`` gives the library chunker."""

    name: str = BEST_CONFIG.chunker
    chunk_size: int = BEST_CONFIG.chunk_size
    overlap: int = BEST_CONFIG.overlap
    context_chunks: int = BEST_CONFIG.context_chunks
    model: str | None = None  # the embedding model whose tokenizer counts the chunk budget (None: the default)

    def build(self):
        """The chunker this spec describes, counting tokens with the embedding model's tokenizer."""
        return make_chunker(self.name, chunk_size=self.chunk_size, overlap=self.overlap, tokenizer=load_tokenizer(self.model))


CHUNK_STAGE, VECTOR_STAGE = "index-chunks", "index-vectors"
FILES_READ, DOCS_EMBEDDED, CHUNKS_EMBEDDED = "files read", "documents embedded", "chunks embedded"
ALLOWED_ROOTS_ENV = "RAGPRESS_INDEX_ROOTS"  # os.pathsep-separated folders a deployment run may read and write
# The code that decides a document's chunks and vectors: a change to it invalidates the cache.
CODE_MODULES = ("retrieval.indexing", "retrieval.chunkers", "retrieval.encoder")


def _cache_parts(document: Document, chunker_config: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"document": document.content_hash, "config": config_fingerprint(chunker_config),
            "code": code_fingerprint(*CODE_MODULES), **more}


def _cached_chunks(cache: StageCache, document: Document, parts: dict[str, Any]) -> list[Chunk] | None:
    """The cached chunks of ``document``, or None; cached spans must match its text exactly."""
    value = cache.get(CHUNK_STAGE, parts)
    try:
        chunks = [Chunk(str(c["text"]), int(c["start"]), int(c["end"]), int(c["n_tokens"])) for c in value or ()]
    except (KeyError, TypeError, ValueError):
        return None
    if value is None or any(document.text[c.start:c.end] != c.text for c in chunks):
        return None
    return chunks


def _cached_vectors(cache: StageCache, parts: dict[str, Any], rows: int) -> np.ndarray | None:
    """The cached ``[rows, dim]`` float32 vectors, or None when absent or not of that shape."""
    value = cache.get(VECTOR_STAGE, parts)
    if not isinstance(value, dict):
        return None
    try:
        vectors = np.frombuffer(base64.b64decode(value["float32"], validate=True), dtype="<f4")
        return vectors.reshape(rows, int(value["dim"])).astype(np.float32)
    except (KeyError, TypeError, ValueError):
        return None


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
def load_task(paths: list[str], exclude: list[str]) -> tuple[list[Document], list[SkippedFile]]:
    """The documents under ``paths``, never reading ``exclude``; bad files skipped with reasons."""
    files_read = progress.counter(FILES_READ)
    found = require_documents(paths, exclude, files_read)
    files_read.finish()
    return found


def never_corpus(index_dir: str, kv_cache: str | None, cache_dir: str) -> list[str]:
    """Directories whose files are never indexed: the index, the caches and Prefect's home."""
    from prefect.settings import get_current_settings

    cache_root = Path(cache_dir).parent if Path(cache_dir) == default_stage_cache_dir() else Path(cache_dir)
    return [str(p) for p in (index_dir, kv_cache, cache_root, get_current_settings().home) if p]


def sweep_leftovers(index_dir: str, cache_dir: str) -> None:
    """Remove what killed runs left: temp versions in the index, temp entries in the task cache."""
    IndexStore.sweep(index_dir)
    cache = StageCache(cache_dir)
    for stage in (CHUNK_STAGE, VECTOR_STAGE):
        cache.sweep(stage)


def require_allowed_paths(paths: list[str], index_dir: str, kv_cache: str | None, rebuild: bool) -> None:
    """In a deployment run, every path must lie under the roots the deployment was created with.

    The roots come from the serving process's environment (``RAGPRESS_INDEX_ROOTS``, set by
    ``ragpress serve`` or the work pool's job variables), not from the run's parameters, which
    anyone who can reach the Prefect API may set.
    """
    from prefect.runtime import deployment

    if deployment.id is None:
        return  # a local run: the caller chose the paths
    roots = [Path(r).resolve() for r in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    if not roots:
        raise InputError(f"this deployment was created without allowed roots ({ALLOWED_ROOTS_ENV}); "
                         "re-create it with ragpress serve (or set the variable in the work pool's job variables)")
    if rebuild:
        raise InputError("rebuild is refused in deployment runs; run `ragpress index --rebuild` where the index lives")
    for path in [*paths, index_dir, *([kv_cache] if kv_cache else [])]:
        resolved = Path(path).expanduser().resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise InputError(f"{path} is outside the roots this deployment may use ({', '.join(map(str, roots))}); "
                             "give a path under them or re-create the deployment with another root")


# Prefect's own result persistence stays off for these tasks (see the module docstring).
@task(name="chunk-document", cache_policy=NO_CACHE, persist_result=False)
def chunk_task(document: Document, spec: ChunkerSpec, chunker_config: dict[str, Any], cache_dir: str) -> list[Chunk]:
    """The chunks of ``document``: from the cache when an intact entry matches, else computed and cached."""
    cache, parts = StageCache(cache_dir), _cache_parts(document, chunker_config)
    chunks = _cached_chunks(cache, document, parts)
    if chunks is None:
        chunks = chunk_documents([document], spec.build())[0][1]
        cache.put(CHUNK_STAGE, parts, [asdict(c) for c in chunks])
    progress.counter(CHUNKS_EMBEDDED).grow(len(chunks))
    return chunks


@task(name="embed-document", cache_policy=NO_CACHE, persist_result=False)
def embed_task(document: Document, chunks: list[Chunk], spec: ChunkerSpec, model: str | None, model_id: str,
               chunker_config: dict[str, Any], cache_dir: str) -> np.ndarray:
    """The vectors of ``chunks``: from the cache when an intact entry matches, else embedded and cached."""
    cache, parts = StageCache(cache_dir), _cache_parts(document, chunker_config, model=model_id)
    vectors = _cached_vectors(cache, parts, len(chunks))
    if vectors is None:
        vectors = np.ascontiguousarray(embed_documents([(document, chunks)], load_encoder(model), spec.context_chunks),
                                       dtype="<f4")
        cache.put(VECTOR_STAGE, parts, {"dim": int(vectors.shape[1]), "float32": base64.b64encode(vectors.tobytes()).decode()})
    progress.counter(CHUNKS_EMBEDDED)(len(chunks))
    progress.counter(DOCS_EMBEDDED)(1)
    return vectors


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
               kv_cache: str | None = None, cache_dir: str | None = None) -> IndexSummary:
    """Bring the index in ``index_dir`` up to date with the text files under ``paths``.

    The defaults are the evaluated best configuration (``eval.defaults.BEST_CONFIG``). With
    ``kv_cache`` (a directory), every chunk's causal-LM KV cache is also precomputed there, so
    ``ragpress ask`` reuses instead of prefilling (chunks already cached are skipped).
    ``cache_dir``: where chunks and vectors are cached (default ``$RAGPRESS_CACHE/stages``).
    The index, the caches and Prefect's home are never read as corpus, and what killed runs
    left there is swept first. A deployment run only takes paths under its allowed roots.
    """
    started = time.perf_counter()
    require_allowed_paths(paths, index_dir, kv_cache, rebuild)
    cache_dir = str(cache_dir or default_stage_cache_dir())
    spec = ChunkerSpec(chunker, chunk_size, overlap, context_chunks, model)
    chunker_config = index_config(spec.build(), context_chunks)
    encoder = load_encoder(model)
    sweep_leftovers(index_dir, cache_dir)
    documents, skipped = load_task([str(p) for p in paths], never_corpus(index_dir, kv_cache, cache_dir))
    store = IndexStore(index_dir, encoder.model_id, encoder.dim, factory, rebuild=rebuild)
    check_tokenizer(store, chunker_config)
    plan = plan_update(store, documents, chunker_config)
    progress_id = cast(UUID, create_progress_artifact(progress=0.0, description=f"documents embedded into {index_dir}"))
    progress.counter(DOCS_EMBEDDED, len(plan.to_embed))
    done, chunks_added, commits = 0, 0, 0
    for batch in plan.batches(commit_every):
        docs = list(batch.to_embed)
        chunk_futures = chunk_task.map(document=docs, spec=unmapped(spec), chunker_config=unmapped(chunker_config),
                                       cache_dir=unmapped(cache_dir))
        vector_futures = embed_task.map(document=docs, chunks=chunk_futures, spec=unmapped(spec), model=unmapped(model),
                                        model_id=unmapped(encoder.model_id), chunker_config=unmapped(chunker_config),
                                        cache_dir=unmapped(cache_dir))
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

"""The indexing flow with its chunk/embed map on Prefect's Dask task runner (``prefect-dask``).

``index_on_dask(paths, index_dir, address="tcp://scheduler:8786")`` indexes like ``index_flow``
(same tasks, same plan, same caching, same atomic commits), but each batch's chunking and
embedding are ``.map``-ped onto the Dask cluster at ``address``; only the flow process writes
the index. Without an address a temporary ``LocalCluster`` is started (``cluster_kwargs``).

Every worker loads the embedding model once (``load_encoder`` is memoised per process), so
the model package must be installed on every worker, and the workers must reach the Prefect
API of the flow run (``PREFECT_API_URL``). On several machines, give the embed/chunk tasks a
shared result storage (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``) so cached embeddings are
found wherever the next run lands; in-flight results travel through Dask either way.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prefect import flow, unmapped

from flows.indexing import ChunkerSpec, chunk_task, commit_task, embed_task, load_task
from retrieval.encoder import load_encoder
from retrieval.errors import InputError
from retrieval.index_store import IndexStore
from retrieval.indexing import IndexSummary, index_config, plan_update


@flow(name="ragpress-index-dask")
def index_flow_dask(paths: list[str], index_dir: str, chunker: str = ChunkerSpec.name,
                    chunk_size: int = ChunkerSpec.chunk_size, overlap: int = ChunkerSpec.overlap,
                    model: str | None = None, factory: str = "Flat", commit_every: int = 64,
                    rebuild: bool = False, context_chunks: int = ChunkerSpec.context_chunks) -> IndexSummary:
    """``index_flow`` (same parameters and defaults) with the per-document chunk and embed tasks mapped
    on the flow's task runner."""
    started = time.perf_counter()
    spec = ChunkerSpec(chunker, chunk_size, overlap, context_chunks)
    chunker_config = index_config(spec.build(), context_chunks)
    encoder = load_encoder(model)  # model id and dim for the store; workers load their own copy
    documents, skipped = load_task([str(p) for p in paths])
    if not documents:
        reasons = "; ".join(s.reason for s in skipped[:3]) or "no text files found"
        raise InputError(f"nothing to index under {', '.join(map(str, paths))}: {reasons}")
    store = IndexStore(index_dir, encoder.model_id, encoder.dim, factory, rebuild=rebuild)
    plan = plan_update(store, documents, chunker_config)
    chunks_added, commits = 0, 0
    for batch in plan.batches(commit_every):
        docs = list(batch.to_embed)
        chunk_futures = chunk_task.map(document=docs, spec=unmapped(spec), chunker_config=unmapped(chunker_config))
        vector_futures = embed_task.map(document=docs, chunks=chunk_futures, spec=unmapped(spec), model=unmapped(model),
                                        model_id=unmapped(encoder.model_id), chunker_config=unmapped(chunker_config))
        chunked = list(zip(docs, chunk_futures.result()))
        vectors = vector_futures.result()
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), dtype=np.float32)
        commit_task(store, batch, chunked, stacked)  # called, not submitted: only this process writes
        chunks_added, commits = chunks_added + len(stacked), commits + 1
    return IndexSummary(str(index_dir), store.version, len(plan.new), len(plan.changed), len(plan.deleted),
                        len(plan.unchanged), chunks_added, store.ntotal, commits, tuple(skipped),
                        {"total": time.perf_counter() - started})


def dask_task_runner(address: str | None = None, **cluster_kwargs: Any):
    """A ``DaskTaskRunner`` on the scheduler at ``address``, or on a new LocalCluster(**cluster_kwargs)."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ImportError("the Dask runner needs prefect-dask: pip install 'prefect-dask>=0.3.7'") from None
    if address is not None:
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"bad Dask scheduler address {address!r}; give e.g. tcp://127.0.0.1:8786")
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs or {"n_workers": 2, "threads_per_worker": 1})


def index_on_dask(paths: list[str], index_dir: str, address: str | None = None, *,
                  cluster_kwargs: dict[str, Any] | None = None, **options: Any) -> IndexSummary:
    """Run ``index_flow_dask`` with its map on Dask; ``options`` are the indexing flow's parameters."""
    runner = dask_task_runner(address, **(cluster_kwargs or {}))
    return index_flow_dask.with_options(task_runner=runner)([str(p) for p in paths], str(index_dir), **options)

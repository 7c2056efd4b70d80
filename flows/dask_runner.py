"""The indexing flow with its chunk/embed map on Prefect's Dask task runner (``prefect-dask``).

``index_on_dask(paths, index_dir, address="tcp://scheduler:8786")`` runs ``index_flow`` itself
(same tasks, plan, caching, artifacts and atomic commits) with a Dask task runner, so each
batch's chunk and embed ``.map`` runs on the cluster at ``address``; only the flow process writes
the index. Without an address a temporary ``LocalCluster`` is started (``cluster_kwargs``).

Every worker loads the embedding model once (``load_encoder`` is memoised per process), so
the model package must be installed on every worker, and the workers must reach the Prefect
API of the flow run (``PREFECT_API_URL``). On several machines, point ``RAGPRESS_CACHE`` at a
shared folder so cached chunks and embeddings (checksummed JSON, ``flows.indexing``) are found
wherever the next run lands; in-flight results travel through Dask either way.
"""

from __future__ import annotations

from typing import Any

from flows.indexing import index_flow
from retrieval.indexing import IndexSummary


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
    """Run ``index_flow`` with its map on Dask; ``options`` are the indexing flow's parameters."""
    runner = dask_task_runner(address, **(cluster_kwargs or {}))
    return index_flow.with_options(task_runner=runner)([str(p) for p in paths], str(index_dir), **options)

"""Scheduled indexing: the indexing flow as a Prefect deployment that keeps a folder's index fresh.

``serve_indexing(folder, index_dir, cron=...)`` registers the deployment with the Prefect API
(``PREFECT_API_URL``, e.g. a ``prefect server start`` on this machine) and serves it from this
process: every scheduled (or manually triggered) run brings the index up to date, re-embedding
only changed files. ``prefect.yaml`` at the repository root is the work-pool alternative
(``prefect deploy``), see ``docs/deploy.md``.

A run's parameters can be set by anyone who can reach the Prefect API, so the folders a run may
read and write are fixed when the deployment is created: ``serve_indexing`` puts them (the served
folder and the index directory, plus any ``roots``) in the serving process's environment
(``RAGPRESS_INDEX_ROOTS``), which its runs inherit and no run parameter can change; the
indexing flow refuses paths outside them in a deployment run (``flows.indexing.require_allowed_paths``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.deployments.runner import EntrypointType

from flows.indexing import ALLOWED_ROOTS_ENV, index_flow

DEFAULT_CRON = "0 * * * *"  # hourly, on the hour
DEFAULT_NAME = "ragpress-index"
# index_flow's parameters a schedule may set; unset ones (None) keep the flow's defaults.
OPTIONS = frozenset({"chunker", "chunk_size", "overlap", "context_chunks", "model", "factory", "commit_every"})


def indexing_parameters(folder: str | Path, index_dir: str | Path, **options: Any) -> dict[str, Any]:
    """The flow parameters for ``folder`` -> ``index_dir`` (absolute, so runs do not depend on a cwd)."""
    source = Path(folder).expanduser()
    if not source.exists():
        raise ValueError(f"{source}: no such file or folder; give the folder to keep indexed")
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"unknown indexing option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(OPTIONS))}")
    given = {key: value for key, value in options.items() if value is not None}
    return {"paths": [str(source.resolve())], "index_dir": str(Path(index_dir).expanduser().resolve()), **given}


def indexing_deployment(folder: str | Path, index_dir: str | Path, *, name: str = DEFAULT_NAME,
                        cron: str = DEFAULT_CRON, timezone: str = "UTC", **options: Any):
    """A ``RunnerDeployment`` of ``index_flow`` for ``folder`` on ``cron``; one run at a time."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        schedule = CronSchedule(cron=cron, timezone=timezone)
    except ValueError as exc:
        errors = exc.errors() if hasattr(exc, "errors") else [{"msg": str(exc)}]  # pydantic names the problem
        raise ValueError(f"bad cron {cron!r} or timezone {timezone!r} ({errors[0]['msg'][:160]}); "
                         "give five fields, e.g. --cron '0 * * * *' (hourly) and a tz name like UTC") from None
    return index_flow.to_deployment(
        name=name,
        schedules=[schedule],
        parameters=indexing_parameters(folder, index_dir, **options),
        concurrency_limit=1,  # a run commits against the version it opened; overlapping runs would conflict
        description=f"keep the ragpress index {index_dir} up to date with {folder}",
        tags=["ragpress", "indexing"],
        entrypoint_type=EntrypointType.MODULE_PATH,  # flows.indexing.index_flow: independent of the cwd
    )


def allow_roots(folder: str | Path, index_dir: str | Path, roots: Sequence[str | Path] = ()) -> list[str]:
    """Fix the folders this process's deployment runs may use: ``folder``, ``index_dir`` and ``roots``."""
    allowed = [str(Path(p).expanduser().resolve()) for p in (folder, index_dir, *roots)]
    os.environ[ALLOWED_ROOTS_ENV] = os.pathsep.join(allowed)
    return allowed


def serve_indexing(folder: str | Path, index_dir: str | Path, *, name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON,
                   timezone: str = "UTC", limit: int | None = None, roots: Sequence[str | Path] = (), **options: Any) -> None:
    """Register the deployment and serve its runs from this process until interrupted (Ctrl-C); runs
    may only use paths under ``folder``, ``index_dir`` and ``roots``."""
    from prefect import serve

    deployment = indexing_deployment(folder, index_dir, name=name, cron=cron, timezone=timezone, **options)
    allow_roots(folder, index_dir, roots)
    serve(deployment, limit=limit)

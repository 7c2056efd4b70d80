"""Pipeline configuration files: one configuration (``--config``) or a grid (``--sweep``).

Both are YAML or JSON in the flat ``PipelineConfig`` form (retrieval keys next to
``compression``, ``rate``, ``kv_mode`` ...); a sweep file uses the shapes of ``eval.sweep``.
Either may say ``questions: N`` to run N questions evenly spread over the question file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.sweep import read_config_file, read_sweep_file, sweep_configs
from pipeline.config import PipelineConfig

LIMIT_KEY = "questions"


def _limit(data: dict[str, Any], path: Path) -> int | None:
    value = data.get(LIMIT_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: '{LIMIT_KEY}' must be a positive number of questions, got {value!r}")
    return value


def load_pipeline_sweep(path: Path) -> tuple[list[PipelineConfig], int | None]:
    """The grid's configurations (normalised, duplicates removed) and its question limit."""
    return sweep_configs(path, PipelineConfig.from_dict, PipelineConfig.to_dict), _limit(read_sweep_file(path), path)


def load_pipeline_config(path: Path) -> tuple[PipelineConfig, int | None]:
    """One configuration: a flat mapping of ``PipelineConfig`` keys (plus ``questions``)."""
    data = read_config_file(path, "config file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold one mapping of pipeline keys (use --sweep for grids)")
    limit = _limit(data, path)
    try:
        return PipelineConfig.from_dict({k: v for k, v in data.items() if k != LIMIT_KEY}), limit
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config file {path}: {exc}") from None

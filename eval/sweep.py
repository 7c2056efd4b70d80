"""Sweep files: grids (or lists) of configurations in YAML or JSON.

Accepted shapes (keys are the fields of the config's ``from_dict``: ``EvalConfig`` for
``ragpress eval``, the flat ``pipeline.config.PipelineConfig`` form for ``ragpress pipeline``)::

    # a grid: every list is an axis, scalars are fixed; the cartesian product is run.
    # An axis item that is a mapping sets several keys together (e.g. a named retrieval setup).
    grid: {chunker: [token, recursive], chunk_size: [100, 200], overlap: 0, k: [5]}
    # several grids: their union (duplicates removed)
    grid:
      - {compression: none, kv_mode: [naive, blend]}
      - {compression: [extractive, llmlingua], rate: [0.33, 0.5]}
    # and/or explicit configurations, run as given (after the grids)
    configs:
      - {chunker: token, chunk_size: 200, overlap: 0}
    # pipeline sweeps only: how many questions to run (evenly spread over the file)
    questions: 30
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from eval.base import EvalConfig

C = TypeVar("C")


def _point(axes: Mapping[str, list], values: tuple) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for key, value in zip(axes, values):
        if isinstance(value, Mapping):
            point.update(value)  # a grouped axis item sets several keys
        else:
            point[key] = value
    return point


def expand_grid(grid: Mapping[str, object], build: Callable[[Mapping[str, Any]], C]) -> list[C]:
    """The cartesian product of the list-valued keys (scalars are held fixed), in file order."""
    axes = {key: value if isinstance(value, list) else [value] for key, value in grid.items()}
    configs = []
    for values in itertools.product(*axes.values()):
        point = _point(axes, values)
        overlap, size = point.get("overlap", 0), point.get("chunk_size", 200)
        if isinstance(overlap, int) and isinstance(size, int) and 0 < size <= overlap:
            continue  # e.g. overlap 100 with chunk size 50: not a valid chunking, skip the point
        configs.append(build(point))
    return configs


def grid_configs(grid: Mapping[str, object]) -> list[EvalConfig]:
    """Every ``EvalConfig`` of a grid (lists of values are crossed)."""
    return expand_grid(grid, EvalConfig.from_dict)


def read_config_file(path: Path, what: str = "sweep file") -> Any:
    """The document in a ``.yaml``/``.yml``/``.json`` file, with errors naming ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{what} {path} is not valid YAML ({' '.join(str(exc).split())}); fix the file") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} {path} is not valid JSON ({exc}); fix the file") from None
    raise ValueError(f"{what} {path}: use .yaml, .yml or .json, not '{path.suffix}'")


def read_sweep_file(path: Path) -> dict[str, Any]:
    """The mapping in a sweep file, with clear errors."""
    data = read_config_file(path)
    if not isinstance(data, dict) or not ({"grid", "configs"} & set(data)):
        raise ValueError(f"sweep file {path} needs a 'grid' mapping and/or a 'configs' list (see eval/sweep.py; 'grid' may also be a list of mappings)")
    return data


def sweep_configs(path: Path, build: Callable[[Mapping[str, Any]], C], to_dict: Callable[[C], dict]) -> list[C]:
    """Configurations of a sweep file, built with ``build``, duplicates (after normalisation) removed."""
    data = read_sweep_file(path)
    grids = data.get("grid", [])
    grids = [grids] if isinstance(grids, Mapping) else list(grids)
    try:
        configs = [config for grid in grids for config in expand_grid(grid, build)]
        configs += [build(item) for item in data.get("configs", [])]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sweep file {path}: {exc}") from None
    unique = list({json.dumps(to_dict(c), sort_keys=True): c for c in configs}.values())
    if not unique:
        raise ValueError(f"sweep file {path} defines no configuration")
    return unique


def load_sweep(path: Path) -> list[EvalConfig]:
    """Evaluation configurations of a sweep file, duplicates removed."""
    return sweep_configs(path, EvalConfig.from_dict, EvalConfig.to_dict)

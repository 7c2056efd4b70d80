"""Sweep files: a grid (or list) of evaluation configurations in YAML or JSON.

Two shapes are accepted (keys are :class:`eval.base.EvalConfig` fields)::

    # a grid: every list is an axis, scalars are fixed; the cartesian product is evaluated
    grid: {chunker: [token, recursive], chunk_size: [100, 200], overlap: 0, k: [5]}
    # and/or explicit configurations, evaluated as given (after the grid)
    configs:
      - {chunker: token, chunk_size: 200, overlap: 0}
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Mapping

from eval.base import EvalConfig


def grid_configs(grid: Mapping[str, object]) -> list[EvalConfig]:
    """The cartesian product of the list-valued keys (scalars are held fixed), in file order."""
    axes = {key: value if isinstance(value, list) else [value] for key, value in grid.items()}
    configs = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        if int(point.get("overlap", 0)) >= int(point.get("chunk_size", 200)):
            continue  # e.g. overlap 100 with chunk size 50: not a valid chunking, skip the point
        configs.append(EvalConfig.from_dict(point))
    return configs


def load_sweep(path: Path) -> list[EvalConfig]:
    """Configurations of a ``.yaml``/``.yml``/``.json`` sweep file, duplicates removed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"sweep file {path}: use .yaml, .yml or .json, not '{path.suffix}'")
    if not isinstance(data, dict) or not ({"grid", "configs"} & set(data)):
        raise ValueError(f"sweep file {path} needs a 'grid' mapping and/or a 'configs' list (see eval/sweep.py)")
    try:
        configs = grid_configs(data["grid"]) if "grid" in data else []
        configs += [EvalConfig.from_dict(item) for item in data.get("configs", [])]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sweep file {path}: {exc}") from exc
    unique = list({json.dumps(c.to_dict(), sort_keys=True): c for c in configs}.values())
    if not unique:
        raise ValueError(f"sweep file {path} defines no configuration")
    return unique

"""Which sentences to keep, given their scores and token costs.

Two policies over the same ranking (best score first, ties to the earlier sentence):
- ``budget``: walk the ranking and keep every sentence that still fits the token budget (a
  sentence too long for what is left is skipped, shorter ones after it may still fit);
- ``adaptive``: keep the sentences whose score clears ``mean + z * std`` of the scores (the
  threshold follows the score distribution), still capped by the budget.
Both keep at least ``min_keep`` sentences of a non-empty input, even over budget, so a
non-empty context never compresses to nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SELECTION_MODES = ("budget", "adaptive")


def rank(scores: Sequence[float] | np.ndarray) -> list[int]:
    """Indices from best to worst score; ties go to the earlier sentence (stable)."""
    values = np.asarray(scores, dtype=np.float64)
    return [int(i) for i in np.argsort(-values, kind="stable")]


def adaptive_threshold(scores: Sequence[float] | np.ndarray, z: float) -> float:
    """``mean + z * std`` of the scores: how far above the typical sentence a keeper must be."""
    values = np.asarray(scores, dtype=np.float64)
    return float(values.mean() + z * values.std())


def select(
    scores: Sequence[float] | np.ndarray,
    costs: Sequence[int],
    limit: int,
    *,
    mode: str = "budget",
    z: float = 0.5,
    min_keep: int = 1,
) -> list[int]:
    """Indices (ascending) of the sentences to keep under ``limit`` tokens."""
    if len(scores) != len(costs):
        raise ValueError(f"{len(scores)} scores but {len(costs)} costs; give one of each per sentence")
    if mode not in SELECTION_MODES:
        raise ValueError(f"unknown selection mode '{mode}'; valid: {', '.join(SELECTION_MODES)}")
    if not len(scores):
        return []
    ranking = rank(scores)
    eligible = ranking
    if mode == "adaptive":
        threshold = adaptive_threshold(scores, z)
        eligible = [i for i in ranking if scores[i] >= threshold]
    chosen, used = [], 0
    for index in eligible:
        if used + costs[index] <= limit:
            chosen.append(index)
            used += costs[index]
    for index in ranking:  # the minimum: best-ranked sentences, even over budget
        if len(chosen) >= min(min_keep, len(scores)):
            break
        if index not in chosen:
            chosen.append(index)
    return sorted(chosen)

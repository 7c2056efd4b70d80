"""Pareto fronts of pipeline configurations and the rule that recommends one of them.

Pure functions over numbers (numpy for the pairwise comparison); the dashboard
(``eval/pipeline_report.py``) and the README quote what is decided here.

Conventions shared by every function:
- a *point* is a sequence of numbers, one per objective; ``maximise[j]`` says whether objective
  ``j`` is better high (True) or low (False);
- ``None`` and NaN count as worse than any present value of their objective, infinities included
  (a config whose TTFT was not measured never beats one whose TTFT was), and tie with each other;
  such a point can still be on the front through its other objectives;
- indices always refer to positions in the input sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from eval.pipeline_base import PipelineResult

# Quality objectives (higher is better) and costs (lower is better) of the dashboard's views.
QUALITY_METRICS = {"answer_f1": "answer F1", "compression_recall": "reference recall sent to the LM"}
COST_METRICS = {"tokens_sent": "tokens sent to the LM", "ttft_median_s": "time to first token (median, s)"}
VIEWS = tuple((quality, cost) for quality in QUALITY_METRICS for cost in COST_METRICS)
# The four objectives ``recommend`` works on, in this order.
OBJECTIVES = (("answer_f1", True), ("compression_recall", True), ("tokens_sent", False), ("ttft_median_s", False))
FLOAT_SLACK = 1e-9  # means of fractions x100 are not exact: 47.99999999 is "within 2 points of 50"


def _ranks(points: Sequence[Sequence[float | None]], maximise: Sequence[bool]) -> np.ndarray:
    """An (n, m) array of per-objective ranks, higher is better, missing values rank 0 (below
    every present value, infinities included); equal values share a rank."""
    m = len(maximise)
    if m == 0:
        raise ValueError("pareto_front needs at least one objective: maximise is empty")
    rows = []
    for index, point in enumerate(points):
        if len(point) != m:
            raise ValueError(f"point {index} has {len(point)} values but maximise names {m} objectives; give one value per objective")
        rows.append([math.nan if value is None else float(value) for value in point])
    values = np.asarray(rows, dtype=float).reshape(len(rows), m)
    signs = np.where(np.asarray(maximise, dtype=bool), 1.0, -1.0)
    flipped = values * signs
    ranks = np.zeros(values.shape, dtype=np.int64)
    for column in range(m):
        present = ~np.isnan(flipped[:, column])
        _, inverse = np.unique(flipped[present, column], return_inverse=True)
        ranks[present, column] = inverse + 1
    return ranks


def pareto_front(points: Sequence[Sequence[float | None]], maximise: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    Point ``a`` dominates ``b`` when ``a`` is at least as good as ``b`` on every objective and
    strictly better on at least one. Edge cases: no points -> ``[]``; identical points do not
    dominate each other, so duplicates are on (or off) the front together; ``None``/NaN is worse
    than any present value of its objective (two missing values tie). A point whose length differs from
    ``maximise``, or an empty ``maximise``, raises ``ValueError``.
    """
    if len(points) == 0:
        if len(maximise) == 0:
            raise ValueError("pareto_front needs at least one objective: maximise is empty")
        return []
    values = _ranks(points, maximise)
    # at_least[i, j]: i is at least as good as j everywhere; better[i, j]: strictly better somewhere.
    at_least = (values[:, None, :] >= values[None, :, :]).all(axis=2)
    better = (values[:, None, :] > values[None, :, :]).any(axis=2)
    dominated = (at_least & better).any(axis=0)
    return [int(index) for index in np.flatnonzero(~dominated)]


def _metric(result: PipelineResult, name: str) -> float:
    value = result.summary.metric(name)
    return math.nan if value is None else float(value)


def front_2d(results: Sequence[PipelineResult], quality: str, cost: str) -> list[int]:
    """Indices of the configurations on the front of ``quality`` (higher better) against ``cost``
    (lower better), ordered by increasing cost (then decreasing quality, then index) so they can be
    drawn as a step line.

    ``quality``: one of ``QUALITY_METRICS`` (``answer_f1``, ``compression_recall`` — the reference
    recall of what reaches the LM); ``cost``: one of ``COST_METRICS`` (``tokens_sent``,
    ``ttft_median_s``). Unknown names raise ``ValueError`` listing the valid ones. No results -> ``[]``.
    """
    if quality not in QUALITY_METRICS:
        raise ValueError(f"unknown quality metric '{quality}'; valid choices: {', '.join(QUALITY_METRICS)}")
    if cost not in COST_METRICS:
        raise ValueError(f"unknown cost metric '{cost}'; valid choices: {', '.join(COST_METRICS)}")
    points = [(_metric(result, quality), _metric(result, cost)) for result in results]
    front = pareto_front(points, (True, False))

    def order(index: int) -> tuple[float, float, int]:
        q, c = points[index]
        return (math.inf if math.isnan(c) else c, math.inf if math.isnan(q) else -q, index)

    return sorted(front, key=order)


def objective_points(results: Sequence[PipelineResult]) -> list[tuple[float, ...]]:
    """The four ``OBJECTIVES`` of every result, in order."""
    return [tuple(_metric(result, name) for name, _ in OBJECTIVES) for result in results]


def front_4d(results: Sequence[PipelineResult]) -> list[int]:
    """Indices of the configurations on the front of all four ``OBJECTIVES``."""
    if not results:
        return []
    return pareto_front(objective_points(results), [maximise for _, maximise in OBJECTIVES])


def recommend_rule(f1_tolerance: float = 2.0, recall_tolerance: float = 5.0) -> str:
    """The rule of ``recommend`` in one sentence, for the dashboard and the README."""
    return (
        "Among the configurations on the Pareto front of answer F1 (higher), reference recall sent to the LM "
        f"(higher), tokens sent (fewer) and median time to first token (lower), keep those within {f1_tolerance:g} "
        f"points of the best answer F1 and within {recall_tolerance:g} points of the best recall; recommend the one "
        "that sends the fewest tokens (ties: lower time to first token, then label)."
    )


def recommend(results: Sequence[PipelineResult], f1_tolerance: float = 2.0, recall_tolerance: float = 5.0) -> int:
    """Index of the recommended configuration.

    Rule: among the configurations on the Pareto front of the four objectives answer F1 (higher),
    reference recall sent to the LM (``compression_recall``, higher), tokens sent (fewer) and median
    time to first token (lower), keep those whose answer F1 is within ``f1_tolerance`` points of the
    best answer F1 and whose recall is within ``recall_tolerance`` points of the best recall
    (inclusive; scores are means x100); of these recommend the one that sends the fewest tokens,
    ties broken by lower median TTFT, then by label, then by position. The best values are the best
    of all configurations, which are always reached on the front.

    If no configuration qualifies, the one with the best answer F1 is recommended (same
    tie-breaks). That happens only when the tolerances are tighter than the gap between the best-F1
    and the best-recall configurations (e.g. both 0 and no configuration is best on both), or when
    every answer F1 or every recall is missing.

    Edge cases: no results raises ``ValueError``; negative tolerances raise ``ValueError``; missing
    (None/NaN) values are the worst of their objective and never count as within a tolerance.
    """
    if not results:
        raise ValueError("recommend needs at least one pipeline result; the grid produced none")
    if f1_tolerance < 0 or recall_tolerance < 0:
        raise ValueError(f"tolerances must be >= 0 points, got f1_tolerance={f1_tolerance}, recall_tolerance={recall_tolerance}")
    points = objective_points(results)
    front = front_4d(results)

    def best(column: int) -> float:
        present = [points[i][column] for i in front if not math.isnan(points[i][column])]
        return max(present) if present else math.nan

    best_f1, best_recall = best(0), best(1)
    qualifying = [
        i for i in front
        if points[i][0] >= best_f1 - f1_tolerance - FLOAT_SLACK and points[i][1] >= best_recall - recall_tolerance - FLOAT_SLACK
    ]

    def cheapest(index: int) -> tuple[float, float, str, int]:
        _, _, tokens, ttft = points[index]
        return (_low(tokens), _low(ttft), results[index].config.label, index)

    if qualifying:
        return min(qualifying, key=cheapest)
    return min(range(len(results)), key=lambda i: (-_high(points[i][0]), *cheapest(i)))


def _low(value: float) -> float:
    """Sort key of a cost: missing sorts last."""
    return math.inf if math.isnan(value) else value


def _high(value: float) -> float:
    """A quality with missing as the worst."""
    return -math.inf if math.isnan(value) else value

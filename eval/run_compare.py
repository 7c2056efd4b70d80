"""Comparing two stored runs: configuration diff, metric deltas with bootstrap intervals, changed questions.

Runs are paired question by question (by qid; questions only one run has are left out). A metric's
delta is its summary statistic (the mean, the median for ``MEDIAN_METRICS``) over the paired
questions of B minus that of A; the 95% interval is the percentile bootstrap of that difference
over questions resampled with replacement (paired, seeded). The dashboard's page computes the
same quantities in the browser (``eval/static/dashboard.js``) for any pair the reader picks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from eval.run_store import MEDIAN_METRICS, METRICS, RunRecord

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MetricDelta:
    """B minus A for one metric over the paired questions, with its bootstrap interval."""

    metric: str
    a: float
    b: float
    delta: float
    low: float
    high: float
    n_pairs: int


@dataclass(frozen=True)
class QuestionChange:
    """A question whose ``metric`` differs between the runs; ``better`` in the metric's own sense."""

    qid: str
    question: str
    a: float
    b: float
    delta: float
    better: bool


@dataclass(frozen=True)
class Comparison:
    """Everything ``ragpress runs compare`` prints and the dashboard shows for a pair of runs."""

    a: int
    b: int
    config_diff: Mapping[str, tuple[object, object]]
    deltas: tuple[MetricDelta, ...]
    metric: str
    changed: tuple[QuestionChange, ...]


def config_diff(a: Mapping[str, object], b: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """Keys whose values differ (a key only one side has shows None on the other), sorted."""
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


def _statistic(metric: str):
    return np.median if metric in MEDIAN_METRICS else np.mean


def paired_values(a: RunRecord, b: RunRecord, metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """qids (in A's order) that both runs scored on ``metric``, and the two value arrays."""
    b_by_qid = {q.qid: q.metrics.get(metric) for q in b.questions}
    pairs = [(q.qid, q.metrics.get(metric), b_by_qid.get(q.qid)) for q in a.questions]
    kept = [(qid, x, y) for qid, x, y in pairs if x is not None and y is not None]
    return [p[0] for p in kept], np.array([p[1] for p in kept], dtype=float), np.array([p[2] for p in kept], dtype=float)


def metric_delta(a: RunRecord, b: RunRecord, metric: str, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> MetricDelta | None:
    """The delta of one metric, or None when no question has it in both runs."""
    _, x, y = paired_values(a, b, metric)
    if not len(x):
        return None
    stat = _statistic(metric)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(x), size=(resamples, len(x)))
    boot = stat(y[picks], axis=1) - stat(x[picks], axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    return MetricDelta(metric, float(stat(x)), float(stat(y)), float(stat(y) - stat(x)), float(np.percentile(boot, tail)),
                       float(np.percentile(boot, 100 - tail)), len(x))


def default_metric(a: RunRecord, b: RunRecord) -> str:
    """Answer F1 when both runs answered, else retrieval IoU."""
    both = set(a.summary) & set(b.summary)
    return "answer_f1" if "answer_f1" in both else "retrieval.iou"


def changed_questions(a: RunRecord, b: RunRecord, metric: str) -> tuple[QuestionChange, ...]:
    """Questions whose ``metric`` changed, largest change first."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; valid choices: {', '.join(METRICS)}")
    higher_better = METRICS[metric][1]
    texts = {q.qid: q.question for q in a.questions}
    qids, x, y = paired_values(a, b, metric)
    changes = [QuestionChange(qid, texts[qid], float(u), float(v), float(v - u), bool((v > u) == higher_better))
               for qid, u, v in zip(qids, x, y) if v != u]
    return tuple(sorted(changes, key=lambda c: (-abs(c.delta), c.qid)))


def compare_runs(a: RunRecord, b: RunRecord, metric: str | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> Comparison:
    """Compare two runs with their questions loaded (``RunStore.get``)."""
    chosen = metric or default_metric(a, b)
    deltas = tuple(d for d in (metric_delta(a, b, name, resamples, seed) for name in METRICS) if d is not None)
    return Comparison(a.run_id or 0, b.run_id or 0, config_diff(a.config, b.config), deltas, chosen,
                      changed_questions(a, b, chosen))

"""Pareto fronts against a brute-force reference, and the recommendation rule on hand-made grids."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import SYNTHETIC_FRONT, SYNTHETIC_RECOMMENDED, synthetic_pipeline_results

from eval.pareto import VIEWS, front_2d, front_4d, pareto_front, recommend


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _better_or_equal(a, b, maximise: bool) -> bool:
    """Written out case by case on purpose (missing is the worst value): the reference."""
    if _missing(b):
        return True
    if _missing(a):
        return False
    return a >= b if maximise else a <= b


def _strictly_better(a, b, maximise: bool) -> bool:
    return _better_or_equal(a, b, maximise) and not _better_or_equal(b, a, maximise)


def brute_force_front(points, maximise) -> list[int]:
    def dominates(a, b) -> bool:
        pairs = list(zip(a, b, maximise))
        return all(_better_or_equal(x, y, m) for x, y, m in pairs) and any(_strictly_better(x, y, m) for x, y, m in pairs)

    return [j for j, b in enumerate(points) if not any(dominates(a, b) for i, a in enumerate(points) if i != j)]


# Few distinct values so ties and duplicates are common; None and NaN as missing measurements.
VALUE = st.one_of(st.integers(-3, 3).map(float), st.just(None), st.just(math.nan), st.just(math.inf))


@st.composite
def point_sets(draw):
    m = draw(st.integers(1, 4))
    maximise = draw(st.lists(st.booleans(), min_size=m, max_size=m))
    points = draw(st.lists(st.lists(VALUE, min_size=m, max_size=m), max_size=12))
    return points, maximise


@settings(max_examples=300, deadline=None)
@given(point_sets())
def test_front_matches_brute_force(case):
    points, maximise = case
    assert pareto_front(points, maximise) == brute_force_front(points, maximise)


def test_hand_cases():
    assert pareto_front([], [True, False]) == []
    assert pareto_front([(1.0, 1.0)], [True, True]) == [0]
    # classic 2-D trade-off, maximise quality, minimise cost: (2, 5) is beaten by (3, 4)
    assert pareto_front([(1, 1), (3, 4), (2, 5), (5, 9)], [True, False]) == [0, 1, 3]
    # duplicates stay together, on the front or off it
    assert pareto_front([(2, 2), (2, 2), (1, 1)], [True, True]) == [0, 1]
    assert pareto_front([(1, 1), (1, 1), (2, 2)], [True, True]) == [2]
    # equal on one objective, better on the other: dominated
    assert pareto_front([(2, 3), (2, 4)], [True, True]) == [1]
    # missing is the worst value, whatever the direction
    assert pareto_front([(1, None), (1, 5)], [True, False]) == [1]
    assert pareto_front([(math.nan, 0.0), (1.0, 9.0)], [True, False]) == [0, 1]
    assert pareto_front([(None,), (None,)], [True]) == [0, 1]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="point 1 has 1 values but maximise names 2"):
        pareto_front([(1, 2), (3,)], [True, True])
    with pytest.raises(ValueError, match="at least one objective"):
        pareto_front([(1,)], [])


def test_front_2d_views_on_synthetic_results():
    results = synthetic_pipeline_results()
    # hand-computed from SYNTHETIC_PIPELINE, ordered by cost
    assert front_2d(results, "answer_f1", "tokens_sent") == [3, 2, 0]
    assert front_2d(results, "answer_f1", "ttft_median_s") == [3, 2, 0]
    assert front_2d(results, "compression_recall", "tokens_sent") == [3, 2, 5, 0, 1]  # 0 and 1 tie
    assert front_2d(results, "compression_recall", "ttft_median_s") == [3, 2, 1]
    assert len(VIEWS) == 4
    assert front_2d([], "answer_f1", "tokens_sent") == []
    with pytest.raises(ValueError, match="valid choices: answer_f1, compression_recall"):
        front_2d(results, "precision", "tokens_sent")
    with pytest.raises(ValueError, match="valid choices: tokens_sent, ttft_median_s"):
        front_2d(results, "answer_f1", "wall_median_s")


def grid(*rows):
    """Results with (answer F1, recall, tokens sent, TTFT) as given; labels from the synthetic configs."""
    base = synthetic_pipeline_results(n_questions=1)
    out = []
    for number, (f1, recall, sent, ttft) in enumerate(rows):
        template = base[number % len(base)]
        compression = dataclasses.replace(template.summary.compression, recall=recall, mean_retrieved_tokens=sent)
        summary = dataclasses.replace(template.summary, answer_f1=f1, compression=compression, ttft_median_s=ttft)
        out.append(dataclasses.replace(template, summary=summary))
    return out


def test_recommend_synthetic():
    results = synthetic_pipeline_results()
    assert front_4d(results) == list(SYNTHETIC_FRONT)
    assert recommend(results) == SYNTHETIC_RECOMMENDED
    # tighter F1 tolerance: only #0 has F1 40, recall 90 qualifies
    assert recommend(results, f1_tolerance=0.5) == 0
    # loose tolerances: the cheapest config on the front wins
    assert recommend(results, f1_tolerance=100, recall_tolerance=100) == 3


def test_recommend_tolerance_is_inclusive():
    at_edge = grid((50.0, 90.0, 800, 1.0), (48.0, 85.0, 300, 1.0))
    assert recommend(at_edge) == 1
    # float noise from averaging must not push an exact-edge config out
    noisy = grid((50.0, 90.0, 800, 1.0), (48.0 - 1e-12, 85.0 - 1e-12, 300, 1.0))
    assert recommend(noisy) == 1
    just_out_f1 = grid((50.0, 90.0, 800, 1.0), (47.9, 90.0, 300, 1.0))
    assert recommend(just_out_f1) == 0
    just_out_recall = grid((50.0, 90.0, 800, 1.0), (50.0, 84.9, 300, 1.0))
    assert recommend(just_out_recall) == 0


def test_recommend_tie_breaks():
    # same tokens: lower TTFT wins
    assert recommend(grid((50.0, 90.0, 300, 0.9), (50.0, 89.0, 300, 0.4))) == 1
    # same tokens and TTFT: the label decides, not the position (index 4's label sorts first)
    low = (10.0, 10.0, 900, 9.0)
    results = grid(low, low, low, (50.0, 90.0, 300, 0.5), (50.0, 90.0, 300, 0.5))
    labels = [r.config.label for r in results]
    assert labels[4] < labels[3]
    assert recommend(results) == 4


def test_recommend_falls_back_to_best_f1_when_none_qualifies():
    # best F1 and best recall are different configs, further apart than the tolerances
    results = grid((50.0, 80.0, 800, 1.0), (45.0, 90.0, 300, 1.0))
    assert recommend(results) == 0
    assert recommend(results, f1_tolerance=5.0, recall_tolerance=10.0) == 1


def test_recommend_missing_values():
    # a config without a measured TTFT is not preferred over an equal one with it
    assert recommend(grid((50.0, 90.0, 300, math.nan), (50.0, 90.0, 300, 0.5))) == 1
    # no answer F1 at all: nothing qualifies, fall back with tie-breaks (fewest tokens)
    assert recommend(grid((math.nan, 90.0, 800, 1.0), (math.nan, 80.0, 300, 1.0))) == 1


def test_recommend_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one pipeline result"):
        recommend([])
    with pytest.raises(ValueError, match="tolerances must be >= 0"):
        recommend(synthetic_pipeline_results(), f1_tolerance=-1)


QUALITY = st.sampled_from([20.0, 30.0, 38.0, 40.0])
COST = st.sampled_from([100.0, 300.0, 800.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(QUALITY, QUALITY, COST, st.sampled_from([0.5, 1.0, 2.0])), min_size=1, max_size=6))
def test_recommend_matches_the_rule_by_brute_force(rows):
    results = grid(*rows)
    points = [(r.summary.answer_f1, r.summary.compression.recall, r.summary.compression.mean_retrieved_tokens, r.summary.ttft_median_s)
              for r in results]
    front = brute_force_front(points, [True, True, False, False])
    best_f1 = max(p[0] for p in points)
    best_recall = max(p[1] for p in points)
    qualifying = [i for i in front if points[i][0] >= best_f1 - 2.0 and points[i][1] >= best_recall - 5.0]
    pool = qualifying or [i for i in range(len(points)) if points[i][0] == best_f1]
    expected = min(pool, key=lambda i: (points[i][2], points[i][3], results[i].config.label, i))
    assert recommend(results) == expected

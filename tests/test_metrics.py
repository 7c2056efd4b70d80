"""Metrics against hand-computed cases and a brute-force set-of-positions reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.base import Span
from eval.metrics import (
    TokenRanges,
    intersect,
    mean_percent,
    min_k,
    precision_omega,
    retrieval_scores,
    subtract,
    union_ranges,
)


def spans(*ranges, corpus="a"):
    return [Span(corpus, start, end) for start, end in ranges]


def scores(refs, retrieved, corpus="a"):
    got = retrieval_scores(refs, retrieved, corpus)
    return got.recall, got.precision, got.iou


# ---- range helpers -------------------------------------------------------------------------


def test_union_merges_overlapping_and_touching_ranges():
    assert union_ranges([(5, 8), (0, 3), (3, 4), (7, 10), (12, 12)]) == [(0, 4), (5, 10), (12, 12)]
    assert union_ranges([]) == []


def test_intersect_touching_gives_zero_length_and_apart_gives_none():
    assert intersect((0, 10), (5, 20)) == (5, 10)
    assert intersect((0, 10), (10, 20)) == (10, 10)
    assert intersect((0, 10), (11, 20)) is None


def test_subtract_cuts_holes_and_edges():
    assert subtract([(0, 10), (20, 30)], [(5, 25)]) == [(0, 5), (25, 30)]
    assert subtract([(0, 10)], [(3, 4), (3, 4)]) == [(0, 3), (4, 10)]
    assert subtract([(0, 10)], [(10, 10)]) == [(0, 10)]


# ---- retrieval metrics, hand computed ------------------------------------------------------


def test_partial_overlap():
    # I = 5 (10..15), |R| = 10, S = 15 -> recall .5, precision 1/3, IoU 5 / (15 + 5)
    assert scores([(10, 20)], spans((0, 15))) == pytest.approx((0.5, 1 / 3, 0.25))


def test_overlapping_chunks_count_twice_in_the_sum_but_once_in_the_intersection():
    # I = 10, S = 15 + 15 = 30, R \ I = 0
    assert scores([(10, 20)], spans((0, 15), (5, 20))) == pytest.approx((1.0, 1 / 3, 1 / 3))


def test_duplicate_chunks():
    assert scores([(10, 20)], spans((10, 20), (10, 20))) == pytest.approx((1.0, 0.5, 0.5))


def test_touching_chunk_intersects_with_zero_length():
    assert scores([(10, 20)], spans((20, 30), (0, 10))) == (0.0, 0.0, 0.0)


def test_two_references_with_a_gap():
    # I = 5 + 5, |R| = 20, S = 20 -> IoU 10 / (20 + 10)
    assert scores([(0, 10), (20, 30)], spans((5, 25))) == pytest.approx((0.5, 0.5, 1 / 3))


def test_chunks_of_another_corpus_only_add_to_the_retrieved_length():
    # The chunk of 'b' has the same offsets but is another text: S = 10 + 10, I = 10.
    retrieved = spans((10, 20), corpus="b") + spans((10, 20))
    assert scores([(10, 20)], retrieved) == pytest.approx((1.0, 0.5, 0.5))


def test_nothing_retrieved_scores_zero():
    assert scores([(10, 20)], []) == (0.0, 0.0, 0.0)
    assert scores([(10, 20)], spans((3, 3))) == (0.0, 0.0, 0.0)


def test_overlapping_references_are_merged():
    # R = 0..15 (not 10 + 10), fully retrieved by exactly itself.
    assert scores([(0, 10), (5, 15)], spans((0, 15))) == pytest.approx((1.0, 1.0, 1.0))


def test_no_references_is_an_error():
    with pytest.raises(ValueError, match="at least one reference"):
        retrieval_scores([], spans((0, 5)), "a")
    with pytest.raises(ValueError, match="empty"):
        precision_omega([(4, 4)], [(0, 5)])


# ---- precision-Omega, hand computed --------------------------------------------------------


def test_precision_omega_counts_every_chunk_touching_a_reference():
    chunks = [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
    got = precision_omega([(0, 10), (20, 30)], chunks)
    assert got.touching_chunks == 4  # (32, 40) starts after 30
    assert got.precision_omega == pytest.approx(20 / 32)


def test_precision_omega_touching_neighbours_widen_the_union():
    got = precision_omega([(10, 20)], [(0, 10), (10, 20), (20, 30), (30, 40)])
    assert (got.touching_chunks, got.precision_omega) == (3, pytest.approx(10 / 30))


def test_precision_omega_counts_reference_text_no_chunk_covers():
    # Covered 3..5 = 2; denominator = chunk 0..5 + uncovered 5..10 = 10.
    got = precision_omega([(3, 10)], [(0, 5)])
    assert got.precision_omega == pytest.approx(0.2)


def test_precision_omega_without_touching_chunks_is_zero():
    assert precision_omega([(10, 20)], [(30, 40)]) == precision_omega([(10, 20)], [])
    assert precision_omega([(10, 20)], []).touching_chunks == 0


def test_min_k_caps_at_twenty():
    assert (min_k(0), min_k(3), min_k(20), min_k(57)) == (0, 3, 20, 20)


def test_mean_percent():
    assert mean_percent([0.5, 1.0]) == 75.0
    assert mean_percent([]) == 0.0


# ---- token units ---------------------------------------------------------------------------


def test_token_ranges_map_characters_to_overlapping_tokens():
    to_tokens = TokenRanges([(0, 3), (4, 7), (8, 12)])
    assert to_tokens((0, 7)) == (0, 2)
    assert to_tokens((5, 9)) == (1, 3)
    assert to_tokens((3, 4)) == (1, 1)  # whitespace between tokens covers none
    assert to_tokens((12, 12)) == (3, 3)
    assert to_tokens((1, 2)) == (0, 1)  # inside one token


# ---- properties against a brute-force reference --------------------------------------------

ranges = st.tuples(st.integers(0, 60), st.integers(0, 25)).map(lambda t: (t[0], t[0] + t[1]))
nonempty = st.tuples(st.integers(0, 60), st.integers(1, 25)).map(lambda t: (t[0], t[0] + t[1]))


def positions(rs):
    return {p for start, end in rs for p in range(start, end)}


def brute_retrieval(refs, chunks):
    ref_set, chunk_set = positions(refs), positions(chunks)
    hit = len(ref_set & chunk_set)
    total = sum(end - start for start, end in chunks)
    precision = hit / total if total else 0.0
    return hit / len(ref_set), precision, hit / (total + len(ref_set - chunk_set))


def brute_omega(refs, chunks):
    touching = [c for c in chunks if any(c[0] <= r[1] and r[0] <= c[1] for r in refs)]
    if not touching:
        return 0.0
    ref_set, chunk_set = positions(refs), positions(touching)
    hit = ref_set & chunk_set
    return len(hit) / len(chunk_set | (ref_set - hit))


@settings(max_examples=300, deadline=None)
@given(st.lists(nonempty, min_size=1, max_size=4), st.lists(ranges, max_size=6))
def test_retrieval_scores_match_brute_force_and_are_bounded(refs, chunks):
    recall, precision, iou = scores(refs, spans(*chunks))
    assert (recall, precision, iou) == pytest.approx(brute_retrieval(refs, chunks))
    for value in (recall, precision, iou):
        assert 0.0 <= value <= 1.0
    assert iou <= precision + 1e-12 and iou <= recall + 1e-12


@settings(max_examples=300, deadline=None)
@given(st.lists(nonempty, min_size=1, max_size=4), st.lists(ranges, max_size=6))
def test_precision_omega_matches_brute_force(refs, chunks):
    got = precision_omega(refs, chunks).precision_omega
    assert got == pytest.approx(brute_omega(refs, chunks))
    assert 0.0 <= got <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.lists(nonempty, min_size=1, max_size=4))
def test_chunks_equal_to_the_references_score_full_precision_omega(refs):
    chunks = union_ranges(refs)  # chunking that cuts exactly the (merged) references
    assert precision_omega(refs, chunks).precision_omega == pytest.approx(1.0)
    recall, precision, iou = scores(refs, spans(*chunks))
    assert (recall, precision, iou) == pytest.approx((1.0, 1.0, 1.0))

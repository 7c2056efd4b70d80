"""The LM-free strategies of the token-pruning compressor, against hand-computed or brute-force answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression.llmlingua.coarse import allocate, output_order, rank_contexts, select_contexts
from compression.llmlingua.protect import MUST, PROTECTED, SCORED, find_numbers, unit_tiers
from compression.llmlingua.reassemble import merge_spans, reassemble
from compression.llmlingua.select import adjust, running_threshold, select_units
from compression.llmlingua.units import Unit, split_units


def _offsets_by_char(text: str) -> list[tuple[int, int]]:
    """A character-level 'tokenizer': every character is a token."""
    return [(i, i + 1) for i in range(len(text))]


def test_units_hand_computed():
    text = "Fuel Dilution, 2011\n\n- item one"
    units = split_units(text, _offsets_by_char(text))
    pieces = [text[u.start : u.end] for u in units]
    assert pieces == ["Fuel", " Dilution,", " 2011", "\n\n", "-", " item", " one"]
    assert [u.structural for u in units] == [False, False, False, True, True, False, False]
    assert [(u.tok_start, u.tok_end) for u in units] == [(u.start, u.end) for u in units]


def test_units_follow_token_boundaries_and_keep_code_lines():
    text = "ab cd\n```\nx = f(1)\n```"
    # One token straddles "ab cd" across the space, so that boundary is not allowed.
    offsets = [(0, 4), (4, 5)] + _offsets_by_char(text)[5:]
    pieces = [text[u.start : u.end] for u in split_units(text, offsets)]
    # Inside a code fence a unit is a whole line with its line break.
    assert pieces == ["ab cd", "\n", "```", "\nx = f(1)", "\n```"]
    assert "".join(pieces) == text


def test_tiers_from_detectors_forced_and_marked():
    text = "sales rose 25% in Tokyo\nby Sega"
    units = split_units(text, _offsets_by_char(text))
    tiers = unit_tiers(text, units, ["numbers", "structure"], forced=["Sega"], marked=[(0, 5)])
    by_piece = {text[u.start : u.end]: t for u, t in zip(units, tiers)}
    assert by_piece == {"sales": MUST, " rose": SCORED, " 25%": PROTECTED, " in": SCORED, " Tokyo": SCORED, "\n": PROTECTED, "by": SCORED, " Sega": MUST}
    assert find_numbers("v 3.14 and 10:30") == [(2, 6), (11, 16)]


def _brute_best_gap(sizes, target):
    return min(abs(sum(c) - target) for r in range(len(sizes) + 1) for c in itertools.combinations(sizes, r))


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 3), min_size=1, max_size=10), target=st.integers(0, 25), seed=st.integers(0, 99))
def test_select_units_within_one_token_of_brute_force(sizes, target, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=len(sizes))
    tiers = [SCORED] * len(sizes)
    keep = select_units(sizes, scores, tiers, target)
    total = int(np.asarray(sizes)[keep].sum())
    best = _brute_best_gap(sizes, target)
    # Greedy plus one swap: never more than one token further from the target than the optimum.
    assert abs(total - target) <= best + 1, (total, best)


def test_select_units_priorities():
    keep = select_units([1, 1, 1, 1], scores=[0.1, 0.9, 0.5, 0.2], tiers=[SCORED, SCORED, PROTECTED, MUST], target=3)
    assert keep.tolist() == [False, True, True, True]
    # Must-keep units stay even when they exceed the target.
    assert select_units([5, 1], [0.0, 9.0], [MUST, SCORED], 2).tolist() == [True, False]


def test_adjust_adds_to_best_context_and_removes_from_worst():
    keep = np.array([True, False, True, False])
    sizes, scores = np.array([1, 1, 1, 1]), np.array([0.5, 0.4, 0.9, 0.8])
    tiers, rank = np.array([SCORED] * 4), np.array([0, 0, 1, 1])
    assert adjust(keep, sizes, scores, tiers, rank, 1).tolist() == [True, True, True, False]
    assert adjust(keep, sizes, scores, tiers, rank, -1).tolist() == [True, False, False, False]


def test_running_threshold_is_the_quantile():
    seen = np.arange(100, dtype=float)
    assert running_threshold(seen, 0.25) == pytest.approx(74.25)
    assert running_threshold(seen, 1.0) == -np.inf


def test_coarse_ranking_selection_and_allocation():
    assert rank_contexts([2.0, 5.0, 1.0], higher_is_better=True) == [1, 0, 2]
    assert rank_contexts([2.0, 5.0, 1.0], higher_is_better=False) == [2, 0, 1]
    assert select_contexts([1, 0, 2], [100, 100, 100], 150) == [1, 0]
    shares = allocate([1, 0, 2], [100, 100, 100], 120, dynamic=0.5)
    assert sum(shares.values()) == 120
    assert shares[1] > shares[0] > shares[2]  # the keep-rate rises with rank
    capped = allocate([0, 1], [10, 100], 60, dynamic=1.0)
    assert capped == {0: 10, 1: 50}
    assert output_order(3, [2, 0, 1], "sort") == [2, 0, 1] and output_order(3, [2, 0, 1], "original") == [0, 1, 2]


def test_reassemble_merges_adjacent_units():
    units = [Unit(0, 2, 0, 1, False), Unit(2, 4, 1, 2, False), Unit(4, 6, 2, 3, False)]
    spans = merge_spans(0, units, [True, True, False])
    text, kept = reassemble(["abcdef", "xyz"], {0: spans, 1: merge_spans(1, [Unit(0, 3, 0, 1, False)], [True])}, [1, 0])
    assert text == "xyz\n\nabcd" and [(s.context, s.start, s.end) for s in kept] == [(1, 0, 3), (0, 0, 4)]

"""Stitching chunks contiguous in their source (compression/stitch.py): hand-computed spans, the map back
(checked against source coordinates by hypothesis), and the evidence prior per stitched piece (relevance.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression.base import CompressionResult, KeptSpan
from compression.relevance import choose_evidence
from compression.stitch import Segment, stitch
from compression.units import Unit

S = "one two three four five six"  # one:0-3 two:4-7 three:8-13 four:14-18 five:19-23 six:24-27


def hits(*spans):
    """(source, start, end) spans and their texts, cut from S (source "s") or "x" * n elsewhere."""
    texts = [S[a:b] if src == "s" else "x" * (b - a) for src, a, b in spans]
    return list(spans), texts


def test_touching_chunks_read_in_source_order_with_the_best_rank():
    spans, texts = hits(("s", 8, 18), ("s", 0, 8))  # "three four" ranked above "one two "
    joined = stitch(spans, texts, {"s": S})
    (only,) = joined.contexts
    assert only.text == "one two three four"
    assert only.segments == (Segment(1, 0, 8, 0), Segment(0, 0, 10, 8))
    assert only.members == (0, 1) and only.rank == 0


def test_whitespace_gap_is_filled_from_the_source_or_with_one_newline():
    source = "one.  \ntwo"
    spans, texts = [("s", 0, 4), ("s", 7, 10)], ["one.", "two"]
    known = stitch(spans, texts, {"s": source}).contexts[0]
    assert known.text == "one.  \ntwo" and known.segments == (Segment(0, 0, 4, 0), Segment(1, 0, 3, 7))
    unknown = stitch(spans, texts).contexts[0]
    assert unknown.text == "one.\ntwo" and unknown.segments == (Segment(0, 0, 4, 0), Segment(1, 0, 3, 5))


def test_gaps_with_text_or_wider_than_max_gap_are_not_stitched():
    spans, texts = [("s", 0, 2), ("s", 4, 6)], ["ab", "cd"]
    assert [c.text for c in stitch(spans, texts, {"s": "ab, cd"}).contexts] == ["ab", "cd"]  # "," is text
    assert [c.text for c in stitch(spans, texts, {"s": "ab  cd"}, max_gap=1).contexts] == ["ab", "cd"]
    assert [c.text for c in stitch(spans, texts, {"s": "ab  cd"}, max_gap=2).contexts] == ["ab  cd"]


def test_overlapping_windows_do_not_repeat_text():
    spans, texts = hits(("s", 0, 13), ("s", 8, 23), ("s", 4, 7))  # the third lies inside the first
    (only,) = stitch(spans, texts, {"s": S}).contexts
    assert only.text == "one two three four five"
    assert only.segments == (Segment(0, 0, 13, 0), Segment(1, 5, 15, 13))
    assert only.members == (0, 1, 2)


def test_different_sources_are_never_stitched_and_order_follows_the_best_member():
    spans, texts = hits(("t", 0, 3), ("s", 14, 27), ("s", 0, 3), ("s", 8, 13))
    joined = stitch(spans, texts, {"s": S, "t": "xxx"})
    assert joined.texts == ["xxx", "three four five six", "one"]  # " two " between "one" and "three" is text
    assert [c.members for c in joined.contexts] == [(0,), (1, 3), (2,)]
    assert [c.rank for c in joined.contexts] == [0, 1, 2]


def test_kept_spans_map_back_to_the_original_characters():
    spans, texts = hits(("s", 0, 13), ("s", 8, 23))
    joined = stitch(spans, texts, {"s": S})  # "one two three four five", the second from its 5th character on
    kept = (KeptSpan(0, 0, 3), KeptSpan(0, 10, 16), KeptSpan(0, 16, 18))
    mapped = joined.map_spans(kept)
    assert mapped == (KeptSpan(0, 0, 3), KeptSpan(0, 10, 13), KeptSpan(1, 5, 10))
    assert [texts[m.context][m.start : m.end] for m in mapped] == ["one", "ree", " four"]
    assert "".join(joined.texts[0][k.start : k.end] for k in kept) == "one" + "ree four"
    result = CompressionResult("one ree four", kept, 10, 3, "llmlingua")
    back = joined.map_result(result)
    assert back.kept == mapped and (back.text, back.original_tokens, back.compressed_tokens) == ("one ree four", 10, 3)


def test_filler_is_never_mapped_back():
    spans, texts = [("s", 0, 4), ("s", 7, 10)], ["one.", "two"]
    joined = stitch(spans, texts, {"s": "one.  \ntwo"})
    assert joined.map_spans([KeptSpan(0, 4, 7)]) == ()
    assert joined.map_spans([KeptSpan(0, 2, 9)]) == (KeptSpan(0, 2, 4), KeptSpan(1, 0, 2))


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="2 .* spans for 1 context texts"):
        stitch([("s", 0, 3), ("s", 3, 6)], ["abc"])
    with pytest.raises(ValueError, match=r"context 0: span \[0, 4\) does not fit its 3-character text"):
        stitch([("s", 0, 4)], ["abc"])
    with pytest.raises(ValueError, match="max_gap must be >= 0"):
        stitch([("s", 0, 3)], ["abc"], max_gap=-1)
    with pytest.raises(ValueError, match="stitched context 3, but there are 1"):
        stitch([("s", 0, 3)], ["abc"]).map_spans([KeptSpan(3, 0, 1)])


@st.composite
def retrieved(draw):
    """A source of letters and blanks, chunks of it (any overlap or gap, shuffled rank), kept spans."""
    source = draw(st.text(alphabet="ab \n", min_size=1, max_size=60))
    n = draw(st.integers(1, 6))
    spans = []
    for _ in range(n):
        a = draw(st.integers(0, len(source)))
        spans.append((draw(st.sampled_from("st")), a, draw(st.integers(a, len(source)))))
    return source, spans, draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 80), st.integers(0, 80)), max_size=6))


@settings(max_examples=200, deadline=None)
@given(retrieved())
def test_map_back_covers_exactly_the_kept_source_characters(case):
    source, spans, raw = case
    sources = {"s": source, "t": source}
    texts = [source[a:b] for _, a, b in spans]
    joined = stitch(spans, texts, sources)
    kept = [KeptSpan(c % len(joined.contexts), min(a, b), max(a, b)) for c, a, b in raw]
    # What the stitched contexts keep, in source coordinates, outside the filler.
    expected = set()
    for span in kept:
        stitched = joined.contexts[span.context]
        for seg in stitched.segments:
            src, start, _ = spans[seg.context]
            for pos in range(max(span.start, seg.at), min(span.end, seg.at + seg.end - seg.start)):
                expected.add((src, start + seg.start + pos - seg.at))
    got = []
    for m in joined.map_spans(kept):
        src, start, end = spans[m.context]
        assert 0 <= m.start < m.end <= end - start
        assert texts[m.context][m.start : m.end] == sources[src][start + m.start : start + m.end]
        got += [(src, start + p) for p in range(m.start, m.end)]
    assert len(got) == len(set(got)) and set(got) == expected  # every kept character once, nothing invented
    for stitched in joined.contexts:  # each stitched text is its source, read once from its first member on
        if not stitched.segments:  # an empty chunk
            assert stitched.text == ""
            continue
        first = spans[stitched.segments[0].context]
        assert stitched.text == sources[first[0]][first[1] : first[1] + len(stitched.text)]


def _word_units(text: str) -> list[Unit]:
    """One unit per word (with its leading blanks), one token per unit."""
    starts = [m.start() for m in re.finditer(r"\s*\S+", text)]
    return [Unit(a, b, k, k + 1, False) for k, (a, b) in enumerate(zip(starts, starts[1:] + [len(text)]))]


def test_a_stitched_sentence_takes_the_best_rank_of_the_chunks_it_overlaps():
    text = "Oil dilution. Oil dilution. Cats purr. Dogs bark. Birds sing."  # two equal sentences: BM25 and neighbour scores tie
    units = [_word_units(text)]
    first, second = [(0, 0, 1)], [(0, 2, 3)]

    def best(pieces):
        chosen = choose_evidence("oil dilution", [text], units, [0], budget=2, member_ranks=[pieces])
        return [(s.context, s.first, s.last) for s in chosen]

    assert best([(0, 13, 3), (13, 61, 0)]) == second
    assert best([(0, 4, 0), (4, 61, 3)]) == first  # the first sentence overlaps the rank-0 piece
    assert best([(0, 61, 2)]) == first  # one rank for all: the tie keeps text order


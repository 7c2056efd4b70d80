"""Sentence segmentation: exact spans on tricky text, checked against hand-computed offsets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression.segment import Sentence, split_sentences


def spans(text: str, **options) -> list[tuple[int, int, str]]:
    return [(s.start, s.end, s.text) for s in split_sentences(text, **options)]


def expected(text: str, *pieces: str) -> list[tuple[int, int, str]]:
    """Hand-listed sentences located left to right: the reference spans."""
    out, cursor = [], 0
    for piece in pieces:
        start = text.index(piece, cursor)
        out.append((start, start + len(piece), piece))
        cursor = start + len(piece)
    return out


def test_abbreviations_and_decimals_do_not_split():
    text = "Dr. Smith paid $3.50 for the U.S. edition, i.e. the cheap one.  Then he left! Did he? Yes."
    assert spans(text) == expected(
        text,
        "Dr. Smith paid $3.50 for the U.S. edition, i.e. the cheap one.",
        "Then he left!",
        "Did he?",
        "Yes.",
    )
    assert spans(text)[1] == (64, 77, "Then he left!")  # 62 chars, two spaces, 13 chars


def test_boundaries_only_at_whitespace():
    # wikitext escapes decimals as "3 @.@ 5" and spaces out punctuation; dotted names stay whole
    text = "Sales reached 3 @.@ 5 million . Media.Vision made it , see obj.attr for details . End"
    assert spans(text) == expected(
        text, "Sales reached 3 @.@ 5 million .", "Media.Vision made it , see obj.attr for details .", "End"
    )


def test_lists_each_item_keeps_its_marker():
    text = "Steps:\n1. Open it.\n2. Close it.\n- item a\n  - item b\n(iv) last one"
    assert spans(text) == expected(text, "Steps:", "1. Open it.", "2. Close it.", "- item a", "- item b", "(iv) last one")


def test_escaped_newlines_from_json_dumps_break_lines():
    text = r"Follow these steps:\n\n1. Log in.\n2. Click Save." + '", "role": "user"'
    got = spans(text)
    assert got == expected(text, "Follow these steps:", "1. Log in.", r'2. Click Save.", "role": "user"')
    assert [s[2] for s in spans(text, escaped_newlines=False)][0] == "Follow these steps:\\n\\n1."


def test_fenced_code_lines_stay_whole():
    text = "Run this:\n```python\nx = obj.attr. y\nprint(x.y)  # done. ok\n```\nDone. Ok."
    assert spans(text) == expected(
        text, "Run this:", "```python", "x = obj.attr. y", "print(x.y)  # done. ok", "```", "Done.", "Ok."
    )


def test_text_without_punctuation_is_cut_at_whitespace():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    got = spans(text, max_chars=20)
    assert got == expected(text, "alpha beta gamma", "delta epsilon zeta", "eta theta")
    assert all(end - start <= 20 for start, end, _ in got)
    assert spans("x" * 25, max_chars=10) == [(0, 10, "x" * 10), (10, 20, "x" * 10), (20, 25, "x" * 5)]


@pytest.mark.parametrize("text", ["", "   ", "\n\n \t\n"])
def test_empty_and_blank(text):
    assert split_sentences(text) == []


def test_single_sentence_without_final_punctuation():
    assert split_sentences("  just one line here ") == [Sentence(2, 20, "just one line here")]


def test_bad_max_chars():
    with pytest.raises(ValueError, match="max_chars"):
        split_sentences("a b", max_chars=0)


_ALPHABET = st.sampled_from(list("abc XYZ019.,!?;:-()@$\n\t\\\"'`") + ["Dr.", "e.g.", "3.14", "```", "\\n", "1. ", "é", "你"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_ALPHABET, max_size=60).map("".join), st.integers(min_value=3, max_value=80))
def test_spans_are_exact_ordered_disjoint_and_cover_all_text(text, max_chars):
    sentences = split_sentences(text, max_chars=max_chars)
    covered = [False] * len(text)
    previous_end = 0
    for sentence in sentences:
        assert text[sentence.start : sentence.end] == sentence.text
        assert sentence.text and sentence.text == sentence.text.strip()
        assert sentence.start >= previous_end
        assert sentence.end - sentence.start <= max_chars
        previous_end = sentence.end
        covered[sentence.start : sentence.end] = [True] * (sentence.end - sentence.start)
    # nothing but whitespace and line breaks (real or escaped) may fall outside every sentence
    leftover = "".join(ch if not hit else "\0" for ch, hit in zip(text, covered))
    assert re.sub(r"\\n|\s|\0", "", leftover) == ""

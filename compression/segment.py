"""Sentence segmentation with exact character spans.

pysbd (rule based, no model) proposes sentences; this module turns them into exact
``[start, end)`` ranges of the input and repairs what pysbd alone gets wrong for retrieval
contexts:

- a boundary is only accepted where whitespace (or the end of a line) follows it, so decimals,
  dotted names (``obj.attr``, ``Media.Vision``) and wikitext ``3 @.@ 5`` never split;
- every line is its own block (lists, chat turns, code), and with ``escaped_newlines`` a literal
  backslash-n (text dumped from JSON or a Python repr) counts as a line break too;
- lines inside fenced code blocks are kept whole, never split on their dots;
- a piece with no letter or digit-word (a bare list marker ``2.``, ``-``) joins the next piece;
- text without punctuation is cut at whitespace into pieces of at most ``max_chars``.

Invariant (tested): spans are ordered, disjoint, stripped, ``text[start:end] == sentence.text``,
and together they cover every non-whitespace character of the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_LINE_BREAK = re.compile(r"\n")
_LINE_BREAK_OR_ESCAPED = re.compile(r"\n|\\n")
_FENCE = re.compile(r"^\s*(```|~~~)")
# A list marker on its own: "2.", "a)", "(iv)", "-", "*", or any piece without a letter or digit.
_MARKER = re.compile(r"^(\(?(\d{1,3}|[a-zA-Z]|[ivxIVX]{1,4})[.)]|[^\w]+)$")
DEFAULT_MAX_CHARS = 500


@dataclass(frozen=True)
class Sentence:
    """A sentence of a text. Invariant: ``source[start:end] == text`` and ``text == text.strip()``."""

    start: int
    end: int
    text: str


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd  # imported lazily: building its rules costs a little at first use

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str, *, max_chars: int = DEFAULT_MAX_CHARS, escaped_newlines: bool = True) -> list[Sentence]:
    """The sentences of ``text`` with exact character spans, in order."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    spans: list[tuple[int, int]] = []
    in_code = False
    for start, end in _lines(text, escaped_newlines):
        line = text[start:end]
        is_fence = bool(_FENCE.match(line))
        if in_code or is_fence:
            pieces = [(start, end)]  # code lines stay whole: their dots are not sentence ends
        else:
            pieces = [(start + a, start + b) for a, b in _line_pieces(line)]
        if is_fence:
            in_code = not in_code
        for a, b in pieces:
            spans.extend(_cap_length(text, a, b, max_chars))
    return [Sentence(a, b, text[a:b]) for a, b in (_strip(text, a, b) for a, b in spans) if b > a]


def _lines(text: str, escaped_newlines: bool) -> list[tuple[int, int]]:
    """``[start, end)`` of every line, line breaks excluded."""
    pattern = _LINE_BREAK_OR_ESCAPED if escaped_newlines else _LINE_BREAK
    lines, cursor = [], 0
    for match in pattern.finditer(text):
        lines.append((cursor, match.start()))
        cursor = match.end()
    lines.append((cursor, len(text)))
    return lines


def _line_pieces(line: str) -> list[tuple[int, int]]:
    """Sentence ranges of one line: pysbd's proposals, kept only at whitespace, list markers merged."""
    if not line.strip():
        return []
    ends = [end for end in _pysbd_ends(line) if end >= len(line) or line[end].isspace()]
    bounds = sorted(set([0, *ends, len(line)]))
    pieces = [_strip(line, a, b) for a, b in zip(bounds, bounds[1:])]
    return _merge_markers(line, [p for p in pieces if p[1] > p[0]])


def _pysbd_ends(line: str) -> list[int]:
    """End offsets of pysbd's sentences, found in ``line`` left to right (pysbd may alter text)."""
    ends, cursor = [], 0
    for proposal in _segmenter().segment(line):
        core = proposal.strip()
        if not core:
            continue
        position = line.find(core, cursor)
        if position < 0:  # pysbd changed the text: give up proposing, the rest stays one piece
            break
        cursor = position + len(core)
        ends.append(cursor)
    return ends


def _merge_markers(line: str, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join bare list markers (``2.``, ``-``, ``(a)``) to the following piece (or the previous, if last)."""
    merged: list[tuple[int, int]] = []
    pending: int | None = None
    for a, b in pieces:
        start = a if pending is None else pending
        if _MARKER.match(line[a:b]):
            pending = start
            continue
        merged.append((start, b))
        pending = None
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], pieces[-1][1])
        else:
            merged.append((pending, pieces[-1][1]))
    return merged


def _cap_length(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut ``[start, end)`` at whitespace into pieces of at most ``max_chars`` (hard cut if no space)."""
    pieces = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        cut = cut if cut > start else start + max_chars
        pieces.append((start, cut))
        start = cut
        while start < end and text[start].isspace():
            start += 1
    pieces.append((start, end))
    return pieces


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` without leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end

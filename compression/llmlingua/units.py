"""Word grouping: split a context into prunable units that never cut a word in half.

A unit is a character range aligned to LM token boundaries: a word with its leading spaces,
a run of newlines, a list marker, or a whole line inside a fenced code block. Units are
kept or dropped whole, so "Fuel Dilution" can become "Fuel" or nothing, never "uedil".
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

# Candidate unit starts: newline runs, list markers at line start, words with leading blanks.
_PIECE = re.compile(r"\n[\s]*|(?<![^\n])[ \t]*(?:[-*+•]|\d{1,3}[.)])(?=[ \t])|[ \t]*\S+|[ \t]+")
_FENCE = re.compile(r"^```.*?(?:^```[^\n]*$|\Z)", re.M | re.S)
_LIST_MARKER = re.compile(r"[ \t]*(?:[-*+•]|\d{1,3}[.)])")


@dataclass(frozen=True)
class Unit:
    """Characters ``[start, end)`` of a context and its LM tokens ``[tok_start, tok_end)``."""

    start: int
    end: int
    tok_start: int
    tok_end: int
    structural: bool  # newline run or list marker: kept to keep the text readable

    @property
    def n_tokens(self) -> int:
        """LM tokens in this unit."""
        return self.tok_end - self.tok_start


def tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """LM token ids (no special tokens) and their character offsets into ``text``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def count_tokens(tokenizer: Any, text: str) -> int:
    """Number of LM tokens of ``text`` (no special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def _candidate_starts(text: str) -> list[int]:
    """Character positions where a unit may start (before token alignment)."""
    fenced = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
    starts = []
    for match in _PIECE.finditer(text):
        pos = match.start()
        inside = any(a < pos < b for a, b in fenced)
        # Inside a code block only line starts split units: code stays whole lines.
        if not inside or text[pos] == "\n":
            starts.append(pos)
    return starts


def split_units(text: str, offsets: list[tuple[int, int]]) -> list[Unit]:
    """Units of ``text`` whose boundaries are both word and token boundaries."""
    if not offsets:
        return []
    tok_starts = [s for s, _ in offsets]
    # A boundary is valid only where a token starts and no token straddles it.
    straddled: set[int] = set()
    for s, e in offsets:
        straddled.update(range(s + 1, e))
    bounds = sorted({b for b in _candidate_starts(text) if b not in straddled and b > 0} | {0})
    units = []
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else len(text)
        t0 = bisect.bisect_left(tok_starts, start)
        t1 = bisect.bisect_left(tok_starts, end) if i + 1 < len(bounds) else len(offsets)
        if t1 <= t0:  # a boundary falling inside a multi-byte character's tokens
            continue
        piece = text[start:end]
        structural = ("\n" in piece and not piece.strip()) or bool(_LIST_MARKER.fullmatch(piece))
        units.append(Unit(start, end, t0, t1, structural))
    return _merge_empty(units, len(text))


def _merge_empty(units: list[Unit], length: int) -> list[Unit]:
    """Make units contiguous: each unit ends where the next starts, the last at ``length``."""
    fixed = []
    for i, unit in enumerate(units):
        end = units[i + 1].start if i + 1 < len(units) else length
        fixed.append(Unit(unit.start, end, unit.tok_start, unit.tok_end, unit.structural))
    return fixed

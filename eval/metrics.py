"""Token-level retrieval metrics, exactly as the Chroma chunking benchmark defines them.

A range is a half-open ``(start, end)`` pair of character (or token) positions.

Definitions for one question (R = union of its reference ranges):
- I = union of (retrieved chunk ∩ reference) over retrieved chunks *of the question's corpus*;
  ranges that only touch intersect with length 0 (so they count as "touching" but add nothing).
- S = SUM of the lengths of all retrieved chunks, whatever their corpus (overlaps count twice).
- recall = |I| / |R|; precision = |I| / S; IoU = |I| / (S + |R \\ I|).
- precision-Ω ignores retrieval: with C = every chunk of the corpus that overlaps or touches a
  reference, PΩ = |I_C| / |∪C ∪ (R \\ I_C)|. The number of such chunks is the per-question k of
  the ``k = "min"`` mode (capped at 20).

Edge cases (documented, tested):
- A question without references cannot be scored: ``ValueError``.
- Nothing retrieved (or only zero-length chunks): recall, precision and IoU are 0.
- No chunk touches a reference: PΩ is 0 and the touching count is 0.
- Duplicate chunks count twice in S (that is what "sum" means) but once in I.
- Overlapping references are merged, so R is never double counted.
"""

from __future__ import annotations

import re
import string
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from eval.base import MAX_MIN_K, Span

Range = tuple[int, int]


@dataclass(frozen=True)
class RetrievalScores:
    """Recall, precision and IoU of retrieved ranges against references, and the retrieved length."""

    recall: float
    precision: float
    iou: float
    retrieved_length: int


@dataclass(frozen=True)
class OmegaScore:
    """Precision-Ω over every chunk that touches a reference, and how many such chunks there are."""

    precision_omega: float
    touching_chunks: int


def union_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint union; ranges that overlap or touch are merged."""
    merged: list[Range] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def total_length(ranges: Iterable[Range]) -> int:
    """Sum of lengths (no merging: overlapping ranges count twice)."""
    return sum(end - start for start, end in ranges)


def union_length(ranges: Iterable[Range]) -> int:
    """Length covered by ``ranges`` with overlaps counted once."""
    return total_length(union_ranges(ranges))


def intersect(a: Range, b: Range) -> Range | None:
    """The intersection, or ``None`` when the ranges are apart; touching gives a zero-length range."""
    start, end = max(a[0], b[0]), min(a[1], b[1])
    return (start, end) if start <= end else None


def subtract(ranges: Sequence[Range], cut: Sequence[Range]) -> list[Range]:
    """``ranges`` minus every range of ``cut`` (both treated as sets of positions)."""
    remaining = union_ranges(ranges)
    for cut_start, cut_end in union_ranges(cut):
        pieces: list[Range] = []
        for start, end in remaining:
            if end <= cut_start or start >= cut_end:
                pieces.append((start, end))
                continue
            if start < cut_start:
                pieces.append((start, cut_start))
            if end > cut_end:
                pieces.append((cut_end, end))
        remaining = pieces
    return remaining


def _check_references(references: Sequence[Range]) -> list[Range]:
    if not references:
        raise ValueError("a question needs at least one reference range to be scored")
    for start, end in references:
        if start < 0 or end < start:
            raise ValueError(f"invalid reference range ({start}, {end}): need 0 <= start <= end")
    merged = union_ranges(references)
    if total_length(merged) == 0:
        raise ValueError("the references of a question are all empty; nothing can be recalled")
    return merged


def _covered(chunks: Iterable[Range], references: Sequence[Range]) -> tuple[list[Range], list[Range]]:
    """(union of chunk ∩ reference, the chunks that overlap or touch any reference)."""
    pieces: list[Range] = []
    touching: list[Range] = []
    for chunk in chunks:
        hits = [piece for ref in references if (piece := intersect(chunk, ref)) is not None]
        if hits:
            pieces.extend(hits)
            touching.append(chunk)
    return union_ranges(pieces), touching


def retrieval_scores(references: Sequence[Range], retrieved: Sequence[Span], corpus_id: str) -> RetrievalScores:
    """Recall, precision and IoU of ``retrieved`` (all corpora) against one question's references."""
    refs = _check_references(references)
    same_corpus = [(span.start, span.end) for span in retrieved if span.corpus_id == corpus_id]
    covered, _ = _covered(same_corpus, refs)
    hit = total_length(covered)
    retrieved_length = total_length((span.start, span.end) for span in retrieved)
    ref_length = total_length(refs)
    precision = hit / retrieved_length if retrieved_length else 0.0
    denominator = retrieved_length + ref_length - hit  # S + |R \ I|, since I ⊆ R
    return RetrievalScores(hit / ref_length, precision, hit / denominator, retrieved_length)


def precision_omega(references: Sequence[Range], corpus_chunks: Iterable[Range]) -> OmegaScore:
    """PΩ over every chunk of the question's corpus, and how many chunks touch a reference."""
    refs = _check_references(references)
    covered, touching = _covered(corpus_chunks, refs)
    if not touching:
        return OmegaScore(0.0, 0)
    missed = subtract(refs, covered)
    denominator = union_length(list(touching) + missed)
    return OmegaScore(total_length(covered) / denominator if denominator else 0.0, len(touching))


def min_k(touching_chunks: int) -> int:
    """The per-question k of the ``k = "min"`` mode: chunks touching a reference, capped at 20."""
    return min(MAX_MIN_K, touching_chunks)


def mean_percent(values: Sequence[float]) -> float:
    """Plain mean × 100 (0 for no values)."""
    return 100.0 * sum(values) / len(values) if values else 0.0


def answer_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower case, punctuation and articles removed, split on whitespace."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 of two texts, in [0, 1].

    Edge cases: both empty after normalisation -> 1.0; exactly one empty, or no common token -> 0.0.
    Repeated tokens count as often as they occur in both (multiset intersection).
    """
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class TokenRanges:
    """Maps character ranges of one corpus to token ranges (for metrics counted in tokens).

    ``token_offsets`` are the tokens' sorted, non-overlapping ``(start, end)`` character offsets
    in the corpus. A span maps to the tokens whose characters overlap it, ``(first, last + 1)``;
    a span covering no token character (whitespace, zero length) maps to an empty range where it
    sits, so touching stays touching.
    """

    def __init__(self, token_offsets: Sequence[Range]) -> None:
        self._starts = [start for start, _ in token_offsets]
        self._ends = [end for _, end in token_offsets]

    def __call__(self, span: Range) -> Range:
        """The token range that covers character range ``span``."""
        first = bisect_right(self._ends, span[0])  # first token ending after the span starts
        if span[1] <= span[0]:
            return (first, first)
        last = bisect_left(self._starts, span[1])  # tokens before it start before the span ends
        return (first, max(first, last))

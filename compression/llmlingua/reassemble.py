"""Reassembly: kept units -> merged character spans and the compressed text."""

from __future__ import annotations

from collections.abc import Sequence

from compression.base import KeptSpan
from compression.llmlingua.units import Unit

CONTEXT_SEPARATOR = "\n\n"


def merge_spans(context: int, units: Sequence[Unit], keep: Sequence[bool]) -> list[KeptSpan]:
    """Adjacent kept units become one span."""
    spans: list[KeptSpan] = []
    for unit, kept in zip(units, keep):
        if not kept:
            continue
        if spans and spans[-1].end == unit.start:
            spans[-1] = KeptSpan(context, spans[-1].start, unit.end)
        else:
            spans.append(KeptSpan(context, unit.start, unit.end))
    return spans


def reassemble(contexts: Sequence[str], spans_by_context: dict[int, list[KeptSpan]], order: Sequence[int]) -> tuple[str, tuple[KeptSpan, ...]]:
    """The kept pieces in output order, contexts separated by a blank line, and their spans."""
    pieces, kept = [], []
    for i in order:
        spans = spans_by_context.get(i, [])
        if not spans:
            continue
        pieces.append("".join(contexts[i][s.start : s.end] for s in spans))
        kept.extend(spans)
    return CONTEXT_SEPARATOR.join(pieces), tuple(kept)

"""Two compressors in a row (extractive first, then token pruning) with provenance into the ORIGINAL.

The first stage keeps ``first_stage_factor`` times the final budget; its kept spans are re-joined
per original context (a space between non-adjacent spans) and handed to the second stage at the
rate that reaches the final budget. The second stage's spans, which point into those re-joined
texts, are mapped back piece by piece, so every ``KeptSpan`` indexes ``contexts`` as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compression.base import Budget, CompressionResult, Compressor, KeptSpan
from compression.extractive.units import count_contexts
from retrieval.base import TokenCounter

JOINER = " "


@dataclass(frozen=True)
class _Piece:
    """Characters ``[offset, offset + end - start)`` of a re-joined text are ``original[start:end]``."""

    offset: int
    start: int
    end: int


class ChainCompressor:
    """``second(first(contexts))`` under one budget, spans composed back to ``contexts``."""

    def __init__(
        self, first: Compressor, second: Compressor, counter: TokenCounter, *, first_stage_factor: float = 2.0, name: str | None = None
    ) -> None:
        if first_stage_factor < 1:
            raise ValueError(f"first_stage_factor must be >= 1 (the first stage keeps more than the end result), got {first_stage_factor}")
        self.first, self.second, self.counter = first, second, counter
        self.first_stage_factor = first_stage_factor
        self.name = name or f"{first.name}+{second.name}"

    def compress(self, contexts: Sequence[str], budget: Budget, question: str | None = None) -> CompressionResult:
        """The first compressor at ``first_stage_factor`` times the budget, then the second, spans mapped back."""
        original = count_contexts(contexts, self.counter)
        limit = budget.tokens_for(original)
        first_limit = min(original, round(limit * self.first_stage_factor))
        stage1 = self.first.compress(contexts, Budget(target_tokens=first_limit), question=question)
        texts, owners, pieces = rejoin(contexts, stage1.kept)
        stage1_tokens = count_contexts(texts, self.counter)
        if not texts or stage1_tokens <= limit:  # already within budget: nothing left to prune
            return _renamed(stage1, self.name, self.counter, original)
        rate = max(min(limit / stage1_tokens, 1.0), 1e-6)
        stage2 = self.second.compress(texts, Budget(rate=rate), question=question)
        kept = tuple(span for kept in stage2.kept for span in map_back(kept, owners, pieces))
        return CompressionResult(
            text=stage2.text,
            kept=kept,
            original_tokens=original,
            compressed_tokens=self.counter.count(stage2.text) if stage2.text else 0,
            method=self.name,
        )


def rejoin(contexts: Sequence[str], kept: Sequence[KeptSpan]) -> tuple[list[str], list[int], list[list[_Piece]]]:
    """Per original context with kept spans: its re-joined text, its index, and the piece map."""
    by_context: dict[int, list[KeptSpan]] = {}
    for span in kept:
        by_context.setdefault(span.context, []).append(span)
    texts, owners, pieces = [], [], []
    for context in sorted(by_context):
        parts: list[str] = []
        mapping: list[_Piece] = []
        length = 0
        for span in _merge_adjacent(sorted(by_context[context], key=lambda s: s.start)):
            if parts:
                parts.append(JOINER)
                length += len(JOINER)
            mapping.append(_Piece(length, span.start, span.end))
            parts.append(contexts[context][span.start : span.end])
            length += span.end - span.start
        texts.append("".join(parts))
        owners.append(context)
        pieces.append(mapping)
    return texts, owners, pieces


def map_back(span: KeptSpan, owners: Sequence[int], pieces: Sequence[Sequence[_Piece]]) -> list[KeptSpan]:
    """The original-context ranges covered by ``span`` of a re-joined text (joiners dropped)."""
    mapped = []
    for piece in pieces[span.context]:
        low = max(span.start, piece.offset)
        high = min(span.end, piece.offset + piece.end - piece.start)
        if high > low:
            shift = piece.start - piece.offset
            mapped.append(KeptSpan(owners[span.context], low + shift, high + shift))
    return mapped


def _merge_adjacent(spans: Sequence[KeptSpan]) -> list[KeptSpan]:
    merged: list[KeptSpan] = []
    for span in spans:
        if merged and span.start <= merged[-1].end:
            merged[-1] = KeptSpan(span.context, merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged


def _renamed(result: CompressionResult, name: str, counter: TokenCounter, original: int) -> CompressionResult:
    return CompressionResult(result.text, result.kept, original, counter.count(result.text) if result.text else 0, name)


def extractive_then_llmlingua(
    *, first_stage_factor: float = 2.0, extractive: dict[str, Any] | None = None, llmlingua: dict[str, Any] | None = None
) -> ChainCompressor:
    """The registered "extractive+llmlingua": sentences first, then token pruning of what is left."""
    from compression.extractive.compressor import ExtractiveCompressor
    from compression.registry import make_compressor

    first = ExtractiveCompressor(**(extractive or {}))
    second = make_compressor("llmlingua", **(llmlingua or {}))
    return ChainCompressor(first, second, first.counter, first_stage_factor=first_stage_factor, name="extractive+llmlingua")

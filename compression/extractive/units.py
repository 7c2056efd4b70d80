"""Sentences of several contexts as selectable units, and turning a selection into a result.

Shared by every sentence-level compressor (the extractive one and its random/lead baselines) so
they differ only in how they score sentences, never in segmentation, budgeting or provenance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from compression.base import CompressionResult, KeptSpan
from compression.segment import DEFAULT_MAX_CHARS, split_sentences
from retrieval.base import TokenCounter

SENTENCE_SEPARATOR = " "
CONTEXT_SEPARATOR = "\n\n"
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Unit:
    """One sentence of context ``context``; ``passage`` numbers its blank-line block across all contexts."""

    context: int
    start: int
    end: int
    text: str
    passage: int
    n_tokens: int


def segment_contexts(
    contexts: Sequence[str], counter: TokenCounter, *, max_chars: int = DEFAULT_MAX_CHARS
) -> tuple[list[Unit], list[str]]:
    """All sentences of all contexts in order, and the text of every passage they belong to."""
    check_contexts(contexts)
    units: list[Unit] = []
    passages: list[str] = []
    for index, context in enumerate(contexts):
        for block_start, block_end in _blocks(context):
            block = context[block_start:block_end]
            sentences = split_sentences(block, max_chars=max_chars)
            if not sentences:
                continue
            passages.append(block)
            for sentence in sentences:
                units.append(
                    Unit(
                        context=index,
                        start=block_start + sentence.start,
                        end=block_start + sentence.end,
                        text=sentence.text,
                        passage=len(passages) - 1,
                        n_tokens=counter.count(sentence.text),
                    )
                )
    return units, passages


def check_contexts(contexts: Sequence[str]) -> None:
    """A list of str, or a ValueError naming the problem and the fix."""
    if isinstance(contexts, str):
        raise ValueError("contexts must be a list of texts, got one str; wrap it: compress([text], ...)")
    for index, context in enumerate(contexts):
        if not isinstance(context, str):
            raise ValueError(f"context {index} is a {type(context).__name__}, not a str; pass the texts themselves")


def _blocks(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of the blank-line-separated blocks of ``text``."""
    blocks, cursor = [], 0
    for match in _BLANK_LINE.finditer(text):
        blocks.append((cursor, match.start()))
        cursor = match.end()
    blocks.append((cursor, len(text)))
    return blocks


def render(units: Sequence[Unit], chosen: Sequence[int]) -> str:
    """Chosen sentences in original order: a space within a context, a blank line between contexts."""
    parts: list[str] = []
    previous_context: int | None = None
    for index in sorted(chosen):
        unit = units[index]
        if previous_context is not None:
            parts.append(SENTENCE_SEPARATOR if unit.context == previous_context else CONTEXT_SEPARATOR)
        parts.append(unit.text)
        previous_context = unit.context
    return "".join(parts)


def fit_to_budget(
    units: Sequence[Unit], chosen: list[int], ranking: Sequence[int], limit: int, counter: TokenCounter, min_keep: int
) -> list[int]:
    """Drop the lowest-ranked chosen sentences until the rendered text counts ``<= limit`` tokens.

    Per-sentence counts can differ from the count of the joined text (a tokenizer may merge across
    the separator), so the joined text is the one that is checked.
    """
    position = {index: rank for rank, index in enumerate(ranking)}
    chosen = sorted(chosen, key=position.__getitem__)
    while len(chosen) > min_keep and counter.count(render(units, chosen)) > limit:
        chosen.pop()
    return sorted(chosen)


def assemble(
    units: Sequence[Unit], chosen: Sequence[int], counter: TokenCounter, original_tokens: int, method: str
) -> CompressionResult:
    """The result for the chosen sentences: text, exact spans into the contexts, token counts."""
    ordered = sorted(chosen)
    text = render(units, ordered)
    kept = tuple(KeptSpan(units[i].context, units[i].start, units[i].end) for i in ordered)
    return CompressionResult(
        text=text,
        kept=kept,
        original_tokens=original_tokens,
        compressed_tokens=counter.count(text) if text else 0,
        method=method,
    )


def count_contexts(contexts: Sequence[str], counter: TokenCounter) -> int:
    """Input tokens: the sum over contexts (each counted alone, as the reader receives them)."""
    check_contexts(contexts)
    return sum(counter.count(context) for context in contexts if context)

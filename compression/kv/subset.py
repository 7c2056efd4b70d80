"""Which cached tokens compressed context keeps: a compressor's character spans -> token positions.

A compressor keeps character spans of each retrieved chunk. The chunk's cache (computed once,
question-independent) already holds a key/value for every token, so the compressed context needs
no prefill: take the entries of the tokens inside the kept spans, re-rotate each key from its
cached position to its new, contiguous one (R(q) = R(q - p) R(p), a per-token delta), and prefill
only the question. The entries were computed attending to the dropped tokens too, which is
information the LM would otherwise lose; recovery (``blend``) can recompute some of them against
the compressed context itself, and r = 1 equals a full prefill of the compressed prompt.
The positions from here go to ``KVReuseEngine.generate(..., keep=)``, which lays the kept entries
down (``assemble``) and reads ``Prompt.keep(positions)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from compression.kv.base import Prompt
from compression.kv.prompt import document_block

OPENING = document_block("").index("\n") + 1  # "Document:\n", before the chunk's text
Spans = Sequence[tuple[int, int]]


def block_offsets(tokenizer: Any, text: str) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
    """Token ids of the chunk's document block (as the prompt tokenises it) and their character offsets."""
    encoded = tokenizer(document_block(text), add_special_tokens=False, return_offsets_mapping=True)
    return tuple(encoded["input_ids"]), [tuple(pair) for pair in encoded["offset_mapping"]]


def kept_positions(offsets: Sequence[tuple[int, int]], text_length: int, kept: Spans) -> list[int]:
    """Indices of block tokens to keep: the block's framing, and every token overlapping a kept span.

    Offsets are into ``document_block(text)``; kept spans are into ``text``. A chunk that keeps
    nothing contributes no token (not even its framing).
    """
    if not kept:
        return []
    spans = [(start + OPENING, end + OPENING) for start, end in kept if end > start]
    positions = []
    for index, (start, end) in enumerate(offsets):
        framing = end <= OPENING or start >= OPENING + text_length
        if framing or any(start < s_end and s_start < end for s_start, s_end in spans):
            positions.append(index)
    return positions


def positions_for(tokenizer: Any, prompt: Prompt, texts: Sequence[str], kept: Sequence[Spans]) -> list[list[int]]:
    """Kept block-token indices of every chunk of ``prompt`` (built from ``texts``)."""
    positions = []
    for text, ids, spans in zip(texts, prompt.chunk_ids, kept):
        block_ids, offsets = block_offsets(tokenizer, text)
        if block_ids != tuple(ids):
            raise ValueError("the tokenizer splits a document block differently with offsets; use a fast tokenizer")
        positions.append(kept_positions(offsets, len(text), spans))
    return positions


def kept_tokens(tokenizer: Any, prompt: Prompt, texts: Sequence[str], kept: Iterable[tuple[int, int, int]]) -> list[list[int]] | None:
    """Token positions per chunk for a compressor's kept ``(chunk, start, end)`` spans, for
    ``KVReuseEngine.generate(keep=)``; None when every chunk is kept whole (nothing to select)."""
    spans: list[list[tuple[int, int]]] = [[] for _ in texts]
    for chunk, start, end in kept:
        spans[chunk].append((start, end))
    if all(sorted(chunk) == [(0, len(text))] for chunk, text in zip(spans, texts)):
        return None
    return positions_for(tokenizer, prompt, texts, spans)

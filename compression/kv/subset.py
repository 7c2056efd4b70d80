"""Reusing chunk caches for compressed context: keep only the kept tokens' KV, re-rotated.

A compressor keeps character spans of each retrieved chunk. The chunk's cache (computed once,
question-independent) already holds a key/value for every token, so the compressed context needs
no prefill: take the entries of the tokens inside the kept spans, re-rotate each key from its
cached position to its new, contiguous one (R(q) = R(q - p) R(p), a per-token delta), and prefill
only the question. The entries were computed attending to the dropped tokens too, which is
information the LM would otherwise lose; recovery (``blend``) can recompute some of them against
the compressed context itself, and r = 1 equals a full prefill of the compressed prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

import time

import torch

from compression.kv.assemble import cache_from_tensors, chunk_cache
from compression.kv.base import ChunkKV, Generation, PrefixKV, Prompt
from compression.kv.generate import full_prefill, greedy_continue, recompute
from compression.kv.keys import tokenizer_signature
from compression.kv.prompt import document_block
from compression.kv.rope import inv_freq

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
    opening = OPENING
    spans = [(start + opening, end + opening) for start, end in kept if end > start]
    positions = []
    for index, (start, end) in enumerate(offsets):
        framing = end <= opening or start >= opening + text_length
        if framing or any(start < s_end and s_start < end for s_start, s_end in spans):
            positions.append(index)
    return positions


def subset_prompt(prompt: Prompt, positions: Sequence[Sequence[int]]) -> Prompt:
    """The prompt made of the kept tokens only (what the LM actually reads)."""
    chunks = tuple(tuple(ids[i] for i in keep) for ids, keep in zip(prompt.chunk_ids, positions))
    return Prompt(prompt.prefix_ids, tuple(c for c in chunks if c), prompt.suffix_ids)


def rerotate_each(keys: torch.Tensor, deltas: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """Keys ``[..., T, head_dim]`` each rotated by its own position delta (rotate-half layout)."""
    angles = deltas.to(torch.float64)[:, None] * frequencies[None, :]  # [T, head_dim / 2], exact before the cast
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().to(keys.dtype), emb.sin().to(keys.dtype)
    half = keys.shape[-1] // 2
    rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
    return keys * cos + rotated_half * sin


@torch.inference_mode()
def assemble_subset(model: Any, prefix: PrefixKV, chunks: Sequence[ChunkKV], positions: Sequence[Sequence[int]]) -> Any:
    """Prefix + the kept entries of each chunk, laid end to end at contiguous positions."""
    frequencies = inv_freq(model)
    n_layers, n_heads, position, head_dim = prefix.keys.shape
    total = position + sum(len(keep) for keep in positions)
    keys = prefix.keys.new_empty((n_layers, n_heads, total, head_dim))
    values = torch.empty_like(keys)
    keys[:, :, :position], values[:, :, :position] = prefix.keys, prefix.values
    for chunk, keep in zip(chunks, positions):
        if not keep:
            continue
        index = torch.tensor(list(keep))
        end = position + len(keep)
        deltas = torch.arange(position, end) - (chunk.key.start + index)
        keys[:, :, position:end] = rerotate_each(chunk.keys[:, :, index].to(keys.dtype), deltas, frequencies)
        values[:, :, position:end] = chunk.values[:, :, index]
        position = end
    return cache_from_tensors(keys, values)


def positions_for(tokenizer: Any, prompt: Prompt, texts: Sequence[str], kept: Sequence[Spans]) -> list[list[int]]:
    """Kept block-token indices of every chunk of ``prompt`` (built from ``texts``)."""
    positions = []
    for text, ids, spans in zip(texts, prompt.chunk_ids, kept):
        block_ids, offsets = block_offsets(tokenizer, text)
        if block_ids != tuple(ids):
            raise ValueError("the tokenizer splits a document block differently with offsets; use a fast tokenizer")
        positions.append(kept_positions(offsets, len(text), spans))
    return positions


@torch.inference_mode()
def generate_subset(engine: Any, texts: Sequence[str], kept: Sequence[Spans], question: str, recovery: Any,
                    max_new_tokens: int) -> Generation:
    """Answer from the kept spans of ``texts`` (``kept[i]``: character spans of ``texts[i]``).

    ``recovery=None`` prefills the compressed prompt in full (the baseline); otherwise the kept
    tokens' KV comes from the chunk caches in ``engine.store`` and ``recovery`` picks what to recompute.
    """
    lm = engine.lm
    prompt = engine.prompt(texts, question)
    positions = positions_for(lm.tokenizer, prompt, texts, kept)
    small = subset_prompt(prompt, positions)
    used = [(ids, keep) for ids, keep in zip(prompt.chunk_ids, positions) if keep]
    signature = tokenizer_signature(lm.tokenizer)
    start = time.perf_counter()
    if recovery is None:
        cache, logits = full_prefill(lm.model, small)
        prefilled, mode = len(small.all_ids), "full"
    else:
        prefix = engine.prefix(prompt)
        chunks = [chunk_cache(lm, prefix, ids, engine.store, signature)[0] for ids, _ in used]
        cache = assemble_subset(lm.model, prefix, chunks, [keep for _, keep in used])
        selected = recovery.select(lm.model, cache, small)
        logits = recompute(lm.model, cache, small, selected)
        prefilled, mode = len(selected) + len(small.suffix_ids), recovery.name
    ttft = time.perf_counter() - start
    tokens = greedy_continue(lm.model, cache, logits, max_new_tokens, engine.eos_ids)
    text = lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Generation(text, tuple(tokens), logits, ttft, prefilled, len(small.all_ids) - prefilled, mode)

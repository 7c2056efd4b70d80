"""Prepacked chunk-cache precompute: many chunks of different lengths prefilled in one pass.

A chunk's cache is defined as its KV computed right after the shared prefix, at positions
``P..P+n-1`` (``assemble.encode_chunk``). Computing chunks one at a time streams every weight
once per chunk; padded batches pay for the padding. Here chunks are bin-packed
(``retrieval.packing.pack_rows``) into rows of up to ``row_tokens`` tokens, each row laid out as
``prefix + chunk_1 + chunk_2 + ...`` with every chunk's positions restarting at ``P``, and
prefilled once with attention confined to ``prefix + own past`` (causal within each chunk);
the row's KV is then split back into per-chunk caches, stored exactly as single ones.

The prefix is run again inside every row rather than passed as a past cache: on SDPA models
the row then goes through ``compression.block_attention`` (each chunk attends over
``prefix + chunk`` with the causal kernel, ``sum((P+n)^2)`` work), whereas a past prefix would
need an explicit ``[row, P + row]`` mask (``row^2`` work). The prefix is a few dozen tokens, so
repeating it per row costs ~1-2% of a 2,048-token row. Other models get the explicit mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from compression.block_attention import block_mask, blocks_attention, supported
from compression.hf_cache import returned_cache
from compression.kv.assemble import cache_tensors, encode_chunk, stored_cache
from compression.kv.base import ChunkKV, KVStore, PrefixKV
from compression.kv.keys import key_digest, make_key
from retrieval.packing import pack_rows

DEFAULT_ROW_TOKENS = 2048


@torch.inference_mode()
def encode_row(model: Any, prefix: PrefixKV, chunks: Sequence[Sequence[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each chunk's (keys, values) after ``prefix``, all computed in one forward pass."""
    if not chunks or not all(chunks):
        raise ValueError("cannot cache an empty chunk")
    n_prefix = len(prefix.token_ids)
    ids = [*prefix.token_ids, *(t for chunk in chunks for t in chunk)]
    positions = [*range(n_prefix), *(n_prefix + k for chunk in chunks for k in range(len(chunk)))]
    bounds, start = [], n_prefix
    for chunk in chunks:
        bounds.append((start, start + len(chunk)))
        start += len(chunk)
    inputs = dict(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), use_cache=True, logits_to_keep=1)
    if supported(model):
        with blocks_attention(model):
            out = model(**inputs, block_bounds=bounds)
    else:
        out = model(**inputs, attention_mask=block_mask(n_prefix, chunks).to(model.dtype))
    keys, values = cache_tensors(returned_cache(out))
    # Copies: a view would keep the whole row's KV alive for as long as one chunk is cached.
    return [(keys[:, :, s:e].clone(), values[:, :, s:e].clone()) for s, e in bounds]


def encode_chunks(model: Any, prefix: PrefixKV, chunks: Sequence[Sequence[int]],
                  row_tokens: int | None = DEFAULT_ROW_TOKENS) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(index, keys, values)`` for every chunk, a packed row at a time (one chunk at a time
    through ``encode_chunk`` when ``row_tokens`` is None or 0), longest rows first."""
    if not row_tokens:
        for index, chunk in enumerate(chunks):
            yield (index, *encode_chunk(model, prefix, chunk))
        return
    for row in pack_rows([len(chunk) for chunk in chunks], row_tokens):
        for index, (keys, values) in zip(row, encode_row(model, prefix, [chunks[i] for i in row])):
            yield index, keys, values


def chunk_caches(lm: Any, prefix: PrefixKV, chunks: Sequence[Sequence[int]], store: KVStore, tokenizer_sig: str,
                 row_tokens: int | None = DEFAULT_ROW_TOKENS) -> Iterator[tuple[int, ChunkKV, bool]]:
    """``(index, cache, reused)`` for every chunk: those in ``store`` first (reused True), then the
    missing ones computed in packed rows (``encode_chunks``) and stored as each row finishes, so
    precomputing a whole index never holds more than one row of caches. Repeated chunks are
    computed once. The packed ``chunk_cache``."""
    missing: dict[str, list[int]] = {}
    keys = [make_key(lm, prefix, ids, tokenizer_sig) for ids in chunks]
    for index, key in enumerate(keys):
        found = stored_cache(store, key)
        if found is None:
            missing.setdefault(key_digest(key), []).append(index)
        else:
            yield index, found, True
    todo = [indices[0] for indices in missing.values()]
    for position, tensor_keys, tensor_values in encode_chunks(lm.model, prefix, [chunks[i] for i in todo], row_tokens):
        key = keys[todo[position]]
        kv = ChunkKV(key=key, keys=tensor_keys, values=tensor_values)
        store.put(kv)
        for index in missing[key_digest(key)]:
            yield index, kv, False

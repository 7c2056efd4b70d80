"""Computing prefix and chunk caches, and assembling them into one contiguous model cache."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch

from compression.hf_cache import cache_arg, returned_cache
from compression.kv.base import CacheCorrupted, CacheKey, CacheMismatch, ChunkKV, KVStore, PrefixKV
from compression.kv.keys import make_key
from compression.kv.rope import inv_freq, rerotate

log = logging.getLogger(__name__)


def cache_from_tensors(keys: torch.Tensor, values: torch.Tensor) -> Any:
    """A transformers DynamicCache over ``[layers, kv_heads, T, head_dim]`` keys and values (no copy).

    The layers are filled directly: ``DynamicCache(ddp_cache_data=...)`` would concatenate every
    layer onto an empty tensor, one more full copy of the cache per question.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    for index in range(keys.shape[0]):
        layer_keys, layer_values = keys[index].unsqueeze(0), values[index].unsqueeze(0)
        if index >= len(cache.layers):
            cache.layers.append(cache.layer_class_to_replicate())
        layer = cache.layers[index]
        layer.lazy_initialization(layer_keys, layer_values)
        layer.keys, layer.values = layer_keys, layer_values
    return cache


def cache_tensors(cache: Any, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of a DynamicCache from token ``start`` on, batch dropped."""
    keys = torch.stack([layer.keys[0, :, start:] for layer in cache.layers])
    values = torch.stack([layer.values[0, :, start:] for layer in cache.layers])
    return keys, values


@torch.inference_mode()
def encode_prefix(model: Any, token_ids: Sequence[int], model_id: str = "") -> PrefixKV:
    """The shared prefix's KV at positions 0..P-1 (computed once per prompt layout)."""
    if not token_ids:
        raise ValueError("the shared prefix is empty; the chat template's system turn should be in it")
    ids = torch.tensor([list(token_ids)])
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    keys, values = cache_tensors(returned_cache(out))
    digest = hashlib.sha256(f"{model_id}|{list(token_ids)}".encode()).hexdigest()
    return PrefixKV(token_ids=tuple(token_ids), keys=keys, values=values, digest=digest)


@torch.inference_mode()
def encode_chunk(model: Any, prefix: PrefixKV, token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's KV computed right after the prefix (so its first token is no false attention sink)."""
    if not token_ids:
        raise ValueError("cannot cache an empty chunk")
    cache = cache_from_tensors(prefix.keys, prefix.values)
    out = model(input_ids=torch.tensor([list(token_ids)]), use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
    return cache_tensors(returned_cache(out), start=len(prefix.token_ids))


def stored_cache(store: KVStore, key: CacheKey) -> ChunkKV | None:
    """The cache stored under ``key``; None when absent, corrupted or computed under other settings
    (logged: the caller recomputes and replaces it)."""
    try:
        return store.get(key)
    except (CacheCorrupted, CacheMismatch) as exc:
        log.warning("%s", exc)
        return None


def chunk_cache(lm: Any, prefix: PrefixKV, token_ids: Sequence[int], store: KVStore, tokenizer_sig: str) -> tuple[ChunkKV, bool]:
    """The chunk's cache from ``store`` (True) or freshly computed and stored (False).

    A stored cache that is corrupted or was computed under other settings is logged and replaced.
    """
    key = make_key(lm, prefix, token_ids, tokenizer_sig)
    found = stored_cache(store, key)
    if found is not None:
        return found, True
    keys, values = encode_chunk(lm.model, prefix, token_ids)
    kv = ChunkKV(key=key, keys=keys, values=values)
    store.put(kv)
    return kv, False


@torch.inference_mode()
def assemble(model: Any, prefix: PrefixKV, chunks: Sequence[ChunkKV], keep: Sequence[Sequence[int]] | None = None) -> Any:
    """Prefix + chunks laid end to end, each chunk's keys re-rotated to its new start position.

    ``keep[i]``: indices of the tokens of ``chunks[i]`` to lay down (all when ``keep`` is None);
    each kept key moves from its cached position to its new contiguous one.
    """
    frequencies = inv_freq(model)
    n_layers, n_heads, position, head_dim = prefix.keys.shape
    total = position + sum(chunk.n_tokens if keep is None else len(keep[i]) for i, chunk in enumerate(chunks))
    keys = prefix.keys.new_empty((n_layers, n_heads, total, head_dim))
    values = torch.empty_like(keys)
    keys[:, :, :position], values[:, :, :position] = prefix.keys, prefix.values
    delta: int | torch.Tensor
    for i, chunk in enumerate(chunks):  # written in place: one copy of every cached tensor, no concatenation
        chunk_keys, chunk_values, delta = chunk.keys, chunk.values, position - chunk.key.start
        if keep is not None:
            index = torch.tensor(list(keep[i]), dtype=torch.long)
            chunk_keys, chunk_values = chunk_keys[:, :, index], chunk_values[:, :, index]
            delta = torch.arange(position, position + len(index)) - (chunk.key.start + index)
        end = position + chunk_keys.shape[2]
        keys[:, :, position:end] = rerotate(chunk_keys.to(keys.dtype), delta, frequencies)
        values[:, :, position:end] = chunk_values
        position = end
    return cache_from_tensors(keys, values)

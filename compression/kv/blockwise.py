"""Running scattered tokens through the model in place, in causal blocks (the fast exact recompute).

The dense recompute of a scattered subset of the context (plus the question), ``generate.recompute_dense``,
appends the fresh KV after the context and masks the stale entries with one dense ``[queries, context + queries]``
mask: every query pays attention over the whole context, and the CPU flash kernel cannot skip
masked blocks. Here each layer writes a token's fresh KV straight into its own slot, so a query
at position p simply attends to keys 0..p: unselected tokens' (stale) entries and the selected
tokens' fresh ones, the same set as the dense path. Projections and MLP run over all the tokens at once
(each weight matrix is read once per layer: running the layer block by block was slower, being
memory-bound), while attention is split into blocks of consecutive selected positions, each
reading keys only up to its last position (the causal bound), which roughly halves attention for
tokens spread over the context. Llama, Qwen2 and Mistral layers (``SUPPORTED``: the same layer shape, Qwen2 with q/k/v biases); other models use the dense path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_BLOCK = 64
SUPPORTED = ("llama", "qwen2", "mistral")  # decoder layers whose forward ``_layer`` reproduces (checked against the model's own in tests)


def supported(model: Any) -> bool:
    """Whether the in-place blockwise recompute handles this model type (else the dense path runs)."""
    return getattr(model.config, "model_type", None) in SUPPORTED


def grow_cache(cache: Any, length: int) -> None:
    """Give every cache layer room for ``length`` positions (new slots are zero until written)."""
    for layer in cache.layers:
        extra = length - layer.keys.shape[2]
        if extra > 0:
            pad = layer.keys.new_zeros((*layer.keys.shape[:2], extra, layer.keys.shape[3]))
            layer.keys, layer.values = torch.cat([layer.keys, pad], dim=2), torch.cat([layer.values, pad], dim=2)


def causal_blocks(positions: torch.Tensor, size: int) -> list[tuple[slice, int, torch.Tensor]]:
    """Runs of ``size`` consecutive queries: (their slice, causal bound = last position + 1, boolean
    ``[1, 1, n, bound]`` mask letting each see keys at positions <= its own)."""
    parts = []
    for start in range(0, len(positions), size):
        part = slice(start, min(start + size, len(positions)))
        bound = int(positions[part.stop - 1]) + 1
        parts.append((part, bound, (torch.arange(bound)[None, :] <= positions[part, None])[None, None]))
    return parts


def _layer(layer: Any, layer_cache: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           slots: torch.Tensor, parts: list) -> torch.Tensor:
    """A Llama decoder layer over all the tokens at once for the projections and MLP (the weights
    are streamed once), with attention split into causal blocks."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attention, n = layer.self_attn, hidden.shape[1]
    normed = layer.input_layernorm(hidden)
    shape = (1, n, -1, attention.head_dim)
    query = attention.q_proj(normed).view(shape).transpose(1, 2)
    key = attention.k_proj(normed).view(shape).transpose(1, 2)
    value = attention.v_proj(normed).view(shape).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    layer_cache.keys[:, :, slots] = key.to(layer_cache.keys.dtype)
    layer_cache.values[:, :, slots] = value.to(layer_cache.values.dtype)
    outputs = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, part], layer_cache.keys[:, :, :bound], layer_cache.values[:, :, :bound], attn_mask=mask,
        scale=attention.scaling, enable_gqa=True) for part, bound, mask in parts]
    attended = torch.cat(outputs, dim=2).transpose(1, 2).reshape(1, n, -1)
    hidden = hidden + attention.o_proj(attended)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


@torch.inference_mode()
def run_in_place(model: Any, cache: Any, token_ids: Sequence[int], positions: Sequence[int], layers: range | None = None,
                 hidden: torch.Tensor | None = None, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Run tokens ``token_ids`` at ascending ``positions`` through ``layers`` (all by default).

    Each token attends to the cache's entries at positions <= its own, with the fresh KV of the
    tokens run here written into their slots as each layer goes (the cache must already cover
    every position; see ``grow_cache``). ``hidden``: the tokens' input hidden states when
    ``layers`` does not start at 0. Returns their hidden states after the last of ``layers``.
    """
    if not supported(model):
        raise ValueError(f"blockwise recompute handles model types {SUPPORTED}, not {model.config.model_type!r}; use recompute_dense")
    inner = model.model
    layers = range(len(inner.layers)) if layers is None else layers
    where = torch.as_tensor(list(positions), dtype=torch.long)
    if len(where) > 1 and not bool((where[1:] > where[:-1]).all()):
        raise ValueError("run_in_place needs strictly ascending positions; sort the selected tokens first")
    if hidden is None:
        hidden = inner.embed_tokens(torch.tensor([list(token_ids)]))
    cos, sin = inner.rotary_emb(hidden, position_ids=where[None])
    parts = causal_blocks(where, block)
    for index in layers:
        hidden = _layer(inner.layers[index], cache.layers[index], hidden, cos, sin, where, parts)
    return hidden

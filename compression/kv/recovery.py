"""Recovering cross-chunk attention: which context tokens to recompute after assembly.

- none: reuse every chunk token as cached.
- edge (EPIC-style): recompute the first ``n_tokens`` of every chunk.
- blend (CacheBlend-style): run the first ``check_layer + 1`` layers over the whole context,
  then recompute the fraction ``r`` of chunk tokens whose layer-``check_layer`` values deviate
  most from the reused ones. Layer-0 KV of a re-rotated chunk equals a fresh one exactly, so the
  first layer where deviation shows is layer 1. The fresh early-layer KV is kept (it is exact).
  ``score="attention"`` instead ranks tokens by the attention the question pays them on the
  reused cache (one throw-away question prefill, no early-layer pass); ``"deviation*attention"``
  weighs the deviation by that attention (the error a token adds to the question's attention output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from compression.kv.base import Prompt


class Recovery(Protocol):
    name: str

    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        """Absolute positions of context tokens to recompute (may refresh ``cache`` in place)."""
        ...


def chunk_starts(prompt: Prompt) -> list[int]:
    """Absolute start position of every chunk."""
    starts, position = [], len(prompt.prefix_ids)
    for ids in prompt.chunk_ids:
        starts.append(position)
        position += len(ids)
    return starts


@dataclass(frozen=True)
class NoRecovery:
    name: str = "none"

    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        return []


@dataclass(frozen=True)
class EdgeRecovery:
    n_tokens: int = 16
    name: str = "edge"

    def __post_init__(self) -> None:
        if self.n_tokens < 0:
            raise ValueError(f"edge recovery needs n_tokens >= 0, got {self.n_tokens}")

    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        return [start + i for start, ids in zip(chunk_starts(prompt), prompt.chunk_ids) for i in range(min(self.n_tokens, len(ids)))]


def causal_mask(n_queries: int, first_position: int, kv_length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[1, 1, q, kv]`` mask: query i (at ``first_position + i``) sees keys 0..its position."""
    rows = torch.arange(n_queries).unsqueeze(1) + first_position
    allowed = torch.arange(kv_length).unsqueeze(0) <= rows
    return additive(allowed, dtype)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@torch.inference_mode()
def fresh_early_layers(model: Any, cache: Any, prompt: Prompt, n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh K/V of the first ``n_layers`` layers for all context tokens, attending over the real prompt."""
    from transformers import DynamicCache

    inner, prefix_len = model.model, len(prompt.prefix_ids)
    ids = torch.tensor([prompt.context_ids])
    positions = torch.arange(prefix_len, prefix_len + ids.shape[1]).unsqueeze(0)
    early = DynamicCache(
        ddp_cache_data=[(layer.keys[:, :, :prefix_len], layer.values[:, :, :prefix_len]) for layer in cache.layers[:n_layers]]
    )
    hidden = inner.embed_tokens(ids)
    embeddings = inner.rotary_emb(hidden, position_ids=positions)
    mask = causal_mask(ids.shape[1], prefix_len, prefix_len + ids.shape[1], hidden.dtype)
    for layer in inner.layers[:n_layers]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=embeddings, position_ids=positions, past_key_values=early, use_cache=True)
    keys = torch.stack([layer.keys[0, :, prefix_len:] for layer in early.layers])
    values = torch.stack([layer.values[0, :, prefix_len:] for layer in early.layers])
    return keys, values


@torch.inference_mode()
def question_attention(model: Any, cache: Any, prompt: Prompt) -> torch.Tensor:
    """Attention mass the question puts on every context token (summed over layers of per-layer
    distributions), measured with a throw-away prefill of the question on the reused cache."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    prefix_len, context_end = len(prompt.prefix_ids), len(prompt.prefix_ids) + len(prompt.context_ids)
    mass = torch.zeros(context_end - prefix_len)

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"]
        query = module.q_proj(hidden).view(*hidden.shape[:-1], -1, module.head_dim).transpose(1, 2)
        query, _ = apply_rotary_pos_emb(query, query, cos, sin)
        keys = cache.layers[module.layer_idx].keys[:, :, :context_end]
        keys = keys.repeat_interleave(module.num_key_value_groups, dim=1)
        probs = torch.softmax((query @ keys.transpose(-1, -2)) * module.scaling, dim=-1)
        per_token = probs[0, :, :, prefix_len:].sum(dim=(0, 1))
        mass.add_(per_token / per_token.sum().clamp_min(1e-12))

    handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        model(input_ids=torch.tensor([list(prompt.suffix_ids)]), past_key_values=cache, use_cache=True, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    for layer in cache.layers:  # drop the throw-away question KV again
        layer.keys, layer.values = layer.keys[:, :, :context_end], layer.values[:, :, :context_end]
    return mass


BLEND_SCORES = ("deviation", "attention", "deviation*attention")


@dataclass(frozen=True)
class BlendRecovery:
    r: float = 0.15
    check_layer: int = 1
    score: str = "deviation"
    name: str = "blend"

    def __post_init__(self) -> None:
        if not 0.0 <= self.r <= 1.0:
            raise ValueError(f"blend recovery needs 0 <= r <= 1, got {self.r}; e.g. r=0.15")
        if self.check_layer < 1:
            raise ValueError(f"check_layer must be >= 1 (layer 0 never deviates), got {self.check_layer}")
        if self.score not in BLEND_SCORES:
            raise ValueError(f"unknown blend score '{self.score}'; valid: {', '.join(BLEND_SCORES)}")

    @torch.inference_mode()
    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        n_context, prefix_len = len(prompt.context_ids), len(prompt.prefix_ids)
        n_pick = min(n_context, round(self.r * n_context))
        if n_pick == 0:
            return []
        if n_pick == n_context:
            return list(range(prefix_len, prefix_len + n_context))
        if self.score == "attention":
            scores = question_attention(model, cache, prompt)
        else:
            keys, values = fresh_early_layers(model, cache, prompt, self.check_layer + 1)
            stale = cache.layers[self.check_layer].values[0, :, prefix_len:]
            scores = (values[self.check_layer] - stale).pow(2).sum(dim=(0, 2))
            if self.score == "deviation*attention":
                scores = scores.sqrt() * question_attention(model, cache, prompt)
            for index, layer in enumerate(cache.layers[: self.check_layer + 1]):
                layer.keys[0, :, prefix_len:] = keys[index]
                layer.values[0, :, prefix_len:] = values[index]
        chosen = torch.topk(scores, n_pick).indices.sort().values
        return (chosen + prefix_len).tolist()


RECOVERIES: dict[str, type] = {"none": NoRecovery, "edge": EdgeRecovery, "blend": BlendRecovery}


def make_recovery(name: str, **options: Any) -> Recovery:
    """The recovery registered as ``name``; unknown names list the valid ones."""
    try:
        factory = RECOVERIES[name]
    except KeyError:
        raise ValueError(f"unknown KV recovery '{name}'; valid: {', '.join(sorted(RECOVERIES))}") from None
    return factory(**options)

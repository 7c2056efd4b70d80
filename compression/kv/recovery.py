"""Recovering cross-chunk attention: which context tokens to recompute after assembly.

- none: reuse every chunk token as cached.
- edge (EPIC-style): recompute the first ``n_tokens`` of every chunk.
- blend (CacheBlend-style): run the first ``check_layer + 1`` layers over the whole context,
  then recompute the fraction ``r`` of chunk tokens whose layer-``check_layer`` values deviate
  most from the reused ones. Layer-0 KV of a re-rotated chunk equals a fresh one exactly, so the
  first layer where deviation shows is layer 1. The fresh early-layer KV is kept (it is exact).
  ``score="attention"`` instead ranks tokens by the attention the question pays them on the
  reused cache (one throw-away question prefill, no early-layer pass); ``"deviation*attention"``
  weighs the deviation by that attention (the error a token adds to the question's attention output);
  ``"deviation*early_attention"`` takes that attention in layers 0..check_layer only, which the
  deviation pass has just made exact (no throw-away prefill through the whole model).
  The first chunk is never picked when whole: it sits where it was computed, so its cache is exact
  (``Prompt.exact_tokens``; a first chunk that compression cut is not, and may be picked).
  ``resume=True`` recomputes the picked tokens from the layer after the check layer on (their
  early layers were just computed exactly), inside ``select``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from compression.hf_cache import cache_arg
from compression.kv.base import Prompt
from compression.kv.blockwise import run_in_place, supported
from compression.kv.modes import BLEND_SCORES, DEFAULT_BLEND_SCORE, KV_REUSE_MODES


class Recovery(Protocol):
    """Chooses the context tokens to recompute after reused chunk caches are assembled."""

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
    """Naive reuse: every chunk token as cached."""

    name: str = "none"

    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        """Nothing to recompute."""
        return []


@dataclass(frozen=True)
class EdgeRecovery:
    """EPIC-style: recompute the first ``n_tokens`` of every chunk."""

    n_tokens: int = 16
    name: str = "edge"

    def __post_init__(self) -> None:
        if self.n_tokens < 0:
            raise ValueError(f"edge recovery needs n_tokens >= 0, got {self.n_tokens}")

    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        """The first ``n_tokens`` positions of every chunk."""
        return [start + i for start, ids in zip(chunk_starts(prompt), prompt.chunk_ids) for i in range(min(self.n_tokens, len(ids)))]


def causal_mask(n_queries: int, first_position: int, kv_length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[1, 1, q, kv]`` mask: query i (at ``first_position + i``) sees keys 0..its position."""
    rows = torch.arange(n_queries).unsqueeze(1) + first_position
    allowed = torch.arange(kv_length).unsqueeze(0) <= rows
    return additive(allowed, dtype)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean ``allowed`` matrix as an additive ``[1, 1, q, kv]`` mask (0 or the dtype's minimum)."""
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@torch.inference_mode()
def early_layers(model: Any, token_ids: Sequence[int], first_position: int, cache: Any, n_layers: int) -> torch.Tensor:
    """Run ``token_ids`` (at ``first_position`` on) through the first ``n_layers`` decoder layers,
    attending causally over ``cache`` (which holds everything before them and receives their KV);
    returns their hidden states after those layers."""
    inner = model.model
    ids = torch.tensor([list(token_ids)])
    positions = torch.arange(first_position, first_position + ids.shape[1]).unsqueeze(0)
    hidden = inner.embed_tokens(ids)
    embeddings = inner.rotary_emb(hidden, position_ids=positions)
    mask = causal_mask(ids.shape[1], first_position, first_position + ids.shape[1], hidden.dtype)
    for layer in inner.layers[:n_layers]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=embeddings, position_ids=positions, use_cache=True, **cache_arg(layer, cache))
    return hidden


@torch.inference_mode()
def fresh_early_layers(model: Any, cache: Any, prompt: Prompt, n_layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh K/V of the first ``n_layers`` layers for all context tokens, attending over the real
    prompt, and the context's hidden states after them."""
    from transformers import DynamicCache

    prefix_len = len(prompt.prefix_ids)
    early = DynamicCache(
        ddp_cache_data=[(layer.keys[:, :, :prefix_len], layer.values[:, :, :prefix_len]) for layer in cache.layers[:n_layers]]
    )
    hidden = early_layers(model, prompt.context_ids, prefix_len, early, n_layers)
    keys = torch.stack([layer.keys[0, :, prefix_len:] for layer in early.layers])
    values = torch.stack([layer.values[0, :, prefix_len:] for layer in early.layers])
    return keys, values, hidden


@torch.inference_mode()
def refresh_early_layers(model: Any, cache: Any, prompt: Prompt, n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the first ``n_layers`` layers' context KV in ``cache`` by fresh (exact) KV.

    Returns the context's hidden states after those layers and each token's squared value
    deviation (fresh vs reused) at the last of them.
    """
    prefix_len = len(prompt.prefix_ids)
    if supported(model):  # in place, causal blocks: no dense mask, no second copy of the early KV
        context_end = prefix_len + len(prompt.context_ids)
        stale = cache.layers[n_layers - 1].values[0, :, prefix_len:context_end].clone()
        hidden = run_in_place(model, cache, prompt.context_ids, range(prefix_len, context_end), layers=range(n_layers))
        deviation = (cache.layers[n_layers - 1].values[0, :, prefix_len:context_end] - stale).pow(2).sum(dim=(0, 2))
        return hidden, deviation
    keys, values, hidden = fresh_early_layers(model, cache, prompt, n_layers)
    deviation = (values[-1] - cache.layers[n_layers - 1].values[0, :, prefix_len:]).pow(2).sum(dim=(0, 2))
    for index, layer in enumerate(cache.layers[:n_layers]):
        layer.keys[0, :, prefix_len:] = keys[index]
        layer.values[0, :, prefix_len:] = values[index]
    return hidden, deviation


@torch.inference_mode()
def question_attention(model: Any, cache: Any, prompt: Prompt, n_layers: int | None = None) -> torch.Tensor:
    """Attention mass the question puts on every context token (summed over layers of per-layer
    distributions), measured with a throw-away prefill of the question on the reused cache.
    ``n_layers``: only the first n layers (the question runs through those alone: cheap; after
    ``refresh_early_layers`` the cache is exact there)."""
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

    layers = model.model.layers if n_layers is None else model.model.layers[:n_layers]
    handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        if n_layers is None:
            model(input_ids=torch.tensor([list(prompt.suffix_ids)]), use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
        else:
            early_layers(model, prompt.suffix_ids, len(prompt.prefix_ids) + len(prompt.context_ids), cache, n_layers)
    finally:
        for handle in handles:
            handle.remove()
    for layer in cache.layers:  # drop the throw-away question KV again
        layer.keys, layer.values = layer.keys[:, :, :context_end], layer.values[:, :, :context_end]
    return mass




@dataclass(frozen=True)
class BlendRecovery:
    """``resume``: the deviation scores already ran every context token exactly through layers
    0..check_layer, so the chosen tokens are recomputed from layer check_layer + 1 on, starting
    from those hidden states (the same result as recomputing them from layer 0, for less work);
    the cache is then refreshed in place and ``select`` returns no positions."""

    r: float = 0.15
    check_layer: int = 1
    score: str = "deviation"
    resume: bool = False
    name: str = "blend"

    def __post_init__(self) -> None:
        if not 0.0 <= self.r <= 1.0:
            raise ValueError(f"blend recovery needs 0 <= r <= 1, got {self.r}; e.g. r=0.15")
        if self.check_layer < 1:
            raise ValueError(f"check_layer must be >= 1 (layer 0 never deviates), got {self.check_layer}")
        if self.score not in BLEND_SCORES:
            raise ValueError(f"unknown blend score '{self.score}'; valid: {', '.join(BLEND_SCORES)}")
        if self.resume and self.score == "attention":
            raise ValueError("resume needs the early-layer pass of a deviation score (deviation, deviation*attention "
                             "or deviation*early_attention), not score=attention")

    def n_picked(self, prompt: Prompt) -> int:
        """How many context tokens ``select`` recomputes (never exact ones unless all are)."""
        n_context = len(prompt.context_ids)
        n_pick = min(n_context, round(self.r * n_context))
        return n_pick if n_pick in (0, n_context) else min(n_pick, n_context - prompt.exact_tokens)

    def recomputed_tokens(self, prompt: Prompt, n_layers: int) -> int:
        """Tokens recomputed inside ``select`` (resume), which it does not return."""
        n_pick = self.n_picked(prompt)
        return n_pick if self.resume and n_pick not in (0, len(prompt.context_ids)) else 0

    @torch.inference_mode()
    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        """Positions of the ``n_picked`` best-scored reusable tokens (none when ``resume`` recomputed them already)."""
        n_context, prefix_len = len(prompt.context_ids), len(prompt.prefix_ids)
        n_pick = self.n_picked(prompt)
        if n_pick == 0:
            return []
        if n_pick == n_context:
            return list(range(prefix_len, prefix_len + n_context))
        scores, hidden = self._scores(model, cache, prompt)
        scores = scores.float()
        # A whole first chunk sits where it was computed, right after the prefix: its cache is exact,
        # so no budget goes there (the question's attention would otherwise pick its sink-like start).
        scores[: prompt.exact_tokens] = float("-inf")
        chosen = torch.topk(scores, n_pick).indices.sort().values
        positions = (chosen + prefix_len).tolist()
        if not self.resume:
            return positions
        assert hidden is not None, "resume needs a deviation score, which runs the early layers"
        run_in_place(model, cache, [prompt.context_ids[i] for i in chosen.tolist()], positions,
                     layers=range(self.check_layer + 1, len(model.model.layers)), hidden=hidden[:, chosen])
        return []

    def _scores(self, model: Any, cache: Any, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token scores, and the context's hidden states after the exact early layers (if run)."""
        if self.score == "attention":
            return question_attention(model, cache, prompt), None
        hidden, scores = refresh_early_layers(model, cache, prompt, self.check_layer + 1)
        if self.score == "deviation*attention":
            scores = scores.sqrt() * question_attention(model, cache, prompt)
        elif self.score == "deviation*early_attention":  # the question's attention in the exact early layers only
            scores = scores.sqrt() * question_attention(model, cache, prompt, self.check_layer + 1)
        return scores, hidden


RECOVERIES: dict[str, Any] = {"none": NoRecovery, "edge": EdgeRecovery, "blend": BlendRecovery}


def make_recovery(name: str, **options: Any) -> Recovery:
    """The recovery registered as ``name``; unknown names list the valid ones."""
    try:
        factory = RECOVERIES[name]
    except KeyError:
        raise ValueError(f"unknown KV recovery '{name}'; valid: {', '.join(sorted(RECOVERIES))}") from None
    return factory(**options)


def recovery_for(mode: str, blend_r: float = 0.15, edge_tokens: int = 16, blend_score: str = DEFAULT_BLEND_SCORE) -> Any:
    """The recovery of ``mode``; ``none`` means no reuse at all (returns None).

    ``blend_score`` is one of ``BLEND_SCORES`` (used by ``blend`` only).
    """
    if mode not in KV_REUSE_MODES:
        raise ValueError(f"unknown --kv-reuse mode '{mode}'; valid: {', '.join(KV_REUSE_MODES)}")
    if mode == "none":
        return None
    if mode == "naive":
        return make_recovery("none")
    if mode == "edge":
        return make_recovery("edge", n_tokens=edge_tokens)
    return make_recovery("blend", r=blend_r, score=blend_score)

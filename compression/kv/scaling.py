"""APE-style attention scaling for a reused cache (Yang et al. 2025, "Adaptive Parallel Encoding").

Chunks encoded apart look too flat / too attractive to the question. At query time only (the
question prefill and every generated token; never the recompute of selected context tokens), the
logits of the still-stale context keys become ``logit / T + log S``: T is a temperature on the
logits, S a factor on their attention mass. The prefix, the exact leading context (a whole first
chunk sits where it was computed: ``Prompt.exact_tokens``), recomputed tokens and the
question/generated keys are left alone.

How: cached keys are post-RoPE and q·(k/T) = (q·k)/T, so dividing the stale keys by T in place
gives the temperature for every later query at no run-time cost; log S is an additive bias at
those key positions, added to the attention mask that reaches each scaled layer's attention
(a forward pre-hook on ``self_attn``). ``from_layer``: only layers from this index on are scaled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from compression.hf_cache import cache_arg, hook_cache
from compression.kv.base import Prompt
from compression.kv.blockwise import run_in_place, supported


@dataclass(frozen=True)
class AttentionScaling:
    temperature: float = 1.0
    scale: float = 1.0
    from_layer: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"attention scaling needs temperature > 0, got {self.temperature}; e.g. temperature=0.9")
        if not self.scale > 0:
            raise ValueError(f"attention scaling needs scale > 0 (a factor on attention mass), got {self.scale}; e.g. scale=0.8")
        if self.from_layer < 0:
            raise ValueError(f"attention scaling needs from_layer >= 0 (first scaled layer), got {self.from_layer}")

    @property
    def identity(self) -> bool:
        return self.temperature == 1.0 and self.scale == 1.0


def stale_positions(prompt: Prompt, selected: Sequence[int]) -> torch.Tensor:
    """Boolean mask over positions 0..context_end-1: context tokens past the exact ones, not recomputed."""
    context_end = len(prompt.prefix_ids) + len(prompt.context_ids)
    stale = torch.zeros(context_end, dtype=torch.bool)
    stale[len(prompt.prefix_ids) + prompt.exact_tokens:] = True
    stale[list(selected)] = False
    return stale


@torch.inference_mode()
def apply_scaling(cache: Any, prompt: Prompt, selected: Sequence[int], scaling: AttentionScaling) -> torch.Tensor | None:
    """Divide the stale keys by T in the scaled layers (in place); return the ``[layers, context_end]``
    additive bias (log S at stale positions of scaled layers) to hand to ``attention_bias``, or None
    when S = 1."""
    stale = stale_positions(prompt, selected)
    layers = range(scaling.from_layer, len(cache.layers))
    if scaling.temperature != 1.0:
        for index in layers:
            cache.layers[index].keys[:, :, : len(stale)][:, :, stale] /= scaling.temperature
    if scaling.scale == 1.0 or not bool(stale.any()):
        return None
    bias = torch.zeros(len(cache.layers), len(stale))
    bias[scaling.from_layer:, stale] = math.log(scaling.scale)
    return bias


def _biased(mask: torch.Tensor | None, bias: torch.Tensor, n_queries: int, kv_length: int, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` (None: causal, bool: allowed, float: additive) as a float mask plus ``bias`` on its first keys."""
    if mask is None:
        rows = torch.arange(n_queries)[:, None] + kv_length - n_queries
        mask = (torch.arange(kv_length)[None, :] <= rows)[None, None]
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    extra = torch.zeros(mask.shape[-1], dtype=dtype)
    extra[: bias.shape[0]] = bias[: mask.shape[-1]].to(dtype)
    return mask + extra


@contextmanager
def attention_bias(model: Any, bias: torch.Tensor | None) -> Iterator[None]:
    """While active, layer i's attention adds ``bias[i]`` to the logits of keys 0..len-1 (no-op for None)."""
    if bias is None:
        yield
        return

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = kwargs["hidden_states"]
        n_queries = hidden.shape[1]
        mask = kwargs.get("attention_mask")
        cached = hook_cache(kwargs).layers[module.layer_idx].keys.shape[2] if mask is None else 0
        kv_length = mask.shape[-1] if mask is not None else cached + n_queries
        kwargs["attention_mask"] = _biased(mask, bias[module.layer_idx], n_queries, kv_length, hidden.dtype)
        return args, kwargs

    rows = [i for i in range(bias.shape[0]) if bool(bias[i].any())]
    handles = [model.model.layers[i].self_attn.register_forward_pre_hook(hook, with_kwargs=True) for i in rows]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def scaled_prefill(model: Any, cache: Any, prompt: Prompt, selected: Sequence[int],
                   scaling: AttentionScaling) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recompute ``selected`` (unscaled), scale the stale context, prefill the question through it.

    Returns the last position's logits and the bias that decoding must keep applying
    (``greedy_continue(..., bias=...)``). ``cache`` must cover exactly positions 0..context_end-1.
    """
    context_end = len(prompt.prefix_ids) + len(prompt.context_ids)
    if cache.layers[0].keys.shape[2] != context_end:
        raise ValueError(f"scaled_prefill needs the assembled context cache ({context_end} positions), "
                         f"got {cache.layers[0].keys.shape[2]}; call it right after recovery.select")
    if selected:
        if not supported(model):
            raise ValueError(f"recomputing tokens before scaling needs a blockwise model type, not {model.config.model_type!r}")
        positions = sorted(selected)
        run_in_place(model, cache, [prompt.all_ids[p] for p in positions], positions)
    bias = apply_scaling(cache, prompt, selected, scaling)
    n_question = len(prompt.suffix_ids)
    rows = torch.arange(n_question)[:, None] + context_end
    allowed = (torch.arange(context_end + n_question)[None, :] <= rows)[None, None]
    mask = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill_(~allowed, torch.finfo(model.dtype).min)
    with attention_bias(model, bias):
        out = model(input_ids=torch.tensor([list(prompt.suffix_ids)]), attention_mask=mask,
                    use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
    return out.logits[0, -1].float(), bias

"""Oracle recovery: a ceiling diagnostic, not a usable mode (it needs the full prefill it replaces).

Given the full-prefill KV of the same prompt, it replaces the reused KV of the fraction ``r`` of
context tokens that deviate most (true key+value deviation summed over the layers ``layers``)
with their TRUE full-prefill KV in every layer. No recompute can do better for the tokens it
picks (a recompute's fresh KV still attends to the other tokens' stale KV), so if this oracle
at a given r does not bring the output close to full prefill, no selection rule at that r can.
``positions`` fixes the set instead (e.g. what a cheap rule picked), to separate the cost of a
rule's choice from the cost of its recompute. r = 1 puts the full-prefill cache back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compression.kv.base import Prompt


@torch.inference_mode()
def true_deviation(cache: Any, reference: tuple[torch.Tensor, torch.Tensor], prompt: Prompt, layers: Sequence[int]) -> torch.Tensor:
    """Per context token: squared key+value distance between reused and full-prefill KV over ``layers``."""
    start, end = len(prompt.prefix_ids), len(prompt.prefix_ids) + len(prompt.context_ids)
    keys, values = reference
    scores = torch.zeros(end - start)
    for layer in layers:
        reused = cache.layers[layer]
        scores += (reused.keys[0, :, start:end] - keys[layer, :, start:end]).pow(2).sum(dim=(0, 2))
        scores += (reused.values[0, :, start:end] - values[layer, :, start:end]).pow(2).sum(dim=(0, 2))
    return scores


@dataclass(frozen=True)
class OracleRecovery:
    """``reference``: full-prefill keys/values ``[layers, heads, >= context_end, dim]`` of the prompt."""

    reference: tuple[torch.Tensor, torch.Tensor]
    r: float = 0.15
    layers: tuple[int, ...] | None = None  # None: all layers
    positions: tuple[int, ...] | None = None
    name: str = "oracle"

    def __post_init__(self) -> None:
        if not 0.0 <= self.r <= 1.0:
            raise ValueError(f"oracle recovery needs 0 <= r <= 1, got {self.r}")

    def chosen(self, cache: Any, prompt: Prompt) -> list[int]:
        """Absolute positions the oracle patches."""
        if self.positions is not None:
            return sorted(self.positions)
        start, n_context = len(prompt.prefix_ids), len(prompt.context_ids)
        n_pick = min(n_context, round(self.r * n_context))
        if n_pick == 0:
            return []
        layers = range(len(cache.layers)) if self.layers is None else self.layers
        scores = true_deviation(cache, self.reference, prompt, layers)
        return (torch.topk(scores, n_pick).indices.sort().values + start).tolist()

    @torch.inference_mode()
    def select(self, model: Any, cache: Any, prompt: Prompt) -> list[int]:
        """Patch the chosen tokens' KV with the true one in place; nothing is left to recompute."""
        index = torch.tensor(self.chosen(cache, prompt), dtype=torch.long)
        if len(index):
            keys, values = self.reference
            for layer, reused in enumerate(cache.layers):
                reused.keys[0, :, index] = keys[layer, :, index].to(reused.keys.dtype)
                reused.values[0, :, index] = values[layer, :, index].to(reused.values.dtype)
        return []

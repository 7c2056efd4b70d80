"""Coarse stage: rank contexts, keep whole contexts under a budget, give each a keep-rate rising with rank."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REORDERS = ("original", "sort")


def rank_contexts(scores: Sequence[float], higher_is_better: bool) -> list[int]:
    """Context indices, most valuable first (stable for ties, so the input order breaks them)."""
    values = np.asarray(scores, dtype=np.float64)
    values = np.where(np.isnan(values), -np.inf if higher_is_better else np.inf, values)
    keys = -values if higher_is_better else values
    return [int(i) for i in np.argsort(keys, kind="stable")]


def select_contexts(order: Sequence[int], sizes: Sequence[int], keep_tokens: int) -> list[int]:
    """Whole contexts in rank order until their tokens reach ``keep_tokens`` (at least one)."""
    kept: list[int] = []
    total = 0
    for i in order:
        if total >= keep_tokens and kept:
            break
        if sizes[i] == 0:
            continue
        kept.append(i)
        total += sizes[i]
    return kept


def allocate(kept: Sequence[int], sizes: Sequence[int], target: int, dynamic: float, min_weight: float = 1e-6) -> dict[int, int]:
    """Tokens to keep per context (``kept`` is in rank order): rates rise with rank, sum == target.

    Rank j of m gets weight max(min_weight, 1 + dynamic * (1 - 2j / (m - 1))); rates are
    scale * weight capped at 1, with the scale found by bisection so the capped allocation meets
    the target. ``min_weight`` > 0 guarantees every context a share of the budget.
    """
    m = len(kept)
    n = np.array([sizes[i] for i in kept], dtype=np.float64)
    target = int(min(target, n.sum()))
    if m == 0 or target <= 0:
        return {i: 0 for i in kept}
    weights = np.ones(m) if m == 1 else 1.0 + dynamic * (1.0 - 2.0 * np.arange(m) / (m - 1))
    weights = np.clip(weights, max(min_weight, 1e-6), None)
    lo, hi = 0.0, 1.0 / weights.min()
    for _ in range(60):
        mid = (lo + hi) / 2
        if (np.minimum(1.0, mid * weights) * n).sum() < target:
            lo = mid
        else:
            hi = mid
    raw = np.minimum(1.0, hi * weights) * n
    tokens = np.floor(raw).astype(int)
    # Hand the rounding remainder to the best-ranked contexts that still have room.
    for j in range(m):
        if tokens.sum() >= target:
            break
        room = int(n[j]) - tokens[j]
        tokens[j] += min(room, target - int(tokens.sum()))
    return {i: int(t) for i, t in zip(kept, tokens)}


def output_order(n_contexts: int, order: Sequence[int], reorder: str) -> list[int]:
    """Order of the contexts in the compressed text: as given, or most valuable first."""
    if reorder not in REORDERS:
        raise ValueError(f"unknown reorder '{reorder}'; valid: {', '.join(REORDERS)}")
    return list(range(n_contexts)) if reorder == "original" else list(order)

"""Budgeted selection of units: exact token budgets, word-level, protected units first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compression.llmlingua.protect import MUST, SCORED
from compression.llmlingua.units import Unit


def unit_scores(units: Sequence[Unit], token_scores: np.ndarray) -> np.ndarray:
    """Mean token score of each unit: the value per budget token of keeping it.

    Units whose tokens were not scored (NaN: protected or evidence units, kept by tier) get 0.
    """
    means = []
    for u in units:
        values = token_scores[u.tok_start : u.tok_end]
        values = values[~np.isnan(values)]
        means.append(float(values.mean()) if values.size else 0.0)
    return np.array(means, dtype=np.float64)


def running_threshold(seen: np.ndarray, keep_rate: float) -> float:
    """Score above which a token is kept, from the distribution of the scores seen so far."""
    if seen.size == 0 or keep_rate >= 1.0:
        return -np.inf
    return float(np.quantile(seen, 1.0 - keep_rate))


def select_units(sizes: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, tiers: Sequence[int] | np.ndarray,
                 target: int) -> np.ndarray:
    """Keep units by (tier, score) until exactly ``target`` tokens when the unit sizes allow it.

    Must-keep units are always kept. Others are taken in priority order when they still fit,
    so small units fill the gap a large one leaves; one last unit may overshoot if that lands
    closer to the target than stopping short.
    """
    sizes_a = np.asarray(sizes, dtype=np.int64)
    keep = np.asarray(tiers) == MUST
    total = int(sizes_a[keep].sum())
    order = np.lexsort((-np.asarray(scores, dtype=np.float64), np.asarray(tiers)))
    best_over = None
    for i in order:
        if keep[i]:
            continue
        if total + sizes_a[i] <= target:
            keep[i] = True
            total += int(sizes_a[i])
        elif best_over is None:
            best_over = i
        if total == target:
            break
    if total < target and best_over is not None and total + sizes_a[best_over] - target < target - total:
        keep[best_over] = True
    return _swap_to_target(keep, sizes_a, np.asarray(scores, dtype=np.float64), np.asarray(tiers), target)


def _swap_to_target(keep: np.ndarray, sizes: np.ndarray, scores: np.ndarray, tiers: np.ndarray, target: int) -> np.ndarray:
    """Close a remaining gap by swapping one kept scored unit for one dropped unit of another size."""
    for _ in range(4):
        gap = target - int(sizes[keep].sum())
        if gap == 0:
            break
        scored = tiers == SCORED
        single = np.flatnonzero((keep if gap < 0 else ~keep) & scored & (sizes == abs(gap)))
        if single.size:  # one unit alone closes the gap
            pick = single[np.argmin(scores[single])] if gap < 0 else single[np.argmax(scores[single])]
            keep[pick] = gap > 0
            continue
        best = None  # (loss, add, remove)
        for size_in in np.unique(sizes[~keep & scored]):
            add = np.flatnonzero(~keep & scored & (sizes == size_in))
            remove = np.flatnonzero(keep & scored & (sizes == size_in - gap))
            if add.size and remove.size:
                a, r = add[np.argmax(scores[add])], remove[np.argmin(scores[remove])]
                loss = scores[r] - scores[a]
                if best is None or loss < best[0]:
                    best = (loss, a, r)
        if best is None:
            break
        keep[best[1]], keep[best[2]] = True, False
    return keep


def adjust(
    keep: np.ndarray, sizes: np.ndarray, scores: np.ndarray, tiers: np.ndarray, rank: np.ndarray, delta: int
) -> np.ndarray:
    """Move the kept token count by ``delta`` (add if > 0, remove if < 0) with the fewest regrets.

    Added: best-ranked context first, then best tier, then highest score. Removed: the
    reverse, never a must-keep unit.
    """
    keep = keep.copy()
    if delta > 0:
        candidates = np.flatnonzero(~keep)
        order = candidates[np.lexsort((-scores[candidates], tiers[candidates], rank[candidates]))]
        for i in order:
            if sizes[i] <= delta:
                keep[i] = True
                delta -= int(sizes[i])
            if delta == 0:
                break
    elif delta < 0:
        candidates = np.flatnonzero(keep & (tiers != MUST))
        order = candidates[np.lexsort((scores[candidates], -tiers[candidates], -rank[candidates]))]
        for i in order:
            if sizes[i] <= -delta:
                keep[i] = False
                delta += int(sizes[i])
            if delta == 0:
                break
    return keep

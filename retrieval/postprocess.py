"""Post-processing of retrieved hits: merging hits that overlap or touch, neighbour context."""

from __future__ import annotations

from typing import Sequence

import numpy as np

NEIGHBOUR_WEIGHT = 0.5  # weight of each neighbour's vector in contextual embeddings (eval-grid tuned)


def merge_adjacent(spans: Sequence[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Merge ``(source, start, end)`` spans of the same source that overlap or touch.

    The result keeps the rank order of each merged group's best (first) member, so the context
    handed on reads best-first, and overlapping windows no longer repeat text.
    """
    merged: list[tuple[str, int, int]] = []  # disjoint, non-touching per source, in rank order
    for source, start, end in spans:
        # Groups stay apart from each other, so only groups touching this span can join.
        joined = [i for i, (s, a, b) in enumerate(merged) if s == source and start <= b and a <= end]
        if not joined:
            merged.append((source, start, end))
            continue
        low = min([start] + [merged[i][1] for i in joined])
        high = max([end] + [merged[i][2] for i in joined])
        merged[joined[0]] = (source, low, high)
        for i in reversed(joined[1:]):
            del merged[i]
    return merged


def with_neighbour_context(vectors: np.ndarray, groups: Sequence[str], radius: int, weight: float) -> np.ndarray:
    """Each vector plus ``weight`` × its neighbours within ``radius`` (same group), re-normalised.

    Rows are chunks in document order; ``groups`` names each row's document so context never
    leaks across documents. Cheap "contextual" embeddings: a small chunk is found by what
    surrounds it, while the span returned stays the chunk itself.
    """
    if radius <= 0 or weight == 0.0:
        return vectors
    if len(groups) != len(vectors):
        raise ValueError(f"{len(groups)} group labels for {len(vectors)} vectors")
    labels = np.asarray(groups, dtype=object)
    mixed = vectors.astype(np.float64, copy=True)
    for shift in range(1, radius + 1):
        for sign in (-1, 1):
            source = np.roll(np.arange(len(vectors)), -sign * shift)  # row i takes row i + sign*shift
            valid = labels[source] == labels
            valid &= (np.arange(len(vectors)) + sign * shift >= 0) & (np.arange(len(vectors)) + sign * shift < len(vectors))
            mixed[valid] += weight * vectors[source[valid]]
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    return (mixed / np.where(norms == 0, 1.0, norms)).astype(np.float32)

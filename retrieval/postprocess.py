"""Post-processing of retrieved hits: one hit per distinct text, merging hits that overlap or touch,
neighbour context."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from retrieval.base import Hit

NEIGHBOUR_WEIGHT = 0.5  # weight of each neighbour's vector in contextual embeddings (eval-grid tuned)


def first_distinct(texts: Iterable[str], k: int) -> list[tuple[int, tuple[int, ...]]]:
    """The first ``k`` distinct texts of a ranked list: ``(position, copy positions)`` pairs, best first.

    A text that repeats an earlier one exactly (the same help page included in two files, a
    boilerplate paragraph) is not handed on twice; its position is listed as a copy of the first
    occurrence instead, so span-based metrics can still see every place that text was found.
    Copies ranked after the ``k``-th distinct text are not listed: they were never retrieved.
    Fewer than ``k`` pairs means the list holds fewer distinct texts. ``texts`` is read lazily,
    only as far as the ``k``-th distinct text.
    """
    first: dict[str, int] = {}  # text -> index into ``kept``
    kept: list[tuple[int, list[int]]] = []
    if k <= 0:
        return []
    for position, text in enumerate(texts):
        if text in first:
            kept[first[text]][1].append(position)
            continue
        first[text] = len(kept)
        kept.append((position, []))
        if len(kept) == k:
            break
    return [(position, tuple(copies)) for position, copies in kept]


def distinct_hits(ranked: Sequence[Hit], k: int) -> list[Hit]:
    """The first ``k`` hits with distinct texts (``first_distinct``); each carries its copies' spans."""
    return [replace(ranked[position], copies=tuple((ranked[c].source, ranked[c].start, ranked[c].end) for c in copies))
            if copies else ranked[position] for position, copies in first_distinct([hit.text for hit in ranked], k)]


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

"""BM25 lexical scoring over chunk texts, and its fusion with dense scores (hybrid retrieval).

BM25 itself comes from ``rank_bm25`` (Okapi BM25); this module only tokenises and fuses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


def lexical_tokens(text: str) -> list[str]:
    """Lower-cased word tokens: what BM25 matches on (punctuation and case ignored)."""
    return _WORD.findall(text.lower())


class BM25Index:
    """Okapi BM25 over a fixed list of texts; ``scores(query)`` gives one score per text."""

    def __init__(self, texts: Sequence[str]) -> None:
        if not texts:
            raise ValueError("BM25Index needs at least one text; index some chunks first")
        from rank_bm25 import BM25Okapi

        # rank_bm25 divides by the mean document length: an all-empty corpus would divide by 0.
        self._bm25 = BM25Okapi([lexical_tokens(text) or ["\0"] for text in texts])
        self.size = len(texts)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query``."""
        return np.asarray(self._bm25.get_scores(lexical_tokens(query)), dtype=np.float64)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; constant scores map to 0 (they carry no ranking information)."""
    low, high = float(np.min(scores)), float(np.max(scores))
    if high - low <= 0.0:
        return np.zeros_like(scores, dtype=np.float64)
    return (scores - low) / (high - low)


def fuse(dense: np.ndarray, lexical: np.ndarray, dense_weight: float) -> np.ndarray:
    """Convex combination of min-max normalised dense and BM25 scores (weight on dense)."""
    if dense.shape != lexical.shape:
        raise ValueError(f"score arrays differ in shape: dense {dense.shape} vs lexical {lexical.shape}")
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError(f"dense_weight must be in [0, 1], got {dense_weight}")
    return dense_weight * minmax(dense) + (1.0 - dense_weight) * minmax(lexical)

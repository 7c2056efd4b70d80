"""Hybrid retrieval over a committed index: min-max fused dense and BM25 scores.

The same scoring as ``eval.runner`` uses for ``retrieval="hybrid"`` (``retrieval.lexical.fuse``),
so what the evaluation measured is what ``ragpress query`` serves. Dense scores are an exact scan
of the stored vectors (BM25 needs every chunk's score anyway), whatever the FAISS factory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.base import Hit
from retrieval.index_store import IndexStore
from retrieval.lexical import BM25Index, fuse


class HybridSearcher:
    """BM25 over the chunk texts of one index version, fused with cosine scores."""

    def __init__(self, store: IndexStore, dense_weight: float) -> None:
        if not 0.0 <= dense_weight <= 1.0:
            raise ValueError(f"hybrid weight must be in [0, 1], got {dense_weight}; e.g. 0.8 (dense) / 0.2 (BM25)")
        self.records = store.chunks()
        if not self.records:
            raise ValueError(f"the index in {store.directory} holds no chunks; index documents first")
        self.dense_weight = dense_weight
        self.version = store.version
        self._vectors = store.vectors_of([record.id for record in self.records])
        self._bm25 = BM25Index([record.text for record in self.records])

    def search(self, queries: Sequence[str], query_vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` (clamped to the index size) per query, best first; ties keep chunk-id order."""
        k = min(k, len(self.records))
        dense = np.asarray(query_vectors, dtype=np.float64) @ self._vectors.T.astype(np.float64)
        results = []
        for row, query in zip(dense, queries):
            scores = fuse(row, self._bm25.scores(query), self.dense_weight)
            best = np.argsort(-scores, kind="stable")[:k]
            results.append([self._hit(int(i), float(scores[i])) for i in best])
        return results

    def _hit(self, row: int, score: float) -> Hit:
        record = self.records[row]
        return Hit(record.doc_id, record.source, record.id, record.start, record.end, score, record.text)

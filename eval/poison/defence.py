"""A defence against planted passages: flag passages closer to the logged queries than to the corpus.

Measured weakness (benchmarks/results/poisoning.md): with neighbour-context embeddings every real
chunk has near-copies (its neighbours) in the index, a newly arriving passage has none, so the
threshold calibrated on the indexed chunks also flags genuine new documents; ``flagged_as_new``
measures that by scoring each indexed chunk against the index without its own document.

Planted passages are written to sit near a group of queries at once (query stuffing copies them,
the gradient attack pulls the passage towards their mean), so they look like queries, not like
the documents around them. A real passage resembles other passages of its corpus at least as
much as it resembles the questions it answers. The score of a passage is
``mean top-m cosine to the query log - mean top-m cosine to the reference index`` (itself
excluded); the threshold is the ``quantile`` of the reference (clean) index's own scores, so
about ``1 - quantile`` of clean passages are flagged by construction.

It runs at indexing time (a new passage's vector is scored when it arrives, against the index as
it was calibrated) and is applied at query time by skipping flagged passages. The query log is
what the system has seen: in the probe, every question except the held-out targets (an attacker
copies queries users ask; the targets stand for future, unseen queries).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK = 1024  # rows scored at once: bounds the memory of the similarity matrices


def top_mean(sims: np.ndarray, top: int) -> np.ndarray:
    """Per row, the mean of its ``top`` largest entries."""
    top = min(top, sims.shape[1])
    return np.sort(sims, axis=1)[:, -top:].mean(axis=1)


class QueryLogDefence:
    """Flags passages whose query-likeness (``score``) exceeds a threshold calibrated on a clean index."""

    name = "query-log"

    def __init__(self, log_vectors: np.ndarray, reference_ids: Sequence[int], reference_vectors: np.ndarray, top: int,
                 threshold: float = np.inf, reference_docs: Sequence[str] = ()) -> None:
        if len(log_vectors) == 0 or len(reference_vectors) < 2:
            raise ValueError("the defence needs logged queries and at least two indexed passages")
        self.log_vectors = np.asarray(log_vectors, dtype=np.float32)
        self.reference_ids = np.asarray(reference_ids)
        self.reference_vectors = np.asarray(reference_vectors, dtype=np.float32)
        self.top, self.threshold = top, threshold
        self.reference_docs = np.asarray(reference_docs if len(reference_docs) else [""] * len(self.reference_ids))

    @classmethod
    def calibrate(cls, log_vectors: np.ndarray, chunk_ids: Sequence[int], vectors: np.ndarray, top: int,
                  quantile: float, doc_ids: Sequence[str] = ()) -> QueryLogDefence:
        """A defence whose threshold is the ``quantile`` of the clean passages' scores."""
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}; e.g. 0.999")
        defence = cls(log_vectors, chunk_ids, vectors, top, reference_docs=doc_ids)
        defence.threshold = float(np.quantile(defence.scores(chunk_ids, vectors), quantile))
        return defence

    def scores(self, chunk_ids: Sequence[int], vectors: np.ndarray, doc_ids: Sequence[str] | None = None) -> np.ndarray:
        """Closeness to the query log minus closeness to the reference index (a passage never counts
        itself; with ``doc_ids``, nothing of its own document either)."""
        ids = np.asarray(chunk_ids)
        docs = None if doc_ids is None else np.asarray(doc_ids)
        vectors = np.asarray(vectors, dtype=np.float32)
        out = np.empty(len(vectors), dtype=np.float64)
        for start in range(0, len(vectors), BLOCK):
            rows = vectors[start:start + BLOCK]
            corpus = rows @ self.reference_vectors.T
            corpus[ids[start:start + BLOCK, None] == self.reference_ids[None, :]] = -np.inf
            if docs is not None:
                corpus[docs[start:start + BLOCK, None] == self.reference_docs[None, :]] = -np.inf
            out[start:start + BLOCK] = top_mean(rows @ self.log_vectors.T, self.top) - top_mean(corpus, self.top)
        return out

    def flagged(self, chunk_ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """True where a passage scores above the threshold."""
        return self.scores(chunk_ids, vectors) > self.threshold

    def flagged_as_new(self, doc_ids: Sequence[str], chunk_ids: Sequence[int], texts: Sequence[str],
                       vectors: np.ndarray) -> np.ndarray:
        """The flags of indexed passages had their document arrived after calibration."""
        return self.scores(chunk_ids, vectors, doc_ids) > self.threshold

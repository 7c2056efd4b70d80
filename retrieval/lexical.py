"""BM25 lexical scoring over chunk texts, and its fusion with dense scores (hybrid retrieval).

The sparse index is built, saved and memory-mapped by ``bm25s``. The scores are Okapi BM25 as
``rank_bm25.BM25Okapi`` defines them (k1 1.5, b 0.75, a term in more than half of the texts
gets 0.25 × the mean idf instead of a negative idf), so fused rankings stay what they were:
``bm25s`` computes the term-frequency part (its ``atire`` form is Okapi's), and the idf of
each vocabulary column is set to Okapi's from the column's document frequency.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
K1, B, EPSILON = 1.5, 0.75, 0.25  # rank_bm25's BM25Okapi defaults
EMPTY_TEXT_TOKEN = "\0"  # stands for a text without words, so every text has a length
# What a saved index consists of (bm25s's own file names); all of them are checked on open.
SAVED_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
               "params.index.json")


def lexical_tokens(text: str) -> list[str]:
    """Lower-cased word tokens: what BM25 matches on (punctuation and case ignored)."""
    return _WORD.findall(text.lower())


def okapi_idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    """Okapi idf per term from its document frequency, negative values floored as rank_bm25 does."""
    idf = np.array([math.log(n_docs - df + 0.5) - math.log(df + 0.5) for df in doc_freq.tolist()], dtype=np.float64)
    floor = EPSILON * (float(idf.sum()) / len(idf)) if len(idf) else 0.0
    return np.where(idf < 0, floor, idf)


class BM25Index:
    """Okapi BM25 over a fixed list of texts; ``scores(query)`` gives one score per text, in order."""

    def __init__(self, texts: Sequence[str]) -> None:
        if not texts:
            raise ValueError("BM25Index needs at least one text; index some chunks first")
        import bm25s

        model = bm25s.BM25(k1=K1, b=B, method="atire", idf_method="lucene", dtype="float64")
        model.index([lexical_tokens(text) or [EMPTY_TEXT_TOKEN] for text in texts], create_empty_token=False,
                    show_progress=False)
        data, indptr = model.scores["data"], model.scores["indptr"]
        doc_freq = np.diff(indptr)
        lucene = np.log1p((len(texts) - doc_freq + 0.5) / (doc_freq + 0.5))  # the idf bm25s multiplied in
        data *= np.repeat(okapi_idf(doc_freq, len(texts)) / lucene, doc_freq)
        self._adopt(model)

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> BM25Index:
        """A saved index (``save``), its arrays memory-mapped unless ``mmap`` is false."""
        import bm25s

        index = cls.__new__(cls)
        index._adopt(bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False))
        return index

    def _adopt(self, model: Any) -> None:
        self._model = model
        self.size = int(model.scores["num_docs"])
        self._vocab: dict[str, int] = model.vocab_dict
        # Plain ndarray views of the (mapped) arrays: slicing a np.memmap costs microseconds per slice.
        self._data, self._indices, self._indptr = (np.asarray(model.scores[key]) for key in ("data", "indices", "indptr"))

    def save(self, directory: str | Path) -> tuple[str, ...]:
        """Write the index into ``directory``; returns the names of the files written."""
        self._model.save(str(directory), show_progress=False)
        return SAVED_FILES

    def scores(self, query: str) -> np.ndarray:
        """Okapi BM25 of every text for ``query`` (float64; a repeated query word counts each time)."""
        columns = [column for column in map(self._vocab.get, lexical_tokens(query)) if column is not None]
        if not columns:
            return np.zeros(self.size, dtype=np.float64)
        spans = [slice(int(self._indptr[c]), int(self._indptr[c + 1])) for c in columns]
        # bincount adds each text's contributions in query-word order, as a loop over the words would.
        return np.bincount(np.concatenate([self._indices[s] for s in spans]),
                           weights=np.concatenate([self._data[s] for s in spans]), minlength=self.size)


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

"""A deterministic LangChain ``Embeddings`` for the search tests: a sum of per-word random vectors."""

from __future__ import annotations

import hashlib
import re

import numpy as np
from langchain_core.embeddings import Embeddings

DIM = 32


class WordsEmbedding(Embeddings):
    """Each word adds its own Gaussian vector (seeded by the word's md5); rows are L2-normalised, so
    texts with different words almost never tie."""

    model_id = "test:words-embedding"

    def _one(self, text: str) -> list[float]:
        vector = np.zeros(DIM)
        for word in re.findall(r"\w+", text.lower()):
            vector += np.random.default_rng(int(hashlib.md5(word.encode()).hexdigest()[:12], 16)).normal(size=DIM)
        norm = np.linalg.norm(vector)
        return (vector / norm if norm else vector).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)

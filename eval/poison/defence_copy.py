"""A defence against planted passages: flag passages that copy several logged queries.

Query stuffing writes the queries an attacker expects into the passage, and a gradient attack
that starts from such a passage keeps most of their wording. A real passage does not contain
several users' questions word for word (FAQ pages do: they would be flagged too). A logged query
counts as copied when at least ``coverage`` of its word ``n``-grams occur in the passage; a
passage copying ``min_queries`` or more logged queries is flagged. Text only, so it works the
same for a passage already indexed and one that arrives later, at indexing or at query time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from retrieval.lexical import lexical_tokens


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word ``n``-grams of ``text`` (the whole text as one gram when it is shorter)."""
    words = lexical_tokens(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class QueryCopyDefence:
    """Flags passages that contain ``min_queries`` logged queries (nearly) word for word."""

    name = "query-copy"

    def __init__(self, log_texts: Sequence[str], n: int = 3, coverage: float = 0.8, min_queries: int = 2) -> None:
        if not log_texts:
            raise ValueError("the query log is empty; the defence needs logged queries")
        self.n, self.coverage, self.min_queries = n, coverage, min_queries
        self.sizes: list[int] = []
        self.owners: dict[tuple[str, ...], list[int]] = {}  # gram -> the logged queries holding it
        for number, text in enumerate(log_texts):
            grams = word_ngrams(text, n)
            self.sizes.append(len(grams))
            for gram in grams:
                self.owners.setdefault(gram, []).append(number)

    def copied(self, text: str) -> int:
        """How many logged queries ``text`` copies."""
        matched = Counter(owner for gram in word_ngrams(text, self.n) for owner in self.owners.get(gram, ()))
        return sum(count >= self.coverage * self.sizes[owner] for owner, count in matched.items())

    def flagged(self, chunk_ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """True where a passage copies at least ``min_queries`` logged queries."""
        return np.array([self.copied(text) >= self.min_queries for text in texts], dtype=bool)

    def flagged_as_new(self, doc_ids: Sequence[str], chunk_ids: Sequence[int], texts: Sequence[str],
                       vectors: np.ndarray) -> np.ndarray:
        """The same as ``flagged``: the test reads the text alone."""
        return self.flagged(chunk_ids, texts, vectors)

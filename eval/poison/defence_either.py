"""A defence made of others: a passage is flagged when any of its parts flags it.

Each defence sees one kind of planted passage (``query-copy`` the copied queries of stuffing,
``fluency`` the odd words of a gradient attack); run together they cover both at the cost of
both's false alarms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eval.poison.base import Defence


class EitherDefence:
    """Flags what any of ``parts`` flags."""

    def __init__(self, name: str, parts: Sequence[Defence]) -> None:
        if not parts:
            raise ValueError("a combined defence needs at least one part")
        self.name, self.parts = name, tuple(parts)
        # where a part can afford to judge only a sample of the corpus, the combination judges the same
        self.held_out = next((rows for part in parts if (rows := getattr(part, "held_out", None)) is not None), None)

    def flagged(self, chunk_ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """True where any part flags a passage."""
        return np.logical_or.reduce([part.flagged(chunk_ids, texts, vectors) for part in self.parts])

    def flagged_as_new(self, doc_ids: Sequence[str], chunk_ids: Sequence[int], texts: Sequence[str],
                       vectors: np.ndarray) -> np.ndarray:
        """True where any part would flag a passage of a document arriving after calibration."""
        return np.logical_or.reduce([part.flagged_as_new(doc_ids, chunk_ids, texts, vectors) for part in self.parts])

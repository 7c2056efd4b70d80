"""Question-aware sentence scores from the bi-encoder, with context in the spirit of EXIT.

EXIT (Hwang et al., 2024) judges each sentence of a retrieved document while seeing the whole
document, so a sentence that only makes sense next to its neighbours is not dropped. Here a
sentence's score mixes three cosine similarities to the question:

    score = w_sentence * cos(q, sentence)
          + w_window   * cos(q, previous + sentence + next)   (same passage, ``radius`` each side)
          + w_passage  * cos(q, passage)                       (its blank-line block)

A window or passage vector is either the text embedded as a whole (``context="encode"``, three
encoder passes over the input) or the normalised sum of its sentence vectors (``"mean"``, one
pass, so the cost stays that of embedding the input once).

Without a question the sentences are scored against the centroid of all sentence embeddings
(salience: what the contexts are mostly about).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compression.extractive.units import SENTENCE_SEPARATOR, Unit
from retrieval.base import Encoder


@dataclass(frozen=True)
class ScoreWeights:
    """How much each view of a sentence counts; all >= 0 and not all zero."""

    sentence: float = 1.0
    window: float = 0.5
    passage: float = 0.25

    def __post_init__(self) -> None:
        values = (self.sentence, self.window, self.passage)
        if min(values) < 0 or max(values) == 0:
            raise ValueError(f"score weights must be >= 0 and not all zero, got {values}")


def window_bounds(units: Sequence[Unit], radius: int) -> list[tuple[int, int]]:
    """``[low, high)`` unit indices of each sentence's window: ``radius`` neighbours each side, same passage."""
    bounds = []
    for index, unit in enumerate(units):
        low, high = index, index
        while low > 0 and index - low < radius and units[low - 1].passage == unit.passage:
            low -= 1
        while high + 1 < len(units) and high - index < radius and units[high + 1].passage == unit.passage:
            high += 1
        bounds.append((low, high + 1))
    return bounds


def window_texts(units: Sequence[Unit], radius: int) -> list[str]:
    """Each sentence with up to ``radius`` neighbours on each side from the same passage."""
    return [SENTENCE_SEPARATOR.join(u.text for u in units[low:high]) for low, high in window_bounds(units, radius)]


CONTEXT_VIEWS = ("mean", "encode")


def embedding_scores(
    units: Sequence[Unit],
    passages: Sequence[str],
    question: str | None,
    encoder: Encoder,
    weights: ScoreWeights = ScoreWeights(),
    radius: int = 1,
    context: str = "mean",
) -> np.ndarray:
    """One score per unit (higher = keep first).

    ``context="encode"`` embeds every window and passage as text (three encoder passes over the
    input); ``"mean"`` uses the normalised mean of the sentence vectors instead (one pass).
    """
    if context not in CONTEXT_VIEWS:
        raise ValueError(f"unknown context view '{context}'; valid: {', '.join(CONTEXT_VIEWS)}")
    if not units:
        return np.zeros(0, dtype=np.float32)
    sentences = encoder.encode([u.text for u in units])
    query = _query_vector(question, sentences, encoder)
    score = weights.sentence * (sentences @ query)
    if weights.window:
        if context == "encode":
            windows = encoder.encode(window_texts(units, radius))
        else:
            windows = _normalise(np.stack([sentences[low:high].sum(axis=0) for low, high in window_bounds(units, radius)]))
        score = score + weights.window * (windows @ query)
    if weights.passage:
        if context == "encode":
            vectors = encoder.encode(list(passages))
        else:
            owner = np.array([u.passage for u in units])
            vectors = _normalise(np.stack([sentences[owner == p].sum(axis=0) for p in range(len(passages))]))
        score = score + weights.passage * (vectors @ query)[[u.passage for u in units]]
    return np.asarray(score, dtype=np.float32)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _query_vector(question: str | None, sentences: np.ndarray, encoder: Encoder) -> np.ndarray:
    """The question's embedding, or the normalised centroid of the sentences when there is none."""
    if question is not None and question.strip():
        return encoder.encode([question])[0]
    centroid = sentences.mean(axis=0)
    norm = float(np.linalg.norm(centroid))
    return centroid / norm if norm > 0 else centroid

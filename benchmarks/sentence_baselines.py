"""Question-blind sentence baselines with the extractive compressor's segmentation and budgeting.

- ``RandomSentenceCompressor(seed)``: a seeded random ranking of the sentences.
- ``LeadSentenceCompressor(per_context=False)``: sentences from the start: of the contexts read in
  order (the first, best-ranked, context first), or with ``per_context`` round-robin over the
  contexts' leading sentences.
Only the ranking differs from ``ExtractiveCompressor``, so comparisons isolate the scoring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compression.base import Budget, CompressionResult
from compression.extractive.select import rank, select
from compression.extractive.units import Unit, assemble, count_contexts, fit_to_budget, segment_contexts
from compression.segment import DEFAULT_MAX_CHARS
from retrieval.base import TokenCounter


class _RankedBaseline:
    name = "baseline"

    def __init__(self, *, counter: TokenCounter | None = None, max_sentence_chars: int = DEFAULT_MAX_CHARS) -> None:
        self._counter = counter
        self.max_sentence_chars = max_sentence_chars

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            from compression.extractive.models import default_counter

            self._counter = default_counter()
        return self._counter

    def compress(self, contexts: Sequence[str], budget: Budget, question: str | None = None) -> CompressionResult:
        original = count_contexts(contexts, self.counter)
        units, _ = segment_contexts(contexts, self.counter, max_chars=self.max_sentence_chars)
        limit = budget.tokens_for(original)
        scores = self.scores(units)
        chosen = select(scores, [u.n_tokens for u in units], limit, min_keep=1)
        chosen = fit_to_budget(units, chosen, rank(scores), limit, self.counter, min(1, len(units)))
        return assemble(units, chosen, self.counter, original, self.name)

    def scores(self, units: Sequence[Unit]) -> np.ndarray:
        raise NotImplementedError


class RandomSentenceCompressor(_RankedBaseline):
    """Keeps randomly chosen sentences (a fresh ``seed``-ed draw per call) under the budget."""

    name = "random-sentences"

    def __init__(self, *, seed: int = 0, **options) -> None:
        super().__init__(**options)
        self.seed = seed

    def scores(self, units: Sequence[Unit]) -> np.ndarray:
        return np.random.default_rng(self.seed).random(len(units))


class LeadSentenceCompressor(_RankedBaseline):
    """Keeps leading sentences: of the contexts in order, or round-robin with ``per_context``."""

    name = "lead-sentences"

    def __init__(self, *, per_context: bool = False, **options) -> None:
        super().__init__(**options)
        self.per_context = per_context

    def scores(self, units: Sequence[Unit]) -> np.ndarray:
        if not self.per_context:
            return -np.arange(len(units), dtype=np.float64)
        position_in_context = np.zeros(len(units))
        for index in range(1, len(units)):
            same = units[index].context == units[index - 1].context
            position_in_context[index] = position_in_context[index - 1] + 1 if same else 0
        contexts = np.array([u.context for u in units], dtype=np.float64)
        return -(position_in_context * (contexts.max() + 1 if len(units) else 1) + contexts)

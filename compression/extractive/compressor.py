"""Extractive, query-aware compression: keep whole sentences, in their original order.

segment (``compression.segment``) -> score against the question (``scoring``, plus the optional
LM judge of ``lm_judge``) -> select under the budget or adaptively (``select``) -> render with
exact provenance (``units``); each a module of this package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compression.base import Budget, CompressionResult
from compression.extractive.scoring import CONTEXT_VIEWS, ScoreWeights, embedding_scores
from compression.extractive.select import SELECTION_MODES, rank, select
from compression.extractive.units import Unit, assemble, count_contexts, fit_to_budget, segment_contexts
from compression.segment import DEFAULT_MAX_CHARS
from retrieval.base import Encoder, TokenCounter


class ExtractiveCompressor:
    """Keeps the sentences that best answer the question within a token budget.

    Options: ``mode`` "budget" (fill the budget by score) or "adaptive" (keep what clears
    mean + ``z``·std of the scores, capped by the budget); ``weights`` of the sentence / window /
    passage similarities; ``radius`` neighbours on each side in the window view; ``context`` how
    window and passage vectors are made ("mean" of sentence vectors or "encode" the text); ``lm_weight`` > 0
    adds the causal LM's yes/no relevance (model ``lm``, batches of ``lm_batch_size``);
    ``min_sentences`` kept even over budget; ``max_sentence_chars`` cuts unpunctuated runs.
    ``encoder`` and ``counter`` default to the embedding model and its tokenizer.
    """

    name = "extractive"

    def __init__(
        self,
        *,
        mode: str = "budget",
        weights: ScoreWeights | tuple[float, float, float] = ScoreWeights(),
        radius: int = 1,
        context: str = "mean",
        z: float = 0.5,
        lm_weight: float = 0.0,
        lm: str = "smollm2",
        lm_batch_size: int = 16,
        min_sentences: int = 1,
        max_sentence_chars: int = DEFAULT_MAX_CHARS,
        encoder: Encoder | None = None,
        counter: TokenCounter | None = None,
    ) -> None:
        if mode not in SELECTION_MODES:
            raise ValueError(f"unknown selection mode '{mode}'; valid: {', '.join(SELECTION_MODES)}")
        if radius < 0 or lm_weight < 0 or min_sentences < 0:
            raise ValueError(f"radius, lm_weight and min_sentences must be >= 0, got {radius}, {lm_weight}, {min_sentences}")
        self.mode = mode
        self.weights = weights if isinstance(weights, ScoreWeights) else ScoreWeights(*weights)
        self.radius = radius
        if context not in CONTEXT_VIEWS:
            raise ValueError(f"unknown context view '{context}'; valid: {', '.join(CONTEXT_VIEWS)}")
        self.context = context
        self.z = z
        self.lm_weight = lm_weight
        self.lm = lm
        self.lm_batch_size = lm_batch_size
        self.min_sentences = min_sentences
        self.max_sentence_chars = max_sentence_chars
        self._encoder = encoder
        self._counter = counter

    @property
    def counter(self) -> TokenCounter:
        """The token counter budgets are counted in (the embedding model's tokenizer unless given)."""
        if self._counter is None:
            from compression.extractive.models import default_counter

            self._counter = default_counter()
        return self._counter

    @property
    def encoder(self) -> Encoder:
        """The sentence encoder (the packaged MiniLM unless given), loaded on first use."""
        if self._encoder is None:
            from compression.extractive.models import default_encoder

            self._encoder = default_encoder()
        return self._encoder

    def compress(self, contexts: Sequence[str], budget: Budget, question: str | None = None) -> CompressionResult:
        """Kept sentences in original order, their spans in ``contexts``, and token counts."""
        original = count_contexts(contexts, self.counter)
        units, passages = segment_contexts(contexts, self.counter, max_chars=self.max_sentence_chars)
        limit = budget.tokens_for(original)
        scores = self.score(units, passages, question)
        chosen = select(scores, [u.n_tokens for u in units], limit, mode=self.mode, z=self.z, min_keep=self.min_sentences)
        chosen = fit_to_budget(units, chosen, rank(scores), limit, self.counter, min(self.min_sentences, len(units)))
        return assemble(units, chosen, self.counter, original, self.name)

    def score(self, units: Sequence[Unit], passages: Sequence[str], question: str | None) -> np.ndarray:
        """One relevance score per sentence (higher = keep first)."""
        if not units:
            return np.zeros(0, dtype=np.float32)
        scores = embedding_scores(units, passages, question, self.encoder, self.weights, self.radius, self.context)
        if self.lm_weight and question and question.strip():
            scores = scores + self.lm_weight * self._lm_scores(units, question)
        return scores

    def _lm_scores(self, units: Sequence[Unit], question: str) -> np.ndarray:
        from compression.extractive.lm_judge import lm_relevance
        from compression.lm import load_causal_lm

        loaded = load_causal_lm(self.lm)
        return lm_relevance(loaded.model, loaded.tokenizer, question, [u.text for u in units], batch_size=self.lm_batch_size)

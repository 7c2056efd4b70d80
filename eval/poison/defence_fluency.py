"""A defence against planted passages: flag passages a small causal LM finds far less fluent than the corpus.

A gradient-guided attack picks each substituted token for what it does to the embedding, not for
the words around it, so its passages hold words no writer would put there; a language model is
surprised by them. The score of a passage is a statistic of its per-token surprisal
(``-log p(token | the tokens before)``, in nats) under SmolLM2-135M (``compression.lm``): the
mean of the ``top_share`` most surprising tokens, so a few odd words count even in a long text.
Only the first ``window`` LM tokens are scored, which keeps the cost bounded and compares a
planted passage (64 encoder tokens at most) with text of about its own length. Texts are
lower-cased first: the attacks' passages come out of an uncased tokenizer, and case alone would
otherwise tell them from the corpus (an attacker restores it at no cost).

The threshold is the ``quantile`` of the scores of a seeded sample of the clean chunks; a second,
disjoint sample (``held_out``) is where the probe measures the false alarms on genuine text the
threshold never saw. The test reads the text alone, so it flags a passage the same whether it
is indexed or arrives later, at indexing or at query time; scores are memoised by text.
torch is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Scorer = Callable[[Sequence[str]], list[np.ndarray]]  # texts -> per-token surprisals of each


def lm_surprisals(lm: Any, texts: Sequence[str], window: int, batch: int = 16) -> list[np.ndarray]:
    """Per-token surprisal (nats) of the first ``window`` tokens of each text under ``lm``
    (a ``compression.lm.LoadedLM``), each text scored after the beginning-of-text token."""
    import torch

    tokenizer, model = lm.tokenizer, lm.model
    start = getattr(tokenizer, "bos_token_id", None)
    start = tokenizer.eos_token_id if start is None else start
    out: list[np.ndarray] = []
    for first in range(0, len(texts), batch):
        rows = [[start, *tokenizer(text, add_special_tokens=False)["input_ids"][:window]] for text in texts[first:first + batch]]
        width = max(len(row) for row in rows)
        ids = torch.tensor([row + [start] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        surprisal = -torch.log_softmax(logits, dim=-1).gather(2, ids[:, 1:, None])[:, :, 0]
        out += [surprisal[i, :len(row) - 1].numpy().astype(np.float64) for i, row in enumerate(rows)]
    return out


def top_mean(surprisals: np.ndarray, share: float) -> float:
    """The mean of the ``share`` highest surprisals (at least one token; 0 for an empty text)."""
    if not len(surprisals):
        return 0.0
    count = max(1, int(round(share * len(surprisals))))
    return float(np.sort(surprisals)[-count:].mean())


class FluencyDefence:
    """Flags passages whose surprisal statistic exceeds a threshold calibrated on clean chunks."""

    name = "fluency"

    def __init__(self, scorer: Scorer, top_share: float, threshold: float = np.inf) -> None:
        if not 0.0 < top_share <= 1.0:
            raise ValueError(f"top_share must be in (0, 1], got {top_share}; e.g. 0.25")
        self.scorer, self.top_share, self.threshold = scorer, top_share, threshold
        self.memo: dict[str, float] = {}
        self.held_out: np.ndarray | None = None  # rows of the calibration texts left out of the threshold

    @classmethod
    def calibrate(cls, scorer: Scorer, clean_texts: Sequence[str], *, top_share: float, quantile: float, sample: int,
                  seed: int) -> FluencyDefence:
        """Threshold = the ``quantile`` of ``sample`` clean texts' scores; ``held_out`` = up to
        ``sample`` other rows of ``clean_texts``, for measuring false alarms."""
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}; e.g. 0.99")
        if len(clean_texts) < 2:
            raise ValueError("the fluency defence needs at least two indexed passages to calibrate on")
        order = np.random.default_rng(seed).permutation(len(clean_texts))
        size = min(sample, (len(clean_texts) + 1) // 2)
        calibration, held_out = order[:size], order[size:2 * size]
        defence = cls(scorer, top_share)
        defence.threshold = float(np.quantile(defence.scores([clean_texts[i] for i in calibration]), quantile))
        defence.held_out = np.sort(held_out)
        return defence

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """The surprisal statistic of each text (lower-cased), memoised."""
        todo = list(dict.fromkeys(text.lower() for text in texts if text.lower() not in self.memo))
        for text, surprisals in zip(todo, self.scorer(todo)):
            self.memo[text] = top_mean(surprisals, self.top_share)
        return np.array([self.memo[text.lower()] for text in texts], dtype=np.float64)

    def flagged(self, chunk_ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """True where a passage scores above the threshold."""
        return self.scores(texts) > self.threshold

    def flagged_as_new(self, doc_ids: Sequence[str], chunk_ids: Sequence[int], texts: Sequence[str],
                       vectors: np.ndarray) -> np.ndarray:
        """The same as ``flagged``: the test reads the text alone."""
        return self.flagged(chunk_ids, texts, vectors)

"""Random passages: words drawn uniformly from the tokenizer's vocabulary (the control)."""

from __future__ import annotations

import numpy as np

from eval.poison.base import Topic
from eval.poison.text import cut_to_tokens, whole_words
from retrieval.base import TokenCounter


class RandomPassages:
    """``length``-token passages of random vocabulary words, independent of the topic's questions."""

    name = "random"

    def __init__(self, counter: TokenCounter, vocab: dict[str, int], length: int, seed: int) -> None:
        self.counter, self.length, self.seed = counter, length, seed
        self.words = sorted(whole_words(vocab))

    def passages(self, topic: Topic, n: int) -> tuple[str, ...]:
        """``n`` random passages, seeded by the topic so reruns plant the same ones."""
        rng = np.random.default_rng([self.seed, topic.topic_id])
        return tuple(cut_to_tokens(" ".join(rng.choice(self.words, size=self.length)), self.counter, self.length)
                     for _ in range(n))

"""Query stuffing: the topic's attack questions concatenated, and a keyword-stuffed variant.

Both write ``n`` different passages (``distinct`` retrieval collapses identical texts, so copies
would be one passage): passage ``i`` takes the questions, or the keywords, in its own order.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from eval.poison.base import Topic
from eval.poison.text import cut_to_tokens
from retrieval.base import TokenCounter
from retrieval.lexical import lexical_tokens


def question_orders(count: int, n: int, seed: int) -> list[list[int]]:
    """``n`` orders of ``count`` questions: the rotations first, then seeded shuffles."""
    orders = [[(start + j) % count for j in range(count)] for start in range(min(n, count))]
    rng = np.random.default_rng(seed)
    while len(orders) < n:
        orders.append([int(i) for i in rng.permutation(count)])
    return orders


class QueryStuffing:
    """The attack questions themselves, concatenated (cut to ``length`` tokens)."""

    name = "query-stuffing"

    def __init__(self, counter: TokenCounter, length: int, seed: int) -> None:
        self.counter, self.length, self.seed = counter, length, seed

    def passages(self, topic: Topic, n: int) -> tuple[str, ...]:
        """Passage ``i``: the questions in order ``i`` (``question_orders``)."""
        texts = [question.text.strip() for question in topic.attack]
        return tuple(cut_to_tokens(" ".join(texts[j] for j in order), self.counter, self.length)
                     for order in question_orders(len(texts), n, self.seed + topic.topic_id))


class KeywordStuffing:
    """The content words of the attack questions, repeated by frequency to ``length`` tokens."""

    name = "keyword-stuffing"

    def __init__(self, counter: TokenCounter, length: int, seed: int) -> None:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        self.counter, self.length, self.seed = counter, length, seed
        self.stop_words = ENGLISH_STOP_WORDS

    def keywords(self, topic: Topic) -> list[str]:
        """Content words of the attack questions, most frequent first (ties: first seen)."""
        counts = Counter(word for question in topic.attack for word in lexical_tokens(question.text)
                         if word not in self.stop_words and not word.isdigit())
        return [word for word, _ in counts.most_common()] or ["the"]

    def passages(self, topic: Topic, n: int) -> tuple[str, ...]:
        """Passage ``i``: the keywords cycled until long enough, shuffled by seed ``i``."""
        words = self.keywords(topic)
        filler = (words * (self.length // len(words) + 1))[:self.length]
        out = []
        for number in range(n):
            rng = np.random.default_rng([self.seed, topic.topic_id, number])
            out.append(cut_to_tokens(" ".join(rng.permutation(filler)), self.counter, self.length))
        return tuple(out)

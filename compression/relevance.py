"""Question evidence: the sentences worth keeping whole (LongLLMLingua's evidence idea, cheaply).

Token pruning at rate 0.33 keeps about a third of every sentence it touches, so a reference
sentence survives only if it is chosen *whole*. With a question, the sentences of all contexts
are scored by Okapi BM25 against the question (``rank_bm25`` via ``retrieval.lexical``), plus
``NEIGHBOUR`` times the better of the two adjacent sentences' scores in the same context
(evidence usually spans consecutive sentences), weighted by ``1 / (1 + rank)`` of their context
(the retriever, or the coarse stage, already ranked the contexts), and taken greedily, whole,
until the evidence budget is spent. The rest of the budget is token-pruned as usual.

Why not the LM: on development questions (rows[3::6] of the shared questions.csv; whole
sentences filling the whole 0.33 budget) ranking sentences by the question's attention (q·k over
the context, pooled per sentence) kept 0.20 of the reference characters, by context order 0.89,
by BM25 x rank prior 0.90, with the neighbour term 0.94.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from compression.segment import split_sentences
from compression.units import Unit

# Weight of the best adjacent sentence's BM25 score in a sentence's own score.
NEIGHBOUR = 0.5


@dataclass(frozen=True)
class Sentence:
    """Units ``[first, last]`` (inclusive) of context ``context``: one sentence, ``n_tokens`` LM tokens."""

    context: int
    first: int
    last: int
    n_tokens: int


def sentence_of_units(text: str, units: Sequence[Unit]) -> np.ndarray:
    """Sentence index of every unit (a unit's leading blanks belong to the sentence its word starts)."""
    starts = [s.start for s in split_sentences(text)] or [0]
    groups = []
    for unit in units:
        piece = text[unit.start : unit.end]
        first = unit.start + len(piece) - len(piece.lstrip())
        groups.append(max(0, bisect.bisect_right(starts, first) - 1))
    return np.array(groups, dtype=np.int64)


def sentences(context: int, text: str, units: Sequence[Unit]) -> list[Sentence]:
    """The sentences of one context as contiguous unit ranges."""
    if not units:
        return []
    groups = sentence_of_units(text, units)
    cuts = [0] + [k for k in range(1, len(units)) if groups[k] != groups[k - 1]] + [len(units)]
    return [
        Sentence(context, a, b - 1, sum(u.n_tokens for u in units[a:b]))
        for a, b in zip(cuts[:-1], cuts[1:])
    ]


def choose_evidence(
    question: str, texts: Sequence[str], units: Sequence[Sequence[Unit]], order: Sequence[int], budget: int
) -> list[Sentence]:
    """Whole sentences most relevant to ``question``, at most ``budget`` tokens in total.

    ``order``: context indices, best first (the rank prior). Sentences that do not fit are
    skipped, so smaller relevant ones can still fill the budget.
    """
    from retrieval.lexical import BM25Index

    pool = [s for i in order for s in sentences(i, texts[i], units[i])]
    if budget <= 0 or not pool:
        return []
    rank_of = {c: r for r, c in enumerate(order)}
    pieces = [texts[s.context][units[s.context][s.first].start : units[s.context][s.last].end] for s in pool]
    prior = np.array([1.0 / (1.0 + rank_of[s.context]) for s in pool])
    lexical = BM25Index(pieces).scores(question)
    scores = (lexical + NEIGHBOUR * _best_neighbour(pool, lexical)) * prior
    chosen, total = [], 0
    for k in np.argsort(-scores, kind="stable"):
        if scores[k] <= 0:
            break  # no question term in it: token scores decide, not a lexical tie
        if total + pool[k].n_tokens <= budget:
            chosen.append(pool[k])
            total += pool[k].n_tokens
    return chosen


def _best_neighbour(pool: Sequence[Sentence], scores: np.ndarray) -> np.ndarray:
    """The higher score of each sentence's previous and next sentence in the same context (0 at the ends)."""
    best = np.zeros(len(pool))
    for k in range(len(pool)):
        for j in (k - 1, k + 1):
            if 0 <= j < len(pool) and pool[j].context == pool[k].context:
                best[k] = max(best[k], scores[j])
    return best

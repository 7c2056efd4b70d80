"""Question evidence: the sentences worth keeping whole (LongLLMLingua's evidence idea, cheaply).

Token pruning at rate 0.33 keeps about a third of every sentence it touches, so a reference
sentence survives only if it is chosen *whole*. With a question, the sentences of all contexts
are scored against it and taken greedily, whole, until the evidence budget is spent; the rest of
the budget is token-pruned as usual. Two scorings (``SCORINGS``):

* ``"fused"`` (default): the z-score of the sentence's MiniLM cosine to the question (the
  extractive compressor's scorer and encoder, ``compression.extractive_scoring``) plus
  ``LEXICAL`` times the z-score of its Okapi BM25 score (``rank_bm25`` over ``retrieval.lexical``'s
  words; ``STEM`` can add Snowball stems), plus
  ``NEIGHBOUR`` times the better adjacent sentence's fused score in the same context (evidence
  spans consecutive sentences), plus ``PRIOR / (1 + rank)`` of its context (the retriever already
  ranked the contexts: on development questions 72% of the reference characters sit in the top
  chunk). Every sentence is a candidate, so the whole evidence budget is spent.
* ``"bm25"``: BM25 plus ``NEIGHBOUR`` times the better neighbour's, times ``1 / (1 + rank)``;
  sentences without a question term are never evidence.

Why (development questions rows[1::6] / rows[3::6] of the shared questions.csv, top-5 chunks,
rate 0.33; share of the reference characters retrieval found that are kept). Evidence sentences
alone (0.9 of the budget): BM25 x prior 0.785 / 0.906, MiniLM cosine alone 0.695 / 0.800, context
order 0.741 / 0.825, fused 0.898 / 0.914; multiplying the fused score by the prior, reciprocal-rank
fusion, the window/passage views of the extractive scorer, shorter sentence pieces, length
normalisation or a bonus for neighbours of chosen sentences did no better. Whole compressor:
BM25 0.796 / 0.915, fused 0.911 / 0.924 (evidence share 1.0: 0.922 / 0.921, within noise, so the
token-pruned share stays); with sentences also cut at record boundaries (``}, {``: chat-log
messages) 0.904 / 0.939 for evidence alone (0.898 / 0.914 without). The LM's attention (q.k pooled per sentence) kept 0.20 on rows[3::6].

Session 4 (same development sets, evidence alone; mean share over rates 0.25/0.33/0.4, then over
0.2/0.3/0.5): session 3's scoring 0.854 / 0.925, 0.812 / 0.902; BM25 over stems only 0.866 / 0.887;
words + stems (``STEM = 2``) 0.850 / 0.925, 0.828 / 0.915 — but the whole compressor with it kept
0.882 / 0.941 at rate 0.33 (0.914 / 0.942 with words), so words stay. Also tried, kept as constants
and off by default because they were not better on the development sets: a covered question term's
BM25 weight discounted after each chosen sentence (``COVERAGE`` 0.8 with stems 0.877 / 0.893; 0.5
and 0.7 without stems, rate 0.33 only: 0.874 / 0.886, 0.877 / 0.917 vs 0.904 / 0.939), strong
evidence exempt from the rank prior (``STRONG`` 2 / 2.5 / 3: 0.842 / 0.879, 0.849 / 0.897,
0.852 / 0.918; with stems and 2: 0.867 / 0.929 but 0.822 / 0.876 over 0.2/0.3/0.5), a weaker prior
(2.5: 0.851 / 0.921; at rate 0.33, 2 and 1.5: 0.868 / 0.939, 0.843 / 0.939), and skipping
near-duplicates (``DUPLICATE`` 0.9 or 0.95: no change). The selection is then a re-scoring greedy
(``_covering_greedy``), identical to a plain greedy over the fused scores while those are off.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from compression.segment import split_sentences
from compression.units import Unit

SCORINGS = ("fused", "bm25")
# A record boundary inside a line: "}, {" (the new sentence starts at the brace).
_RECORD = re.compile(r"\},\s*\{")
# Weight of the best adjacent sentence's score in a sentence's own score.
NEIGHBOUR = 0.5
# Fused scoring: weight of BM25's z-score next to the cosine's, and of the context-rank prior.
LEXICAL = 1.0
PRIOR = 3.0
# BM25's terms: 0 = words; 1 = Snowball English stems ("recording" finds "recorded"); 2 = both (a
# variant still matches, an exact match counts twice). Words: stems did not hold up on the whole
# compressor (module docstring).
STEM = 0
# Once a chosen sentence contains a question term, that term's BM25 weight is multiplied by this for
# the sentences still to choose (1 = off), so sentences covering the other question terms rise.
COVERAGE = 1.0
# A sentence whose own fused score (z cosine + LEXICAL z BM25) is at least this gets the best
# context's prior: the rank prior cannot bury strong evidence in a later context (inf = off).
STRONG = float("inf")
# A sentence whose MiniLM cosine to a chosen one is at least this is a near-duplicate and skipped.
DUPLICATE = 2.0


@dataclass(frozen=True)
class Sentence:
    """Units ``[first, last]`` (inclusive) of context ``context``: one sentence, ``n_tokens`` LM tokens."""

    context: int
    first: int
    last: int
    n_tokens: int


def sentence_starts(text: str) -> list[int]:
    """Where sentences start: the segmenter's sentences, also cut where a new record opens (``}, {``).

    Chat logs and other lists of records often end a record without sentence punctuation
    ("...?', 'role': 'user'}, {'content': 'This feature..."), so the segmenter runs several
    messages into one long sentence that is then kept or dropped as a whole.
    """
    starts = {s.start for s in split_sentences(text)} | {m.end() - 1 for m in _RECORD.finditer(text)}
    return sorted(starts) or [0]


def sentence_of_units(text: str, units: Sequence[Unit]) -> np.ndarray:
    """Sentence index of every unit (a unit's leading blanks belong to the sentence its word starts)."""
    starts = sentence_starts(text)
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
    question: str,
    texts: Sequence[str],
    units: Sequence[Sequence[Unit]],
    order: Sequence[int],
    budget: int,
    encoder: Any = None,
) -> list[Sentence]:
    """Whole sentences most relevant to ``question``, at most ``budget`` tokens in total.

    ``order``: context indices, best first (the rank prior). ``encoder`` (a
    ``retrieval.base.Encoder``): fused MiniLM + BM25 scores; None: BM25 alone. Sentences that do
    not fit are skipped, so smaller relevant ones can still fill the budget.
    """
    pool = [s for i in order for s in sentences(i, texts[i], units[i])]
    if budget <= 0 or not pool:
        return []
    rank_of = {c: r for r, c in enumerate(order)}
    ranks = np.array([rank_of[s.context] for s in pool], dtype=np.float64)
    pieces = [texts[s.context][units[s.context][s.first].start : units[s.context][s.last].end] for s in pool]
    terms = term_scores(pieces, question)
    if encoder is None:
        lexical = terms.sum(axis=1)
        scores = (lexical + NEIGHBOUR * best_neighbour(pool, lexical)) / (1.0 + ranks)
        return _greedy(pool, scores, budget, positive_only=True)  # no question term: token scores decide
    vectors = np.asarray(encoder.encode(list(pieces)), dtype=np.float64)
    query = np.asarray(encoder.encode([question])[0], dtype=np.float64)
    return _covering_greedy(pool, terms, vectors, vectors @ query, ranks, budget)


def bm25_terms(text: str) -> list[str]:
    """BM25's terms of ``text``: ``retrieval.lexical.lexical_tokens``'s words, their Snowball stems, or both (``STEM``)."""
    from retrieval.lexical import lexical_tokens

    tokens = lexical_tokens(text)
    if not STEM or not tokens:
        return tokens
    import snowballstemmer

    # A fresh stemmer per call: stemmer objects keep state while stemming (not thread-safe).
    stems = snowballstemmer.stemmer("english").stemWords(tokens)
    return stems if STEM == 1 else tokens + [f"{stem}~" for stem in stems]


def term_scores(pieces: Sequence[str], question: str) -> np.ndarray:
    """Okapi BM25 of each piece split by question term: ``[piece, term]``; rows sum to the BM25 score.

    A term repeated in the question counts once per occurrence, as in ``BM25Okapi.get_scores``.
    """
    from rank_bm25 import BM25Okapi

    # rank_bm25 divides by the mean document length: an all-empty corpus would divide by 0.
    bm25 = BM25Okapi([bm25_terms(p) or ["\0"] for p in pieces])
    query = bm25_terms(question)
    distinct = sorted(set(query))
    if not distinct:
        return np.zeros((len(pieces), 1))
    columns = [query.count(t) * np.asarray(bm25.get_scores([t]), dtype=np.float64) for t in distinct]
    return np.stack(columns, axis=1)


def fused_scores(lexical: np.ndarray, semantic: np.ndarray, pool: Sequence[Sentence], ranks: np.ndarray) -> np.ndarray:
    """z(cosine) + LEXICAL z(BM25), plus NEIGHBOUR x the better neighbour's, plus PRIOR / (1 + context rank)."""
    return _fused(zscore(semantic), zscore(lexical), pool, ranks)


def _fused(z_semantic: np.ndarray, z_lexical: np.ndarray, pool: Sequence[Sentence], ranks: np.ndarray) -> np.ndarray:
    fused = z_semantic + LEXICAL * z_lexical
    prior = np.where(fused >= STRONG, PRIOR, PRIOR / (1.0 + ranks))
    return fused + NEIGHBOUR * best_neighbour(pool, fused) + prior


def _covering_greedy(
    pool: Sequence[Sentence], terms: np.ndarray, vectors: np.ndarray, semantic: np.ndarray, ranks: np.ndarray, budget: int
) -> list[Sentence]:
    """Fused-score greedy that re-scores after each choice: covered question terms weigh ``COVERAGE``
    times less, and near-duplicates (cosine >= ``DUPLICATE``) of a chosen sentence are skipped.

    BM25 stays on the scale of the first round (its initial mean and spread), so discounting a term
    lowers the sentences that have it instead of re-normalising everyone.
    """
    z_semantic = zscore(semantic)
    initial = terms.sum(axis=1)
    mean, spread = float(initial.mean()), float(initial.std())
    weights = np.ones(terms.shape[1])
    open_ = np.ones(len(pool), dtype=bool)
    chosen: list[int] = []
    total = 0
    while open_.any() and total < budget:
        lexical = terms @ weights
        z_lexical = (lexical - mean) / spread if spread > 0 else np.zeros_like(lexical)
        k = int(np.argmax(np.where(open_, _fused(z_semantic, z_lexical, pool, ranks), -np.inf)))
        open_[k] = False
        if total + pool[k].n_tokens > budget:
            continue
        if chosen and float(np.max(vectors[chosen] @ vectors[k])) >= DUPLICATE:
            continue
        chosen.append(k)
        total += pool[k].n_tokens
        weights[terms[k] > 0] *= COVERAGE
    return [pool[k] for k in chosen]


def zscore(values: np.ndarray) -> np.ndarray:
    """(x - mean) / std; all zeros when the values are constant (they rank nothing)."""
    values = np.asarray(values, dtype=np.float64)
    spread = float(values.std())
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def best_neighbour(pool: Sequence[Sentence], scores: np.ndarray) -> np.ndarray:
    """The higher score of each sentence's previous and next sentence in the same context (0 if it has none)."""
    best = np.zeros(len(pool))
    for k in range(len(pool)):
        around = [scores[j] for j in (k - 1, k + 1) if 0 <= j < len(pool) and pool[j].context == pool[k].context]
        best[k] = max(around) if around else 0.0
    return best


def _greedy(pool: Sequence[Sentence], scores: np.ndarray, budget: int, positive_only: bool) -> list[Sentence]:
    """Best-scored sentences that still fit the budget, in score order."""
    chosen, total = [], 0
    for k in np.argsort(-scores, kind="stable"):
        if positive_only and scores[k] <= 0:
            break
        if total + pool[k].n_tokens <= budget:
            chosen.append(pool[k])
            total += pool[k].n_tokens
    return chosen

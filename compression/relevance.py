"""Question evidence: the sentences worth keeping whole (LongLLMLingua's evidence idea, cheaply).

Token pruning at rate 0.33 keeps about a third of every sentence it touches, so a reference
sentence survives only if it is chosen *whole*. With a question, the sentences of all contexts
are scored against it and taken greedily, whole, until the evidence budget is spent; the rest of
the budget is token-pruned as usual. Two scorings (``SCORINGS``):

* ``"fused"`` (default): the z-score of the sentence's MiniLM cosine to the question (the
  extractive compressor's scorer and encoder, ``compression.extractive_scoring``) plus
  ``LEXICAL`` times the z-score of its Okapi BM25 score (``retrieval.lexical``), plus
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
0.2/0.3/0.5; code of these variants: commit 90d332a, removed afterwards as none was adopted):
session 3's scoring 0.854 / 0.925, 0.812 / 0.902; BM25 over Snowball stems only 0.866 / 0.887;
words + stems 0.850 / 0.925, 0.828 / 0.915, but the whole compressor with them kept 0.882 / 0.941 at
rate 0.33 (0.914 / 0.942 with words), so words stay. Not better either: discounting a question
term's BM25 weight once a chosen sentence covers it (x0.8 with stems 0.877 / 0.893; x0.5 / x0.7
without, rate 0.33 only: 0.874 / 0.886, 0.877 / 0.917 vs 0.904 / 0.939), exempting strong evidence
(own fused z >= 2 / 2.5 / 3) from the rank prior (0.842 / 0.879, 0.849 / 0.897, 0.852 / 0.918), a
weaker prior (2.5: 0.851 / 0.921; at rate 0.33, 2 and 1.5: 0.868 / 0.939, 0.843 / 0.939), skipping
near-duplicates (cosine >= 0.9 / 0.95 to a chosen sentence: no change).

Session 5: fitting the scoring instead of hand-tuning it (logistic regression, per-question softmax,
pairwise, a search on the measure itself; up to 12 cheap features incl. Snowball stems; 2-fold
cross-validation over the development sets, ``benchmarks/sweeps/evidence_fit.py``) did not beat
these constants on either held-out fold (figures: notes of benchmarks/results/compression_llmlingua.md).
A perfect scoring would keep 0.995 / 1.000 of the evidence there: the loss is all in the scoring,
mostly evidence spread over two chunks whose lower-ranked part has little cosine or BM25 signal.
Pseudo-relevance feedback (the top 1-3 sentences' mean vector and words as a second query, weight
0.1-1.0) lost on both folds (best 0.853 / 0.921).

Session 6: stitching the top-5 chunks that are contiguous in their source into one context before
compressing (``compression/stitch.py`` and ``evidence_dev.py --stitch`` at commit 9152f8f, removed
afterwards as it was not adopted; 62 / 47 joins over the 170 / 165 chunks; the measure unchanged:
kept characters mapped back to the original chunks). Evidence alone
(rates 0.25/0.33/0.4, rows[1::6] / rows[3::6]; current 0.854 / 0.925): the stitched context's best
rank for all its sentences 0.838 / 0.901 (PRIOR 1 / 2 / 4: 0.802 / 0.889, 0.824 / 0.887, 0.827 /
0.890; NEIGHBOUR 0.8: 0.801 / 0.865); each sentence with the rank of the chunk it comes from (the
better one across a boundary) 0.875 / 0.925. Whole compressor at rate 0.33 with
that prior: 0.924 / 0.932 vs 0.914 / 0.942, so NOT adopted (it had to win on both). Stitched
contexts are also longer than one scoring window (256 tokens), so the compressor leaves its
one-pass packed scoring for the windowed path, which costs time against the 1.3x floor target.

Session 7: the LM's question likelihood (UPR: mean log P(question | "Passage: <sentence>\nQuestion:")
under SmolLM2-135M, per sentence and per sentence with its neighbours;
``benchmarks/sweeps/evidence_lm.py``, cost ignored) does not help. Evidence alone, rates
0.25/0.33/0.4, rows[1::6] / rows[3::6], current 0.854 / 0.925: the LM score alone + the rank prior
0.751 / 0.877 (with neighbours 0.827 / 0.856); added to the fused score with weight 0.25 / 0.5 / 1 / 2
0.843 / 0.921, 0.814 / 0.907, 0.777 / 0.896, 0.746 / 0.864 (with neighbours 0.848 / 0.910,
0.862 / 0.910, 0.840 / 0.880, 0.813 / 0.869); only the top 10-30 sentences rescored, at best
0.862 / 0.910; fitted on one set (listwise / coordinate search), held out 0.890 / 0.852 and
0.838 / 0.840. No variant wins on both sets, so nothing was built into the compressor. Nor does
a prior from the retriever's scores instead of its ranks (each chunk's MiniLM cosine to the
question, same script): z(chunk cosine) x 1 / 2 / 3 in place of the rank prior 0.799 / 0.929,
0.811 / 0.919, 0.806 / 0.909, added to it 0.834 / 0.917, 0.812 / 0.930, 0.804 / 0.901; 3 x a
softmax of the chunk cosines (temperature 0.02 / 0.05 / 0.1) in its place 0.842 / 0.907,
0.816 / 0.926, 0.817 / 0.926. A lead, not adopted: neighbour smoothing across chunk boundaries
(a chunk's last sentence and the first sentence of the top-5 chunk that follows it in the source
are neighbours; contexts stay separate, so token pruning is unchanged), link weight 0.5 / 1 / 2:
evidence alone 0.865 / 0.926, 0.878 / 0.922, 0.846 / 0.922; whole compressor at rate 0.33
(current 0.914 / 0.942): weight 0.5 0.918 / 0.942, weight 1 0.936 / 0.933. Weight 0.5 wins one set
by 0.005 and ties the other: within a question's noise, and it needs the contexts' source spans
in the compressor's API, so it was left for now (``evidence_lm.py --full-check 0.5 1.0``).
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
    from retrieval.lexical import BM25Index

    pool = [s for i in order for s in sentences(i, texts[i], units[i])]
    if budget <= 0 or not pool:
        return []
    rank_of = {c: r for r, c in enumerate(order)}
    ranks = np.array([rank_of[s.context] for s in pool], dtype=np.float64)
    pieces = [texts[s.context][units[s.context][s.first].start : units[s.context][s.last].end] for s in pool]
    lexical = BM25Index(pieces).scores(question)
    if encoder is None:
        scores = (lexical + NEIGHBOUR * best_neighbour(pool, lexical)) / (1.0 + ranks)
        return _greedy(pool, scores, budget, positive_only=True)  # no question term: token scores decide
    scores = fused_scores(lexical, semantic_scores(question, pool, pieces, encoder), pool, ranks)
    return _greedy(pool, scores, budget, positive_only=False)


def semantic_scores(question: str, pool: Sequence[Sentence], pieces: Sequence[str], encoder: Any) -> np.ndarray:
    """Cosine of each sentence to the question, by the extractive compressor's scorer (sentence view only)."""
    from compression.extractive_scoring import ScoreWeights, embedding_scores
    from compression.sentence_units import Unit as SentenceUnit

    # Only the sentence view is used, so passages, spans and token counts are placeholders.
    units = [SentenceUnit(s.context, 0, 0, piece, s.context, s.n_tokens) for s, piece in zip(pool, pieces)]
    passages = [""] * (max(s.context for s in pool) + 1)
    return np.asarray(embedding_scores(units, passages, question, encoder, ScoreWeights(1.0, 0.0, 0.0)), dtype=np.float64)


def fused_scores(lexical: np.ndarray, semantic: np.ndarray, pool: Sequence[Sentence], ranks: np.ndarray) -> np.ndarray:
    """z(cosine) + LEXICAL z(BM25), plus NEIGHBOUR x the better neighbour's, plus PRIOR / (1 + context rank)."""
    fused = zscore(semantic) + LEXICAL * zscore(lexical)
    return fused + NEIGHBOUR * best_neighbour(pool, fused) + PRIOR / (1.0 + ranks)


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

"""LLMLingua-style token pruning scored by a small causal LM (LongLLMLingua when a question is given).

Pipeline, each step its own module:
  units (word grouping) + protect (tiers) [+ relevance: question evidence] -> scoring
  (iterative, KV reused, at most one pass over the input; tokens kept anyway get no output-layer
  work) -> coarse (rank contexts, keep whole ones, rate rising with rank) -> select (exact
  budget) -> reassemble (text + provenance spans).

Scores: surprisal (nats) of each token given the already-compressed prefix. With a question
(LongLLMLingua), no context is dropped whole (the retriever ranked them; the coarse stage only
gives better-ranked ones a higher rate), and a share ``evidence`` of the budget goes to whole
sentences most relevant to the question (relevance.py: MiniLM cosine fused with BM25 and the
context's rank); the rest is token-pruned. Options:
``rank="question"`` orders contexts by the question's surprisal after each context instead of the
given order, and ``contrastive=True`` adds LongLLMLingua's contrastive token scores (surprisal
without minus with the question; one more pass over the partly pruned contexts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compression.base import Budget, CompressionResult, KeptSpan
from compression.llmlingua.coarse import REORDERS, allocate, output_order, rank_contexts, select_contexts
from compression.llmlingua.protect import EVIDENCE, MUST, PROTECTED, check_detectors, unit_tiers
from compression.llmlingua.reassemble import merge_spans, reassemble
from compression.llmlingua.relevance import SCORINGS, choose_evidence
from compression.llmlingua.scoring import IncrementalScorer, max_positions, prime, score_blocks
from compression.llmlingua.select import adjust, running_threshold, select_units, unit_scores
from compression.llmlingua.units import Unit, count_tokens, split_units, tokenize
from compression.lm import DEFAULT_LM, load_causal_lm

# Budget fixes after re-tokenising the output (the joined text can tokenise a little differently).
MAX_FIX_ROUNDS = 4
# How contexts are ordered when a question is given: as given (retriever's rank) or by the LM.
RANKS = ("given", "question")
# With a question, the worst-ranked context still gets this fraction of the mean rate (never dropped whole).
MIN_RATE_WEIGHT = 0.25


@dataclass
class _Context:
    """Per-context working state."""

    text: str
    ids: list[int]
    units: list[Unit]
    tiers: np.ndarray
    token_floor: np.ndarray  # True where the token belongs to a must-keep/protected unit
    masks: list[list[bool]] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)
    scored_upto: int = 0
    scorer: Any = None
    surprisal: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    rank_score: float = math.nan


@dataclass
class _Scoring:
    """One call's scoring state, kept off the compressor so one instance can serve several threads:
    the window size and the token scores seen so far (the running threshold's distribution)."""

    step: int
    seen: list[np.ndarray] = field(default_factory=list)


class LLMLinguaCompressor:
    """Token-pruning compressor: ``compress(contexts, Budget(rate=0.33), question=...)``.

    Options: ``lm`` (``"smollm2"`` or a local HF causal-LM directory), ``window`` (tokens per
    scoring step), ``iterative`` (condition each window on the compressed prefix), ``coarse``
    (rank and drop whole contexts when there are several), ``coarse_keep`` (whole contexts are
    kept until they hold this many times the budget), ``dynamic`` (how much the keep-rate
    rises with rank, 0 = flat), ``reorder`` (``"original"`` or ``"sort"``: best context first),
    ``protect`` (detectors: numbers, entities, structure), ``force_tokens`` (strings always
    kept), ``model``/``tokenizer`` (objects to use instead of loading ``lm``). With a question:
    ``evidence`` (share of the budget spent on whole question-relevant sentences, 0 = none),
    ``relevance`` (how those sentences are scored: ``"fused"`` MiniLM cosine + BM25 + rank prior,
    or ``"bm25"``; see relevance.py), ``encoder`` (sentence encoder for ``"fused"``; default the
    extractive compressor's, loaded on first use),
    ``rank`` (``"given"``: the input order is the relevance order; ``"question"``: the LM's
    question surprisal after each context), ``contrastive`` (contrastive token scores). Without a
    question and with several contexts, ``rank_tokens``: contexts are ranked by the perplexity of
    their first ``rank_tokens`` tokens and only the contexts the coarse stage keeps are scored to
    the end (0 = score every context whole first, as LLMLingua does).
    """

    name = "llmlingua"

    def __init__(
        self,
        lm: str = DEFAULT_LM,
        *,
        window: int = 256,
        iterative: bool = True,
        coarse: bool = True,
        coarse_keep: float = 1.5,
        dynamic: float = 1.0,
        reorder: str = "original",
        protect: Sequence[str] = ("numbers", "structure"),
        force_tokens: Sequence[str] = (),
        dtype: str = "float32",
        evidence: float = 0.9,
        rank_tokens: int = 0,
        rank: str = "given",
        contrastive: bool = False,
        relevance: str = "fused",
        model: Any = None,
        tokenizer: Any = None,
        encoder: Any = None,
    ) -> None:
        if window < 8:
            raise ValueError(f"window must be >= 8 tokens, got {window}")
        if coarse_keep < 1.0:
            raise ValueError(f"coarse_keep must be >= 1 (multiple of the budget kept as whole contexts), got {coarse_keep}")
        if reorder not in REORDERS:
            raise ValueError(f"unknown reorder '{reorder}'; valid: {', '.join(REORDERS)}")
        if not 0.0 <= evidence <= 1.0:
            raise ValueError(f"evidence must be in [0, 1] (share of the budget kept as whole sentences), got {evidence}")
        if rank_tokens < 0:
            raise ValueError(f"rank_tokens must be >= 0 (0 = rank by the whole context), got {rank_tokens}")
        if relevance not in SCORINGS:
            raise ValueError(f"unknown relevance '{relevance}'; valid: {', '.join(SCORINGS)}")
        if rank not in RANKS:
            raise ValueError(f"unknown rank '{rank}'; valid: {', '.join(RANKS)}")
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model= and tokenizer=, or neither (then lm= is loaded)")
        self.lm, self.window, self.iterative = lm, window, iterative
        self.coarse, self.coarse_keep, self.dynamic, self.reorder = coarse, coarse_keep, dynamic, reorder
        self.protect = check_detectors(protect)
        self.force_tokens = tuple(force_tokens)
        self.dtype = dtype
        self.evidence, self.rank, self.contrastive, self.rank_tokens = evidence, rank, contrastive, rank_tokens
        self.relevance = relevance
        self._model, self._tokenizer, self._encoder = model, tokenizer, encoder

    # -- model ---------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        """The LM and tokenizer, loaded on first use (memoised by ``load_causal_lm``)."""
        if self._model is None:
            loaded = load_causal_lm(self.lm, self.dtype)
            self._model, self._tokenizer = loaded.model, loaded.tokenizer
        return self._model, self._tokenizer

    def _sentence_encoder(self) -> Any:
        """The encoder of fused relevance: the extractive compressor's (one memoised loader), on first use."""
        if self.relevance != "fused":
            return None
        if self._encoder is None:
            from compression.extractive.models import default_encoder

            self._encoder = default_encoder()
        return self._encoder

    def _prefix(self, tokenizer: Any) -> list[int]:
        """The attention-sink token every sequence starts from (SmolLM2: ``<|im_start|>``)."""
        for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
            if token_id is not None:
                return [int(token_id)]
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start scoring from")

    # -- public API ----------------------------------------------------------------------
    def compress(
        self,
        contexts: Sequence[str],
        budget: Budget,
        question: str | None = None,
        protected: Sequence[KeptSpan] = (),
    ) -> CompressionResult:
        """Compress ``contexts`` to ``budget`` (LM tokens of the joined text, ±0.02 of the rate).

        ``protected``: user-marked spans (``KeptSpan(context, start, end)``) that are always kept.
        """
        contexts = _check_contexts(contexts)
        if not any(c.strip() for c in contexts):
            return CompressionResult("", (), 0, 0, self.name)
        model, tokenizer = self._load()
        joined = "\n\n".join(contexts)
        n_original = count_tokens(tokenizer, joined)
        target = budget.tokens_for(n_original)
        if target >= n_original:
            spans = tuple(KeptSpan(i, 0, len(c)) for i, c in enumerate(contexts) if c)
            text = "\n\n".join(c for c in contexts if c)
            return CompressionResult(text, spans, n_original, count_tokens(tokenizer, text), self.name)
        state = [self._prepare(i, c, tokenizer, protected) for i, c in enumerate(contexts)]
        prefix = self._prefix(tokenizer)
        # With a question every context is kept (the retriever chose them); without, whole ones are dropped.
        multi = self.coarse and sum(1 for s in state if s.ids) > 1 and not question
        provisional = min(1.0, target / n_original * (self.coarse_keep if multi else 1.0))
        by_lm = bool(question) and self.rank == "question"
        held = None
        if question and not by_lm:
            # The order is known before scoring: evidence first, so its tokens need no LM scores.
            held = self._mark_evidence(state, self._rank(state, question, False), target, question)
        question_ids = tokenize(tokenizer, f"\n\nQuestion: {question}")[0] if by_lm else None
        # Several contexts, no question: rank by the perplexity of their first rank_tokens, score only the kept ones on.
        probe = self.rank_tokens if multi and self.rank_tokens else None
        run = self._score_pass(model, prefix, state, provisional, question_ids, probe)
        order = self._rank(state, question, by_lm)
        kept = select_contexts(order, [len(s.ids) for s in state], math.ceil(target * self.coarse_keep)) if multi else [i for i in order if state[i].ids]
        for i in kept if probe else ():
            self._score_windows(run, state[i], len(state[i].ids), provisional)
        if question and held is None:
            held = self._mark_evidence(state, order, target, question)
        shares = self._shares(state, kept, _inner(target, kept), held)
        if question and self.contrastive:
            # Contexts kept whole or dropped need no token scores: contrast only the partly pruned ones.
            partial = [i for i in kept if 0 < shares[i] < len(state[i].ids)]
            self._contrast_pass(model, prefix, tokenizer, state, partial, question)
        keep = self._select(state, shares)
        return self._finish(contexts, state, order, keep, target, n_original, tokenizer)

    # -- steps ---------------------------------------------------------------------------
    def _prepare(self, index: int, text: str, tokenizer: Any, protected: Sequence[KeptSpan]) -> _Context:
        ids, offsets = tokenize(tokenizer, text) if text else ([], [])
        units = split_units(text, offsets)
        marked = [(p.start, p.end) for p in protected if p.context == index]
        tiers = np.array(unit_tiers(text, units, self.protect, self.force_tokens, marked), dtype=np.int64)
        floor = np.zeros(len(ids), dtype=bool)
        for unit, tier in zip(units, tiers):
            floor[unit.tok_start : unit.tok_end] = tier <= PROTECTED
        return _Context(text, ids, units, tiers, floor)

    def _score_pass(
        self, model: Any, prefix: list[int], state: list[_Context], keep_rate: float, question_ids: list[int] | None, upto: int | None = None
    ) -> _Scoring:
        """Iterative surprisal of every context up to token ``upto`` (all if None), then its rank score:
        the question's surprisal after it, or the mean surprisal of what was scored."""
        run = _Scoring(step=min(self.window, max_positions(model) // 2))  # a window must fit the LM's context
        todo = [ctx for ctx in state if ctx.ids]
        if upto is None and question_ids is None and all(len(ctx.ids) <= run.step for ctx in todo):
            self._score_batched(run, model, prefix, todo, keep_rate)
            return run
        primed = prime(model, prefix)  # every context starts from the same prefix: run it once
        for ctx in state:
            if not ctx.ids:
                continue
            ctx.scorer = IncrementalScorer(model, prefix, primed)
            ctx.surprisal = np.full(len(ctx.ids), np.nan, dtype=np.float32)
            self._score_windows(run, ctx, len(ctx.ids) if upto is None else min(upto, len(ctx.ids)), keep_rate)
            ctx.rank_score = ctx.scorer.continuation_nll(question_ids) if question_ids else _scored_mean(ctx.surprisal)
        return run

    def _score_batched(self, run: _Scoring, model: Any, prefix: list[int], todo: list[_Context], keep_rate: float) -> None:
        """Every context is one window: score them all in one forward pass (same scores as one by one)."""
        all_scores = score_blocks(model, prefix, [ctx.ids for ctx in todo], [~ctx.token_floor for ctx in todo])
        for ctx, scores in zip(todo, all_scores):
            floor = ctx.token_floor
            run.seen.append(scores[~floor])
            ctx.surprisal = ctx.scores = scores
            ctx.windows.append((0, len(ctx.ids)))
            ctx.masks.append(self._window_mask(scores, floor, np.concatenate(run.seen), keep_rate))
            ctx.scored_upto = len(ctx.ids)
            ctx.rank_score = _scored_mean(scores)

    def _score_windows(self, run: _Scoring, ctx: _Context, upto: int, keep_rate: float) -> None:
        """Score ``ctx`` window by window from where it stopped up to token ``upto``, pruning the KV cache."""
        for start in range(ctx.scored_upto, upto, run.step):
            end = min(start + run.step, upto)
            floor = ctx.token_floor[start:end]
            scores = ctx.scorer.score(ctx.ids[start:end], need=~floor)  # kept-anyway tokens need no score (NaN)
            run.seen.append(scores[~floor])
            ctx.surprisal[start:end] = scores
            mask = self._window_mask(scores, floor, np.concatenate(run.seen), keep_rate)
            ctx.windows.append((start, end))
            ctx.masks.append(mask)
            ctx.scorer.prune(mask)
        ctx.scored_upto = max(ctx.scored_upto, upto)
        ctx.scores = ctx.surprisal

    def _window_mask(self, scores: np.ndarray, floor: np.ndarray, seen: np.ndarray, keep_rate: float) -> list[bool]:
        """Which window tokens stay in the conditioning prefix: protected ones and those above the running threshold."""
        if not self.iterative:
            return [True] * len(scores)
        threshold = running_threshold(seen, keep_rate)
        return [bool(f or s >= threshold) for s, f in zip(scores, floor)]

    def _rank(self, state: list[_Context], question: str | None, by_lm: bool) -> list[int]:
        """Contexts most worth keeping first: as given (question, rank="given"), lowest question surprisal, or highest perplexity."""
        if question and not by_lm:
            order = list(range(len(state)))
        else:
            values = [s.rank_score if s.ids else math.nan for s in state]
            order = rank_contexts(values, higher_is_better=not by_lm)
        return [i for i in order if state[i].ids] + [i for i in order if not state[i].ids]

    def _mark_evidence(self, state: list[_Context], order: list[int], target: int, question: str) -> list[int]:
        """Raise the question's evidence sentences to the EVIDENCE tier; evidence tokens per context."""
        held = [0] * len(state)
        if self.evidence <= 0:
            return held
        kept = [i for i in order if state[i].ids]
        budget = int(self.evidence * _inner(target, kept))
        texts, units = [s.text for s in state], [s.units for s in state]
        for sentence in choose_evidence(question, texts, units, kept, budget, self._sentence_encoder()):
            ctx = state[sentence.context]
            tiers = ctx.tiers[sentence.first : sentence.last + 1]
            tiers[tiers > EVIDENCE] = EVIDENCE  # in place: select_units keeps these first
            ctx.token_floor[ctx.units[sentence.first].tok_start : ctx.units[sentence.last].tok_end] = True
            held[sentence.context] += sentence.n_tokens
        return held

    def _shares(self, state: list[_Context], kept: list[int], target: int, held: list[int] | None) -> dict[int, int]:
        """Tokens per kept context: evidence (``held``, with a question) first, then rates rising with rank."""
        sizes = [len(s.ids) for s in state]
        if held is None:
            return allocate(kept, sizes, target, self.dynamic)
        rest = allocate(kept, [n - h for n, h in zip(sizes, held)], target - sum(held[i] for i in kept), self.dynamic, MIN_RATE_WEIGHT)
        return {i: held[i] + rest[i] for i in kept}

    def _contrast_pass(self, model: Any, prefix: list[int], tokenizer: Any, state: list[_Context], kept: list[int], question: str) -> None:
        """Contrastive scores for the kept contexts: surprisal without minus with the question."""
        q_prefix = prefix + tokenize(tokenizer, f"Question: {question}\n\n")[0]
        primed = prime(model, q_prefix) if kept else None
        for i in kept:
            ctx = state[i]
            scorer = IncrementalScorer(model, q_prefix, primed)
            parts = []
            for k, (start, end) in enumerate(ctx.windows):
                parts.append(scorer.score(ctx.ids[start:end], need=~ctx.token_floor[start:end]))
                scorer.prune(ctx.masks[k])  # same compressed prefix as the first pass
            ctx.scores = ctx.surprisal - np.concatenate(parts)

    def _select(self, state: list[_Context], shares: dict[int, int]) -> dict[int, np.ndarray]:
        """Exact selection of units inside each context, to its budget (blank lines between contexts are budgeted by the caller)."""
        keep = {}
        for i, ctx in enumerate(state):
            n_units = len(ctx.units)
            if i not in shares or not n_units:
                keep[i] = ctx.tiers[:n_units] == MUST if n_units else np.zeros(0, dtype=bool)
                continue
            u_sizes = [u.n_tokens for u in ctx.units]
            keep[i] = select_units(u_sizes, unit_scores(ctx.units, ctx.scores), ctx.tiers, shares[i])
        return keep

    def _finish(
        self, contexts: Sequence[str], state: list[_Context], order: list[int], keep: dict[int, np.ndarray], target: int, n_original: int, tokenizer: Any
    ) -> CompressionResult:
        """Reassemble, re-tokenise, and nudge the selection until the budget is met exactly (or as close as units allow)."""
        flat = _Flat(state, order)
        mask = flat.gather(keep)
        out_order = output_order(len(contexts), order, self.reorder)
        for _ in range(MAX_FIX_ROUNDS):
            text, spans = reassemble(contexts, flat.spans(mask), out_order)
            n_out = count_tokens(tokenizer, text)
            if n_out == target:
                break
            mask = adjust(mask, flat.sizes, flat.scores, flat.tiers, flat.rank, target - n_out)
        else:
            text, spans = reassemble(contexts, flat.spans(mask), out_order)
            n_out = count_tokens(tokenizer, text)
        return CompressionResult(text, spans, n_original, n_out, self.name)


class _Flat:
    """All units of all contexts in flat arrays, for the global budget fix."""

    def __init__(self, state: list[_Context], order: list[int]) -> None:
        rank_of = {c: r for r, c in enumerate(order)}
        self.state = state
        self.owner = np.array([i for i, s in enumerate(state) for _ in s.units], dtype=np.int64)
        self.sizes = np.array([u.n_tokens for s in state for u in s.units], dtype=np.int64)
        self.tiers = np.concatenate([s.tiers for s in state]) if len(self.owner) else np.zeros(0, dtype=np.int64)
        self.scores = np.concatenate([unit_scores(s.units, s.scores) for s in state if s.units]) if len(self.owner) else np.zeros(0)
        self.rank = np.array([rank_of[i] for i in self.owner], dtype=np.int64)

    def gather(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        return np.concatenate([keep[i] for i, s in enumerate(self.state) if s.units]).astype(bool)

    def spans(self, mask: np.ndarray) -> dict[int, list[KeptSpan]]:
        result = {}
        for i, s in enumerate(self.state):
            result[i] = merge_spans(i, s.units, mask[self.owner == i])
        return result


def _scored_mean(surprisal: np.ndarray) -> float:
    """Mean surprisal of the scored tokens (NaN = not scored); NaN when none was scored."""
    scored = surprisal[~np.isnan(surprisal)]
    return float(scored.mean()) if scored.size else math.nan


def _inner(target: int, kept: Sequence[int]) -> int:
    """The budget left for context tokens once the blank lines between kept contexts are paid."""
    return max(0, target - 2 * (len(kept) - 1))


def _check_contexts(contexts: Sequence[str]) -> list[str]:
    """A list of strings; a bare string is a common mistake worth a clear message."""
    if isinstance(contexts, str):
        raise ValueError("contexts must be a list of strings, not one string: pass [text]")
    contexts = list(contexts)
    bad = [i for i, c in enumerate(contexts) if not isinstance(c, str)]
    if bad:
        raise ValueError(f"contexts must all be strings; item(s) {bad} are not")
    return contexts

"""Evaluate retrieval configurations on a dataset: chunk, embed (cached), index, retrieve, score.

All chunks of all corpora go into ONE exact index (a dense matrix product over normalised
vectors, plus BM25 for lexical/hybrid retrieval), as the benchmark does. An ``Evaluator`` keeps
the chunks and vectors of every chunking it has seen, so a sweep over k or retrieval options
re-chunks and re-embeds nothing, and the on-disk cache makes repeated sweeps cheap too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.base import EvalConfig, EvalDataset, EvalResult, MetricSummary, Question, QuestionScore, Span
from eval.embedding_cache import EmbeddingCache
from eval.metrics import TokenRanges, mean_percent, min_k, precision_omega, retrieval_scores
from retrieval.base import Chunker, Encoder, TokenCounter
from retrieval.lexical import BM25Index, fuse
from retrieval.postprocess import NEIGHBOUR_WEIGHT, first_distinct, merge_adjacent, with_neighbour_context

ChunkerFactory = Callable[[EvalConfig], Chunker]


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk of the evaluation index with its corpus and character span."""

    corpus_id: str
    start: int
    end: int
    n_tokens: int
    text: str


@dataclass
class _Chunking:
    chunks: list[IndexedChunk]
    vectors: np.ndarray
    chunk_seconds: float
    embed_seconds: float
    bm25: BM25Index | None = None


def default_chunker_factory(config: EvalConfig) -> Chunker:
    """The project's chunkers (``retrieval.chunkers.make_chunker``)."""
    from retrieval.chunkers import make_chunker

    options: dict[str, Any] = dict(config.chunker_options)
    return make_chunker(config.chunker, chunk_size=config.chunk_size, overlap=config.overlap, **options)


def chunk_corpora(corpora: Mapping[str, str], chunker: Chunker) -> list[IndexedChunk]:
    """Chunks of every corpus in document order; checks the span invariant of each chunk."""
    chunks = []
    for corpus_id, text in corpora.items():
        for piece in chunker.chunk(text):
            if text[piece.start:piece.end] != piece.text:
                raise ValueError(f"chunker returned a chunk whose text differs from '{corpus_id}'[{piece.start}:{piece.end}]")
            chunks.append(IndexedChunk(corpus_id, piece.start, piece.end, piece.n_tokens, piece.text))
    if not chunks:
        raise ValueError("the chunker produced no chunks for any corpus; check the corpora are not empty")
    return chunks


def rank_chunks(dense: np.ndarray, lexical: np.ndarray | None, config: EvalConfig) -> np.ndarray:
    """Chunk indices, best first, for one question under ``config.retrieval``."""
    if config.retrieval == "dense":
        scores = dense
    elif lexical is None:
        raise ValueError(f"{config.retrieval} retrieval needs the BM25 scores of the chunks")
    elif config.retrieval == "bm25":
        scores = lexical
    else:
        scores = fuse(dense, lexical, config.hybrid_weight)
    return np.argsort(-np.asarray(scores), kind="stable")


# One question's top k: each chunk handed on, with the chunks of identical text collapsed into it.
TopK = tuple[tuple[IndexedChunk, tuple[IndexedChunk, ...]], ...]


def _check_fixed_k(config: EvalConfig) -> None:
    if config.k == "min":
        raise ValueError("retrieve() needs a fixed k; k='min' depends on the references")


def top_k(order: np.ndarray, chunks: Sequence[IndexedChunk], k: int, distinct: bool) -> list[tuple[int, tuple[int, ...]]]:
    """The first ``k`` chunk indices of ``order`` with the indices collapsed into each (``first_distinct``)."""
    if not distinct:
        return [(int(i), ()) for i in order[:k]]
    picked = first_distinct((chunks[i].text for i in order), k)
    return [(int(order[p]), tuple(int(order[c]) for c in copies)) for p, copies in picked]


def spans_of(chunks: Iterable[IndexedChunk], merge: bool) -> list[Span]:
    """The chunks' corpus spans, merged where they overlap or touch when ``merge`` is set."""
    spans = [(c.corpus_id, c.start, c.end) for c in chunks]
    return [Span(*span) for span in (merge_adjacent(spans) if merge else spans)]


def summarise(scores: Sequence[QuestionScore]) -> MetricSummary:
    """Means (×100) of the question scores."""
    return MetricSummary(
        n_questions=len(scores),
        recall=mean_percent([s.recall for s in scores]),
        precision=mean_percent([s.precision for s in scores]),
        precision_omega=mean_percent([s.precision_omega for s in scores]),
        iou=mean_percent([s.iou for s in scores]),
        mean_retrieved_tokens=float(np.mean([s.retrieved_tokens for s in scores])) if scores else 0.0,
    )


class Evaluator:
    """Evaluates configurations on one dataset with one encoder, memoising chunkings."""

    def __init__(
        self,
        dataset: EvalDataset,
        encoder: Encoder,
        *,
        cache: EmbeddingCache | None = None,
        token_counter: TokenCounter | None = None,
        chunker_factory: ChunkerFactory = default_chunker_factory,
    ) -> None:
        self.dataset = dataset
        self.encoder = encoder
        self.cache = cache if cache is not None else EmbeddingCache()
        self.chunker_factory = chunker_factory
        self._chunkings: dict[tuple, _Chunking] = {}
        self._question_vectors: np.ndarray | None = None
        self._token_ranges: dict[str, TokenRanges] | None = None
        if token_counter is not None:
            self._token_ranges = {
                corpus_id: TokenRanges(token_counter.encode_offsets(text)[1]) for corpus_id, text in dataset.corpora.items()
            }

    def _chunking(self, config: EvalConfig) -> tuple[_Chunking, bool]:
        """The memoised chunking of ``config`` and whether it was made (not reused) by this call."""
        key = (config.chunker, config.chunk_size, config.overlap, tuple(sorted(dict(config.chunker_options).items())))
        fresh = key not in self._chunkings
        if fresh:
            started = time.perf_counter()
            chunks = chunk_corpora(self.dataset.corpora, self.chunker_factory(config))
            chunked = time.perf_counter()
            vectors = self.cache.embed(self.encoder, [chunk.text for chunk in chunks])
            self._chunkings[key] = _Chunking(chunks, vectors, chunked - started, time.perf_counter() - chunked)
        return self._chunkings[key], fresh

    def _questions(self) -> np.ndarray:
        if self._question_vectors is None:
            self._question_vectors = self.cache.embed(self.encoder, [q.text for q in self.dataset.questions])
        return self._question_vectors

    def _in_unit(self, config: EvalConfig, span: Span) -> Span:
        if config.unit == "chars":
            return span
        if self._token_ranges is None:
            raise ValueError("metrics in tokens need a token counter: pass token_counter= to Evaluator")
        start, end = self._token_ranges[span.corpus_id]((span.start, span.end))
        return Span(span.corpus_id, start, end)

    def _tokens(self, spans: Iterable[Span], chunks: Sequence[IndexedChunk]) -> int:
        """Tokens handed on: exact with a token counter, else the chunks' own counts."""
        if self._token_ranges is None:
            return sum(chunk.n_tokens for chunk in chunks)
        return sum(end - start for start, end in (self._token_ranges[s.corpus_id]((s.start, s.end)) for s in spans))

    def _score(self, question: Question, order: np.ndarray, chunking: _Chunking, config: EvalConfig) -> QuestionScore:
        chunks = chunking.chunks
        refs = [self._in_unit(config, Span(question.corpus_id, r.start, r.end)) for r in question.references]
        ref_ranges = [(r.start, r.end) for r in refs]
        own = [self._in_unit(config, Span(c.corpus_id, c.start, c.end)) for c in chunks if c.corpus_id == question.corpus_id]
        omega = precision_omega(ref_ranges, [(s.start, s.end) for s in own])
        k = min_k(omega.touching_chunks) if config.k == "min" else int(config.k)
        picked = top_k(order, chunks, k, config.distinct)
        top = [chunks[i] for i, _ in picked]
        spans = spans_of(top, config.merge_adjacent)  # the text handed on
        found = spans_of([chunks[j] for i, copies in picked for j in (i, *copies)], config.merge_adjacent)
        scores = retrieval_scores(ref_ranges, [self._in_unit(config, s) for s in found], question.corpus_id)
        return QuestionScore(
            qid=question.qid,
            corpus_id=question.corpus_id,
            k=k,
            recall=scores.recall,
            precision=scores.precision,
            precision_omega=omega.precision_omega,
            iou=scores.iou,
            retrieved_chars=sum(s.end - s.start for s in spans),
            retrieved_tokens=self._tokens(spans, top),
            retrieved_spans=tuple(found),
        )

    def _orders(self, config: EvalConfig) -> tuple[_Chunking, bool, list[np.ndarray]]:
        """The chunking of ``config``, whether it was fresh, and each question's chunk ranking (best first)."""
        chunking, fresh = self._chunking(config)
        vectors = with_neighbour_context(
            chunking.vectors, [c.corpus_id for c in chunking.chunks], config.context_chunks, NEIGHBOUR_WEIGHT
        )
        dense = self._questions() @ vectors.T
        lexical = None
        if config.retrieval != "dense":
            if chunking.bm25 is None:
                chunking.bm25 = BM25Index([c.text for c in chunking.chunks])
            lexical = np.stack([chunking.bm25.scores(q.text) for q in self.dataset.questions])
        orders = [rank_chunks(dense[i], None if lexical is None else lexical[i], config) for i in range(len(dense))]
        return chunking, fresh, orders

    def retrieve(self, config: EvalConfig) -> list[tuple[IndexedChunk, ...]]:
        """The top-k chunks of every question (in ``dataset.questions`` order), as ``evaluate`` scores them."""
        return [tuple(chunk for chunk, _ in top) for top in self.retrieve_with_copies(config)]

    def retrieve_with_copies(self, config: EvalConfig) -> list[TopK]:
        """Like ``retrieve``, each chunk paired with the chunks of identical text collapsed into it."""
        _check_fixed_k(config)
        chunking, _, orders = self._orders(config)
        return self._tops(chunking, orders, config)

    def evaluate_and_retrieve(self, config: EvalConfig) -> tuple[EvalResult, list[TopK]]:
        """``evaluate`` and ``retrieve_with_copies`` from one ranking of every question."""
        _check_fixed_k(config)
        started = time.perf_counter()
        chunking, fresh, orders = self._orders(config)
        return self._result(config, chunking, fresh, orders, started), self._tops(chunking, orders, config)

    @staticmethod
    def _tops(chunking: _Chunking, orders: list[np.ndarray], config: EvalConfig) -> list[TopK]:
        chunks, k = chunking.chunks, int(config.k)
        return [tuple((chunks[i], tuple(chunks[j] for j in copies)) for i, copies in top_k(order, chunks, k, config.distinct))
                for order in orders]

    def evaluate(self, config: EvalConfig) -> EvalResult:
        """Chunk (memoised), embed (cached), retrieve top-k per question from one index, score."""
        started = time.perf_counter()
        chunking, fresh, orders = self._orders(config)
        return self._result(config, chunking, fresh, orders, started)

    def _result(self, config: EvalConfig, chunking: _Chunking, fresh: bool, orders: list[np.ndarray], started: float) -> EvalResult:
        retrieved = time.perf_counter()
        scores = tuple(
            self._score(question, orders[i], chunking, config) for i, question in enumerate(self.dataset.questions)
        )
        finished = time.perf_counter()
        by_corpus = {cid: summarise([s for s in scores if s.corpus_id == cid]) for cid in sorted({s.corpus_id for s in scores})}
        return EvalResult(
            config=config,
            dataset=self.dataset.name,
            model_id=self.encoder.model_id,
            n_chunks=len(chunking.chunks),
            overall=summarise(scores),
            per_corpus=by_corpus,
            questions=scores,
            timings={
                # A reused chunking cost nothing in this run.
                "chunk_s": chunking.chunk_seconds if fresh else 0.0,
                "embed_s": chunking.embed_seconds if fresh else 0.0,
                "retrieve_s": retrieved - started,
                "score_s": finished - retrieved,
            },
        )

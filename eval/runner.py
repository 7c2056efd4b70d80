"""Evaluate retrieval configurations on a dataset: chunk, embed (cached), index, retrieve, score.

All chunks of all corpora go into ONE index version (``retrieval.index_store``, exact Flat,
one document per corpus, chunk ids in corpus order), built once per chunking and neighbour
context and kept next to the embedding cache, and every question is answered by the retrieve
stage of the one ``pipeline.Pipeline`` (the search engine ``ragpress query`` and ``ask`` use), so
what is evaluated is what is served.
An ``Evaluator`` keeps the chunks and vectors of every chunking it has seen, so a sweep over k
or retrieval options re-chunks and re-embeds nothing.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from eval.base import EvalConfig, EvalDataset, EvalResult, MetricSummary, Question, QuestionScore, Span
from eval.embedding_cache import EmbeddingCache
from eval.metrics import TokenRanges, mean_percent, min_k, precision_omega, retrieval_scores
from pipeline.config import PipelineConfig
from pipeline.pipeline import Pipeline
from retrieval.base import Chunk, Chunker, Document, Encoder, TokenCounter
from retrieval.config import RetrievalConfig
from retrieval.errors import IndexStoreError
from retrieval.index_store import IndexStore
from retrieval.postprocess import NEIGHBOUR_WEIGHT, merge_adjacent, with_neighbour_context

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
    stores: dict[int, IndexStore] = field(default_factory=dict)  # by context_chunks


def default_chunker_factory(config: EvalConfig, tokenizer: TokenCounter | None = None) -> Chunker:
    """The project's chunkers (``retrieval.chunkers.make_chunker``), counting with ``tokenizer``
    (the embedding model's; None: the default model's)."""
    from retrieval.chunkers import make_chunker

    options: dict[str, Any] = dict(config.chunker_options)
    return make_chunker(config.chunker, chunk_size=config.chunk_size, overlap=config.overlap, tokenizer=tokenizer, **options)


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


def retrieval_pipeline(config: EvalConfig) -> Pipeline:
    """The ``Pipeline`` whose retrieve stage answers the questions of ``config``; ``k`` is passed per
    batch (``k='min'`` differs per question), so a placeholder stands in for 'min'."""
    settings = {key: value for key, value in config.to_dict().items() if key in RetrievalConfig.model_fields}
    if settings["k"] == "min":
        settings["k"] = 1
    return Pipeline(PipelineConfig(retrieval=RetrievalConfig.from_dict(settings)))


def index_key(dataset: EvalDataset, chunks: Sequence[IndexedChunk], model_id: str, context_chunks: int) -> str:
    """What decides an evaluation index's content: corpora, chunk spans, model and neighbour context."""
    digest = hashlib.sha256(json.dumps([model_id, context_chunks, sorted(dataset.corpora)]).encode())
    for corpus_id in sorted(dataset.corpora):
        digest.update(hashlib.sha256(dataset.corpora[corpus_id].encode()).digest())
    digest.update(json.dumps([(c.corpus_id, c.start, c.end) for c in chunks]).encode())
    return digest.hexdigest()[:24]


def build_eval_index(directory: Path, dataset: EvalDataset, chunks: Sequence[IndexedChunk], vectors: np.ndarray,
                     model_id: str) -> IndexStore:
    """One committed Flat version holding ``chunks`` (one document per corpus, chunk ids = positions)."""
    store = IndexStore(directory, model_id, vectors.shape[1], "Flat", rebuild=True)
    row = 0
    for corpus_id, group in groupby(chunks, key=lambda chunk: chunk.corpus_id):
        own = list(group)
        if corpus_id in store.documents:
            raise ValueError(f"the chunks of {corpus_id!r} are not contiguous; chunk corpus by corpus (chunk_corpora)")
        text = dataset.corpora[corpus_id]
        document = Document(corpus_id, corpus_id, text, hashlib.sha256(text.encode()).hexdigest())
        store.add_document(document, [Chunk(c.text, c.start, c.end, c.n_tokens) for c in own], vectors[row:row + len(own)])
        row += len(own)
    store.commit()
    return store


def open_eval_index(directory: Path, chunks: Sequence[IndexedChunk], model_id: str) -> IndexStore | None:
    """The cached evaluation index in ``directory`` if it holds exactly ``chunks``, else None."""
    try:
        store = IndexStore.open(directory)
    except IndexStoreError:
        return None
    held = [(c.doc_id, c.start, c.end) for c in store.chunks()]
    if store.model_id != model_id or held != [(c.corpus_id, c.start, c.end) for c in chunks]:
        return None
    return store


# One question's top k: each chunk handed on, with the chunks of identical text collapsed into it.
TopK = tuple[tuple[IndexedChunk, tuple[IndexedChunk, ...]], ...]


def _check_fixed_k(config: EvalConfig) -> None:
    if config.k == "min":
        raise ValueError("retrieve() needs a fixed k; k='min' depends on the references")


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
        index_root: Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.encoder = encoder
        self.cache = cache if cache is not None else EmbeddingCache()
        self.chunker_factory = chunker_factory
        # Index versions live next to the embedding cache; a cache without a directory gets a
        # temporary one, removed with this evaluator.
        self._index_tmp = None
        if index_root is None and getattr(self.cache, "root", None) is None:
            self._index_tmp = tempfile.TemporaryDirectory(prefix="ragpress-eval-index-")
            index_root = Path(self._index_tmp.name)
        self.index_root = Path(index_root) if index_root is not None else Path(self.cache.root) / "indexes"
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

    def _k(self, question: Question, chunking: _Chunking, config: EvalConfig) -> tuple[int, float]:
        """The question's k (``k='min'``: the chunks touching its references) and its precision Ω."""
        refs = [self._in_unit(config, Span(question.corpus_id, r.start, r.end)) for r in question.references]
        own = [self._in_unit(config, Span(c.corpus_id, c.start, c.end)) for c in chunking.chunks if c.corpus_id == question.corpus_id]
        omega = precision_omega([(r.start, r.end) for r in refs], [(s.start, s.end) for s in own])
        return (min_k(omega.touching_chunks) if config.k == "min" else int(config.k)), omega.precision_omega

    def _score(self, question: Question, top: TopK, k: int, omega: float, config: EvalConfig) -> QuestionScore:
        refs = [self._in_unit(config, Span(question.corpus_id, r.start, r.end)) for r in question.references]
        chunks = [chunk for chunk, _ in top]
        spans = spans_of(chunks, config.merge_adjacent)  # the text handed on
        found = spans_of([c for chunk, copies in top for c in (chunk, *copies)], config.merge_adjacent)
        scores = retrieval_scores([(r.start, r.end) for r in refs], [self._in_unit(config, s) for s in found], question.corpus_id)
        return QuestionScore(
            qid=question.qid,
            corpus_id=question.corpus_id,
            k=k,
            recall=scores.recall,
            precision=scores.precision,
            precision_omega=omega,
            iou=scores.iou,
            retrieved_chars=sum(s.end - s.start for s in spans),
            retrieved_tokens=self._tokens(spans, chunks),
            retrieved_spans=tuple(found),
        )

    def index_store(self, config: EvalConfig) -> tuple[_Chunking, bool, IndexStore]:
        """The chunking of ``config``, whether it was fresh, and its index version (built into the
        cache directory, or reused from it when it holds exactly these chunks)."""
        chunking, fresh = self._chunking(config)
        store = chunking.stores.get(config.context_chunks)
        if store is None:
            key = index_key(self.dataset, chunking.chunks, self.encoder.model_id, config.context_chunks)
            directory = self.index_root / key
            store = open_eval_index(directory, chunking.chunks, self.encoder.model_id)
            if store is None:
                vectors = with_neighbour_context(chunking.vectors, [c.corpus_id for c in chunking.chunks],
                                                 config.context_chunks, NEIGHBOUR_WEIGHT)
                store = build_eval_index(directory, self.dataset, chunking.chunks, vectors, self.encoder.model_id)
            chunking.stores[config.context_chunks] = store
        return chunking, fresh, store

    def _search(self, config: EvalConfig) -> tuple[_Chunking, bool, list[TopK], list[tuple[int, float]], dict[str, float]]:
        """Every question's top k (with collapsed copies) from the pipeline's retrieve stage, its
        ``(k, precision Ω)``, and the seconds spent chunking + embedding (when fresh), indexing and searching."""
        started = time.perf_counter()
        chunking, fresh = self._chunking(config)
        chunked = time.perf_counter()
        _, _, store = self.index_store(config)
        indexed = time.perf_counter()
        ks = [self._k(question, chunking, config) for question in self.dataset.questions]
        searching = time.perf_counter()
        vectors, pipeline = self._questions(), retrieval_pipeline(config)
        place = {(c.corpus_id, c.start, c.end): c for c in chunking.chunks}
        tops: list[TopK] = [()] * len(ks)
        for k in sorted({k for k, _ in ks}):  # one batched search per distinct k (k='min' varies)
            rows = [i for i, (ki, _) in enumerate(ks) if ki == k]
            questions = [self.dataset.questions[i].text for i in rows]
            hits = pipeline.retrieve_many(store, questions, vectors[rows], k=k, fused_dense=True)
            for i, row in zip(rows, hits):
                tops[i] = tuple((chunking.chunks[h.chunk_id], tuple(place[c] for c in h.copies)) for h in row)
        seconds = {"prepare_s": chunked - started, "index_s": indexed - chunked, "search_s": time.perf_counter() - searching,
                   "k_s": searching - indexed}
        return chunking, fresh, tops, ks, seconds

    def retrieve(self, config: EvalConfig) -> list[tuple[IndexedChunk, ...]]:
        """The top-k chunks of every question (in ``dataset.questions`` order), as ``evaluate`` scores them."""
        return [tuple(chunk for chunk, _ in top) for top in self.retrieve_with_copies(config)]

    def retrieve_with_copies(self, config: EvalConfig) -> list[TopK]:
        """Like ``retrieve``, each chunk paired with the chunks of identical text collapsed into it."""
        _check_fixed_k(config)
        return self._search(config)[2]

    def evaluate_and_retrieve(self, config: EvalConfig) -> tuple[EvalResult, list[TopK]]:
        """``evaluate`` and ``retrieve_with_copies`` from one search of every question."""
        _check_fixed_k(config)
        return self._evaluate(config)

    def evaluate(self, config: EvalConfig, progress: Callable[[int], None] | None = None) -> EvalResult:
        """Chunk (memoised), embed (cached), index (cached), search every question, score;
        ``progress(1)`` after each question scored."""
        return self._evaluate(config, progress)[0]

    def _evaluate(self, config: EvalConfig, progress: Callable[[int], None] | None = None) -> tuple[EvalResult, list[TopK]]:
        chunking, fresh, tops, ks, seconds = self._search(config)
        return self._result(config, chunking, fresh, tops, ks, seconds, progress), tops

    def _result(self, config: EvalConfig, chunking: _Chunking, fresh: bool, tops: list[TopK], ks: list[tuple[int, float]],
                seconds: Mapping[str, float], progress: Callable[[int], None] | None = None) -> EvalResult:
        retrieved = time.perf_counter()
        scores: list[QuestionScore] = []
        for question, top, (k, omega) in zip(self.dataset.questions, tops, ks):
            scores.append(self._score(question, top, k, omega, config))
            if progress is not None:
                progress(1)
        finished = time.perf_counter()
        by_corpus = {cid: summarise([s for s in scores if s.corpus_id == cid]) for cid in sorted({s.corpus_id for s in scores})}
        return EvalResult(
            config=config,
            dataset=self.dataset.name,
            model_id=self.encoder.model_id,
            n_chunks=len(chunking.chunks),
            overall=summarise(scores),
            per_corpus=by_corpus,
            questions=tuple(scores),
            timings={
                # A reused chunking cost nothing in this run.
                "chunk_s": chunking.chunk_seconds if fresh else 0.0,
                "embed_s": chunking.embed_seconds if fresh else 0.0,
                # Building (or opening) the index version and searching every question.
                "retrieve_s": seconds["index_s"] + seconds["search_s"],
                "index_s": seconds["index_s"],
                "search_s": seconds["search_s"],
                "score_s": finished - retrieved + seconds["k_s"],
            },
        )

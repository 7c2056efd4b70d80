"""The pipeline evaluated over a question set — retrieve, compress, answer — each stage cached by content.

Every stage runs through ``pipeline.Pipeline`` (the one chain): retrieval is its retrieve stage
over the dataset's own index (``eval.runner.Evaluator``), compression and answering its other
stages. Every stage is a plain method returning plain records, so ``flows/pipeline.py`` can wrap each in
a Prefect task and the library works without Prefect. Each stage's key names everything that
decides its result (see ``eval.stage_cache``): retrieval by the dataset's texts, the retrieval
config and the encoder; compression by the question, the retrieved texts, method, rate and the
compressor's code; answering by the texts read, the generator's identity (model and weights hash,
dtype, device, or endpoint), the KV mode and the generator's code.
A grid re-run therefore computes only the stages whose inputs changed.

Scores are on one yardstick: the kept character spans of each stage, mapped back to the corpus,
scored against the reference spans with the benchmark's metrics (``eval.metrics``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from compression.kv.modes import DEFAULT_BLEND_SCORE
from eval.base import EvalConfig, EvalDataset, MetricSummary, Question, Span
from eval.metrics import mean_percent, retrieval_scores, token_f1
from eval.pipeline_base import PipelineResult, PipelineSummary, QuestionRun, StageScores
from eval.runner import Evaluator
from eval.stage_cache import StageCache, code_fingerprint, digest, text_digest
from pipeline.config import PipelineConfig
from pipeline.pipeline import Pipeline, make_compressor
from retrieval.config import RetrievalConfig


@dataclass(frozen=True)
class Retrieved:
    """One question's top-k chunks (corpus spans, rank order) and their reference scores.

    ``copies[i]``: the spans of identical text collapsed into ``chunks[i]`` (``EvalConfig.distinct``).
    """

    qid: str
    chunks: tuple[Span, ...]
    recall: float
    precision: float
    precision_omega: float
    iou: float
    seconds: float
    copies: tuple[tuple[Span, ...], ...] = ()


@dataclass(frozen=True)
class Compressed:
    """What reaches the LM: the kept spans of the retrieved chunks, and what keeping them cost.

    ``texts`` are the retrieved chunks in full (their caches are what gets reused), ``local`` the
    kept ``(chunk index, start, end)`` spans inside them, ``kept`` the same spans in the corpus.
    """

    texts: tuple[str, ...]
    local: tuple[tuple[int, int, int], ...]
    kept: tuple[Span, ...]
    cpu_s: float
    seconds: float


@dataclass(frozen=True)
class Answered:
    """One question's answer and what producing it cost."""

    answer: str
    retrieved_tokens: int  # prompt context tokens before compression (0: not counted, the back-end tokenises remotely)
    tokens_sent: int  # prompt context tokens after compression (a remote back-end: the whole prompt, as its usage says)
    ttft_s: float
    prefilled_tokens: int
    reused_tokens: int
    chunk_cache_s: float  # computing missing chunk caches: indexing-time work, not in the TTFT
    seconds: float


def dataset_digest(dataset: EvalDataset) -> str:
    """Identity of a question set over its corpora (texts and reference spans, not file paths)."""
    corpora = text_digest(f"{cid}\x00{text}" for cid, text in sorted(dataset.corpora.items()))
    questions = digest([[q.qid, q.text, q.corpus_id, [[r.start, r.end] for r in q.references]] for q in dataset.questions])
    return digest([corpora, questions])


def spread_sample(questions: Sequence[Question], limit: int | None) -> tuple[Question, ...]:
    """``limit`` questions evenly spaced over the file (so every corpus is represented); all if None."""
    if limit is None or limit >= len(questions):
        return tuple(questions)
    if limit < 1:
        raise ValueError(f"limit must be >= 1 question, got {limit}")
    step = len(questions) / limit
    return tuple(questions[int(i * step)] for i in range(limit))


def corpus_spans(chunks: Sequence[Span], kept: Sequence[Any], copies: Sequence[Sequence[Span]] = ()) -> tuple[Span, ...]:
    """Map compressor spans (``context`` index, offsets into that context) to corpus spans.

    A span kept of a context is also kept of that context's ``copies`` (the same text elsewhere),
    at the same offsets, so the compression is scored on every place retrieval found that text.
    """
    spans = []
    for span in kept:
        chunk = chunks[span.context]
        if not 0 <= span.start <= span.end <= chunk.end - chunk.start:
            raise ValueError(f"compressor span {span} lies outside its context of {chunk.end - chunk.start} characters")
        for place in (chunk, *(copies[span.context] if copies else ())):
            spans.append(Span(place.corpus_id, place.start + span.start, place.start + span.end))
    return tuple(spans)


class PipelineEvaluation:
    """Runs ``PipelineConfig``s over one dataset through ``pipeline.Pipeline``, caching and scoring
    each stage; models load on the first cache miss that needs them. Retrieval is the pipeline's
    retrieve stage over the dataset's own index (``eval.runner.Evaluator``)."""

    def __init__(
        self,
        dataset: EvalDataset,
        cache: StageCache,
        *,
        evaluator_factory: Callable[[EvalDataset], Evaluator] | None = None,
        lm_name: str = "smollm2",
        compressor_factory: Callable[[str], Any] | None = None,
        engine_factory: Callable[[], Any] | None = None,
        lm_id: str | None = None,
        llm: dict[str, Any] | None = None,
    ) -> None:
        """``llm``: generator options (``generation.registry.generator_from_options``; default the local
        ``lm_name``); ``engine_factory`` and ``lm_id`` replace the local LM's engine and id (tests)."""
        self.dataset, self.cache, self.lm_name = dataset, cache, lm_name
        self._evaluator_factory = evaluator_factory or _default_evaluator
        self._compressor_factory = compressor_factory or make_compressor
        self._llm = llm or {"backend": "local", "model": lm_name}
        self._engine_factory = engine_factory
        self._evaluator: Evaluator | None = None
        self._generator: Any = None
        self._lm_id = lm_id
        self._compressors: dict[str, Any] = {}
        self._dataset_id = dataset_digest(dataset)
        self.hits: dict[str, int] = {}

    # -- lazily built collaborators --------------------------------------------------------
    def evaluator(self) -> Evaluator:
        """The retrieval evaluator of the dataset, built on first use."""
        if self._evaluator is None:
            self._evaluator = self._evaluator_factory(self.dataset)
        return self._evaluator

    def generator(self) -> Any:
        """The answer generator (``generation``), built on first use; it loads its model when it first answers."""
        if self._generator is None:
            from pipeline.pipeline import make_generator

            stand_in = {"engine_factory": self._engine_factory} if self._engine_factory else {}
            self._generator = make_generator({**self._llm, **stand_in}, self.cache.root / "kv")
        return self._generator

    def stages(self, config: PipelineConfig) -> Pipeline:
        """The pipeline of ``config``, sharing this evaluation's generator and compressors."""
        return Pipeline(config, generator=self.generator(), compressor_factory=self.compressor)

    def generator_identity(self) -> dict[str, Any]:
        """What decides the answers (model and weights hash, dtype, device, or endpoint), without loading."""
        return {"lm": self._lm_id} if self._lm_id else self.generator().identity()

    def lm_id(self) -> str:
        """The answering model's id (with its weights hash, dtype and device, or its endpoint)."""
        identity = self.generator_identity()
        return self._lm_id or " ".join(str(identity[key]) for key in ("model", "dtype", "device", "url") if key in identity)

    def model_ids(self) -> dict[str, str]:
        """The ids (with weights hashes) of the encoder and the answering LM."""
        return {"encoder": self.evaluator().encoder.model_id, "lm": self.lm_id()}

    def compressor(self, method: str) -> Any:
        """The compressor of ``method``, built once."""
        if method not in self._compressors:
            self._compressors[method] = self._compressor_factory(method)
        return self._compressors[method]

    def _count(self, stage: str, hit: bool, questions: int = 1) -> None:
        """Questions served from the cache, per stage (for the report and the re-run check)."""
        self.hits[stage] = self.hits.get(stage, 0) + (questions if hit else 0)

    # -- stage 1: retrieval ----------------------------------------------------------------
    def retrieve(self, settings: RetrievalConfig) -> list[Retrieved]:
        """Top-k chunks and retrieval scores of every question (one cache entry per config)."""
        config = EvalConfig.of(settings)
        parts = {"dataset": self._dataset_id, "config": config.to_dict(), "code": code_fingerprint("eval.runner", "pipeline.pipeline", "retrieval.search", "retrieval.lexical", "retrieval.encoder", "retrieval.chunkers")}
        parts["encoder"] = self.evaluator().encoder.model_id
        cached = self.cache.get("retrieval", parts)
        self._count("retrieval", cached is not None, len(self.dataset.questions))
        if cached is None:
            cached = self._retrieve(config)
            self.cache.put("retrieval", parts, cached)
        return [Retrieved(r["qid"], tuple(Span(*s) for s in r["chunks"]), r["recall"], r["precision"],
                          r["precision_omega"], r["iou"], r["seconds"], tuple(tuple(Span(*s) for s in c) for c in r["copies"]))
                for r in cached]

    def _retrieve(self, config: EvalConfig) -> list[dict]:
        started = time.perf_counter()
        result, tops = self.evaluator().evaluate_and_retrieve(config)
        scores = result.questions
        per_question = (time.perf_counter() - started) / max(1, len(tops))
        return [{"qid": s.qid, "chunks": [[c.corpus_id, c.start, c.end] for c, _ in top],
                 "copies": [[[d.corpus_id, d.start, d.end] for d in copies] for _, copies in top], "recall": s.recall,
                 "precision": s.precision, "precision_omega": s.precision_omega, "iou": s.iou, "seconds": per_question}
                for s, top in zip(scores, tops)]

    # -- stage 2: compression --------------------------------------------------------------
    def compress(self, question: Question, retrieved: Retrieved, config: PipelineConfig) -> Compressed:
        """The contexts handed to the LM for one question, cached by content."""
        from compression.base import KeptSpan

        method, rate = config.compression.method, config.compression.rate
        texts = [self.dataset.corpora[c.corpus_id][c.start:c.end] for c in retrieved.chunks]
        parts = {"question": question.text, "contexts": text_digest(texts), "method": method, "rate": rate,
                 "models": self._compressor_models(method), "code": code_fingerprint(_compressor_module(method))}
        cached = self.cache.get("compression", parts)
        self._count("compression", cached is not None)
        if cached is None:
            cached = self._compress(question, texts, config)
            self.cache.put("compression", parts, cached)
        local = tuple(tuple(span) for span in cached["local"])
        # Corpus spans come from this question's chunks, not the cache: equal texts may sit elsewhere.
        kept = corpus_spans(retrieved.chunks, [KeptSpan(*span) for span in local], retrieved.copies)
        return Compressed(tuple(texts), local, kept, cached["cpu_s"], cached["seconds"])

    def _compressor_models(self, method: str) -> list[str]:
        """Ids (with weights hashes) of the models a method scores with: MiniLM (extractive sentences,
        and llmlingua's question-relevant evidence sentences), and the LM for llmlingua."""
        if method == "none":
            return []
        models = [self.evaluator().encoder.model_id]
        if "llmlingua" in method:
            from compression.lm import DEFAULT_LM

            models.append(lm_model_id(DEFAULT_LM))  # the compressor scores with the default LM
        return models

    def _compress(self, question: Question, texts: list[str], config: PipelineConfig) -> dict:
        from compression.base import KeptSpan

        started, cpu = time.perf_counter(), time.process_time()
        result = self.stages(config).compress(question.text, texts)
        local = [KeptSpan(i, 0, len(text)) for i, text in enumerate(texts)] if result is None else list(result.kept)
        cpu_s = time.process_time() - cpu if result is not None else 0.0
        return {"local": [[s.context, s.start, s.end] for s in local], "cpu_s": cpu_s, "seconds": time.perf_counter() - started}

    # -- stage 3: answer -------------------------------------------------------------------
    def answer(self, question: Question, kept: Compressed, config: PipelineConfig, kv_mode: str | None = None) -> Answered:
        """Greedy answer from the kept context; ``kv_mode`` overrides the config's (fidelity uses ``none``)."""
        settings = config.generation
        mode = kv_mode or settings.kv_mode
        # Everything that fixes the prompt and the decoding, without loading the LM: the generator's
        # identity (model with weights hash, dtype, device; or endpoint), the texts, and its code.
        generator = self.generator()
        parts = {"generator": self.generator_identity(), "question": question.text, "contexts": text_digest(kept.texts),
                 "kept": kept.local, "kv_mode": mode, "blend_r": settings.blend_r if mode == "blend" else None,
                 "edge_tokens": settings.edge_tokens if mode == "edge" else None, "max_new_tokens": settings.max_new_tokens,
                 "code": code_fingerprint(type(generator).__module__, "pipeline.pipeline")}
        if mode == "blend" and settings.blend_score != DEFAULT_BLEND_SCORE:
            parts["blend_score"] = settings.blend_score
        cached = self.cache.get("answer", parts)
        self._count("answer", cached is not None)
        if cached is None:
            cached = self._answer(question, kept, mode, config)
            self.cache.put("answer", parts, cached)
        return Answered(**cached)

    def _answer(self, question: Question, kept: Compressed, mode: str, config: PipelineConfig) -> dict:
        got = self.stages(config).generate(question.text, kept.texts, kept.local, mode)
        # A remote back-end counts only the whole prompt it read (its usage); local ones count the context parts.
        sent = got.context_tokens if got.context_tokens is not None else (got.prompt_tokens or 0)
        return {"answer": got.text, "retrieved_tokens": got.retrieved_tokens or 0, "tokens_sent": sent, "ttft_s": got.ttft_s,
                "prefilled_tokens": got.prefilled_tokens or 0, "reused_tokens": got.reused_tokens,
                "chunk_cache_s": got.chunk_cache_compute_s if got.chunk_caches_computed else 0.0, "seconds": got.total_s}

    # -- one configuration, stage by stage -------------------------------------------------
    def compress_all(self, config: PipelineConfig, retrieved: Sequence[Retrieved],
                     progress: Callable[[int], None] | None = None) -> list[Compressed]:
        """Compress every question's retrieved context (stage cache first); ``progress(1)`` after each."""
        out = []
        for question, got in zip(self.dataset.questions, retrieved):
            out.append(self.compress(question, got, config))
            if progress is not None:
                progress(1)
        return out

    def answer_all(self, config: PipelineConfig, retrieved: Sequence[Retrieved], compressed: Sequence[Compressed],
                   progress: Callable[[int], None] | None = None) -> list[QuestionRun]:
        """Answer every question and score every stage of it; ``progress(1)`` after each question."""
        runs = []
        for question, got, kept in zip(self.dataset.questions, retrieved, compressed):
            answered = self.answer(question, kept, config)
            fidelity = None
            if config.fidelity:
                full = answered if config.generation.kv_mode == "none" else self.answer(question, kept, config, "none")
                fidelity = token_f1(answered.answer, full.answer)
            runs.append(score_question(question, got, kept, answered, fidelity))
            if progress is not None:
                progress(1)
        return runs

    def result(self, config: PipelineConfig, runs: Sequence[QuestionRun], hits: dict[str, int], seconds: float) -> PipelineResult:
        """The result record of ``config``: runs, per-stage summary, cache hits and wall time."""
        return PipelineResult(config, self.dataset.name, summarise_runs(runs), tuple(runs), dict(hits), seconds)

    def run(self, config: PipelineConfig) -> PipelineResult:
        """Every stage for every question, then the per-stage summary."""
        started = time.perf_counter()
        self.hits = {}
        retrieved = self.retrieve(config.retrieval)
        runs = self.answer_all(config, retrieved, self.compress_all(config, retrieved))
        return self.result(config, runs, self.hits, time.perf_counter() - started)


def score_question(question: Question, retrieved: Retrieved, compressed: Compressed, answered: Answered,
                   fidelity: float | None) -> QuestionRun:
    """The per-stage record of one question; compression is scored on the spans it kept."""
    references = [(r.start, r.end) for r in question.references]
    kept = retrieval_scores(references, compressed.kept, question.corpus_id)
    reference_text = " ".join(r.content for r in question.references)
    return QuestionRun(
        qid=question.qid, corpus_id=question.corpus_id,
        retrieval=StageScores(retrieved.recall, retrieved.precision, retrieved.precision_omega, retrieved.iou),
        # PΩ is a property of the chunking, not of what was kept: the retrieval value carries over.
        compression=StageScores(kept.recall, kept.precision, retrieved.precision_omega, kept.iou),
        retrieved_tokens=answered.retrieved_tokens, tokens_sent=answered.tokens_sent, compress_cpu_s=compressed.cpu_s,
        ttft_s=answered.ttft_s, prefilled_tokens=answered.prefilled_tokens, reused_tokens=answered.reused_tokens,
        answer=answered.answer, answer_f1=token_f1(answered.answer, reference_text), fidelity_f1=fidelity,
        wall_s=retrieved.seconds + compressed.seconds + answered.seconds,
        retrieved_spans=tuple(span for chunk, copies in zip(retrieved.chunks, _copies(retrieved)) for span in (chunk, *copies)),
        kept_spans=compressed.kept,
    )


def _copies(retrieved: Retrieved) -> tuple[tuple[Span, ...], ...]:
    return retrieved.copies or tuple(() for _ in retrieved.chunks)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


def stage_summary(scores: Sequence[StageScores], tokens: Sequence[int]) -> MetricSummary:
    """Means x100 of one stage's scores over questions, and the mean tokens it handed on."""
    return MetricSummary(n_questions=len(scores), recall=mean_percent([s.recall for s in scores]),
                         precision=mean_percent([s.precision for s in scores]),
                         precision_omega=mean_percent([s.precision_omega for s in scores]),
                         iou=mean_percent([s.iou for s in scores]), mean_retrieved_tokens=_mean(tokens))


def summarise_runs(runs: Sequence[QuestionRun]) -> PipelineSummary:
    """Means (reference metrics and F1 x100), medians of times; see ``PipelineSummary`` for edge cases."""
    fidelity = [r.fidelity_f1 for r in runs]
    return PipelineSummary(
        n_questions=len(runs),
        retrieval=stage_summary([r.retrieval for r in runs], [r.retrieved_tokens for r in runs]),
        compression=stage_summary([r.compression for r in runs], [r.tokens_sent for r in runs]),
        achieved_rate=_mean([r.achieved_rate for r in runs]),
        compress_cpu_s=_mean([r.compress_cpu_s for r in runs]),
        ttft_median_s=_median([r.ttft_s for r in runs]),
        prefilled_tokens=_mean([r.prefilled_tokens for r in runs]),
        reused_tokens=_mean([r.reused_tokens for r in runs]),
        answer_f1=mean_percent([r.answer_f1 for r in runs]),
        fidelity_f1=mean_percent(fidelity) if runs and all(f is not None for f in fidelity) else None,  # type: ignore[arg-type]
        wall_median_s=_median([r.wall_s for r in runs]),
    )


def _default_evaluator(dataset: EvalDataset) -> Evaluator:
    from retrieval.encoder import load_encoder

    return Evaluator(dataset, load_encoder())


@cache
def lm_model_id(name: str) -> str:
    """A causal LM's id with its weights hash (hashing the weights file once per process)."""
    from compression.lm import resolve_model_dir

    return resolve_model_dir(name)[1]


def _compressor_module(method: str) -> str:
    """The module implementing ``method`` (whose code, with its imports, decides its output)."""
    from compression.registry import COMPRESSORS

    return COMPRESSORS[method].split(":")[0] if method != "none" else "eval.pipeline"


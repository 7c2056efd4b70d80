"""Records of the end-to-end pipeline: retrieve -> compress -> answer with chunk-cache reuse.

One ``pipeline.config.PipelineConfig`` is a point of the grid. Running it over a question set gives one
``QuestionRun`` per question (what each stage kept of the references and what it cost) and a
``PipelineSummary`` of means (reference metrics x100, as the benchmark reports them) and medians
(times). Scores of a stage are computed on character spans of the corpus, so retrieval and
compression are measured on the same yardstick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from eval.base import MetricSummary, Span
from pipeline.config import PipelineConfig


@dataclass(frozen=True)
class StageScores:
    """What one stage handed on, scored against a question's references (fractions in [0, 1])."""

    recall: float
    precision: float
    precision_omega: float
    iou: float


@dataclass(frozen=True)
class QuestionRun:
    """One question through every stage: each stage's reference scores, what it cost, its spans.

    ``retrieved_tokens``: LM tokens of the retrieved chunks (the compressor's input);
    ``tokens_sent``: context tokens of the prompt the LM answered from (after compression);
    ``prefilled_tokens`` / ``reused_tokens``: prompt tokens computed now vs taken from chunk caches.
    ``compress_cpu_s`` is process CPU time of the compression call (0 when there is none).
    ``fidelity_f1``: token-F1 of the answer against the full-prefill answer (None unless asked).
    ``retrieved_spans``: every corpus span retrieval scored (copies of a handed-on text included);
    ``kept_spans``: the corpus spans compression kept of them.
    """

    qid: str
    corpus_id: str
    retrieval: StageScores
    compression: StageScores
    retrieved_tokens: int
    tokens_sent: int
    compress_cpu_s: float
    ttft_s: float
    prefilled_tokens: int
    reused_tokens: int
    answer: str
    answer_f1: float
    fidelity_f1: float | None
    wall_s: float
    retrieved_spans: tuple[Span, ...] = ()
    kept_spans: tuple[Span, ...] = ()

    @property
    def achieved_rate(self) -> float:
        """Tokens sent / tokens retrieved (1.0 when nothing was retrieved)."""
        return self.tokens_sent / self.retrieved_tokens if self.retrieved_tokens else 1.0


@dataclass(frozen=True)
class PipelineSummary:
    """Per-stage means over questions (x100, as ``MetricSummary``), answer F1 x100, medians for times.

    ``retrieval.mean_retrieved_tokens`` counts the LM tokens of the retrieved chunks,
    ``compression.mean_retrieved_tokens`` the tokens sent to the LM (``metric("tokens_sent")``).
    Edge cases: no questions -> every value is 0 (and ``fidelity_f1`` None); ``fidelity_f1`` is
    None unless every question measured it.
    """

    n_questions: int
    retrieval: MetricSummary
    compression: MetricSummary
    achieved_rate: float
    compress_cpu_s: float
    ttft_median_s: float
    prefilled_tokens: float
    reused_tokens: float
    answer_f1: float
    fidelity_f1: float | None
    wall_median_s: float

    def metric(self, name: str) -> float | None:
        """A value by name: a field (``answer_f1``), ``<stage>_<score>`` (``compression_recall``),
        ``retrieved_tokens`` or ``tokens_sent``; an unknown name raises ``ValueError``."""
        if name in _TOKEN_METRICS:
            return getattr(self, _TOKEN_METRICS[name]).mean_retrieved_tokens
        stage, _, score = name.partition("_")
        if stage in ("retrieval", "compression") and score in MetricSummary.__dataclass_fields__:
            return getattr(getattr(self, stage), score)
        if name in self.__dataclass_fields__ and name not in ("retrieval", "compression"):
            return getattr(self, name)
        raise ValueError(f"unknown pipeline metric '{name}'; e.g. answer_f1, compression_recall, tokens_sent, ttft_median_s")


_TOKEN_METRICS = {"retrieved_tokens": "retrieval", "tokens_sent": "compression"}


@dataclass(frozen=True)
class PipelineResult:
    """A configuration, its summary, its per-question runs, and how much came from the stage caches."""

    config: PipelineConfig
    dataset: str
    summary: PipelineSummary
    questions: tuple[QuestionRun, ...]
    cache_hits: Mapping[str, int]  # stage -> questions served from the cache
    seconds: float

    def to_dict(self) -> dict:
        """The result as plain JSON values."""
        return {
            "config": self.config.to_dict(),
            "label": self.config.label,
            "dataset": self.dataset,
            "summary": asdict(self.summary),
            "questions": [asdict(run) for run in self.questions],
            "cache_hits": dict(self.cache_hits),
            "seconds": self.seconds,
        }

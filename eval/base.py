"""Records of the evaluation stage: questions with reference spans, configurations, scores.

Every span is a half-open character range ``[start, end)`` into one corpus text. Scores are
fractions in [0, 1]; reports multiply means by 100 as the benchmark does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import Field

from retrieval.config import PositiveInt, RetrievalConfig

UNITS = ("chars", "tokens")
MAX_MIN_K = 20  # the benchmark caps k = "min" at 20 chunks per question


@dataclass(frozen=True)
class Reference:
    """An exact excerpt of a corpus: ``corpus[start:end] == content``."""

    start: int
    end: int
    content: str


@dataclass(frozen=True)
class Question:
    """A query with the reference spans (all in one corpus) that answer it."""

    qid: str
    text: str
    corpus_id: str
    references: tuple[Reference, ...]


@dataclass(frozen=True)
class EvalDataset:
    """Corpora by id and the questions about them; validated on construction by the loaders."""

    name: str
    corpora: Mapping[str, str]
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Span:
    """A retrieved or indexed chunk located in the corpora: ``corpus_id`` and ``[start, end)``."""

    corpus_id: str
    start: int
    end: int


class EvalConfig(RetrievalConfig):
    """One point of the evaluation grid: the retrieval settings and how the metrics count.

    ``unit``: count the metrics in characters (the benchmark's way) or embedding tokens.
    ``k`` may also be ``min``: per question, the fewest chunks that touch all its references
    (capped at ``MAX_MIN_K``), which only an evaluation can know. With ``distinct`` the metrics
    still score every place a retrieved text was found (the copies ranked above the k-th distinct
    text); the retrieved length counts the text handed on once.
    """

    k: PositiveInt | Literal["min"] = Field(5, description="a positive integer (chunks to retrieve) or 'min', e.g. 5")
    unit: Literal["chars", "tokens"] = Field("chars", description="one of " + ", ".join(UNITS))

    def _allows_min_k(self) -> bool:
        return True

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``token 200/0 k=5 dense``."""
        return super().label + (f" {self.unit}" if self.unit != "chars" else "")

    @classmethod
    def of(cls, retrieval: RetrievalConfig, unit: str = "chars") -> EvalConfig:
        """The evaluation point of ``retrieval``'s settings, counted in ``unit``."""
        return cls.from_dict({**retrieval.to_dict(), "unit": unit})

    def retrieval_config(self) -> RetrievalConfig:
        """The retrieval settings alone (``k`` must be a number)."""
        return RetrievalConfig.from_dict({key: value for key, value in self.to_dict().items() if key != "unit"})


@dataclass(frozen=True)
class QuestionScore:
    """The scores of one question under one configuration (fractions in [0, 1]).

    ``retrieved_spans``: the character spans the scores were computed on (every place a retrieved
    text was found, copies included; merged when the config merges adjacent chunks).
    """

    qid: str
    corpus_id: str
    k: int
    recall: float
    precision: float
    precision_omega: float
    iou: float
    retrieved_chars: int
    retrieved_tokens: int
    retrieved_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class MetricSummary:
    """Means over questions, ×100, as the benchmark reports them."""

    n_questions: int
    recall: float
    precision: float
    precision_omega: float
    iou: float
    mean_retrieved_tokens: float


@dataclass(frozen=True)
class EvalResult:
    """Everything one configuration produced: config, summaries, per-question scores, timings."""

    config: EvalConfig
    dataset: str
    model_id: str
    n_chunks: int
    overall: MetricSummary
    per_corpus: Mapping[str, MetricSummary]
    questions: tuple[QuestionScore, ...]
    timings: Mapping[str, float]

    def to_dict(self) -> dict:
        """The result as plain JSON values."""
        return {
            "config": self.config.to_dict(),
            "label": self.config.label,
            "dataset": self.dataset,
            "model_id": self.model_id,
            "n_chunks": self.n_chunks,
            "overall": asdict(self.overall),
            "per_corpus": {name: asdict(summary) for name, summary in self.per_corpus.items()},
            "questions": [asdict(score) for score in self.questions],
            "timings": dict(self.timings),
        }

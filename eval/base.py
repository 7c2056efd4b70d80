"""Records of the evaluation stage: questions with reference spans, configurations, scores.

Every span is a half-open character range ``[start, end)`` into one corpus text. Scores are
fractions in [0, 1]; reports multiply means by 100 as the benchmark does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

KMode = int | Literal["min"]
Unit = Literal["chars", "tokens"]
RETRIEVAL_MODES = ("dense", "bm25", "hybrid")
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


@dataclass(frozen=True)
class EvalConfig:
    """One point of the evaluation grid: how to chunk, retrieve and count.

    ``retrieval``: ``dense`` (cosine on the embeddings), ``bm25`` (lexical only) or ``hybrid``
    (min-max-normalised dense and BM25 scores mixed with weight ``hybrid_weight`` on dense; the
    weight is ignored, and reset to its default, for the other modes so equal configs compare equal).
    ``context_chunks``: embed each chunk together with this many neighbours on either side while
    still returning only the chunk's own span (small spans, larger semantic context).
    ``merge_adjacent``: after top-k, merge retrieved chunks that overlap or touch into one span,
    so overlapping windows are not counted twice in the retrieved length.
    ``distinct``: the top k are k different texts; a chunk whose text repeats a better-ranked one
    exactly is collapsed into it (``retrieval.postprocess.first_distinct``). The metrics still score
    every place that text was retrieved from (the copies ranked above the k-th distinct text); the
    retrieved length counts the text handed on once.
    """

    chunker: str = "token"
    chunk_size: int = 200
    overlap: int = 0
    k: KMode = 5
    retrieval: str = "dense"
    hybrid_weight: float = 0.5
    context_chunks: int = 0
    merge_adjacent: bool = False
    unit: Unit = "chars"
    chunker_options: Mapping[str, object] = field(default_factory=dict)
    distinct: bool = True

    def __post_init__(self) -> None:
        if self.retrieval not in RETRIEVAL_MODES:
            raise ValueError(f"unknown retrieval '{self.retrieval}'; valid choices: {', '.join(RETRIEVAL_MODES)}")
        if self.unit not in UNITS:
            raise ValueError(f"unknown unit '{self.unit}'; valid choices: {', '.join(UNITS)}")
        if self.k != "min" and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive integer or 'min', got {self.k!r}")
        if not 0.0 <= self.hybrid_weight <= 1.0:
            raise ValueError(f"hybrid_weight must be in [0, 1], got {self.hybrid_weight}")
        if self.retrieval != "hybrid":
            object.__setattr__(self, "hybrid_weight", EvalConfig.hybrid_weight)
        if self.context_chunks < 0:
            raise ValueError(f"context_chunks must be >= 0, got {self.context_chunks}")

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``token 200/0 k=5 dense``."""
        parts = [f"{self.chunker} {self.chunk_size}/{self.overlap}", f"k={self.k}", self.retrieval]
        if self.retrieval == "hybrid":
            parts[-1] += f"({self.hybrid_weight:g})"
        if self.chunker_options:
            parts[0] += "(" + ",".join(f"{key}={value}" for key, value in sorted(dict(self.chunker_options).items())) + ")"
        if self.context_chunks:
            parts.append(f"ctx±{self.context_chunks}")
        if self.merge_adjacent:
            parts.append("merge")
        if not self.distinct:
            parts.append("with-copies")
        if self.unit != "chars":
            parts.append(self.unit)
        return " ".join(parts)

    def to_dict(self) -> dict:
        """The configuration as plain JSON values."""
        data = asdict(self)
        data["chunker_options"] = dict(self.chunker_options)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EvalConfig:
        """Build from a mapping (JSON/YAML); unknown keys are an error naming the valid ones."""
        valid = set(cls.__dataclass_fields__)
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}")
        values = dict(data)
        if "k" in values and values["k"] != "min":
            values["k"] = int(values["k"])  # type: ignore[call-overload]
        return cls(**values)  # type: ignore[arg-type]


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

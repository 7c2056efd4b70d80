"""Records of the end-to-end pipeline: retrieve -> compress -> answer with chunk-cache reuse.

One ``PipelineConfig`` is a point of the grid. Running it over a question set gives one
``QuestionRun`` per question (what each stage kept of the references and what it cost) and a
``PipelineSummary`` of means (reference metrics x100, as the benchmark reports them) and medians
(times). Scores of a stage are computed on character spans of the corpus, so retrieval and
compression are measured on the same yardstick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from compression.kv.modes import KV_REUSE_MODES as KV_MODES
from eval.base import EvalConfig, MetricSummary, Span

COMPRESSION_METHODS = ("none", "extractive", "llmlingua", "extractive+llmlingua")
DEFAULT_RATE = 0.33


@dataclass(frozen=True)
class PipelineConfig:
    """Retrieval (an ``EvalConfig``), then compression and the KV-reuse mode of the answer stage.

    ``rate`` is the compressor's target keep-rate; it is reset to its default when
    ``compression == "none"`` so equal configurations compare (and cache) equal. Likewise
    ``blend_r`` only matters for ``kv_mode == "blend"`` and ``edge_tokens`` for ``"edge"``.
    ``fidelity``: also answer with a full prefill and score the output against it.
    With compression, chunk caches are still reused: the kept tokens' entries are taken from
    each chunk's cache and re-rotated (``compression.kv.subset``); ``kv_mode="none"`` prefills
    the compressed prompt instead.
    """

    retrieval: EvalConfig = field(default_factory=EvalConfig)
    compression: str = "none"
    rate: float = DEFAULT_RATE
    kv_mode: str = "naive"
    blend_r: float = 0.15
    edge_tokens: int = 16
    max_new_tokens: int = 32
    fidelity: bool = False

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSION_METHODS:
            raise ValueError(f"unknown compression '{self.compression}'; valid choices: {', '.join(COMPRESSION_METHODS)}")
        if self.kv_mode not in KV_MODES:
            raise ValueError(f"unknown kv_mode '{self.kv_mode}'; valid choices: {', '.join(KV_MODES)}")
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        if not 0.0 <= self.blend_r <= 1.0:
            raise ValueError(f"blend_r must be in [0, 1], got {self.blend_r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.retrieval.k == "min":
            raise ValueError("the pipeline needs a fixed k (k='min' looks at the references): use an integer")
        defaults = PipelineConfig.__dataclass_fields__
        if self.compression == "none":
            object.__setattr__(self, "rate", defaults["rate"].default)
        if self.kv_mode != "blend":
            object.__setattr__(self, "blend_r", defaults["blend_r"].default)
        if self.kv_mode != "edge":
            object.__setattr__(self, "edge_tokens", defaults["edge_tokens"].default)

    @property
    def label(self) -> str:
        """E.g. ``recursive 150/0 k=5 hybrid(0.8) ctx±2 | llmlingua@0.33 | blend(0.15)``."""
        compression = self.compression if self.compression == "none" else f"{self.compression}@{self.rate:g}"
        kv = {"blend": f"blend({self.blend_r:g})", "edge": f"edge({self.edge_tokens})", "none": "full prefill"}.get(self.kv_mode, self.kv_mode)
        return f"{self.retrieval.label} | {compression} | {kv}"

    def to_dict(self) -> dict:
        """Flat mapping (retrieval keys next to the pipeline keys), the YAML/JSON form."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "retrieval"}
        return {**self.retrieval.to_dict(), **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PipelineConfig:
        """Build from the flat form; unknown keys are an error naming the valid ones."""
        own = {f.name for f in fields(cls)} - {"retrieval"}
        retrieval_keys = set(EvalConfig.__dataclass_fields__)
        unknown = set(data) - own - retrieval_keys
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: {', '.join(sorted(own | retrieval_keys))}")
        retrieval = EvalConfig.from_dict({key: value for key, value in data.items() if key in retrieval_keys})
        values = {key: value for key, value in data.items() if key in own}
        return cls(retrieval=retrieval, **values)  # type: ignore[arg-type]


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

"""The run store: every ``eval`` and ``pipeline`` run, one row per configuration, in one SQLite file.

A run records what decides and describes its result: the configuration, the model ids (with
weights hashes where the run knows them), the code version, the dataset's name and fingerprint,
the headline metrics of its summary, and one record per question with the question and answer
texts, its scores per stage, tokens, times, and the character spans of the references, of what
retrieval found and of what compression kept, together with the source text around them
(``Excerpt``), so the dashboard can show the evidence without the dataset at hand. It also keeps
the reports of ``ragpress eval --poison`` (table ``probes``), which the dashboard shows as tables.

The file lives at ``$RAGPRESS_RUNS`` or ``$RAGPRESS_CACHE/runs.sqlite`` (default
``~/.cache/ragpress/runs.sqlite``). Each run is written in one transaction, so a killed writer
leaves whole runs only; everything read back is JSON, never code.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from eval.base import EvalDataset, EvalResult, Question, Span
from eval.metrics import union_ranges
from eval.pipeline_base import PipelineResult

KINDS = ("eval", "pipeline")
EXCERPT_PAD = 160  # characters of source shown either side of every highlighted span
Interval = tuple[int, int]

# Headline metrics: name -> (label, higher is better). Reference scores and F1 are x100.
METRICS: dict[str, tuple[str, bool]] = {
    "retrieval.recall": ("retrieval recall", True),
    "retrieval.precision": ("retrieval precision", True),
    "retrieval.precision_omega": ("retrieval PΩ", True),
    "retrieval.iou": ("retrieval IoU", True),
    "retrieved_tokens": ("tokens retrieved", False),
    "compression.recall": ("reference recall sent to the LM", True),
    "compression.precision": ("precision sent to the LM", True),
    "compression.iou": ("IoU sent to the LM", True),
    "tokens_sent": ("tokens sent to the LM", False),
    "answer_f1": ("answer F1", True),
    "fidelity_f1": ("fidelity F1", True),
    "ttft_s": ("time to first token (s)", False),
    "wall_s": ("wall time per question (s)", False),
}
# How a run's summary aggregates each metric over its questions (the rest are means).
MEDIAN_METRICS = frozenset({"ttft_s", "wall_s"})


@dataclass(frozen=True)
class Excerpt:
    """Source text ``corpus[start:start + len(text)]`` shown around a question's spans."""

    corpus_id: str
    start: int
    text: str


@dataclass(frozen=True)
class QuestionRecord:
    """One question of a run: texts, metrics (``METRICS`` names, x100 like the summary), spans.

    ``references`` are ranges in ``corpus_id``; ``retrieved`` every span retrieval scored (copies
    of a handed-on text included); ``kept`` what compression kept (None for retrieval-only runs).
    """

    qid: str
    corpus_id: str
    question: str
    answer: str | None
    metrics: Mapping[str, float | None]
    references: tuple[Interval, ...]
    retrieved: tuple[Span, ...]
    kept: tuple[Span, ...] | None
    excerpts: tuple[Excerpt, ...]

    def to_dict(self) -> dict:
        """The JSON form (spans as ``[corpus_id, start, end]``)."""
        return {**asdict(self), "metrics": dict(self.metrics), "references": [list(r) for r in self.references],
                "retrieved": [[s.corpus_id, s.start, s.end] for s in self.retrieved],
                "kept": None if self.kept is None else [[s.corpus_id, s.start, s.end] for s in self.kept],
                "excerpts": [asdict(e) for e in self.excerpts]}

    @classmethod
    def from_dict(cls, data: Mapping) -> QuestionRecord:
        """The record of ``to_dict``."""
        return cls(data["qid"], data["corpus_id"], data["question"], data["answer"], dict(data["metrics"]),
                   tuple((int(s), int(e)) for s, e in data["references"]),
                   tuple(Span(c, int(s), int(e)) for c, s, e in data["retrieved"]),
                   None if data["kept"] is None else tuple(Span(c, int(s), int(e)) for c, s, e in data["kept"]),
                   tuple(Excerpt(**e) for e in data["excerpts"]))


@dataclass(frozen=True)
class RunRecord:
    """One configuration's run. ``run_id`` is None until stored; ``questions`` may be left unloaded."""

    kind: str
    label: str
    dataset: str
    dataset_fingerprint: str
    config: Mapping[str, object]
    models: Mapping[str, str]
    code_version: str
    summary: Mapping[str, float | None]
    n_questions: int
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    command: str | None = None
    run_id: int | None = None
    questions: tuple[QuestionRecord, ...] = ()

    def header(self) -> dict:
        """Everything but the questions, JSON-able."""
        data = asdict(self)
        data.pop("questions")
        return {**data, "config": dict(self.config), "models": dict(self.models), "summary": dict(self.summary)}


def default_store_path() -> Path:
    """``$RAGPRESS_RUNS``, else ``$RAGPRESS_CACHE/runs.sqlite`` (default ``~/.cache/ragpress``)."""
    if os.environ.get("RAGPRESS_RUNS"):
        return Path(os.environ["RAGPRESS_RUNS"])
    return Path(os.environ.get("RAGPRESS_CACHE") or Path.home() / ".cache" / "ragpress") / "runs.sqlite"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
  run_id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL,
  dataset TEXT NOT NULL, dataset_fingerprint TEXT NOT NULL, config TEXT NOT NULL, models TEXT NOT NULL,
  code_version TEXT NOT NULL, command TEXT, summary TEXT NOT NULL, n_questions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS questions(
  run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, position INTEGER NOT NULL,
  qid TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY(run_id, position));
CREATE TABLE IF NOT EXISTS probes(
  probe_id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, dataset TEXT NOT NULL, report TEXT NOT NULL);
"""
_HEADER_COLUMNS = ("run_id", "created", "kind", "label", "dataset", "dataset_fingerprint", "config", "models",
                   "code_version", "command", "summary", "n_questions")
_JSON_COLUMNS = ("config", "models", "summary")


class RunStore:
    """The SQLite file of runs: add, list, get, delete."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            connection.executescript(_SCHEMA)
            with connection:  # one transaction: committed whole or rolled back
                yield connection
        finally:
            connection.close()

    def add(self, run: RunRecord) -> int:
        """Store ``run`` with its questions; returns its new id."""
        if run.kind not in KINDS:
            raise ValueError(f"unknown run kind '{run.kind}'; valid choices: {', '.join(KINDS)}")
        header = run.header()
        values = [json.dumps(header[c]) if c in _JSON_COLUMNS else header[c] for c in _HEADER_COLUMNS[1:]]
        with self._connect() as db:
            cursor = db.execute(f"INSERT INTO runs({', '.join(_HEADER_COLUMNS[1:])}) VALUES ({', '.join('?' * len(values))})", values)
            run_id = int(cursor.lastrowid or 0)
            db.executemany("INSERT INTO questions(run_id, position, qid, record) VALUES (?, ?, ?, ?)",
                           [(run_id, i, q.qid, json.dumps(q.to_dict())) for i, q in enumerate(run.questions)])
        return run_id

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        """Run headers (no questions), oldest first; the newest ``limit`` when given."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(_HEADER_COLUMNS)} FROM runs ORDER BY run_id DESC LIMIT ?",
                              (-1 if limit is None else limit,)).fetchall()
        return [_header(row) for row in reversed(rows)]

    def get(self, run_id: int, questions: bool = True) -> RunRecord:
        """One run (with its questions unless told otherwise); an unknown id raises ``KeyError``."""
        with self._connect() as db:
            row = db.execute(f"SELECT {', '.join(_HEADER_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                known = [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY run_id")]
                raise KeyError(f"no run #{run_id} in {self.path}; stored runs: {_id_list(known)}")
            records = db.execute("SELECT record FROM questions WHERE run_id = ? ORDER BY position", (run_id,)).fetchall() if questions else []
        run = _header(row)
        return _with_questions(run, tuple(QuestionRecord.from_dict(json.loads(r[0])) for r in records))

    def add_probe(self, report: Mapping) -> int:
        """Store a poisoning probe's report (``eval.poison.report.report_json``); returns its new id."""
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._connect() as db:
            cursor = db.execute("INSERT INTO probes(created, dataset, report) VALUES (?, ?, ?)",
                                (created, str(report["dataset"]), json.dumps(report)))
            return int(cursor.lastrowid or 0)

    def probes(self, limit: int | None = None) -> list[dict]:
        """Stored probe reports with their ``probe_id`` and ``created``, newest first (the newest ``limit``)."""
        with self._connect() as db:
            rows = db.execute("SELECT probe_id, created, report FROM probes ORDER BY probe_id DESC LIMIT ?",
                              (-1 if limit is None else limit,)).fetchall()
        return [{**json.loads(report), "probe_id": probe_id, "created": created} for probe_id, created, report in rows]

    def delete(self, run_ids: Iterable[int]) -> int:
        """Delete runs (and their questions); returns how many existed."""
        ids = list(run_ids)
        with self._connect() as db:
            return sum(db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount for run_id in ids)


def _header(row: Sequence) -> RunRecord:
    data = dict(zip(_HEADER_COLUMNS, row))
    for column in _JSON_COLUMNS:
        data[column] = json.loads(data[column])
    return RunRecord(**data)


def _with_questions(run: RunRecord, questions: tuple[QuestionRecord, ...]) -> RunRecord:
    from dataclasses import replace

    return replace(run, questions=questions)


def _id_list(ids: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in ids[-20:]) + (" ..." if len(ids) > 20 else "") if ids else "none"


# -- building records from results ------------------------------------------------------------
def code_version() -> str:
    """The git commit of the checkout (``+dirty`` with uncommitted changes), else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "ragpress " + version("ragpress")
        except PackageNotFoundError:
            return "unknown"


def excerpts(corpora: Mapping[str, str], spans: Iterable[Span], pad: int = EXCERPT_PAD) -> tuple[Excerpt, ...]:
    """The source text around ``spans``: per corpus, the union of every span widened by ``pad``."""
    by_corpus: dict[str, list[Interval]] = {}
    for span in spans:
        text = corpora[span.corpus_id]
        by_corpus.setdefault(span.corpus_id, []).append((max(0, span.start - pad), min(len(text), span.end + pad)))
    return tuple(Excerpt(corpus_id, start, corpora[corpus_id][start:end])
                 for corpus_id in sorted(by_corpus) for start, end in union_ranges(by_corpus[corpus_id]))


def _question_record(question: Question, corpora: Mapping[str, str], metrics: Mapping[str, float | None],
                     retrieved: Sequence[Span], kept: Sequence[Span] | None, answer: str | None) -> QuestionRecord:
    references = tuple((r.start, r.end) for r in question.references)
    spans = [Span(question.corpus_id, s, e) for s, e in references] + list(retrieved) + list(kept or ())
    return QuestionRecord(question.qid, question.corpus_id, question.text, answer, dict(metrics), references,
                          tuple(retrieved), None if kept is None else tuple(kept), excerpts(corpora, spans))


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def eval_run(result: EvalResult, dataset: EvalDataset, *, command: str | None = None) -> RunRecord:
    """The record of one retrieval evaluation (``dataset`` is the one it was evaluated on)."""
    from eval.pipeline import dataset_digest

    by_qid = {q.qid: q for q in dataset.questions}
    questions = tuple(
        _question_record(by_qid[s.qid], dataset.corpora,
                         {"retrieval.recall": 100 * s.recall, "retrieval.precision": 100 * s.precision,
                          "retrieval.precision_omega": 100 * s.precision_omega, "retrieval.iou": 100 * s.iou,
                          "retrieved_tokens": float(s.retrieved_tokens)},
                         s.retrieved_spans, None, None)
        for s in result.questions)
    o = result.overall
    summary = {"retrieval.recall": o.recall, "retrieval.precision": o.precision, "retrieval.precision_omega": o.precision_omega,
               "retrieval.iou": o.iou, "retrieved_tokens": o.mean_retrieved_tokens}
    return RunRecord("eval", result.config.label, result.dataset, dataset_digest(dataset), result.config.to_dict(),
                     {"encoder": result.model_id}, code_version(), summary, len(questions), command=command, questions=questions)


def pipeline_question_metrics(run) -> dict[str, float | None]:
    """A ``QuestionRun``'s metrics by ``METRICS`` name (x100 for scores, like its summary)."""
    return {"retrieval.recall": 100 * run.retrieval.recall, "retrieval.precision": 100 * run.retrieval.precision,
            "retrieval.precision_omega": 100 * run.retrieval.precision_omega, "retrieval.iou": 100 * run.retrieval.iou,
            "retrieved_tokens": float(run.retrieved_tokens), "compression.recall": 100 * run.compression.recall,
            "compression.precision": 100 * run.compression.precision, "compression.iou": 100 * run.compression.iou,
            "tokens_sent": float(run.tokens_sent), "answer_f1": 100 * run.answer_f1, "fidelity_f1": _percent(run.fidelity_f1),
            "ttft_s": run.ttft_s, "wall_s": run.wall_s}


def pipeline_summary_metrics(summary) -> dict[str, float | None]:
    """A ``PipelineSummary``'s headline metrics by ``METRICS`` name."""
    r, c = summary.retrieval, summary.compression
    return {"retrieval.recall": r.recall, "retrieval.precision": r.precision, "retrieval.precision_omega": r.precision_omega,
            "retrieval.iou": r.iou, "retrieved_tokens": r.mean_retrieved_tokens, "compression.recall": c.recall,
            "compression.precision": c.precision, "compression.iou": c.iou, "tokens_sent": c.mean_retrieved_tokens,
            "answer_f1": summary.answer_f1, "fidelity_f1": summary.fidelity_f1, "ttft_s": summary.ttft_median_s,
            "wall_s": summary.wall_median_s}


def pipeline_run(result: PipelineResult, dataset: EvalDataset, *, models: Mapping[str, str], command: str | None = None) -> RunRecord:
    """The record of one pipeline configuration (``dataset``: the questions it ran on)."""
    from eval.pipeline import dataset_digest

    by_qid = {q.qid: q for q in dataset.questions}
    questions = tuple(_question_record(by_qid[q.qid], dataset.corpora, pipeline_question_metrics(q), q.retrieved_spans,
                                       q.kept_spans, q.answer) for q in result.questions)
    return RunRecord("pipeline", result.config.label, result.dataset, dataset_digest(dataset), result.config.to_dict(),
                     dict(models), code_version(), pipeline_summary_metrics(result.summary), len(questions),
                     command=command, questions=questions)

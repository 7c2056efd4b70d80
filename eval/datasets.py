"""Evaluation datasets: the Chroma benchmark CSV, a simple JSONL format, and the pydoc-topics set.

Every loader validates that each reference equals the corpus text at its offsets and names the
offending row when it does not, so a metric is never computed against a shifted span.

JSONL format (one question per line)::

    {"id": "q1", "question": "...", "corpus_id": "for",
     "references": [{"start": 10, "end": 42, "content": "exact corpus[10:42]"}]}

``id`` is optional (defaults to the line number); ``start_index``/``end_index`` are accepted as
aliases of ``start``/``end`` so Chroma-style references load unchanged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from eval.base import EvalDataset, Question, Reference

CORPUS_SUFFIXES = (".md", ".txt")
PYDOC_TOPICS_JSONL = Path(__file__).with_name("data") / "pydoc_topics.jsonl"


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file, the row and the fix."""


def pydoc_topics_corpus() -> dict[str, str]:
    """The demo's default corpus: one document per Python help topic.

    ``corpus_id`` = topic name (e.g. ``"for"``), text = ``pydoc_data.topics.topics[name]`` exactly
    as shipped with this interpreter; the demo indexes the very same texts, so the spans of
    ``eval/data/pydoc_topics.jsonl`` are valid for it.
    """
    from pydoc_data.topics import topics

    return {name: topics[name] for name in sorted(topics)}


def load_corpora(corpora_dir: Path, corpus_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Read ``DIR/<corpus_id>.md`` or ``.txt`` (UTF-8). With ``corpus_ids``, exactly those."""
    corpora_dir = Path(corpora_dir)
    if not corpora_dir.is_dir():
        raise DatasetError(f"corpora directory {corpora_dir} does not exist; pass --corpora DIR holding <corpus_id>.md files")
    files = {path.stem: path for path in sorted(corpora_dir.iterdir()) if path.suffix in CORPUS_SUFFIXES}
    wanted = sorted(set(corpus_ids)) if corpus_ids is not None else sorted(files)
    missing = [name for name in wanted if name not in files]
    if missing:
        raise DatasetError(f"no corpus file for {missing} in {corpora_dir}; expected <corpus_id>.md or .txt")
    return {name: files[name].read_text(encoding="utf-8") for name in wanted}


def _reference(raw: Mapping, where: str) -> Reference:
    try:
        start = int(raw["start"] if "start" in raw else raw["start_index"])
        end = int(raw["end"] if "end" in raw else raw["end_index"])
        content = str(raw["content"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: a reference needs integer start/end (or start_index/end_index) and content ({exc!r})") from exc
    return Reference(start, end, content)


def validate_question(question: Question, corpora: Mapping[str, str], where: str) -> None:
    """Raise ``DatasetError`` naming ``where`` unless every reference matches its corpus text."""
    if question.corpus_id not in corpora:
        raise DatasetError(f"{where}: unknown corpus_id '{question.corpus_id}'; known: {', '.join(sorted(corpora))}")
    if not question.text.strip():
        raise DatasetError(f"{where}: empty question text")
    if not question.references:
        raise DatasetError(f"{where}: the question has no references; every question needs at least one span")
    text = corpora[question.corpus_id]
    for number, ref in enumerate(question.references):
        if not 0 <= ref.start < ref.end <= len(text):
            raise DatasetError(
                f"{where}, reference {number}: span [{ref.start}:{ref.end}] is empty or outside "
                f"'{question.corpus_id}' (length {len(text)})"
            )
        if text[ref.start:ref.end] != ref.content:
            found = text[ref.start:ref.end][:60]
            raise DatasetError(
                f"{where}, reference {number}: corpus '{question.corpus_id}'[{ref.start}:{ref.end}] is {found!r}..., "
                f"not the reference content {ref.content[:60]!r}...; fix the offsets (Python character offsets into the UTF-8 text)"
            )


def load_chroma(questions_csv: Path, corpora_dir: Path, name: str | None = None) -> EvalDataset:
    """The public benchmark format: CSV ``question,references,corpus_id`` + ``DIR/<corpus_id>.md``."""
    questions_csv = Path(questions_csv)
    if not questions_csv.is_file():
        raise DatasetError(f"questions file {questions_csv} does not exist; pass --questions questions.csv")
    rows = _csv_rows(questions_csv)
    corpora = load_corpora(corpora_dir, {row["corpus_id"] for row in rows})
    questions = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{questions_csv.name} row {number}"
        try:
            raw_refs = json.loads(row["references"])
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: references is not valid JSON ({exc})") from exc
        if not isinstance(raw_refs, list) or not all(isinstance(raw, dict) for raw in raw_refs):
            raise DatasetError(f"{where}: references must be a JSON list of {{start_index, end_index, content}} objects, "
                               f"got {row['references'][:40]!r}")
        refs = tuple(_reference(raw, where) for raw in raw_refs)
        question = Question(str(number - 2), row["question"], row["corpus_id"], refs)
        validate_question(question, corpora, where)
        questions.append(question)
    return EvalDataset(name or questions_csv.parent.name, corpora, tuple(questions))


def _csv_rows(questions_csv: Path) -> list[dict[str, str]]:
    """The data rows of a Chroma-format CSV; encoding, header and empty files are errors naming the file."""
    try:
        with open(questions_csv, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{questions_csv}: invalid UTF-8 at byte offset {exc.start} ({exc.reason}); "
                           "re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except csv.Error as exc:
        raise DatasetError(f"{questions_csv}: not a readable CSV ({exc}); save it as CSV with a header row") from None
    if not {"question", "references", "corpus_id"} <= set(header):
        raise DatasetError(f"{questions_csv}: expected columns question, references, corpus_id; got {list(header)}")
    if not rows:
        raise DatasetError(f"{questions_csv} holds a header but no questions; add one row per question")
    for number, row in enumerate(rows, start=2):  # DictReader fills a short row with None, puts extras under None
        if None in row or None in row.values():
            fields = sum(value is not None for key, value in row.items() if key is not None) + len(row.get(None) or ())
            raise DatasetError(f"{questions_csv.name} row {number}: expected {len(header)} fields ({', '.join(header)}), got {fields}; "
                               "quote fields that contain commas")
    return rows


def load_jsonl(path: Path, corpora: Mapping[str, str], name: str | None = None) -> EvalDataset:
    """Questions in this module's JSONL format against the given corpora (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"questions file {path} does not exist")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            raw = json.loads(line)
            refs = tuple(_reference(ref, where) for ref in raw["references"])
            question = Question(str(raw.get("id", number)), str(raw["question"]), str(raw["corpus_id"]), refs)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{where}: expected {{question, corpus_id, references}} JSON ({exc!r})") from exc
        validate_question(question, corpora, where)
        questions.append(question)
    if not questions:
        raise DatasetError(f"{path} holds no questions")
    return EvalDataset(name or path.stem, dict(corpora), tuple(questions))


def load_pydoc_topics() -> EvalDataset:
    """The project's own evaluation set over :func:`pydoc_topics_corpus`."""
    return load_jsonl(PYDOC_TOPICS_JSONL, pydoc_topics_corpus(), name="pydoc_topics")


def load_questions(questions: Path, corpora_dir: Path | None) -> EvalDataset:
    """CSV (Chroma format) or JSONL by suffix; JSONL without a corpora dir uses the pydoc topics."""
    questions = Path(questions)
    if questions.suffix == ".csv":
        if corpora_dir is None:
            raise DatasetError("a Chroma-format CSV needs --corpora DIR with <corpus_id>.md files")
        return load_chroma(questions, corpora_dir)
    if questions.suffix == ".jsonl":
        corpora = load_corpora(corpora_dir) if corpora_dir is not None else pydoc_topics_corpus()
        return load_jsonl(questions, corpora)
    raise DatasetError(f"{questions}: unsupported questions format '{questions.suffix}'; use .csv (Chroma) or .jsonl")

"""Dataset loaders: the Chroma CSV, the JSONL format and the pydoc-topics set, with validation."""

from __future__ import annotations

import csv
import json

import pytest

from eval.datasets import (
    DatasetError,
    load_chroma,
    load_jsonl,
    load_pydoc_topics,
    load_questions,
    pydoc_topics_corpus,
)

CORPUS = "Alpha beta gamma.\nDelta epsilon zeta.\n"


def write_chroma(tmp_path, references, corpus_id="doc"):
    (tmp_path / "corpora").mkdir(exist_ok=True)
    (tmp_path / "corpora" / "doc.md").write_text(CORPUS, encoding="utf-8")
    path = tmp_path / "questions.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "references", "corpus_id"])
        writer.writerow(["What is first?", json.dumps([{"content": "Alpha", "start_index": 0, "end_index": 5}]), "doc"])
        writer.writerow(["What comes next?", json.dumps(references), corpus_id])
    return path


def test_load_chroma_reads_questions_and_exact_references(tmp_path):
    path = write_chroma(tmp_path, [{"content": "Delta epsilon", "start_index": 18, "end_index": 31}])
    dataset = load_chroma(path, tmp_path / "corpora")
    assert [q.text for q in dataset.questions] == ["What is first?", "What comes next?"]
    ref = dataset.questions[1].references[0]
    assert (ref.start, ref.end, dataset.corpora["doc"][ref.start:ref.end]) == (18, 31, "Delta epsilon")


def test_shifted_reference_names_the_row(tmp_path):
    path = write_chroma(tmp_path, [{"content": "Delta epsilon", "start_index": 17, "end_index": 30}])
    with pytest.raises(DatasetError, match=r"questions.csv row 3, reference 0.*fix the offsets"):
        load_chroma(path, tmp_path / "corpora")


def test_out_of_range_reference_and_unknown_corpus_are_rejected(tmp_path):
    path = write_chroma(tmp_path, [{"content": "x", "start_index": 100, "end_index": 101}])
    with pytest.raises(DatasetError, match="outside"):
        load_chroma(path, tmp_path / "corpora")
    path = write_chroma(tmp_path, [{"content": "Alpha", "start_index": 0, "end_index": 5}], corpus_id="nope")
    with pytest.raises(DatasetError, match="no corpus file for \\['nope'\\]"):
        load_chroma(path, tmp_path / "corpora")


def test_question_without_references_is_rejected(tmp_path):
    path = write_chroma(tmp_path, [])
    with pytest.raises(DatasetError, match="row 3: the question has no references"):
        load_chroma(path, tmp_path / "corpora")


def test_jsonl_format_round_trip_and_bad_line(tmp_path):
    good = {"id": "q1", "question": "Which letter?", "corpus_id": "doc", "references": [{"start": 6, "end": 10, "content": "beta"}]}
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(good) + "\n\n", encoding="utf-8")
    dataset = load_jsonl(path, {"doc": CORPUS})
    assert dataset.questions[0].qid == "q1" and dataset.questions[0].references[0].content == "beta"
    path.write_text(json.dumps({**good, "references": [{"start": 6, "end": 10, "content": "BETA"}]}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="set.jsonl line 1, reference 0"):
        load_jsonl(path, {"doc": CORPUS})
    path.write_text('{"question": "no refs key"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1: expected"):
        load_jsonl(path, {"doc": CORPUS})


def test_load_questions_dispatches_on_suffix(tmp_path):
    with pytest.raises(DatasetError, match="unsupported questions format"):
        load_questions(tmp_path / "q.parquet", None)
    with pytest.raises(DatasetError, match="needs --corpora"):
        load_questions(tmp_path / "q.csv", None)


def test_pydoc_topics_set_is_valid_against_the_demo_corpus():
    corpus = pydoc_topics_corpus()
    dataset = load_pydoc_topics()  # validates every span on load
    assert len(dataset.questions) >= 20
    assert dataset.corpora == corpus
    assert len({q.qid for q in dataset.questions}) == len(dataset.questions)
    for question in dataset.questions:
        for ref in question.references:
            assert corpus[question.corpus_id][ref.start:ref.end] == ref.content


@pytest.mark.shared_data
def test_shared_chroma_data_loads_and_validates(shared_data_dir):
    dataset = load_chroma(shared_data_dir / "chroma" / "questions.csv", shared_data_dir / "chroma" / "corpora")
    assert set(dataset.corpora) == {"chatlogs", "wikitexts"}
    assert len(dataset.questions) == 200
    assert sum(q.corpus_id == "chatlogs" for q in dataset.questions) == 56

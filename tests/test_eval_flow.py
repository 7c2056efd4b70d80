"""The evaluation runner against a brute-force reference, the sweep file, the CLI, and the flow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import BagOfWordsEncoder, tiny_dataset

from eval.base import EvalConfig
from eval.embedding_cache import EmbeddingCache
from eval.runner import Evaluator, chunk_corpora, default_chunker_factory
from eval.sweep import load_sweep
from retrieval.tokenizer import load_tokenizer


def positions(ranges):
    return {p for start, end in ranges for p in range(start, end)}


def brute_force(dataset, config, encoder):
    """Independent reference: rank by the dot product, score with sets of character positions."""
    chunks = chunk_corpora(dataset.corpora, default_chunker_factory(config))
    vectors = encoder.encode([c.text for c in chunks])
    out = {}
    for question in dataset.questions:
        scores = vectors @ encoder.encode([question.text])[0]
        top = [chunks[i] for i in np.argsort(-scores, kind="stable")[: config.k]]
        refs = positions((r.start, r.end) for r in question.references)
        got = positions((c.start, c.end) for c in top if c.corpus_id == question.corpus_id)
        total = sum(c.end - c.start for c in top)
        hit = len(refs & got)
        out[question.qid] = (hit / len(refs), hit / total, hit / (total + len(refs - got)))
    return out


@pytest.fixture
def evaluator(tmp_path):
    return Evaluator(tiny_dataset(), BagOfWordsEncoder(), cache=EmbeddingCache(tmp_path / "cache"), token_counter=load_tokenizer())


@pytest.mark.parametrize("chunker,size,k", [("token", 8, 2), ("token", 12, 3), ("sentence", 16, 1)])
def test_runner_matches_brute_force(evaluator, chunker, size, k):
    config = EvalConfig(chunker=chunker, chunk_size=size, overlap=0, k=k)
    result = evaluator.evaluate(config)
    reference = brute_force(evaluator.dataset, config, BagOfWordsEncoder())
    for score in result.questions:
        assert (score.recall, score.precision, score.iou) == pytest.approx(reference[score.qid])
    assert set(result.per_corpus) == {"animals", "planets"}
    assert result.overall.recall == pytest.approx(100 * np.mean([reference[q][0] for q in reference]))


def test_chunks_equal_to_sentences_retrieve_the_answer_exactly(evaluator):
    # One sentence per chunk and questions that share words with their sentence: the top-1
    # chunk is the reference for the single-sentence questions.
    result = evaluator.evaluate(EvalConfig(chunker="sentence", chunk_size=16, overlap=0, k=1))
    scores = {s.qid: s for s in result.questions}
    for qid in ("0", "1", "2"):
        assert (scores[qid].recall, scores[qid].precision, scores[qid].iou) == (1.0, 1.0, 1.0)
        assert scores[qid].precision_omega == pytest.approx(1.0, abs=0.05)  # the trailing space


def test_embedding_cache_reuses_vectors_across_evaluators(tmp_path):
    encoder = BagOfWordsEncoder()
    config = EvalConfig(chunker="token", chunk_size=10, overlap=0, k=2)
    first = Evaluator(tiny_dataset(), encoder, cache=EmbeddingCache(tmp_path)).evaluate(config)
    encoded = encoder.encoded
    assert encoded > 0 and list(tmp_path.rglob("*.npz"))
    fresh = Evaluator(tiny_dataset(), encoder, cache=EmbeddingCache(tmp_path))  # new memory, same disk
    second = fresh.evaluate(config)
    assert encoder.encoded == encoded  # nothing re-embedded
    assert second.questions == first.questions


def test_k_min_uses_the_touching_chunk_count(evaluator):
    result = evaluator.evaluate(EvalConfig(chunker="token", chunk_size=6, overlap=0, k="min"))
    for score in result.questions:
        assert 1 <= score.k <= 20
    chunks = chunk_corpora(evaluator.dataset.corpora, default_chunker_factory(EvalConfig(chunk_size=6)))
    question = evaluator.dataset.questions[0]
    ref = question.references[0]
    touching = [c for c in chunks if c.corpus_id == question.corpus_id and c.start <= ref.end and ref.start <= c.end]
    assert result.questions[0].k == len(touching)


def test_merge_adjacent_never_counts_overlap_twice(evaluator):
    plain = evaluator.evaluate(EvalConfig(chunker="token", chunk_size=10, overlap=5, k=4))
    merged = evaluator.evaluate(EvalConfig(chunker="token", chunk_size=10, overlap=5, k=4, merge_adjacent=True))
    for a, b in zip(plain.questions, merged.questions):
        assert b.recall == pytest.approx(a.recall)  # same text retrieved
        assert b.retrieved_chars <= a.retrieved_chars
        assert b.precision >= a.precision - 1e-12
    assert sum(b.retrieved_chars for b in merged.questions) < sum(a.retrieved_chars for a in plain.questions)


def test_bm25_and_hybrid_find_lexical_matches(evaluator):
    for retrieval in ("bm25", "hybrid"):
        result = evaluator.evaluate(EvalConfig(chunker="sentence", chunk_size=16, overlap=0, k=1, retrieval=retrieval))
        assert {s.qid: s.recall for s in result.questions}["2"] == 1.0  # "rings" and "ice" only in Saturn's


def test_token_unit_scores_are_bounded_and_close_to_chars(evaluator):
    chars = evaluator.evaluate(EvalConfig(chunker="token", chunk_size=8, overlap=0, k=2))
    tokens = evaluator.evaluate(EvalConfig(chunker="token", chunk_size=8, overlap=0, k=2, unit="tokens"))
    for a, b in zip(chars.questions, tokens.questions):
        assert 0.0 <= b.iou <= min(b.recall, b.precision) + 1e-12
        assert (a.recall > 0) == (b.recall > 0)


def test_unknown_options_are_clear_errors():
    with pytest.raises(ValueError, match="^retrieval='colbert' is not allowed; retrieval must be one of dense, bm25, hybrid$"):
        EvalConfig(retrieval="colbert")
    with pytest.raises(ValueError, match="^unknown key 'chunk'; valid keys: chunk_size, chunker, "):
        EvalConfig.from_dict({"chunk": 5})
    with pytest.raises(ValueError, match="^k=0 is not allowed; k must be a positive integer"):
        EvalConfig(k=0)


def test_sweep_file_grid_and_configs(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "grid: {chunker: [token, recursive], chunk_size: [50, 100], overlap: [0, 50], k: 5}\n"
        "configs:\n  - {chunker: token, chunk_size: 200, overlap: 0}\n",
        encoding="utf-8",
    )
    configs = load_sweep(path)
    # 2 chunkers x 2 sizes x 2 overlaps, minus overlap 50 at size 50, plus the explicit one.
    assert len(configs) == 2 * 2 * 2 - 2 + 1
    assert configs[-1] == EvalConfig(chunker="token", chunk_size=200, overlap=0)
    path.write_text("nothing: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'grid' mapping and/or a 'configs' list"):
        load_sweep(path)


def test_cli_config_uses_best_default_unless_a_chunker_option_is_given():
    from eval.defaults import BASELINE_CONFIG, BEST_CONFIG
    from flows.cli_eval import build_config

    nothing = dict.fromkeys(("chunker", "chunk_size", "overlap", "k", "retrieval"))
    assert build_config(nothing) == BEST_CONFIG
    assert build_config({**nothing, "chunker": "token", "chunk_size": 200, "overlap": 0}) == BASELINE_CONFIG
    assert build_config({**nothing, "k": 3}).k == 3


@pytest.mark.slow
@pytest.mark.prefect
def test_flow_writes_json_html_and_artifacts(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.evaluate import evaluate_flow

    data = tiny_dataset()
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    for name, text in data.corpora.items():
        (corpora / f"{name}.txt").write_text(text, encoding="utf-8")
    questions = tmp_path / "tiny.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"id": q.qid, "question": q.text, "corpus_id": q.corpus_id,
                        "references": [{"start": r.start, "end": r.end, "content": r.content} for r in q.references]}) + "\n"
            for q in data.questions
        ),
        encoding="utf-8",
    )
    configs = [EvalConfig(chunker="token", chunk_size=s, overlap=0, k=2).to_dict() for s in (8, 16)]
    results = evaluate_flow(
        configs=configs, questions=str(questions), corpora=str(corpora), json_out=str(tmp_path / "out.json"),
        html_out=str(tmp_path / "report.html"), cache_dir=str(tmp_path / "cache"), encoder=BagOfWordsEncoder(),
        runs_db=str(tmp_path / "runs.sqlite"),
    )
    assert len(results) == 2
    saved = json.loads((tmp_path / "out.json").read_text())
    assert [r["config"]["chunk_size"] for r in saved["results"]] == [8, 16]
    assert saved["results"][0]["overall"]["iou"] == pytest.approx(results[0].overall.iou)
    assert len(saved["results"][0]["questions"]) == 4 and set(saved["results"][0]["per_corpus"]) == {"animals", "planets"}
    from eval.run_store import RunStore

    stored = RunStore(tmp_path / "runs.sqlite").runs()
    assert [r.run_id for r in stored] == saved["run_ids"] and [r.label for r in stored] == [r.config.label for r in results]
    assert stored[1].summary["retrieval.iou"] == results[1].overall.iou
    assert 'id="dashboard-data"' in (tmp_path / "report.html").read_text()
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-tiny", "eval-tiny-summary"])))}
    assert keys == {"eval-tiny", "eval-tiny-summary"}


# ---- retrieval options used by the runner ---------------------------------------------------


def test_merge_adjacent_spans_by_hand():
    from retrieval.postprocess import merge_adjacent

    spans = [("a", 10, 20), ("b", 0, 5), ("a", 30, 40), ("a", 20, 30), ("a", 0, 5), ("b", 5, 9), ("a", 12, 14)]
    # (a, 20, 30) bridges 10..20 and 30..40; (b, 5, 9) touches (b, 0, 5); order follows the best member.
    assert merge_adjacent(spans) == [("a", 10, 40), ("b", 0, 9), ("a", 0, 5)]
    assert merge_adjacent([]) == []


def test_fuse_and_neighbour_context_by_hand():
    from retrieval.lexical import fuse, minmax
    from retrieval.postprocess import with_neighbour_context

    assert fuse(np.array([0.0, 1.0, 0.5]), np.array([4.0, 0.0, 2.0]), 0.5) == pytest.approx([0.5, 0.5, 0.5])
    assert minmax(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]
    vectors = np.eye(3, dtype=np.float32)
    mixed = with_neighbour_context(vectors, ["x", "x", "y"], radius=1, weight=0.5)
    # Row 0 takes half of row 1 (same document); row 2 has no neighbour in its document.
    assert mixed[0] == pytest.approx(np.array([1.0, 0.5, 0.0]) / np.sqrt(1.25))
    assert mixed[2] == pytest.approx([0.0, 0.0, 1.0])
    assert with_neighbour_context(vectors, ["x"] * 3, radius=0, weight=0.5) is vectors


@pytest.mark.slow
@pytest.mark.prefect
@pytest.mark.real_model
def test_cli_eval_prints_per_corpus_and_overall_scores(prefect_harness, tmp_path):
    import typer
    from support import write_chroma_files
    from typer.testing import CliRunner

    from flows.cli_eval import register

    questions, corpora = write_chroma_files(tiny_dataset(), tmp_path)
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: 'eval' stays a sub-command as in ragpress
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, [
        "eval", "--questions", str(questions), "--corpora", str(corpora), "--chunker", "token", "--chunk-size", "16",
        "--overlap", "0", "-k", "2", "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    for word in ("animals", "planets", "overall", "token 16/0 k=2 dense"):
        assert word in result.output
    saved = json.loads(out.read_text())["results"][0]
    assert saved["config"]["chunk_size"] == 16 and len(saved["questions"]) == 4
    bad = CliRunner().invoke(app, ["eval", "--questions", str(questions), "--corpora", str(corpora), "-k", "many"])
    assert bad.exit_code == 2 and "k='many' is not allowed; k must be a positive integer (chunks to retrieve) or 'min'" in bad.output

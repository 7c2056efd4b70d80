"""The run store, run comparison, the dashboard's data and the ``ragpress runs``/``dashboard`` commands.

Runs come from the real evaluator and pipeline on the tiny dataset with stand-in models; the
references they are checked against are the results' own JSON and hand computation.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import urllib.request

import numpy as np
import pytest
from support import (
    DENSE,
    eval_results,
    pipeline_results,
    tiny_dataset,
    union_length,
)
from typer.testing import CliRunner

from eval.base import Span
from eval.dashboard import (
    dashboard_data,
    load_runs,
    make_server,
    pareto_views,
    render_dashboard,
    run_styles,
    write_dashboard,
)
from eval.embedding_cache import EmbeddingCache
from eval.run_compare import compare_runs, config_diff
from eval.run_store import RunStore, eval_run, excerpts, pipeline_run
from eval.runner import Evaluator
from flows.cli import app


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store with two eval runs and two pipeline runs, and the results they were made from."""
    tmp = tmp_path_factory.mktemp("runs")
    store = RunStore(tmp / "runs.sqlite")
    dataset = tiny_dataset()
    evals = eval_results(tmp)
    pipes, models = pipeline_results(tmp)
    ids = [store.add(eval_run(r, dataset, command="ragpress eval")) for r in evals]
    ids += [store.add(pipeline_run(r, dataset, models=models)) for r in pipes]
    return store, ids, evals, pipes


def test_store_round_trips_runs(stored):
    store, ids, evals, pipes = stored
    assert [run.run_id for run in store.runs()] == ids
    assert [run.kind for run in store.runs()] == ["eval", "eval", "pipeline", "pipeline"]
    first = store.get(ids[0])
    assert first.config == DENSE.to_dict() and first.models == {"encoder": "fake-bow@test"}
    assert first.summary["retrieval.iou"] == evals[0].overall.iou
    assert [q.qid for q in first.questions] == [s.qid for s in evals[0].questions]
    # per-question retrieved spans are exactly those the evaluator scored
    assert [q.retrieved for q in first.questions] == [s.retrieved_spans for s in evals[0].questions]
    assert all(q.retrieved for q in first.questions)
    compressed = store.get(ids[3])
    assert compressed.models["lm"] == "tiny@0"
    assert [q.kept for q in compressed.questions] == [r.kept_spans for r in pipes[1].questions]
    assert compressed.summary["compression.recall"] == pipes[1].summary.compression.recall
    assert compressed.summary["tokens_sent"] == pipes[1].summary.compression.mean_retrieved_tokens
    assert store.runs(2) == store.runs()[2:]
    with pytest.raises(KeyError, match="no run #999"):
        store.get(999)


def test_excerpts_cover_every_span_with_its_source():
    corpora = {"a": "0123456789" * 10, "b": "abcdefghij" * 3}
    spans = [Span("a", 10, 12), Span("a", 20, 30), Span("a", 90, 100), Span("b", 5, 6)]
    got = excerpts(corpora, spans, pad=5)
    assert [(e.corpus_id, e.start, len(e.text)) for e in got] == [("a", 5, 30), ("a", 85, 15), ("b", 0, 11)]
    for e in got:
        assert corpora[e.corpus_id][e.start:e.start + len(e.text)] == e.text


def test_pipeline_question_records_nest_stage_scores(stored):
    _, _, _, pipes = stored
    run = pipes[1].questions[0]
    assert 0 <= run.compression.recall <= run.retrieval.recall <= 1
    assert run.compression.precision_omega == run.retrieval.precision_omega
    summary = pipes[1].summary
    assert summary.compression.recall == pytest.approx(100 * np.mean([q.compression.recall for q in pipes[1].questions]))
    assert summary.metric("tokens_sent") == summary.compression.mean_retrieved_tokens
    assert summary.metric("compression_recall") == summary.compression.recall
    with pytest.raises(ValueError, match="unknown pipeline metric"):
        summary.metric("recall_compression")


def test_comparison_deltas_match_the_results_json(stored):
    store, ids, evals, _ = stored
    a, b = (json.loads(json.dumps(r.to_dict())) for r in evals)
    comparison = compare_runs(store.get(ids[0]), store.get(ids[1]))
    assert comparison.config_diff == {"chunk_size": (8, 16), "retrieval": ("dense", "bm25")}
    deltas = {d.metric: d for d in comparison.deltas}
    for metric, key in (("retrieval.recall", "recall"), ("retrieval.iou", "iou"), ("retrieval.precision", "precision")):
        assert deltas[metric].delta == pytest.approx(b["overall"][key] - a["overall"][key])
        assert deltas[metric].low <= deltas[metric].delta <= deltas[metric].high
    assert comparison.metric == "retrieval.iou"
    expected = {qa["qid"]: qb["iou"] - qa["iou"] for qa, qb in zip(a["questions"], b["questions"]) if qb["iou"] != qa["iou"]}
    assert {c.qid: c.delta / 100 for c in comparison.changed} == pytest.approx(expected)
    assert all(c.better == (c.delta > 0) for c in comparison.changed)


def test_bootstrap_interval_of_a_constant_shift_is_the_shift(stored):
    store, ids, _, _ = stored
    a = store.get(ids[0])
    from dataclasses import replace

    shifted = replace(a, questions=tuple(replace(q, metrics={**q.metrics, "retrieval.iou": q.metrics["retrieval.iou"] + 5})
                                         for q in a.questions))
    delta = {d.metric: d for d in compare_runs(a, shifted).deltas}["retrieval.iou"]
    assert (delta.delta, delta.low, delta.high) == pytest.approx((5, 5, 5))
    assert config_diff({"k": 1, "x": 2}, {"k": 1, "y": 3}) == {"x": (2, None), "y": (None, 3)}


def test_styles_and_pareto_views(stored):
    store, ids, _, pipes = stored
    runs = [store.get(i) for i in ids]
    styles = run_styles(runs)
    assert len({styles[str(i)]["color"] for i in ids}) == 4  # four configurations, four colours
    assert styles[str(ids[0])]["marker"] == "circle" and styles[str(ids[2])]["marker"] == "triangle"  # eval; KV naive
    views = {(v["quality"], v["cost"]): v for v in pareto_views(runs)}
    f1_tokens = views[("answer_f1", "tokens_sent")]
    assert f1_tokens["runs"] == ids[2:]
    # the compressed run sends fewer tokens; it is on the front unless the full one also answers better
    sent = [p.summary.compression.mean_retrieved_tokens for p in pipes]
    assert sent[1] < sent[0] and ids[3] in f1_tokens["front"]


def test_page_is_self_contained(stored):
    store, ids, _, _ = stored
    page = render_dashboard([store.get(i) for i in ids], ids[:2])
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "sourceMappingURL" not in page
    data = json.loads(re.search(r'<script id="dashboard-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert [r["run_id"] for r in data["runs"]] == ids and data["selected"] == ids[:2]
    assert len(data["questions"][str(ids[3])]) == len(tiny_dataset().questions)


def test_page_carries_the_questions_of_the_newest_and_the_chosen_runs(stored):
    store, ids, _, _ = stored
    data = dashboard_data(load_runs(store, question_runs=1, include=[ids[0]]), [ids[0]])
    assert [r["run_id"] for r in data["runs"]] == ids  # every header: history and Pareto views
    assert set(data["questions"]) == {str(ids[0]), str(ids[-1])}
    assert [r.run_id for r in load_runs(store, limit=1) if r.questions] == [ids[-1]]


def test_served_page_is_the_store_page(stored):
    store, ids, _, _ = stored
    server = make_server(store, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/", timeout=30) as response:
            page = response.read().decode("utf-8")
        assert response.status == 200 and f'"run_id": {ids[-1]}' in page
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/?a={ids[0]}&b={ids[1]}", timeout=30) as response:
            chosen = response.read().decode("utf-8")
        assert f'"selected": [{ids[0]}, {ids[1]}]' in chosen
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/other", timeout=30)
    finally:
        server.shutdown()
        server.server_close()


def test_runs_commands(stored, tmp_path):
    store, ids, evals, _ = stored
    copy = tmp_path / "runs.sqlite"
    with sqlite3.connect(store.path) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list", "--store", str(copy)])
    assert listed.exit_code == 0, listed.output
    assert all(f"#{i}" in listed.output for i in ids)
    shown = runner.invoke(app, ["runs", "show", str(ids[0]), "--store", str(copy), "--json"])
    assert json.loads(shown.output)["summary"]["retrieval.iou"] == evals[0].overall.iou
    compared = runner.invoke(app, ["runs", "compare", str(ids[0]), str(ids[1]), "--store", str(copy), "--json"])
    deltas = {d["metric"]: d["delta"] for d in json.loads(compared.output)["deltas"]}
    assert deltas["retrieval.iou"] == pytest.approx(evals[1].overall.iou - evals[0].overall.iou)
    page = tmp_path / "page.html"
    written = runner.invoke(app, ["dashboard", "--store", str(copy), "--html", str(page), "--compare", str(ids[0]), "--compare", str(ids[1])])
    assert written.exit_code == 0 and page.is_file() and str(page.resolve()) in written.output
    bad = runner.invoke(app, ["runs", "delete", str(ids[0]), "999", "--store", str(copy)])
    assert bad.exit_code == 2 and "no run #999" in bad.output
    assert len(RunStore(copy).runs()) == len(ids)  # nothing deleted when one id is unknown
    deleted = runner.invoke(app, ["runs", "delete", str(ids[0]), "--store", str(copy)])
    assert deleted.exit_code == 0 and [r.run_id for r in RunStore(copy).runs()] == ids[1:]
    with sqlite3.connect(copy) as db:  # the run's questions went with it
        assert db.execute("SELECT COUNT(*) FROM questions WHERE run_id = ?", (ids[0],)).fetchone()[0] == 0
    missing = runner.invoke(app, ["runs", "list", "--store", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "no run store" in missing.output
    bad_metric = runner.invoke(app, ["runs", "compare", str(ids[1]), str(ids[2]), "--store", str(copy), "--metric", "f1"])
    assert bad_metric.exit_code == 2 and "valid choices" in bad_metric.output


def test_write_dashboard_is_atomic(stored, tmp_path):
    store, ids, _, _ = stored
    path = write_dashboard(store, tmp_path / "d.html", selected=ids[:2])
    assert path.read_text().endswith("</html>\n")
    assert [p.name for p in tmp_path.iterdir()] == ["d.html"]
    assert union_length([("a", 0, 5), ("a", 3, 8), ("b", 0, 2)]) == 10


def test_eval_artifact_markdown_names_every_config(stored):
    from eval.report import markdown_summary, table_rows

    _, _, evals, _ = stored
    text = markdown_summary(evals)
    assert all(r.config.label in text for r in evals) and "base64" not in text
    assert len(table_rows(evals)) == sum(1 + len(r.per_corpus) for r in evals)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.real_model
def test_two_configs_on_the_shared_data_compare_like_their_json(shared_data_dir, tmp_path):
    """The baseline and the best configuration on the Chroma data: both in the history, and the
    comparison's deltas are the differences of the two runs' JSON documents."""
    from eval.datasets import load_chroma
    from eval.defaults import BASELINE_CONFIG, BEST_CONFIG
    from eval.report import write_json
    from retrieval.encoder import load_encoder

    dataset = load_chroma(shared_data_dir / "chroma" / "questions.csv", shared_data_dir / "chroma" / "corpora")
    evaluator = Evaluator(dataset, load_encoder(), cache=EmbeddingCache(tmp_path / "embeddings"))
    store = RunStore(tmp_path / "runs.sqlite")
    documents, ids = [], []
    for eval_config in (BASELINE_CONFIG, BEST_CONFIG):
        result = evaluator.evaluate(eval_config)
        write_json([result], tmp_path / "result.json")
        documents.append(json.loads((tmp_path / "result.json").read_text())["results"][0])
        ids.append(store.add(eval_run(result, dataset)))
    assert [(r.run_id, r.label, r.n_questions) for r in store.runs()] == [
        (ids[0], BASELINE_CONFIG.label, len(dataset.questions)), (ids[1], BEST_CONFIG.label, len(dataset.questions))]
    comparison = compare_runs(store.get(ids[0]), store.get(ids[1]))
    a, b = documents
    assert set(comparison.config_diff) == {k for k in a["config"] if a["config"][k] != b["config"][k]}
    deltas = {d.metric: d for d in comparison.deltas}
    for key in ("recall", "precision", "precision_omega", "iou"):
        assert deltas[f"retrieval.{key}"].delta == pytest.approx(b["overall"][key] - a["overall"][key], abs=1e-9)
        assert deltas[f"retrieval.{key}"].n_pairs == len(dataset.questions)
    assert deltas["retrieved_tokens"].delta == pytest.approx(b["overall"]["mean_retrieved_tokens"] - a["overall"]["mean_retrieved_tokens"])
    changed = {c.qid for c in comparison.changed}
    assert changed == {qa["qid"] for qa, qb in zip(a["questions"], b["questions"]) if qa["iou"] != qb["iou"]}

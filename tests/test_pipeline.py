"""The end-to-end pipeline: per-stage scores against hand references, stage caching, the flow and CLI.

Models are stand-ins (a bag-of-words encoder, a tiny random Llama over bytes), so these check
mechanics: what each stage kept is scored on the corpus, caches serve exactly what did not
change, r = 1 recovery reproduces the full-prefill answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import (
    RETRIEVAL,
    BagOfWordsEncoder,
    Counting,
    FirstSentence,
    NoDiskCache,
    config,
    make_pipeline,
    tiny_dataset,
)

from compression.base import KeptSpan
from eval.base import EvalConfig
from eval.metrics import retrieval_scores, token_f1
from eval.pipeline import PipelineEvaluation, corpus_spans, spread_sample
from eval.runner import Evaluator
from eval.stage_cache import StageCache, code_fingerprint
from pipeline.config import PipelineConfig


@pytest.fixture
def counting(tiny_llama, tmp_path):
    return Counting(tiny_llama, tmp_path / "kv")


def test_retrieval_stage_scores_equal_the_evaluator(counting, tmp_path):
    pipeline = make_pipeline(counting, tmp_path / "stages")
    result = pipeline.run(config(kv_mode="naive"))
    reference = Evaluator(tiny_dataset(), BagOfWordsEncoder(), cache=NoDiskCache()).evaluate(RETRIEVAL)
    assert [r.retrieval.recall for r in result.questions] == [s.recall for s in reference.questions]
    assert [r.retrieval.iou for r in result.questions] == [s.iou for s in reference.questions]
    # Without compression the LM receives exactly what retrieval found.
    assert [r.compression.recall for r in result.questions] == [r.retrieval.recall for r in result.questions]
    assert all(r.tokens_sent == r.retrieved_tokens and r.achieved_rate == 1.0 for r in result.questions)
    # Naive reuse prefills only the prompt's own tokens; the chunk tokens come from caches.
    assert all(r.reused_tokens >= r.tokens_sent for r in result.questions)


def test_compression_is_scored_on_the_spans_it_kept(counting, tmp_path):
    dataset = tiny_dataset()
    pipeline = make_pipeline(counting, tmp_path / "stages")
    result = pipeline.run(config(compression="extractive", rate=0.5))
    retrieved = pipeline.retrieve(RETRIEVAL)
    for question, got, run in zip(dataset.questions, retrieved, result.questions):
        texts = [dataset.corpora[c.corpus_id][c.start:c.end] for c in got.chunks]
        by_hand = [(c.corpus_id, c.start, c.start + (t.find(". ") + 1 if ". " in t else len(t))) for c, t in zip(got.chunks, texts)]
        from eval.base import Span

        expected = retrieval_scores([(r.start, r.end) for r in question.references], [Span(*s) for s in by_hand], question.corpus_id)
        assert run.compression.recall == pytest.approx(expected.recall)
        assert run.compression.iou == pytest.approx(expected.iou)
        assert run.tokens_sent < run.retrieved_tokens
        # The kept tokens' KV comes from the chunk caches: only the question turn is prefilled.
        assert run.reused_tokens >= run.tokens_sent and run.prefilled_tokens < run.reused_tokens
        assert run.answer_f1 == pytest.approx(token_f1(run.answer, " ".join(r.content for r in question.references)))


def test_corpus_spans_refuses_a_span_outside_its_context():
    from eval.base import Span

    chunks = (Span("a", 10, 20),)
    assert corpus_spans(chunks, [KeptSpan(0, 2, 5)]) == (Span("a", 12, 15),)
    with pytest.raises(ValueError, match="outside its context"):
        corpus_spans(chunks, [KeptSpan(0, 5, 11)])


def test_rerun_computes_only_what_changed(counting, tmp_path):
    cache_dir = tmp_path / "stages"
    first = make_pipeline(counting, cache_dir).run(config(kv_mode="naive"))
    assert first.cache_hits == {"retrieval": 0, "compression": 0, "answer": 0}
    engines, evaluators = counting.engines, counting.evaluators
    again = make_pipeline(counting, cache_dir).run(config(kv_mode="naive"))
    n = len(first.questions)
    assert again.cache_hits == {"retrieval": n, "compression": n, "answer": n}
    assert [r.answer for r in again.questions] == [r.answer for r in first.questions]
    assert again.summary == first.summary
    assert counting.engines == engines  # nothing answered: the LM was never built
    # Another KV mode: retrieval and compression are served, only the answers are computed.
    other = make_pipeline(counting, cache_dir).run(config(kv_mode="none"))
    assert other.cache_hits == {"retrieval": n, "compression": n, "answer": 0}
    assert counting.evaluators == evaluators + 2  # the encoder id is part of the retrieval key


def test_a_corrupt_stage_entry_is_recomputed(counting, tmp_path):
    cache_dir = tmp_path / "stages"
    first = make_pipeline(counting, cache_dir).run(config(kv_mode="none"))
    for path in (cache_dir / "answer").rglob("*.json"):
        path.write_text("{ truncated", encoding="utf-8")
    again = make_pipeline(counting, cache_dir).run(config(kv_mode="none"))
    assert again.cache_hits["answer"] == 0
    assert [r.answer for r in again.questions] == [r.answer for r in first.questions]


def test_full_recompute_reproduces_the_full_prefill_answer(counting, tmp_path):
    """blend with r = 1 recomputes every context token: the answer equals the full prefill's."""
    pipeline = make_pipeline(counting, tmp_path / "stages")
    full = pipeline.run(config(kv_mode="none", fidelity=True))
    blend = pipeline.run(config(kv_mode="blend", blend_r=1.0, fidelity=True))
    assert [r.answer for r in blend.questions] == [r.answer for r in full.questions]
    assert blend.summary.fidelity_f1 == pytest.approx(100.0)
    assert all(r.prefilled_tokens > r.reused_tokens for r in blend.questions)


def test_compressed_context_blend_r1_reproduces_its_full_prefill(counting, tmp_path):
    """Sliced chunk caches + recompute everything == a full prefill of the compressed prompt."""
    pipeline = make_pipeline(counting, tmp_path / "stages")
    full = pipeline.run(config(compression="extractive", kv_mode="none"))
    blend = pipeline.run(config(compression="extractive", kv_mode="blend", blend_r=1.0, fidelity=True))
    assert [r.answer for r in blend.questions] == [r.answer for r in full.questions]
    assert blend.summary.fidelity_f1 == pytest.approx(100.0)
    assert [r.tokens_sent for r in blend.questions] == [r.tokens_sent for r in full.questions]


def test_prune_evicts_the_least_recently_used_stage_results(tmp_path):
    import os

    cache = StageCache(tmp_path)
    for i in range(5):
        cache.put("answer", {"q": i}, {"text": "x" * 100})
        os.utime(cache._path("answer", {"q": i}), (1000 + i, 1000 + i))  # q4 newest, q0 oldest
    assert cache.get("answer", {"q": 0}) == {"text": "x" * 100}  # a hit makes q0 the most recently used
    size = cache._path("answer", {"q": 0}).stat().st_size
    summary = cache.prune(3 * size)
    assert (summary.removed, summary.kept, summary.freed_bytes, summary.kept_bytes) == (2, 3, 2 * size, 3 * size)
    assert [i for i in range(5) if cache.get("answer", {"q": i}) is not None] == [0, 3, 4]
    assert cache.prune(0).removed == 3 and cache.get("answer", {"q": 4}) is None
    with pytest.raises(ValueError, match="max_bytes"):
        cache.prune(-1)


def test_code_fingerprint_follows_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("from pkg.b import f\n", encoding="utf-8")
    (package / "b.py").write_text("def f():\n    import pkg.c\n", encoding="utf-8")
    (package / "c.py").write_text("X = 1\n", encoding="utf-8")
    (package / "unrelated.py").write_text("Y = 1\n", encoding="utf-8")
    before = code_fingerprint("pkg.a", root=tmp_path)
    (package / "unrelated.py").write_text("Y = 2\n", encoding="utf-8")
    code_fingerprint.cache_clear()  # memoised per process: a new process sees the edits
    assert code_fingerprint("pkg.a", root=tmp_path) == before
    (package / "c.py").write_text("X = 2\n", encoding="utf-8")  # imported lazily, two hops away
    assert code_fingerprint("pkg.a", root=tmp_path) == before
    code_fingerprint.cache_clear()
    assert code_fingerprint("pkg.a", root=tmp_path) != before


def test_config_normalises_and_names_bad_keys():
    assert PipelineConfig(compression="none", rate=0.5) == PipelineConfig()
    assert PipelineConfig(compression="extractive", kv_mode="blend", blend_r=0.3).generation.blend_r == 0.3
    assert PipelineConfig(kv_mode="naive", blend_r=0.3) == PipelineConfig(kv_mode="naive")
    with pytest.raises(ValueError, match="compression='zip' is not allowed; compression must be one of none, .*extractive"):
        PipelineConfig(compression="zip")
    with pytest.raises(ValueError, match=r"unknown key 'kvmode'; valid keys: .*kv_mode"):
        PipelineConfig.from_dict({"kvmode": "naive"})
    with pytest.raises(ValueError, match="k='min' .* use a positive integer"):
        PipelineConfig(retrieval=EvalConfig(k="min"))
    round_trip = PipelineConfig.from_dict(config(compression="llmlingua", rate=0.4).to_dict())
    assert round_trip == config(compression="llmlingua", rate=0.4)


def test_the_shipped_grid_has_at_least_24_distinct_configurations():
    from eval.pipeline_sweep import load_pipeline_sweep

    configs, limit = load_pipeline_sweep(Path(__file__).resolve().parents[1] / "benchmarks/sweeps/pipeline_grid.yaml")
    assert len(configs) >= 24 and limit == 20
    assert len({json.dumps(c.to_dict(), sort_keys=True) for c in configs}) == len(configs)
    assert {c.compression.method for c in configs} == {"none", "extractive", "llmlingua", "extractive+llmlingua"}
    assert {c.generation.kv_mode for c in configs} >= {"none", "naive", "blend"}


def test_spread_sample_keeps_order_and_covers_the_file():
    questions = tiny_dataset().questions
    assert spread_sample(questions, None) == questions
    assert [q.qid for q in spread_sample(questions, 2)] == ["0", "2"]
    with pytest.raises(ValueError, match="limit must be >= 1"):
        spread_sample(questions, 0)


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_flow_reports_every_config_and_recommends_one(counting, tmp_path):
    from support import write_chroma_files

    from flows.pipeline import pipeline_flow

    questions, corpora = write_chroma_files(tiny_dataset(), tmp_path)
    configs = [config(kv_mode=mode).to_dict() for mode in ("none", "naive")] + [config(compression="extractive").to_dict()]
    html, out = tmp_path / "dash.html", tmp_path / "results.json"
    kwargs = dict(configs=configs, questions=str(questions), corpora=str(corpora), cache_dir=str(tmp_path / "stages"),
                  html_out=str(html), json_out=str(out), pipeline_options=counting.options(), runs_db=str(tmp_path / "runs.sqlite"))
    run = pipeline_flow(**kwargs)
    assert len(run.results) == 3 and 0 <= run.recommended < 3
    page = html.read_text(encoding="utf-8")
    assert all(result.config.label in page for result in run.results)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["recommended"] == run.recommended and len(saved["results"]) == 3
    from eval.run_store import RunStore

    recorded = RunStore(tmp_path / "runs.sqlite").runs()
    assert [r.run_id for r in recorded] == saved["run_ids"] and [r.label for r in recorded] == [r.config.label for r in run.results]
    assert recorded[2].summary["answer_f1"] == run.results[2].summary.answer_f1 and recorded[2].models["lm"] == "tiny@0"
    again = pipeline_flow(**kwargs)
    assert all(r.cache_hits == {"retrieval": 4, "compression": 4, "answer": 4} for r in again.results)
    assert [r.summary for r in again.results] == [r.summary for r in run.results]


def test_cli_refuses_config_and_sweep_together(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "a.yaml").write_text("k: 3\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["pipeline", "--config", str(tmp_path / "a.yaml"), "--sweep", str(tmp_path / "a.yaml")])
    assert result.exit_code == 2 and "not both" in result.output
    (tmp_path / "bad.yaml").write_text("kv_mode: turbo\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["pipeline", "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "kv_mode='turbo' is not allowed; kv_mode must be one of none, naive, edge, blend" in result.output
    result = CliRunner().invoke(app, ["pipeline", "--cache-max-mb", "-1"])
    assert result.exit_code == 2 and "--cache-max-mb must be >= 0" in result.output


def test_a_run_that_dies_midway_resumes_from_what_it_stored(counting, tmp_path):
    class DiesOnThirdCall(FirstSentence):
        def compress(self, contexts, budget, question=None):
            if self.calls == 2:
                raise KeyboardInterrupt  # as if the job were killed here
            return super().compress(contexts, budget, question)

    cache_dir = tmp_path / "stages"
    dying = PipelineEvaluation(tiny_dataset(), StageCache(cache_dir), **{**counting.options(), "compressor_factory": lambda m: DiesOnThirdCall()})
    with pytest.raises(KeyboardInterrupt):
        dying.run(config(compression="extractive"))
    resumed = make_pipeline(counting, cache_dir).run(config(compression="extractive"))
    assert resumed.cache_hits["compression"] == 2  # the two questions compressed before the kill
    assert counting.compressor.calls == len(resumed.questions) - 2


def test_the_default_pipeline_is_the_one_the_grid_recommends():
    from pipeline.config import RECOMMENDED_PIPELINE

    results = Path(__file__).resolve().parents[1] / "benchmarks/results/pipeline_grid.json"
    saved = json.loads(results.read_text(encoding="utf-8"))
    recommended = saved["results"][saved["recommended"]]["config"]
    assert recommended.pop("unit", "chars") == "chars"  # the pipeline scores in characters; it takes no unit
    assert PipelineConfig.from_dict(recommended) == RECOMMENDED_PIPELINE.replace(max_new_tokens=recommended["max_new_tokens"])

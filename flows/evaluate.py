"""The evaluation flow: load a dataset, evaluate configurations, publish artifacts and reports.

Tasks only wrap ``eval`` library functions; they are not cached by Prefect (their inputs are
models and datasets; embeddings are cached on disk by the library instead). Every run is recorded
in the run store (``eval.run_store``), publishes a table artifact (one row per configuration and
corpus) and a markdown artifact naming the recorded runs, and writes the JSON and the dashboard
page when asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from eval.base import EvalConfig, EvalDataset, EvalResult
from eval.datasets import load_pydoc_topics, load_questions
from eval.embedding_cache import EmbeddingCache
from eval.poison.base import PoisonReport
from eval.poison.probe import PoisonConfig, run_probe
from eval.poison.report import markdown_report, render_html, report_json, success_rows
from eval.report import machine_info, markdown_summary, table_rows, write_json
from eval.run_store import RunRecord, RunStore, eval_run
from eval.runner import Evaluator, default_chunker_factory
from filestore import atomic_write_text
from flows import progress


@task(name="load-dataset", cache_policy=NO_CACHE)
def load_dataset(questions: str | None, corpora: str | None) -> EvalDataset:
    """The given questions (CSV or JSONL), or the project's own pydoc-topics set."""
    if questions is None:
        return load_pydoc_topics()
    return load_questions(Path(questions), Path(corpora) if corpora else None)


CONFIGS_DONE, QUESTIONS_SCORED, TEXTS_EMBEDDED = "configurations evaluated", "questions scored", "texts embedded"


@task(name="evaluate-config", cache_policy=NO_CACHE)
def evaluate_config(evaluator: Evaluator, config: EvalConfig) -> EvalResult:
    """Evaluate one configuration."""
    return evaluator.evaluate(config, progress.counter(QUESTIONS_SCORED))


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:60] or "eval"


def runs_markdown(run_ids: Sequence[int], store: RunStore, html_out: str | None) -> str:
    """Where the runs were recorded and how to open them (the artifacts' link to the run store)."""
    ids = " ".join(str(i) for i in run_ids)
    lines = ["", f"Recorded as run(s) {', '.join(f'#{i}' for i in run_ids)} in `{store.path}`: "
                 f"`ragpress runs show {run_ids[0]}`, `ragpress dashboard`" + (f", `ragpress runs compare {ids}`" if len(run_ids) == 2 else "") + "."]
    if html_out:
        lines.append(f"Dashboard: [{html_out}]({Path(html_out).resolve().as_uri()})")
    return "\n".join(lines) + "\n"


@task(name="record-runs", cache_policy=NO_CACHE)
def record_runs(records: Sequence[RunRecord], runs_db: str | None) -> list[int]:
    """Add every run to the run store; their ids in order."""
    store = RunStore(runs_db)
    return [store.add(record) for record in records]


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(results: Sequence[EvalResult], name: str, links: str = "") -> None:
    """The table and markdown artifacts of an evaluation; ``links``: where its runs were recorded."""
    key = artifact_key(f"eval-{name}")
    create_table_artifact(table=table_rows(results), key=key, description=f"Evaluation of {len(results)} configuration(s) on {name}")
    create_markdown_artifact(markdown=markdown_summary(results, f"Evaluation on {name}") + links, key=f"{key}-summary")


@task(name="write-reports", cache_policy=NO_CACHE)
def write_reports(results: Sequence[EvalResult], json_out: str | None, html_out: str | None, extra: dict,
                  run_ids: Sequence[int] = (), runs_db: str | None = None) -> None:
    """The JSON document and the dashboard page (the recorded runs selected), when asked."""
    from eval.dashboard import write_dashboard

    if json_out:
        write_json(results, Path(json_out), {**extra, "run_ids": list(run_ids)})
    if html_out:
        write_dashboard(RunStore(runs_db), Path(html_out), selected=run_ids[:2], title=f"ragpress runs: {results[0].dataset}")


@flow(name="ragpress-evaluate", validate_parameters=False)
def evaluate_flow(
    configs: list[dict],
    questions: str | None = None,
    corpora: str | None = None,
    json_out: str | None = None,
    html_out: str | None = None,
    cache_dir: str | None = None,
    model: str | None = None,
    encoder: Any = None,
    chunker_factory: Any = None,
    runs_db: str | None = None,
    command: str | None = None,
) -> list[EvalResult]:
    """Evaluate ``configs`` (EvalConfig dicts) on one dataset and record each in the run store
    (``runs_db``, default ``$RAGPRESS_RUNS`` or ``$RAGPRESS_CACHE/runs.sqlite``);
    ``encoder``/``chunker_factory`` override the project's model and chunkers (tests pass tiny stand-ins)."""
    from retrieval.tokenizer import load_tokenizer

    parsed = [EvalConfig.from_dict(config) for config in configs]
    if not parsed:
        raise ValueError("no configuration to evaluate; pass at least one")
    dataset = load_dataset(questions, corpora)
    if encoder is None:
        from retrieval.encoder import load_encoder

        encoder = load_encoder(model)
    counter = load_tokenizer(model)  # chunk budgets and token metrics count with the embedding model's tokenizer
    evaluator = Evaluator(
        dataset,
        encoder,
        cache=EmbeddingCache(Path(cache_dir) if cache_dir else None, progress.counter(TEXTS_EMBEDDED)),
        token_counter=counter,
        chunker_factory=chunker_factory or partial(default_chunker_factory, tokenizer=counter),
    )
    # Sequential on purpose: configurations share memoised chunkings and the CPU.
    configs_done = progress.counter(CONFIGS_DONE, len(parsed))
    progress.counter(QUESTIONS_SCORED, len(parsed) * len(dataset.questions))
    results = []
    for config in parsed:
        results.append(evaluate_config(evaluator, config))
        configs_done(1)
    run_ids = record_runs([eval_run(result, dataset, command=command) for result in results], runs_db)
    publish_artifacts(results, dataset.name, runs_markdown(run_ids, RunStore(runs_db), html_out))
    write_reports(results, json_out, html_out, {"questions": questions, "corpora": corpora}, run_ids, runs_db)
    return results


@task(name="poison-probe", cache_policy=NO_CACHE)
def poison_probe(config: PoisonConfig, dataset: EvalDataset, model: str | None, index_dir: str | None) -> PoisonReport:
    """Plant each attack's passages in copies of the index and measure them (``eval.poison.probe``)."""
    from retrieval.encoder import load_encoder
    from retrieval.tokenizer import load_tokenizer

    counter = load_tokenizer(model)
    return run_probe(config, dataset, load_encoder(model), counter, counter.backend.get_vocab(),
                     index_dir=Path(index_dir) if index_dir else None)


@task(name="publish-poison", cache_policy=NO_CACHE)
def publish_poison(report: PoisonReport, json_out: str | None, html_out: str | None) -> None:
    """The attack-success table as a dashboard artifact, and the report as JSON and HTML when asked."""
    key = artifact_key(f"poison-{report.dataset}")
    create_table_artifact(table=success_rows(report), key=key, description=f"Poisoning probe on {report.dataset}")
    create_markdown_artifact(markdown=markdown_report(report), key=f"{key}-summary")
    if json_out:
        atomic_write_text(Path(json_out), json.dumps({"machine": machine_info(), "poisoning": report_json(report)}, indent=1) + "\n")
    if html_out:
        atomic_write_text(Path(html_out), render_html(report))


@flow(name="ragpress-poison", validate_parameters=False)
def poison_flow(config: dict, questions: str | None = None, corpora: str | None = None, json_out: str | None = None,
                model: str | None = None, index_dir: str | None = None, html_out: str | None = None) -> PoisonReport:
    """The poisoning probe of ``config`` (a ``PoisonConfig`` dict) on one dataset; ``index_dir`` is
    only ever copied, never written."""
    report = poison_probe(PoisonConfig.model_validate(config), load_dataset(questions, corpora), model, index_dir)
    publish_poison(report, json_out, html_out)
    return report

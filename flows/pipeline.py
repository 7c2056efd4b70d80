"""The pipeline flow: for every configuration, retrieve -> compress -> answer, scored per stage.

Tasks wrap the stage methods of ``eval.pipeline.PipelineEvaluation`` (which runs ``pipeline.Pipeline``); they are not cached by Prefect,
because the library caches every stage by content on disk (``eval.stage_cache``): a re-run of a
grid recomputes only stages whose inputs or code changed, and a killed run resumes from the
entries already written. Configurations run one after another: they share the models, the
memoised chunkings and the CPU. Each run publishes a progress artifact, a table and a markdown
summary (the Pareto front, the recommended configuration and the runs it recorded in the run
store, ``eval.run_store``), and writes the dashboard page.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from eval.base import EvalDataset
from eval.embedding_cache import EmbeddingCache
from eval.pipeline import Compressed, PipelineEvaluation, Retrieved, spread_sample
from eval.pipeline_base import PipelineResult, QuestionRun
from eval.stage_cache import StageCache
from flows import progress
from flows.evaluate import TEXTS_EMBEDDED, artifact_key, load_dataset, record_runs, runs_markdown
from pipeline.config import PipelineConfig
from retrieval.config import RetrievalConfig

CONFIGS_DONE, COMPRESSED, ANSWERED = "pipeline configurations", "questions compressed", "questions answered"


@dataclass(frozen=True)
class PipelineRun:
    """What a pipeline run returns: every configuration's result and the recommended one."""

    results: tuple[PipelineResult, ...]
    recommended: int
    seconds: float
    html: str | None
    json: str | None


@task(name="select-questions", cache_policy=NO_CACHE)
def select_questions(dataset: EvalDataset, limit: int | None) -> EvalDataset:
    """The dataset with ``limit`` questions spread evenly over it (all when None)."""
    return EvalDataset(dataset.name, dataset.corpora, spread_sample(dataset.questions, limit))


@task(name="retrieve", cache_policy=NO_CACHE, task_run_name="retrieve {config.label}")
def retrieve_stage(pipeline: PipelineEvaluation, config: RetrievalConfig) -> list[Retrieved]:
    """Retrieve for every question; the chunks it embeds (on a stage-cache miss) are counted."""
    embeddings = pipeline.evaluator().cache
    if isinstance(embeddings, EmbeddingCache):
        embeddings.progress = progress.counter(TEXTS_EMBEDDED)
    return pipeline.retrieve(config)


@task(name="compress", cache_policy=NO_CACHE, task_run_name="compress {label}")
def compress_stage(pipeline: PipelineEvaluation, config: PipelineConfig, retrieved: list[Retrieved], label: str) -> list[Compressed]:
    """Compress every question's retrieved context."""
    return pipeline.compress_all(config, retrieved, progress.counter(COMPRESSED))


@task(name="answer", cache_policy=NO_CACHE, task_run_name="answer {label}")
def answer_stage(pipeline: PipelineEvaluation, config: PipelineConfig, retrieved: list[Retrieved], compressed: list[Compressed],
                 label: str) -> list[QuestionRun]:
    """Answer every question and score every stage."""
    return pipeline.answer_all(config, retrieved, compressed, progress.counter(ANSWERED))


@task(name="publish-pipeline-report", cache_policy=NO_CACHE)
def publish(results: Sequence[PipelineResult], recommended: int, html_out: str | None, json_out: str | None,
            command: str | None, run_ids: Sequence[int] = (), runs_db: str | None = None) -> None:
    """Publish the results as artifacts and write the dashboard and JSON that were asked for."""
    import json

    from eval.dashboard import write_dashboard
    from eval.pipeline_report import markdown_pipeline_summary, pipeline_table_rows
    from eval.report import machine_info
    from eval.run_store import RunStore
    from filestore import atomic_write_text

    key = artifact_key(f"pipeline-{results[0].dataset}")
    create_table_artifact(table=pipeline_table_rows(results), key=key, description=f"{len(results)} pipeline configuration(s)")
    links = runs_markdown(run_ids, RunStore(runs_db), html_out) if run_ids else ""
    create_markdown_artifact(markdown=markdown_pipeline_summary(results, recommended) + links, key=f"{key}-front")
    if html_out:
        write_dashboard(RunStore(runs_db), Path(html_out), selected=run_ids[:2], title=f"ragpress runs: {results[0].dataset}")
    if json_out:
        payload = {"machine": machine_info(), "command": command, "recommended": recommended, "run_ids": list(run_ids),
                   "results": [result.to_dict() for result in results]}
        atomic_write_text(Path(json_out), json.dumps(payload, indent=1))


def run_config(pipeline: PipelineEvaluation, config: PipelineConfig, retrieved: list[Retrieved], retrieval_hits: int) -> PipelineResult:
    """The compression and answer stages of one configuration (retrieval is shared by the caller)."""
    started = time.perf_counter()
    before = dict(pipeline.hits)
    compressed = compress_stage(pipeline, config, retrieved, config.label)
    runs = answer_stage(pipeline, config, retrieved, compressed, config.label)
    hits = {"retrieval": retrieval_hits}
    hits.update({stage: pipeline.hits.get(stage, 0) - before.get(stage, 0) for stage in ("compression", "answer")})
    return pipeline.result(config, runs, hits, time.perf_counter() - started)


@flow(name="ragpress-pipeline", validate_parameters=False)
def pipeline_flow(
    configs: list[dict],
    questions: str | None = None,
    corpora: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
    html_out: str | None = None,
    json_out: str | None = None,
    lm_name: str = "smollm2",
    command: str | None = None,
    pipeline_options: dict[str, Any] | None = None,
    runs_db: str | None = None,
    llm: dict[str, Any] | None = None,
) -> PipelineRun:
    """Run every configuration (flat ``PipelineConfig`` dicts) on the questions (default: the pydoc set)
    and record each in the run store (``runs_db``, default ``$RAGPRESS_RUNS`` or ``$RAGPRESS_CACHE/runs.sqlite``).

    ``pipeline_options`` passes factories to ``PipelineEvaluation`` (tests use tiny models); ``llm``: generator
    options (default: the local ``lm_name``).
    """
    from eval.pareto import recommend
    from eval.run_store import pipeline_run

    started = time.perf_counter()
    parsed = [PipelineConfig.from_dict(config) for config in configs]
    if not parsed:
        raise ValueError("no pipeline configuration given; pass --config FILE or --sweep FILE")
    dataset = select_questions(load_dataset(questions, corpora), limit)
    pipeline = PipelineEvaluation(dataset, StageCache(cache_dir), lm_name=lm_name, llm=llm, **(pipeline_options or {}))
    progress_id = cast(UUID, create_progress_artifact(progress=0.0, description=f"{len(parsed)} pipeline configuration(s) on {dataset.name}"))
    retrieved: dict[str, tuple[list[Retrieved], int]] = {}
    results = []
    configs_done = progress.counter(CONFIGS_DONE, len(parsed))
    for label in (COMPRESSED, ANSWERED):
        progress.counter(label, len(parsed) * len(dataset.questions))
    for done, config in enumerate(parsed):
        label = config.retrieval.label
        if label not in retrieved:
            before = pipeline.hits.get("retrieval", 0)
            stage = retrieve_stage(pipeline, config.retrieval)
            retrieved[label] = (stage, pipeline.hits.get("retrieval", 0) - before)
        results.append(run_config(pipeline, config, *retrieved[label]))
        update_progress_artifact(progress_id, 100.0 * (done + 1) / len(parsed))
        configs_done(1)
    recommended = recommend(results)
    models = pipeline.model_ids()
    run_ids = record_runs([pipeline_run(result, dataset, models=models, command=command) for result in results], runs_db)
    publish(results, recommended, html_out, json_out, command, run_ids, runs_db)
    return PipelineRun(tuple(results), recommended, time.perf_counter() - started, html_out, json_out)

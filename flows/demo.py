"""The demo: Python's own help topics, indexed, queried and evaluated with nothing but the install."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task

from eval.base import EvalResult
from eval.datasets import pydoc_topics_corpus
from eval.defaults import BEST_CONFIG
from flows.evaluate import evaluate_flow
from flows.indexing import index_flow
from flows.pipeline import PipelineRun, pipeline_flow
from flows.query import Answered, query_flow
from pipeline.config import RECOMMENDED_PIPELINE
from retrieval.indexing import IndexSummary

DEMO_QUESTIONS = (
    "How do I catch an exception and still run cleanup code?",
    "What does the with statement do?",
    "How are keyword-only arguments declared in a function definition?",
    "What is the difference between is and == ?",
)
# Questions of the pydoc set the demo answers end to end (retrieval is evaluated on all of them).
DEMO_PIPELINE_QUESTIONS = 8


@dataclass(frozen=True)
class DemoResult:
    """What the demo built and measured, and where it wrote it."""

    workdir: str
    index: IndexSummary
    answers: tuple[Answered, ...]
    evaluation: EvalResult
    pipeline: PipelineRun
    report_html: str  # the dashboard page of the recorded runs
    report_json: str
    seconds: float


@task(name="write-demo-corpus", retries=1)
def write_corpus(corpus_dir: str) -> int:
    """One file per help topic; a file is rewritten (atomically) only when its text differs."""
    directory = Path(corpus_dir)
    directory.mkdir(parents=True, exist_ok=True)
    corpus = pydoc_topics_corpus()
    for name, text in corpus.items():
        path = directory / f"{name}.txt"
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return len(corpus)


@flow(name="ragpress-demo")
def demo_flow(workdir: str = ".ragpress/demo", k: int = 5, pipeline_questions: int = DEMO_PIPELINE_QUESTIONS) -> DemoResult:
    """Index the help topics, answer ``DEMO_QUESTIONS``, evaluate retrieval on the pydoc question set,
    and run the recommended pipeline (retrieve -> compress -> answer with chunk-cache reuse) on
    ``pipeline_questions`` of them."""
    started = time.perf_counter()
    root = Path(workdir).resolve()
    corpus_dir, index_dir = root / "corpus", root / "index"
    write_corpus(str(corpus_dir))
    config = BEST_CONFIG
    summary = index_flow([str(corpus_dir)], str(index_dir), config.chunker, config.chunk_size, config.overlap,
                         context_chunks=config.context_chunks)
    answers = query_flow(list(DEMO_QUESTIONS), str(index_dir), k)
    # Both runs are recorded in the run store; the dashboard page, written last, holds them both.
    report_html, report_json = root / "dashboard.html", root / "report.json"
    (evaluation,) = evaluate_flow([config.to_dict()], json_out=str(report_json), command="ragpress demo")
    pipeline = pipeline_flow([RECOMMENDED_PIPELINE.to_dict()], limit=pipeline_questions,
                             html_out=str(report_html), json_out=str(root / "pipeline.json"), command="ragpress demo")
    return DemoResult(str(root), summary, tuple(answers), evaluation, pipeline, str(report_html), str(report_json),
                      time.perf_counter() - started)

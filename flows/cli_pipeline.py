"""``ragpress pipeline``: retrieve -> compress -> answer with chunk-cache reuse, scored per stage."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from flows import cli_llm
from flows.cli_checks import fail, user_errors
from flows.progress import live_progress

DEFAULT_OUT = Path(".ragpress/pipeline")


def print_results(run) -> None:
    """One table row per configuration, the recommended one marked."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pipeline on {run.results[0].dataset} ({run.results[0].summary.n_questions} questions)")
    for column in ("", "configuration", "retr. recall", "kept recall", "tokens sent", "TTFT (s)", "prefilled/reused",
                   "answer F1", "cache hits"):
        table.add_column(column, justify="left" if column in ("", "configuration") else "right")
    for i, result in enumerate(run.results):
        s = result.summary
        table.add_row("★" if i == run.recommended else "", result.config.label, f"{s.retrieval.recall:.1f}",
                      f"{s.compression.recall:.1f}", f"{s.compression.mean_retrieved_tokens:.0f}", f"{s.ttft_median_s:.2f}",
                      f"{s.prefilled_tokens:.0f}/{s.reused_tokens:.0f}", f"{s.answer_f1:.1f}",
                      ",".join(f"{stage[0]}{n}" for stage, n in result.cache_hits.items()))
    Console().print(table)
    typer.echo(f"recommended (★): {run.results[run.recommended].config.label}")


def pipeline(
    questions: Path | None = typer.Option(None, "--questions", help="questions: Chroma CSV or JSONL (default: the own pydoc-topics set)"),
    corpora: Path | None = typer.Option(None, "--corpora", help="directory of <corpus_id>.md/.txt files (needed for a CSV)"),
    config: Path | None = typer.Option(None, "--config", help="one pipeline configuration, YAML/JSON (default: the recommended one)"),
    sweep: Path | None = typer.Option(None, "--sweep", help="a grid of configurations, YAML/JSON (see eval/sweep.py)"),
    limit: int | None = typer.Option(None, "--limit", help="run this many questions, evenly spread (overrides the file's 'questions')"),
    fidelity: bool = typer.Option(False, "--fidelity", help="also answer with a full prefill and score each answer against it"),
    html_out: Path = typer.Option(DEFAULT_OUT / "dashboard.html", "--html", help="where to write the dashboard"),
    json_out: Path = typer.Option(DEFAULT_OUT / "results.json", "--json", help="where to write every result"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="stage cache (default $RAGPRESS_CACHE/stages)"),
    lm: str = cli_llm.LM_OPTION,
    llm_url: str | None = cli_llm.LLM_URL_OPTION,
    llm_model: str | None = cli_llm.LLM_MODEL_OPTION,
    llm_api_key_env: str | None = cli_llm.LLM_KEY_OPTION,
    dtype: str = cli_llm.DTYPE_OPTION,
    threads: int | None = cli_llm.THREADS_OPTION,
    device: str = cli_llm.DEVICE_OPTION,
    cache_max_mb: float | None = typer.Option(None, "--cache-max-mb", help="afterwards, evict the least recently used stage results beyond this size"),
) -> None:
    """Run retrieve -> compress -> answer for each configuration and report every stage on one yardstick."""
    from eval.pipeline_sweep import load_pipeline_config, load_pipeline_sweep

    if config is not None and sweep is not None:
        fail("pass --config FILE or --sweep FILE, not both")
    if questions is not None and not questions.is_file():
        fail(f"questions file {questions} does not exist")
    if cache_max_mb is not None and cache_max_mb < 0:
        fail(f"--cache-max-mb must be >= 0, got {cache_max_mb}")
    with live_progress(), user_errors():
        if sweep is not None:
            configs, file_limit = load_pipeline_sweep(sweep)
        elif config is not None:
            one, file_limit = load_pipeline_config(config)
            configs = [one]
        else:
            from pipeline.config import RECOMMENDED_PIPELINE

            configs, file_limit = [RECOMMENDED_PIPELINE], None
        if fidelity:
            configs = [c.replace(fidelity=True) for c in configs]
        llm = cli_llm.llm_options(lm, llm_url, llm_model, llm_api_key_env, dtype, threads, device)
        if config is None and sweep is None and not cli_llm.reuse_available(llm):
            configs = [c.replace(kv_mode="none") for c in configs]  # the default asks for reuse only where it exists
        check_generator(llm, configs)
        from flows.pipeline import pipeline_flow

        run = pipeline_flow(
            configs=[c.to_dict() for c in configs],
            questions=str(questions) if questions else None,
            corpora=str(corpora) if corpora else None,
            limit=limit if limit is not None else file_limit,
            cache_dir=str(cache_dir) if cache_dir else None,
            html_out=str(html_out),
            json_out=str(json_out),
            lm_name=lm,
            llm=llm,
            command="ragpress " + shlex.join(sys.argv[1:]),
        )
    print_results(run)
    typer.echo(f"wrote {html_out} and {json_out} in {run.seconds:.1f} s")
    if cache_max_mb is not None:
        from eval.stage_cache import StageCache

        pruned = StageCache(cache_dir).prune(int(cache_max_mb * 1e6))
        typer.echo(f"stage cache: {pruned.kept} results kept ({pruned.kept_bytes / 1e6:.1f} MB), "
                   f"{pruned.removed} least recently used removed ({pruned.freed_bytes / 1e6:.1f} MB)")


def check_generator(llm: dict, configs: list) -> None:
    """ValueError before any model loads if the generator cannot serve a configuration's KV mode."""
    from pipeline.pipeline import make_generator

    generator = make_generator(llm, None)
    for one in configs:
        try:
            generator.preflight(one.generation.reuse())
        except ValueError as exc:
            raise ValueError(f"configuration '{one.label}': {exc} (set kv_mode: none)") from None


def register(app: typer.Typer) -> None:
    """Add ``pipeline`` to the CLI."""
    app.command("pipeline")(pipeline)

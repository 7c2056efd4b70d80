"""``ragpress eval``: token-IoU evaluation of one configuration or a sweep, with reports."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from flows.cli_checks import fail, user_errors
from flows.progress import live_progress

if TYPE_CHECKING:
    from eval.base import EvalConfig

CHUNKER_OPTIONS = ("chunker", "chunk_size", "overlap")


def build_config(options: dict[str, object]) -> EvalConfig:
    """The configuration the command line asks for.

    No chunker option (chunker, chunk size, overlap): the project's default, ``BEST_CONFIG``,
    with any retrieval option given on top. With a chunker option: the plain baseline (token
    200/0, dense, k=5) with every given option on top, so ``--chunker token --chunk-size 200
    --overlap 0`` is exactly the fixed-token baseline.
    """
    from eval.base import EvalConfig
    from eval.defaults import BASELINE_CONFIG, BEST_CONFIG

    given = {key: value for key, value in options.items() if value is not None}
    base = BASELINE_CONFIG if any(key in given for key in CHUNKER_OPTIONS) else BEST_CONFIG
    return EvalConfig.from_dict({**base.to_dict(), **given})


def parse_k(k: str | None) -> object:
    """``--k``: an integer, ``min``, or None."""
    if k is None or k == "min":
        return k
    try:
        return int(k)
    except ValueError:
        return k  # the config refuses it, naming k and what it allows


def print_results(results) -> None:
    """One table row per configuration and corpus."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for result in results:
        table = Table(title=f"{result.config.label}  ({result.n_chunks} chunks, {result.dataset})")
        for column in ("corpus", "questions", "recall", "precision", "PΩ", "IoU", "tokens retrieved"):
            table.add_column(column, justify="left" if column == "corpus" else "right")
        for corpus, summary in [*result.per_corpus.items(), ("overall", result.overall)]:
            table.add_row(
                corpus,
                str(summary.n_questions),
                f"{summary.recall:.1f}",
                f"{summary.precision:.1f}",
                f"{summary.precision_omega:.1f}",
                f"{summary.iou:.1f}",
                f"{summary.mean_retrieved_tokens:.0f}",
            )
        console.print(table)


def evaluate(
    questions: Path | None = typer.Option(None, "--questions", help="questions: Chroma CSV or JSONL (default: the own pydoc-topics set)"),
    corpora: Path | None = typer.Option(None, "--corpora", help="directory of <corpus_id>.md/.txt files (needed for a CSV)"),
    chunker: str | None = typer.Option(None, "--chunker", help="token, recursive or sentence (default: the project's best config)"),
    chunk_size: int | None = typer.Option(None, "--chunk-size", help="tokens per chunk"),
    overlap: int | None = typer.Option(None, "--overlap", help="tokens shared by neighbouring chunks"),
    k: str | None = typer.Option(None, "-k", "--k", help="chunks retrieved per question, or 'min' (chunks touching the references, max 20)"),
    retrieval: str | None = typer.Option(None, "--retrieval", help="dense, bm25 or hybrid"),
    hybrid_weight: float | None = typer.Option(None, "--hybrid-weight", help="weight of the dense score in hybrid retrieval (0..1)"),
    context_chunks: int | None = typer.Option(None, "--context-chunks", help="neighbours on each side mixed into a chunk's embedding"),
    merge_adjacent: bool | None = typer.Option(None, "--merge/--no-merge", help="merge retrieved chunks that overlap or touch"),
    unit: str | None = typer.Option(None, "--unit", help="count metrics in 'chars' (benchmark) or 'tokens'"),
    distinct: bool | None = typer.Option(None, "--distinct/--with-copies",
                                            help="top k = k different texts (default), or the plain top k with identical copies"),
    sweep: Path | None = typer.Option(None, "--sweep", help="YAML/JSON grid of configurations (see eval/sweep.py)"),
    poison: Path | None = typer.Option(None, "--poison", help="YAML/JSON poisoning-probe settings (see eval/poison/probe.py); "
                                       "plants passages in a copy of the index and reports attack success"),
    index: Path | None = typer.Option(None, "--index", help="with --poison: probe a copy of this index instead of one built from the corpora"),
    json_out: Path | None = typer.Option(None, "--json", help="write per-corpus, overall and per-question scores here"),
    html_out: Path | None = typer.Option(None, "--html", help="write the dashboard page (this run and the recorded history) here"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="embedding cache (default $RAGPRESS_CACHE/eval-embeddings)"),
    model: str | None = typer.Option(None, "--model", help="embedding model (default: packaged all-MiniLM-L6-v2)"),
) -> None:
    """Evaluate chunking + retrieval on questions with reference spans (recall, precision, PΩ, IoU)."""
    from eval.sweep import load_sweep

    if poison is not None:
        given = dict(chunker=chunker, chunk_size=chunk_size, overlap=overlap, k=k, retrieval=retrieval,
                     hybrid_weight=hybrid_weight, context_chunks=context_chunks, merge_adjacent=merge_adjacent, unit=unit,
                     distinct=distinct, sweep=sweep)
        if any(value is not None for value in given.values()):
            fail("--poison takes its settings from the config file; drop the chunker/retrieval/--sweep options")
        run_poison(poison, questions, corpora, json_out, html_out, model, index)
        return
    if index is not None:
        fail("--index is only used with --poison")
    options = dict(
        chunker=chunker, chunk_size=chunk_size, overlap=overlap, k=parse_k(k), retrieval=retrieval,
        hybrid_weight=hybrid_weight, context_chunks=context_chunks, merge_adjacent=merge_adjacent, unit=unit,
        distinct=distinct,
    )
    with live_progress(), user_errors():
        if sweep is not None:
            if any(value is not None for value in options.values()):
                fail("--sweep defines the configurations; drop the chunker/retrieval options or put them in the sweep file")
            configs = load_sweep(sweep)
        else:
            configs = [build_config(options)]
        if questions is not None and not questions.is_file():
            fail(f"questions file {questions} does not exist; check the path")
        from flows.evaluate import evaluate_flow

        results = evaluate_flow(
            configs=[config.to_dict() for config in configs],
            questions=str(questions) if questions else None,
            corpora=str(corpora) if corpora else None,
            json_out=str(json_out) if json_out else None,
            html_out=str(html_out) if html_out else None,
            cache_dir=str(cache_dir) if cache_dir else None,
            model=model,
            command="ragpress " + shlex.join(sys.argv[1:]),
        )
    print_results(results)
    for path in (json_out, html_out):
        if path is not None:
            typer.echo(f"wrote {path}")


def run_poison(config_path: Path, questions: Path | None, corpora: Path | None, json_out: Path | None,
               html_out: Path | None, model: str | None, index: Path | None) -> None:
    """``ragpress eval --poison CONFIG``: validate everything, run the probe flow, print its table."""
    from eval.poison.probe import load_poison_config

    with user_errors():
        config = load_poison_config(config_path)
        if questions is not None and not questions.is_file():
            fail(f"questions file {questions} does not exist")
        if index is not None:
            from retrieval.index_store import IndexStore

            if not IndexStore.exists(index):
                fail(f"--index {index} holds no committed index; build one with ragpress index, or drop --index")
        from flows.evaluate import poison_flow

        report = poison_flow(config.model_dump(), str(questions) if questions else None, str(corpora) if corpora else None,
                             str(json_out) if json_out else None, model, str(index) if index else None,
                             str(html_out) if html_out else None)
    print_poison(report)
    from eval.poison.report import report_json
    from eval.run_store import RunStore

    store = RunStore()
    typer.echo(f"recorded as probe #{store.add_probe(report_json(report))} in {store.path} (ragpress dashboard shows it)")
    for path in (json_out, html_out):
        if path is not None:
            typer.echo(f"wrote {path}")


def print_poison(report) -> None:
    """The attack-success table and the clean-index table."""
    from rich.console import Console
    from rich.table import Table

    from eval.poison.report import clean_rows, success_rows

    console = Console()
    for title, rows in ((f"Poisoning probe: {report.dataset} (success %, recall points)", success_rows(report)),
                        ("Clean index, target questions", clean_rows(report))):
        table = Table(title=title)
        for column in rows[0]:
            table.add_column(column, justify="left" if column in ("attack", "mode") else "right")
        for row in rows:
            table.add_row(*(str(value) for value in row.values()))
        console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the CLI."""
    app.command("eval")(evaluate)

"""``ragpress runs list/show/compare/delete`` over the run store, and ``ragpress dashboard``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli_checks import fail

runs_app = typer.Typer(no_args_is_help=True, help="Recorded eval and pipeline runs: list, show, compare, delete.")
STORE_HELP = "run store file (default $RAGPRESS_RUNS or $RAGPRESS_CACHE/runs.sqlite)"


def _store(path: Path | None, must_exist: bool = True):
    from eval.run_store import RunStore

    store = RunStore(path)
    if must_exist and not store.path.is_file():
        fail(f"no run store at {store.path}: run `ragpress eval` or `ragpress pipeline` first, or pass --store FILE")
    return store


def _get(store, run_id: int, questions: bool = True):
    try:
        return store.get(run_id, questions)
    except KeyError as exc:
        fail(str(exc.args[0]))


def _value(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


@runs_app.command("list")
def list_runs(
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    last: int = typer.Option(30, "--last", help="show the newest N runs"),
) -> None:
    """One line per run: id, time, kind, dataset, configuration and headline metrics."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs in {_store(store).path}")
    for column in ("run", "created", "kind", "dataset", "questions", "configuration", "retr. recall", "retr. IoU", "answer F1"):
        table.add_column(column, justify="right" if column in ("run", "questions", "retr. recall", "retr. IoU", "answer F1") else "left")
    for run in _store(store).runs(last):
        s = run.summary
        table.add_row(f"#{run.run_id}", run.created, run.kind, run.dataset, str(run.n_questions), run.label,
                      _value(s.get("retrieval.recall")), _value(s.get("retrieval.iou")), _value(s.get("answer_f1")))
    Console().print(table)


@runs_app.command("show")
def show(
    run_id: int = typer.Argument(..., help="the run's id (see `ragpress runs list`)"),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the whole run, questions included, as JSON"),
) -> None:
    """A run's configuration, models, code version, dataset and summary (or everything as JSON)."""
    run = _get(_store(store), run_id, questions=as_json)
    if as_json:
        typer.echo(json.dumps({**run.header(), "questions": [q.to_dict() for q in run.questions]}, indent=1))
        return
    from eval.run_store import METRICS

    typer.echo(f"run #{run.run_id} ({run.kind}) {run.created}: {run.label}")
    typer.echo(f"dataset {run.dataset} ({run.n_questions} questions, fingerprint {run.dataset_fingerprint[:16]})")
    typer.echo(f"code {run.code_version}; models " + "; ".join(f"{k} {v}" for k, v in run.models.items()))
    if run.command:
        typer.echo(f"command: {run.command}")
    typer.echo("config: " + json.dumps(dict(run.config), sort_keys=True))
    for name, value in run.summary.items():
        if value is not None:
            typer.echo(f"  {METRICS[name][0]:<34} {value:10.2f}")


@runs_app.command("compare")
def compare(
    a: int = typer.Argument(..., help="run A (the baseline)"),
    b: int = typer.Argument(..., help="run B"),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    metric: str | None = typer.Option(None, "--metric", help="the metric of the changed questions (default answer_f1, else retrieval.iou)"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
) -> None:
    """Config diff, metric deltas (B - A) with 95% bootstrap intervals, questions better and worse in B."""
    from dataclasses import asdict

    from eval.run_compare import compare_runs
    from eval.run_store import METRICS

    if metric is not None and metric not in METRICS:
        fail(f"unknown metric '{metric}'; valid choices: {', '.join(METRICS)}")
    runs = _store(store)
    comparison = compare_runs(_get(runs, a), _get(runs, b), metric)
    if as_json:
        typer.echo(json.dumps(asdict(comparison), indent=1))
        return
    typer.echo(f"A #{a} vs B #{b}")
    for key, (x, y) in comparison.config_diff.items():
        typer.echo(f"  config {key}: {x!r} -> {y!r}")
    for d in comparison.deltas:
        typer.echo(f"  {METRICS[d.metric][0]:<34} {d.a:9.2f} {d.b:9.2f}  Δ {d.delta:+8.2f}  [{d.low:+.2f}, {d.high:+.2f}]  n={d.n_pairs}")
    better = [c for c in comparison.changed if c.better]
    worse = [c for c in comparison.changed if not c.better]
    typer.echo(f"questions changed on {comparison.metric}: {len(better)} better, {len(worse)} worse in B")
    for title, group in (("better", better), ("worse", worse)):
        for change in group[:10]:
            typer.echo(f"  {title} {change.qid}: {change.a:.2f} -> {change.b:.2f}  {change.question[:70]}")


@runs_app.command("delete")
def delete(
    run_ids: list[int] = typer.Argument(..., help="ids of the runs to delete"),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Delete runs and their questions from the store."""
    runs = _store(store)
    for run_id in run_ids:
        _get(runs, run_id, questions=False)  # every id must exist before anything is deleted
    removed = runs.delete(run_ids)
    typer.echo(f"deleted {removed} run(s) from {runs.path}")


def dashboard(
    port: int = typer.Option(8765, "--port", help="serve on http://127.0.0.1:PORT"),
    html_out: Path | None = typer.Option(None, "--html", help="write one self-contained page here instead of serving"),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    last: int = typer.Option(200, "--last", help="the newest N runs the page holds"),
    compare_ids: list[int] = typer.Option([], "--compare", help="preselect runs A and B (give twice)"),
) -> None:
    """The evaluation dashboard of the recorded runs: served on localhost, or written with --html FILE."""
    from eval.dashboard import make_server, write_dashboard

    if not 0 < port < 65536:
        fail(f"--port must be in 1..65535, got {port}")
    if len(compare_ids) > 2:
        fail(f"--compare takes two runs, got {len(compare_ids)}")
    runs = _store(store)
    for run_id in compare_ids:
        _get(runs, run_id, questions=False)
    if html_out is not None:
        typer.echo(f"dashboard: {write_dashboard(runs, html_out, compare_ids, last).resolve()}")
        return
    try:
        server = make_server(runs, port, limit=last, selected=compare_ids)
    except OSError as exc:
        fail(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pass another --port")
    typer.echo(f"dashboard: http://127.0.0.1:{server.server_port}/  (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    """Add ``runs`` and ``dashboard`` to the ``ragpress`` command line."""
    app.add_typer(runs_app, name="runs")
    app.command("dashboard")(dashboard)

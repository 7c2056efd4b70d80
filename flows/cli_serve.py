"""``ragpress serve``: keep a folder's index fresh on a cron schedule, served from this process."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_checks import require_index_dir, user_errors


def serve(
    folder: Path = typer.Argument(..., help="the folder (or file) to keep indexed"),
    index_dir: Path = typer.Option(..., "--index", help="index directory (created on the first run)"),
    cron: str = typer.Option("0 * * * *", "--cron", help="when to re-index, five cron fields (default hourly)"),
    timezone: str = typer.Option("UTC", "--timezone", help="time zone of the cron schedule"),
    name: str = typer.Option("ragpress-index", "--name", help="deployment name (flow ragpress-index/NAME)"),
    chunker: str | None = typer.Option(None, "--chunker", help="token, recursive or sentence (default: the indexing flow's)"),
    chunk_size: int | None = typer.Option(None, "--chunk-size", help="tokens per chunk (default: the indexing flow's)"),
    overlap: int | None = typer.Option(None, "--overlap", help="tokens shared by neighbouring chunks"),
    context_chunks: int | None = typer.Option(None, "--context-chunks", help="neighbours mixed into each vector"),
    model: str | None = typer.Option(None, "--model", help="sentence-transformers dir or cached name"),
    factory: str | None = typer.Option(None, "--factory", help="FAISS index factory (default: Flat)"),
    allow_root: list[Path] = typer.Option([], "--allow-root",
                                          help="another folder runs may index or write (FOLDER and --index always are); repeatable"),
) -> None:
    """Serve the indexing flow on --cron for FOLDER (needs a Prefect server: PREFECT_API_URL).

    Runs triggered through the API may only use paths under FOLDER, --index and --allow-root."""
    from flows.serve import allow_roots, indexing_deployment

    require_index_dir(index_dir)
    with user_errors():
        deployment = indexing_deployment(folder, index_dir, name=name, cron=cron, timezone=timezone, chunker=chunker,
                                         chunk_size=chunk_size, overlap=overlap, context_chunks=context_chunks,
                                         model=model, factory=factory)
    from prefect import serve as prefect_serve

    roots = allow_roots(folder, index_dir, allow_root)
    typer.echo(f"serving ragpress-index/{name}: {folder} -> {index_dir} on '{cron}' ({timezone}); "
               f"runs may only use paths under {', '.join(roots)}; Ctrl-C stops")
    prefect_serve(deployment)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the CLI."""
    app.command("serve")(serve)

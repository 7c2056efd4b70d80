"""``ragpress compress``: any registered compressor over stdin, same output for every method."""

from __future__ import annotations

import json
import sys
import time

import typer

from flows.cli_checks import require, require_at_least, user_errors


def compress(
    method: str = typer.Option("extractive", "--method", help="compression method (see compression/registry.py)"),
    rate: float | None = typer.Option(None, "--rate", help="keep this share of the input tokens (0 < R <= 1)"),
    target_tokens: int | None = typer.Option(None, "--target-tokens", help="keep this many tokens instead of a rate"),
    question: str | None = typer.Option(None, "--question", help="make the compression question-aware"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON object instead of the text"),
) -> None:
    """Compress the text on standard input and print it with its kept spans and token counts."""
    require_at_least("--target-tokens", target_tokens, 1, "100")
    from compression.base import Budget
    from compression.registry import make_compressor
    from retrieval.documents import decode_text

    data = sys.stdin.buffer.read()
    require(bool(data.strip()), "standard input is empty; pipe the text to compress, e.g. ragpress compress < notes.txt")
    with user_errors():
        text = decode_text(data, "standard input")
        if rate is None and target_tokens is None:
            rate = 0.5
        budget = Budget(rate=rate, target_tokens=target_tokens)  # both given: Budget says so
        compressor = make_compressor(method)
        started = time.process_time()
        result = compressor.compress([text], budget, question=question)
        cpu_seconds = time.process_time() - started
    if not as_json:
        typer.echo(result.text)
        typer.echo(
            f"[{result.method}] {result.original_tokens} -> {result.compressed_tokens} tokens, rate {result.rate:.3f}",
            err=True,
        )
        return
    payload = {
        "method": result.method,
        "text": result.text,
        "kept_spans": [[span.start, span.end] for span in result.kept],
        "original_tokens": result.original_tokens,
        "compressed_tokens": result.compressed_tokens,
        "rate": result.rate,
        "cpu_seconds": cpu_seconds,
    }
    json.dump(payload, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def register(app: typer.Typer) -> None:
    """Add ``compress`` to the CLI."""
    app.command("compress")(compress)

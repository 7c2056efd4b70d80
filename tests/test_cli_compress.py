"""`ragpress compress`: the same JSON for every method, spans that point into the input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.cli import app

TEXT = (
    "The pass statement is a null operation. Nothing happens when it executes. "
    "It is useful as a placeholder when a statement is required syntactically. "
    "The del statement removes a binding. Deletion of a target list deletes each target. "
    "The return statement leaves the current function call."
)


def test_extractive_json_spans_map_back_to_the_input() -> None:
    result = CliRunner().invoke(
        app, ["compress", "--method", "extractive", "--rate", "0.4", "--question", "what does del do?", "--json"], input=TEXT
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) >= {"method", "text", "kept_spans", "original_tokens", "compressed_tokens", "rate"}
    assert payload["method"] == "extractive" and 0 < payload["compressed_tokens"] < payload["original_tokens"]
    pieces = [TEXT[start:end] for start, end in payload["kept_spans"]]
    assert all(piece in payload["text"] for piece in pieces)
    assert any("del statement" in piece for piece in pieces)


def test_unknown_method_and_bad_rate_are_clear_errors() -> None:
    result = CliRunner().invoke(app, ["compress", "--method", "nope"], input=TEXT)
    assert result.exit_code == 2 and "valid:" in result.output
    result = CliRunner().invoke(app, ["compress", "--method", "extractive", "--rate", "1.5"], input=TEXT)
    assert result.exit_code == 2 and "rate must be in (0, 1]" in result.output

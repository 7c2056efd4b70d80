"""The answer flow and the ``ask`` command."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from flows import cli_ask


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    cli_ask.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `ask` a named sub-command
    return app


def test_ask_refuses_an_unknown_mode(app, tmp_path):
    result = CliRunner().invoke(app, ["ask", "why?", "--index", str(tmp_path), "--kv-reuse", "magic"])
    assert result.exit_code == 2
    assert "kv_mode='magic' is not allowed; kv_mode must be one of none, naive, edge, blend" in result.output


def test_ask_refuses_an_unknown_blend_score(app, tmp_path):
    result = CliRunner().invoke(app, ["ask", "why?", "--index", str(tmp_path), "--blend-score", "magic"])
    assert result.exit_code == 2
    assert "blend_score='magic' is not allowed; blend_score must be one of deviation, attention" in result.output


def test_ask_refuses_an_unknown_retrieval(app, tmp_path):
    result = CliRunner().invoke(app, ["ask", "why?", "--index", str(tmp_path), "--retrieval", "magic"])
    assert result.exit_code == 2
    assert "retrieval='magic' is not allowed; retrieval must be one of dense, bm25, hybrid" in result.output


def test_ask_refuses_a_missing_index(app, tmp_path):
    result = CliRunner().invoke(app, ["ask", "why?", "--index", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "holds no index" in result.output


def test_ask_refuses_a_negative_cache_size(app, tmp_path):
    result = CliRunner().invoke(app, ["ask", "why?", "--index", str(tmp_path), "--kv-cache-max-mb", "-1"])
    assert result.exit_code == 2
    assert "--kv-cache-max-mb must be >= 0" in result.output


def test_recovery_for_maps_modes():
    from compression.kv.recovery import recovery_for

    assert recovery_for("none", 0.15, 16) is None
    assert recovery_for("naive", 0.15, 16).name == "none"
    assert recovery_for("edge", 0.15, 8).n_tokens == 8
    assert recovery_for("blend", 0.3, 16).r == 0.3
    assert recovery_for("blend", 0.3, 16).score == "attention"  # measured best (compression/kv/modes.py)
    assert recovery_for("blend", 0.3, 16, blend_score="deviation").score == "deviation"
    with pytest.raises(ValueError, match="unknown blend score 'dev'; valid: deviation, attention"):
        recovery_for("blend", 0.3, 16, blend_score="dev")


@pytest.mark.slow
@pytest.mark.prefect
@pytest.mark.real_model
def test_answer_flow_end_to_end(prefect_harness, tmp_path, app):
    """Real MiniLM + SmolLM2: naive reuse computes chunk caches once; blend r=1 answers like a full prefill."""
    from retrieval.chunkers import make_chunker
    from retrieval.encoder import load_encoder
    from retrieval.indexing import index_paths

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "paris.txt").write_text("Paris is the capital of France. It lies on the Seine.\n\n" * 3, encoding="utf-8")
    (docs / "nile.txt").write_text("The Nile is a river in Africa, about 6,650 km long.\n\n" * 3, encoding="utf-8")
    index = tmp_path / "index"
    index_paths([docs], index, make_chunker("token", chunk_size=32), load_encoder())
    from flows.answer import answer_flow
    from retrieval.config import BEST_RETRIEVAL

    question = "What is the capital of France?"

    def answer(kv_cache_max_mb=None, **settings):
        config = {**BEST_RETRIEVAL.to_dict(), "k": 2, "max_new_tokens": 12, **settings}
        return answer_flow(question, str(index), config, kv_cache_max_mb=kv_cache_max_mb)

    first = answer(kv_mode="naive")
    assert first["chunk_caches_computed"] == 2 and len(list((index / "kv-cache").glob("*.safetensors"))) == 2
    again = answer(kv_mode="naive")
    assert again["chunk_caches_computed"] == 0 and again["reused_tokens"] > again["prefilled_tokens"]
    full = answer(kv_mode="none")
    exact = answer(kv_mode="blend", blend_r=1.0)
    assert exact["answer"] == full["answer"] and full["reused_tokens"] == 0
    # Compressed context still reuses the chunk caches: only the kept tokens are read.
    squeezed = answer(kv_mode="naive", compression="extractive", rate=0.5)
    assert squeezed["chunk_caches_computed"] == 0 and 0 < squeezed["reused_tokens"] < again["reused_tokens"]
    source = (docs / "paris.txt").read_text(encoding="utf-8")
    hit = next(h for h in full["contexts"] if h["source"].endswith("paris.txt"))
    assert source[hit["start"]:hit["end"]] == hit["text"]
    printed = CliRunner().invoke(app, ["ask", question, "--index", str(index), "-k", "2", "--json", "--max-new-tokens", "8"])
    assert printed.exit_code == 0, printed.output
    payload = json.loads(printed.output[printed.output.index("{"):])
    assert payload["kv_reuse"] == "blend" and len(payload["contexts"]) == 2
    emptied = answer(kv_mode="naive", kv_cache_max_mb=0)
    assert emptied["kv_cache_pruned"]["removed"] == 2 and not list((index / "kv-cache").glob("*.safetensors"))

"""The indexing and query flows and their CLI, on Prefect's test harness and the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.prefect
runner = CliRunner()

TOPICS = ("assert", "for", "while", "with", "try", "pass")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    from pydoc_data.topics import topics

    folder = tmp_path / "docs"
    folder.mkdir()
    for name in TOPICS:
        (folder / f"{name}.txt").write_text(topics[name], encoding="utf-8")
    return folder


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_index_then_query_cli_matches_brute_force(prefect_harness, corpus: Path, tmp_path: Path) -> None:
    from retrieval.encoder import load_encoder
    from retrieval.index_store import IndexStore

    index_dir = tmp_path / "idx"
    result = _run("index", str(corpus), "--index", str(index_dir), "--chunk-size", "120", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["added"] == len(TOPICS) and summary["chunks_total"] > len(TOPICS)

    result = _run("query", "how does the assert statement work", "--index", str(index_dir), "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert len(hits) == 3
    # Every hit's span is exact in its source file, and the ranking equals brute-force cosine.
    for hit in hits:
        assert Path(hit["source"]).read_text(encoding="utf-8")[hit["start"]:hit["end"]] == hit["text"]
    store = IndexStore.open(index_dir)
    chunks = store.chunks()
    vectors = store.vectors_of([c.id for c in chunks])
    query = load_encoder().encode(["how does the assert statement work"])[0]
    best = np.argsort(-(vectors @ query))[:3]
    assert [chunks[i].text for i in best] == [h["text"] for h in hits]
    assert hits[0]["source"].endswith("assert.txt")


def test_reindex_is_incremental_and_cached(prefect_harness, corpus: Path, tmp_path: Path) -> None:
    from flows.indexing import index_flow

    index_dir = str(tmp_path / "idx")
    first = index_flow([str(corpus)], index_dir, chunk_size=120)
    assert first.added == len(TOPICS)
    (corpus / "pass.txt").write_text("The pass statement does nothing at all.\n", encoding="utf-8")
    (corpus / "while.txt").unlink()
    second = index_flow([str(corpus)], index_dir, chunk_size=120)
    assert (second.added, second.updated, second.deleted, second.unchanged) == (0, 1, 1, len(TOPICS) - 2)
    rebuilt = index_flow([str(corpus)], str(tmp_path / "fresh"), chunk_size=120)
    assert second.chunks_total == rebuilt.chunks_total


def test_index_flow_publishes_summary_artifact(prefect_harness, corpus: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.indexing import index_flow

    index_flow([str(corpus)], str(tmp_path / "idx"), chunk_size=120)

    async def latest():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ragpress-index-summary"]))
            )

    import asyncio

    artifacts = asyncio.run(latest())
    assert artifacts and artifacts[0].type == "table"
    rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
    assert {"metric": "added docs", "value": len(TOPICS)} in rows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("query", "", "-k", "3"), "empty"),
        (("query", "assert", "-k", "0"), "k must be a positive integer"),
    ],
)
def test_query_bad_input_is_a_clear_error(prefect_harness, corpus: Path, tmp_path: Path, args, message) -> None:
    index_dir = tmp_path / "idx"
    assert _run("index", str(corpus), "--index", str(index_dir), "--chunk-size", "120").exit_code == 0
    result = _run(*args[:2], "--index", str(index_dir), *args[2:])
    assert result.exit_code == 2
    assert message in result.output


def test_index_of_nothing_but_bad_files_fails_clearly(prefect_harness, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.txt").write_text("   \n", encoding="utf-8")
    result = _run("index", str(folder), "--index", str(tmp_path / "idx"))
    assert result.exit_code == 2
    assert "nothing to index" in result.output


def test_chunk_cli_json_spans_are_exact(tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    path = tmp_path / "doc.txt"
    text = topics["for"] + "\n\nCJK 漢字かな and emoji 👩‍💻 🎉 at the end."
    path.write_text(text, encoding="utf-8")
    for chunker in ("token", "recursive", "sentence"):
        result = _run("chunk", str(path), "--chunker", chunker, "--chunk-size", "40", "--overlap", "8", "--json")
        assert result.exit_code == 0, result.output
        spans = json.loads(result.stdout)
        assert spans and all(0 < s["n_tokens"] <= 40 for s in spans)
        covered = "".join(text[s["start"]:s["end"]] for s in spans)
        assert "漢字" in covered and "🎉" in covered


def test_chunk_cli_rejects_bad_options_and_files(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text("some words here", encoding="utf-8")
    result = _run("chunk", str(path), "--chunker", "nope", "--json")
    assert result.exit_code == 2 and "valid chunkers" in result.output
    result = _run("chunk", str(path), "--chunk-size", "10", "--overlap", "10")
    assert result.exit_code == 2 and "overlap" in result.output
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    result = _run("chunk", str(binary))
    assert result.exit_code == 2 and str(binary) in result.output

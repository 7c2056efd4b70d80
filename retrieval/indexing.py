"""Incremental, crash-safe indexing in small steps (each one a candidate Prefect task).

    plan_update -> chunk_documents -> embed_chunks -> apply_update (commits a version)

``index_paths`` runs them over a folder in batches of ``commit_every`` documents. Every batch is
one atomic commit of whole documents, so a run killed at any moment leaves the last committed
version intact; the next run plans against it and only does the rest. A document is unchanged
when both its content hash and the fingerprint of the chunker configuration match, so a new
chunker configuration re-chunks everything (and a kill half-way through that resumes too).
A document whose only change is its path on disk (the corpus folder moved) is *relocated*: its
recorded source is updated and nothing is re-chunked or re-embedded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.base import Chunk, Chunker, Document, Encoder, Hit
from retrieval.documents import load_document, scan
from retrieval.errors import InputError
from retrieval.index_store import IndexStore, config_fingerprint
from retrieval.postprocess import NEIGHBOUR_WEIGHT, with_neighbour_context


@dataclass(frozen=True)
class IndexPlan:
    """What an update must do, decided by comparing documents with the index."""

    new: tuple[Document, ...]
    changed: tuple[Document, ...]
    deleted: tuple[str, ...]
    unchanged: tuple[str, ...]
    chunker_config: Mapping[str, Any] = field(default_factory=dict)
    relocated: tuple[Document, ...] = ()  # same id, content and chunker; only the source path moved

    @property
    def to_embed(self) -> tuple[Document, ...]:
        """The documents whose chunks must be embedded: new and changed ones."""
        return self.new + self.changed

    @property
    def is_empty(self) -> bool:
        """Whether the plan changes nothing."""
        return not (self.new or self.changed or self.deleted or self.relocated)

    def batches(self, size: int) -> Iterator[IndexPlan]:
        """Sub-plans of at most ``size`` documents to embed; the first one also carries the deletions
        and relocations (metadata only, so they never wait behind embedding work)."""
        if size <= 0:
            raise ValueError(f"commit_every must be a positive number of documents, got {size}")
        new_ids = {d.doc_id for d in self.new}
        docs = self.to_embed
        for number, start in enumerate(range(0, max(len(docs), 1), size)):
            part = docs[start:start + size]
            if not part and not (self.deleted or self.relocated):
                return
            yield IndexPlan(
                new=tuple(d for d in part if d.doc_id in new_ids),
                changed=tuple(d for d in part if d.doc_id not in new_ids),
                deleted=self.deleted if number == 0 else (),
                unchanged=(),
                chunker_config=self.chunker_config,
                relocated=self.relocated if number == 0 else (),
            )


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not indexed, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class IndexSummary:
    """What ``index_paths`` did."""

    index_dir: str
    version: int
    added: int
    updated: int
    deleted: int
    unchanged: int
    chunks_added: int
    chunks_total: int
    commits: int
    skipped: tuple[SkippedFile, ...]
    timings: Mapping[str, float]
    relocated: int = 0


def describe_chunker(chunker: Chunker) -> dict[str, Any]:
    """A JSON-able description of a chunker (class + scalar settings + tokenizer name) to detect changes."""
    config: dict[str, Any] = {"chunker": type(chunker).__name__}
    for key, value in sorted(vars(chunker).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            config[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            config[key] = list(value)
        elif hasattr(value, "name"):
            config[key] = str(value.name)
    return config


def plan_update(store: IndexStore | None, documents: Sequence[Document], chunker_config: Mapping[str, Any]) -> IndexPlan:
    """Compare ``documents`` (the whole corpus) with what ``store`` holds."""
    seen: set[str] = set()
    for doc in documents:
        if doc.doc_id in seen:
            raise InputError(f"document id {doc.doc_id!r} appears twice; give each file once")
        seen.add(doc.doc_id)
    indexed = dict(store.documents) if store is not None else {}
    fingerprint = config_fingerprint(chunker_config)
    new = tuple(d for d in documents if d.doc_id not in indexed)
    changed, unchanged, relocated = [], [], []
    for doc in documents:
        record = indexed.get(doc.doc_id)
        if record is None:
            continue
        if record.content_hash != doc.content_hash or record.chunker != fingerprint:
            changed.append(doc)
        elif record.source != doc.source:
            relocated.append(doc)
        else:
            unchanged.append(doc.doc_id)
    deleted = tuple(sorted(set(indexed) - seen))
    return IndexPlan(new, tuple(changed), deleted, tuple(unchanged), dict(chunker_config), tuple(relocated))


def chunk_documents(docs: Iterable[Document], chunker: Chunker) -> list[tuple[Document, list[Chunk]]]:
    """Chunk every document; checks each chunk's span so a faulty chunker cannot corrupt the index."""
    out = []
    for doc in docs:
        chunks = list(chunker.chunk(doc.text))
        for chunk in chunks:
            if doc.text[chunk.start:chunk.end] != chunk.text:
                raise RuntimeError(f"chunker {type(chunker).__name__} returned a chunk whose span [{chunk.start}:{chunk.end}] does not match its text in {doc.doc_id}")
        out.append((doc, chunks))
    return out


def embed_chunks(chunks: Sequence[Chunk], encoder: Encoder, *, show_progress: bool = False) -> np.ndarray:
    """Vectors ``[len(chunks), encoder.dim]`` of the chunk texts."""
    if not chunks:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return encoder.encode([c.text for c in chunks], show_progress=show_progress)


def embed_documents(chunked: Sequence[tuple[Document, Sequence[Chunk]]], encoder: Encoder, context_chunks: int = 0,
                    *, show_progress: bool = False) -> np.ndarray:
    """Vectors of every chunk of ``chunked``, in order. With ``context_chunks`` > 0 each vector also
    mixes in its neighbours within the same document (``retrieval.postprocess.with_neighbour_context``)."""
    flat = [chunk for _, chunks in chunked for chunk in chunks]
    vectors = embed_chunks(flat, encoder, show_progress=show_progress)
    groups = [doc.doc_id for doc, chunks in chunked for _ in chunks]
    return with_neighbour_context(vectors, groups, context_chunks, NEIGHBOUR_WEIGHT)


def check_tokenizer(store: IndexStore, chunker_config: Mapping[str, Any]) -> None:
    """Chunk budgets count tokens with the index model's tokenizer: an index whose chunks were
    counted with another tokenizer than ``chunker_config``'s is an ``InputError`` naming both."""
    recorded, wanted = store.chunker_config.get("tokenizer"), chunker_config.get("tokenizer")
    if store.documents and recorded and wanted and recorded != wanted:
        raise InputError(f"the index {store.directory} (model {store.model_id}) holds chunks counted with the {recorded} "
                         f"tokenizer, but its model counts with the {wanted} tokenizer; re-index with --rebuild")


def index_config(chunker: Chunker, context_chunks: int = 0) -> dict[str, Any]:
    """What decides a document's chunks and vectors: the chunker's settings and the neighbour context."""
    return {**describe_chunker(chunker), "context_chunks": int(context_chunks)}


def apply_update(store: IndexStore, plan: IndexPlan, chunked: Sequence[tuple[Document, Sequence[Chunk]]],
                 vectors: np.ndarray) -> IndexStore:
    """Apply ``plan`` with its chunked documents and vectors (rows in chunk order) and commit one version."""
    total = sum(len(chunks) for _, chunks in chunked)
    if len(vectors) != total:
        raise ValueError(f"got {len(vectors)} vectors for {total} chunks; embed exactly the chunks of `chunked`")
    for doc_id in plan.deleted:
        store.remove_document(doc_id)
    for doc in plan.relocated:
        store.relocate_document(doc.doc_id, doc.source)
    store.set_chunker_config(plan.chunker_config)
    offset = 0
    for doc, chunks in chunked:
        store.add_document(doc, chunks, vectors[offset:offset + len(chunks)])
        offset += len(chunks)
    if store.dirty:
        store.commit()
    return store


def load_documents(paths: Sequence[str | Path], exclude: Sequence[str | Path] = (),
                   progress: Callable[[int], None] | None = None) -> tuple[list[Document], list[SkippedFile]]:
    """Documents under ``paths`` (ids relative to their common folder); bad or unreadable files found
    in folders are skipped and reported, a bad file named explicitly raises ``InputError``. Index
    and cache directories (``exclude``, and any nested index) are never read (``documents.scan``).
    ``progress(1)`` is called after each file read."""
    explicit = {Path(p).expanduser().resolve() for p in paths if Path(p).expanduser().is_file()}
    files, passed = scan(paths, exclude)
    anchors = [str(p.parent if p.is_file() else p) for p in (Path(x).expanduser().resolve() for x in paths)]
    root = Path(os.path.commonpath(anchors)) if anchors else Path.cwd()
    docs, skipped = [], [SkippedFile(str(path), reason) for path, reason in passed]
    for path in files:
        try:
            docs.append(load_document(path, root=root))
        except InputError as exc:
            if path in explicit:
                raise
            skipped.append(SkippedFile(str(path), str(exc)))
        if progress is not None:
            progress(1)
    return docs, skipped


def require_documents(paths: Sequence[str | Path], exclude: Sequence[str | Path] = (),
                      progress: Callable[[int], None] | None = None) -> tuple[list[Document], list[SkippedFile]]:
    """``load_documents``, but finding no usable document is an ``InputError`` that says why."""
    docs, skipped = load_documents(paths, exclude, progress)
    if not docs:
        reasons = "; ".join(s.reason for s in skipped[:3]) or "no text files found"
        raise InputError(f"nothing to index under {', '.join(map(str, paths))}: {reasons}")
    return docs, skipped


def index_paths(paths: Sequence[str | Path], index_dir: str | Path, chunker: Chunker, encoder: Encoder,
                factory: str = "Flat", commit_every: int = 100, *, chunker_config: Mapping[str, Any] | None = None,
                rebuild: bool = False, show_progress: bool = False, context_chunks: int = 0) -> IndexSummary:
    """Bring the index in ``index_dir`` up to date with the files under ``paths``.

    Files that disappeared are removed, changed ones re-chunked and re-embedded, moved ones
    relocated (source updated, vectors kept), and new ones added, committing every ``commit_every`` documents so a killed run resumes.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    timings = dict.fromkeys(("load", "chunk", "embed", "commit"), 0.0)
    started = time.perf_counter()
    docs, skipped = require_documents(paths, exclude=[index_dir])
    store = IndexStore(index_dir, encoder.model_id, encoder.dim, factory, rebuild=rebuild)
    plan = plan_update(store, docs, chunker_config or index_config(chunker, context_chunks))
    timings["load"] = time.perf_counter() - started
    commits = chunks_added = 0
    for batch in plan.batches(commit_every):
        mark = time.perf_counter()
        chunked = chunk_documents(batch.to_embed, chunker)
        timings["chunk"] += (now := time.perf_counter()) - mark
        vectors = embed_documents(chunked, encoder, context_chunks, show_progress=show_progress)
        timings["embed"] += (mark := time.perf_counter()) - now
        apply_update(store, batch, chunked, vectors)
        timings["commit"] += time.perf_counter() - mark
        commits, chunks_added = commits + 1, chunks_added + len(vectors)
    timings["total"] = time.perf_counter() - started
    return IndexSummary(str(index_dir), store.version, len(plan.new), len(plan.changed), len(plan.deleted),
                        len(plan.unchanged), chunks_added, store.ntotal, commits, tuple(skipped), timings,
                        relocated=len(plan.relocated))


def search_texts(store: IndexStore, encoder: Encoder, queries: Sequence[str], k: int,
                 hybrid_weight: float | None = None, distinct: bool = True) -> list[list[Hit]]:
    """Top-``k`` hits for each query text; empty queries and a model other than the index's are errors.

    Searches with ``retrieval.search.SearchEngine`` (memoised per index version):
    ``hybrid_weight`` (0..1, the weight on dense scores) fuses dense and BM25 scores, the
    retrieval of the evaluated default; None is the FAISS ranking alone. ``distinct``: ``k`` hits
    with different texts, identical ones collapsed into the best-ranked
    (``retrieval.postprocess.distinct_hits``), searching deeper until ``k`` are found.
    """
    from retrieval.search import check_weight, engine_for

    if isinstance(queries, str):
        queries = [queries]
    if not queries:
        raise InputError("no query given; pass a question, e.g. ragpress query 'what is X?'")
    for number, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise InputError(f"query {number} is empty; pass a non-empty question")
    check_model(store, encoder.model_id)
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}; e.g. k=5")
    if hybrid_weight is not None:
        check_weight(hybrid_weight)
    engine = engine_for(store)
    return engine.search(list(queries), encoder.encode(list(queries)), k, hybrid_weight, distinct)


def index_model(store: IndexStore) -> str:
    """The name to load the index's embedding model by: its recorded id without the weights hash."""
    return store.model_id.rsplit("@", 1)[0]


def check_model(store: IndexStore, model_id: str) -> None:
    """The index owns its model: querying it with another one is an ``InputError`` naming both."""
    if model_id != store.model_id:
        raise InputError(f"the index was built with {store.model_id} but the queries are embedded with {model_id}; "
                         "use the index's model (the default), or re-index with --rebuild")

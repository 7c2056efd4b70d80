"""LangChain-core interfaces over a ragpress index: ``Embeddings`` and ``VectorStore``.

The retriever and the document compressor drive the answer pipeline and live beside it
(``pipeline.langchain_adapters``).

LangChain is optional: this module imports ``langchain_core`` at the top, and nothing else in
``retrieval`` imports this module. ``retrieval.live_index.LiveIndex`` (plain Python) is the read side
the adapters share: every search uses the newest committed version of an index directory, so
a long-lived process keeps answering while ``ragpress index`` (or another process) commits.

Mapping to ragpress:
- a LangChain text is one ragpress document holding one chunk (the whole text): LangChain users
  split texts themselves (text splitters) before ``add_texts``; the LangChain id is the doc id.
- LangChain metadata (any JSON) lives in ``langchain_metadata.json`` next to the versions, keyed
  by doc id and content hash, written before the commit that needs it and pruned after, so a
  reader of either version always finds it. Chunks indexed by ``ragpress index`` carry their
  provenance (source, doc_id, chunk_id, start, end) as metadata instead.
- scores are cosine similarities (vectors are L2-normalised on the way in), relevance ``(1+s)/2``.
- ``filter``: a dict of metadata equalities (``{"source": "a.txt"}``), anything else raises;
  ``max_marginal_relevance_search`` (``as_retriever(search_type="mmr")``) re-ranks the
  ``fetch_k`` nearest with langchain-core's ``maximal_marginal_relevance``.
- every search goes through ``retrieval.search.SearchEngine`` of the newest version.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from filestore import atomic_write_text
from retrieval.base import Chunk, Document, Encoder, Hit
from retrieval.errors import InputError
from retrieval.index_store import IndexStore
from retrieval.indexing import index_model
from retrieval.live_index import LiveIndex
from retrieval.search import engine_for

METADATA_FILE = "langchain_metadata.json"


def content_hash(text: str, metadata: dict[str, Any]) -> str:
    """Hash of a LangChain document: text and metadata, so a metadata-only change is a change."""
    return hashlib.sha256(json.dumps([text, metadata], sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def normalised(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """L2-normalised float32 rows (inner product = cosine); zero rows stay zero."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"the embeddings returned shape {array.shape}, expected [n, dim]")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.where(norms > 0, norms, 1.0))


class RagpressEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over the ragpress encoder (default: the packaged all-MiniLM-L6-v2)."""

    def __init__(self, model: str | None = None, encoder: Encoder | None = None) -> None:
        self.model = model
        self._encoder = encoder

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded on first use."""
        if self._encoder is None:
            from retrieval.encoder import load_encoder  # loads the model on first use only

            self._encoder = load_encoder(self.model)
        return self._encoder

    @property
    def model_id(self) -> str:
        """The id (name and weights hash) of the embedding model."""
        return self.encoder.model_id

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""
        return self.encoder.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        return self.encoder.encode([text])[0].tolist()


def _embedding_model_id(embedding: Embeddings) -> str:
    """What an index records as its model: the ragpress model id, or the Embeddings class."""
    model_id = getattr(embedding, "model_id", None)
    if isinstance(model_id, str):
        return model_id
    return f"langchain:{type(embedding).__module__}.{type(embedding).__qualname__}"


def check_filter(filter: Any) -> None:
    """A metadata filter is None or a dict of plain equalities; anything else is refused, never ignored."""
    if filter is None:
        return
    if not isinstance(filter, dict):
        raise ValueError(f"filter must be a dict of metadata equalities, e.g. {{'source': 'a.txt'}}; got {type(filter).__name__}")
    for key, value in filter.items():
        if str(key).startswith("$") or isinstance(value, dict):
            raise ValueError(f"filter {{{key!r}: {value!r}}} is an operator; only metadata equalities are supported, e.g. {{'source': 'a.txt'}}")


def matches(metadata: dict[str, Any], filter: dict[str, Any] | None) -> bool:
    """Whether ``metadata`` equals ``filter`` on every key of it (no filter: everything matches)."""
    return filter is None or all(key in metadata and metadata[key] == value for key, value in filter.items())


class RagpressVectorStore(VectorStore):
    """A LangChain ``VectorStore`` persisted as a ragpress index directory (atomic, versioned commits).

    ``RagpressVectorStore("idx")`` serves an index built by ``ragpress index`` (with its model);
    ``add_texts``/``delete`` commit a new version each call. Keep LangChain-managed documents in
    their own directory: ``ragpress index`` deletes documents that are not in its folder.
    """

    def __init__(self, index_dir: str | Path, embedding: Embeddings | None = None, *, model_id: str | None = None,
                 factory: str = "Flat") -> None:
        self.index_dir = Path(index_dir)
        self.live = LiveIndex(self.index_dir)
        if embedding is None:  # the index owns its model: embed with the one it was built with
            snapshot = self.live.snapshot()
            embedding = RagpressEmbeddings(index_model(snapshot) if snapshot is not None else None)
        self._embedding = embedding
        self._model_id = model_id
        self.factory = factory
        self._write_lock = threading.Lock()
        self._metadata_cache: tuple[Any, dict[str, dict[str, Any]]] = (None, {})  # read-only: never mutate
        self._version_metadata: tuple[Any, dict[str, dict[str, Any]]] = (None, {})  # the same, per committed version

    @property
    def embeddings(self) -> Embeddings:
        """The embedding model of the store."""
        return self._embedding

    @property
    def model_id(self) -> str:
        """The id of the embedding model the vectors come from."""
        return self._model_id or _embedding_model_id(self._embedding)

    # ----------------------------------------------------------------- write
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        """Embed and commit ``texts`` (one version); an existing id is replaced. Returns the ids."""
        texts = list(texts)
        metadatas = [dict(m or {}) for m in metadatas] if metadatas is not None else [{} for _ in texts]
        ids = [str(i) if i is not None else uuid.uuid4().hex for i in ids] if ids is not None else [uuid.uuid4().hex for _ in texts]
        if not len(texts) == len(metadatas) == len(ids):
            raise ValueError(f"got {len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids; give one of each per text")
        if not texts:
            return []
        for number, metadata in enumerate(metadatas):
            try:
                json.dumps(metadata)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metadata of text {number} is not JSON-serialisable ({exc}); keep metadata to JSON types") from None
        vectors = normalised(self._embedding.embed_documents(texts))
        with self._write_lock:
            store = self._writer(vectors.shape[1])
            hashes = [content_hash(t, m) for t, m in zip(texts, metadatas)]
            self._write_metadata(store, add=dict(zip(ids, zip(hashes, metadatas))))
            for doc_id, text, metadata, digest, vector in zip(ids, texts, metadatas, hashes, vectors):
                document = Document(doc_id, str(metadata.get("source", doc_id)), text, digest)
                store.add_document(document, [Chunk(text, 0, len(text), len(text.split()))], vector[None, :])
            store.commit()
            self._write_metadata(store)
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Remove the documents ``ids`` (unknown ids are ignored) in one commit."""
        if ids is None:
            raise ValueError("delete() needs the ids to remove; to drop everything, delete the index directory")
        with self._write_lock:
            if not IndexStore.exists(self.index_dir):
                return True
            store = IndexStore.open(self.index_dir, mmap=False)
            self._check_model(store)
            present = [i for i in dict.fromkeys(map(str, ids)) if i in store.documents]
            for doc_id in present:
                store.remove_document(doc_id)
            if present:
                store.commit()
                self._write_metadata(store)
        return True

    def _writer(self, dim: int) -> IndexStore:
        store = IndexStore(self.index_dir, self.model_id, dim, self.factory, mmap=False)
        self._check_model(store)
        return store

    def _check_model(self, store: IndexStore) -> None:
        if store.model_id != self.model_id:
            raise InputError(f"the index {self.index_dir} was built with {store.model_id}, but this store embeds with "
                             f"{self.model_id}; pass the index's embeddings or use another index directory")

    def _write_metadata(self, store: IndexStore, add: dict[str, tuple[str, dict]] | None = None) -> None:
        """Before a commit: add entries, keep old ones; after it (``add`` None): keep only live documents."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        entries = {d: dict(by_hash) for d, by_hash in self._read_metadata().items()}  # the cached one stays as read
        if add is not None:
            for doc_id, (digest, metadata) in add.items():
                entries.setdefault(doc_id, {})[digest] = metadata
        else:
            live = {doc_id: record.content_hash for doc_id, record in store.documents.items()}
            entries = {d: {h: m for h, m in by_hash.items() if h == live.get(d)} for d, by_hash in entries.items() if d in live}
        atomic_write_text(self.index_dir / METADATA_FILE, json.dumps(entries, ensure_ascii=False), durable=True)

    # ------------------------------------------------------------------ read
    def _read_metadata(self) -> dict[str, dict[str, Any]]:
        """The LangChain metadata file, parsed once per change of the file; callers must not mutate it."""
        path = self.index_dir / METADATA_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached_key, cached = self._metadata_cache
        if key != cached_key:
            cached = json.loads(path.read_text(encoding="utf-8"))
            self._metadata_cache = (key, cached)
        return cached

    def _to_document(self, store: IndexStore, chunk_id: int, doc_id: str, source: str, start: int, end: int,
                     text: str, metadata_entries: dict[str, dict[str, Any]]) -> LCDocument:
        record = store.documents[doc_id]
        metadata = metadata_entries.get(doc_id, {}).get(record.content_hash)
        if metadata is None:  # indexed by `ragpress index`: provenance instead
            metadata = {"source": source, "doc_id": doc_id, "chunk_id": chunk_id, "start": start, "end": end}
        return LCDocument(page_content=text, metadata=dict(metadata), id=doc_id)

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
                                               **kwargs: Any) -> list[tuple[LCDocument, float]]:
        """Top-``k`` documents for a query vector with their cosine similarity, best first; ``filter``:
        only documents whose metadata equals every ``key: value`` of the dict."""
        check_filter(filter)
        store = self.searchable()
        found = self._nearest(store, embedding, k, filter) if store is not None else []
        return [(document, hit.score) for hit, document in found]

    def _nearest(self, store: IndexStore, embedding: list[float], k: int, filter: dict[str, Any] | None) -> list[tuple[Hit, LCDocument]]:
        """The ``k`` nearest hits passing ``filter`` with their documents, searching deeper while short."""
        vector, depth = normalised([embedding]), k
        while True:
            hits = engine_for(store).search([""], vector, depth, None, distinct=False)[0]
            kept = [(h, d) for h, d in zip(hits, self.documents_of(store, hits)) if matches(d.metadata, filter)]
            if len(kept) >= k or len(hits) < depth or depth >= store.ntotal:
                return kept[:k]
            depth *= 4

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict[str, Any] | None = None,
                                                **kwargs: Any) -> list[LCDocument]:
        """``k`` of the ``fetch_k`` nearest documents (passing ``filter``), chosen by maximal marginal
        relevance (langchain-core's): ``lambda_mult`` 1 is pure similarity, 0 pure diversity."""
        check_filter(filter)
        store = self.searchable()
        if store is None:
            return []
        fetched = self._nearest(store, embedding, max(fetch_k, k), filter)
        if not fetched:
            return []
        vectors = engine_for(store).vectors_of([hit.chunk_id for hit, _ in fetched])
        chosen = maximal_marginal_relevance(normalised([embedding])[0], vectors.tolist(), lambda_mult, k)
        return [fetched[i][1] for i in chosen]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      **kwargs: Any) -> list[LCDocument]:
        """``max_marginal_relevance_search_by_vector`` of the embedded ``query``."""
        return self.max_marginal_relevance_search_by_vector(self._embedding.embed_query(query), k, fetch_k, lambda_mult, **kwargs)

    def searchable(self) -> IndexStore | None:
        """The newest committed version, checked against this store's model; None while it holds nothing."""
        store = self.live.snapshot()
        if store is None or store.ntotal == 0:
            return None
        self._check_model(store)
        return store

    def _metadata_of(self, store: IndexStore) -> dict[str, dict[str, Any]]:
        """The metadata entries for a committed version, read once per version: the file holds every
        entry of a version from before its commit until the next commit prunes it."""
        version, entries = self._version_metadata
        if version != (store.directory, store.version):
            entries = self._read_metadata()
            self._version_metadata = ((store.directory, store.version), entries)
        return entries

    def documents_of(self, store: IndexStore, hits: Sequence[Hit]) -> list[LCDocument]:
        """LangChain documents of ``hits`` of ``store``; collapsed copies under ``ragpress_copies``."""
        entries = self._metadata_of(store)
        documents = []
        for h in hits:
            document = self._to_document(store, h.chunk_id, h.doc_id, h.source, h.start, h.end, h.text, entries)
            if h.copies:
                document.metadata["ragpress_copies"] = [{"source": s, "start": a, "end": b} for s, a, b in h.copies]
            documents.append(document)
        return documents

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[LCDocument, float]]:
        """The ``k`` nearest documents to ``query`` with their cosine scores."""
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[LCDocument]:
        """The ``k`` nearest documents to ``embedding``."""
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[LCDocument]:
        """The ``k`` nearest documents to ``query``."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda similarity: (1.0 + similarity) / 2.0  # cosine in [-1, 1] -> [0, 1]

    def get_by_ids(self, ids: Sequence[str], /) -> list[LCDocument]:
        """The stored documents (one per chunk) of the ``ids`` that exist, in the order asked."""
        store = self.live.snapshot()
        if store is None:
            return []
        chunks = {c.id: c for c in store.chunks()}
        entries = self._read_metadata()
        found = []
        for doc_id in dict.fromkeys(map(str, ids)):
            record = store.documents.get(doc_id)
            for chunk_id in record.chunk_ids if record is not None else ():
                c = chunks[chunk_id]
                found.append(self._to_document(store, c.id, c.doc_id, c.source, c.start, c.end, c.text, entries))
        return found

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, index_dir: str | Path | None = None,
                   **kwargs: Any) -> RagpressVectorStore:
        """A store in ``index_dir`` (required: the index is persistent) holding ``texts``."""
        if index_dir is None:
            raise ValueError("RagpressVectorStore.from_texts needs index_dir=... (where the index is written)")
        store = cls(index_dir, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

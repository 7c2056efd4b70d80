"""The probe's only contact with retrieval: build (cached) the clean index, plant passages in a
copy of an index, and rank questions against an index with the project's search entry point.

``rank`` is the single function every measurement goes through, so the probe attacks exactly what
``ragpress query`` serves. BM25 mode is the hybrid scorer with weight 0 on dense scores: min-max
scaling keeps the BM25 order, so it is plain BM25 ranking through the same code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from eval.base import EvalConfig
from eval.poison.base import RETRIEVAL_MODES
from retrieval.base import Document, Encoder, Hit
from retrieval.config import BEST_HYBRID_WEIGHT
from retrieval.index_store import IndexStore
from retrieval.indexing import (
    IndexPlan,
    apply_update,
    chunk_documents,
    embed_documents,
    index_config,
    index_paths,
    search_texts,
)

PLANTED_PREFIX = "planted/"
MODE_WEIGHTS: dict[str, float | None] = {"dense": None, "bm25": 0.0, "hybrid": BEST_HYBRID_WEIGHT}


def rank(index_dir: str | Path, questions: Sequence[str], mode: str, k: int, encoder: Encoder) -> list[list[Hit]]:
    """Top ``k`` distinct hits per question from the index in ``index_dir`` under ``mode``."""
    if mode not in MODE_WEIGHTS:
        raise ValueError(f"unknown retrieval mode '{mode}'; valid modes: {', '.join(RETRIEVAL_MODES)}")
    return search_texts(IndexStore.open(index_dir), encoder, list(questions), k, MODE_WEIGHTS[mode], distinct=True)


def index_vectors(index_dir: str | Path) -> tuple[list[int], list[str], np.ndarray, list[str]]:
    """Chunk ids, texts, stored vectors and document ids of the current version of an index."""
    store = IndexStore.open(index_dir)
    records = store.chunks()
    ids = [record.id for record in records]
    return ids, [record.text for record in records], store.vectors_of(ids), [record.doc_id for record in records]


def cache_root() -> Path:
    """``$RAGPRESS_CACHE/poison-indexes`` (default ``~/.cache/ragpress``)."""
    return Path(os.environ.get("RAGPRESS_CACHE", Path.home() / ".cache" / "ragpress")) / "poison-indexes"


def chunker_of(chunking: EvalConfig):
    """The library chunker of an evaluation configuration's chunking (``eval.runner``'s factory)."""
    from eval.runner import default_chunker_factory

    return default_chunker_factory(chunking)


def clean_index(corpora: Mapping[str, str], chunking: EvalConfig, encoder: Encoder, root: Path | None = None) -> Path:
    """The index of ``corpora`` (corpus id -> text; document ``<id>.txt``), built once and reused:
    its directory name hashes the texts, the chunking and the model, so any change builds a new one."""
    chunker = chunker_of(chunking)
    key = {
        "corpora": {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in sorted(corpora.items())},
        "index": index_config(chunker, chunking.context_chunks),
        "model": encoder.model_id,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    target = (root or cache_root()) / digest
    if IndexStore.exists(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{digest}-", dir=target.parent) as scratch:
        files = Path(scratch) / "corpora"
        files.mkdir()
        for name, text in corpora.items():
            (files / f"{name}.txt").write_text(text, encoding="utf-8")
        building = Path(scratch) / "index"
        index_paths([files], building, chunker, encoder, context_chunks=chunking.context_chunks)
        try:
            os.replace(building, target)  # a finished index appears at once or not at all
        except OSError:
            if not IndexStore.exists(target):  # anything but losing a race with another builder
                raise
    return target


def corpus_of(hit: Hit) -> str:
    """The corpus id of a hit (its document id without the ``.txt`` the clean index gives it)."""
    return hit.doc_id.removesuffix(".txt")


def planted_document(name: str, text: str) -> Document:
    """A planted passage as a document of its own (so no neighbour context mixes into it)."""
    doc_id = f"{PLANTED_PREFIX}{name}.txt"
    return Document(doc_id, doc_id, text, hashlib.sha256(text.encode("utf-8")).hexdigest())


@contextmanager
def planted_copy(index_dir: str | Path, passages: Mapping[str, str], chunking: EvalConfig, encoder: Encoder) -> Iterator[Path]:
    """A temporary copy of ``index_dir`` with ``passages`` (name -> text) added through the
    incremental indexing API; ``index_dir`` itself is only read. The copy is deleted on exit."""
    with tempfile.TemporaryDirectory(prefix="ragpress-poison-") as scratch:
        copy = Path(scratch) / "index"
        shutil.copytree(index_dir, copy)
        store = IndexStore.open(copy)
        docs = tuple(planted_document(name, text) for name, text in passages.items())
        chunked = chunk_documents(docs, chunker_of(chunking))
        vectors = embed_documents(chunked, encoder, chunking.context_chunks)
        apply_update(store, IndexPlan(docs, (), (), (), store.chunker_config), chunked, vectors)
        yield copy


def is_planted(hit: Hit) -> bool:
    """Whether a hit comes from a planted document."""
    return hit.doc_id.startswith(PLANTED_PREFIX)

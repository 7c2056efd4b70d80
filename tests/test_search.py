"""The search engine against brute force: numpy cosines + rank_bm25's Okapi BM25, min-max fused.

Exact (chunk ids and order) for Flat with a full pool and with a pool far smaller than the
index (the bound check must grow it); recall@k >= 0.95 for the approximate factories. The
saved BM25 files survive a SIGKILL during commit; LangChain's filter and MMR via its own API.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from support import BagOfWordsEncoder

from retrieval.base import Chunk, Document
from retrieval.errors import IndexCorruptedError
from retrieval.index_store import IndexStore
from retrieval.lexical import BM25Index, lexical_tokens
from retrieval.search import SearchEngine

REPO = Path(__file__).resolve().parents[1]
WORDS = ("river stone garden lamp violin harbor pepper engine cloud ladder copper meadow signal canvas thunder "
         "marble orbit velvet lantern glacier falcon quartz willow ember").split()
QUERIES = ["river stone lamp", "engine cloud copper copper", "violin meadow thunder", "orbit glacier velvet",
           "falcon", "quartz willow ember lantern", "the unknown words only", "marble marble signal canvas"]


def corpus(n_docs: int = 60, chunks_per_doc: int = 12, seed: int = 0) -> list[tuple[Document, list[Chunk]]]:
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        pieces = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(chunks_per_doc)]
        if d % 7 == 0:
            pieces[0] = pieces[1]  # exact copies, for the distinct-texts rule
        text, chunks, start = "", [], 0
        for piece in pieces:
            chunks.append(Chunk(piece, start, start + len(piece), len(piece.split())))
            text += piece + "\n"
            start += len(piece) + 1
        docs.append((Document(f"doc{d:03d}", f"doc{d:03d}.txt", text, str(d)), chunks))
    return docs


def build(directory: Path, factory: str, docs, encoder) -> IndexStore:
    store = IndexStore(directory, encoder.model_id, encoder.dim, factory)
    for document, chunks in docs:
        store.add_document(document, chunks, encoder.encode([c.text for c in chunks]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Flat fallback would make the approximate test vacuous
        store.commit()
    return IndexStore.open(directory)


def reference(store: IndexStore, encoder, query: str, weight: float) -> list[int]:
    """Chunk ids, best first: float64 cosines over every chunk, rank_bm25 BM25, min-max fused, stable sort."""
    from rank_bm25 import BM25Okapi

    records = store.chunks()
    vectors = encoder.encode([r.text for r in records]).astype(np.float64)
    dense = vectors @ encoder.encode([query])[0].astype(np.float64)
    lexical = np.asarray(BM25Okapi([lexical_tokens(r.text) or ["\0"] for r in records]).get_scores(lexical_tokens(query)))

    def scale(x: np.ndarray) -> np.ndarray:
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)

    fused = weight * scale(dense) + (1 - weight) * scale(lexical)
    return [records[i].id for i in np.argsort(-fused, kind="stable")]


@pytest.fixture(scope="module")
def docs():
    return corpus()


@pytest.mark.parametrize(("pool", "full_scan"), [(1000, False), (3, False), (3, True)])
@pytest.mark.parametrize("weight", [0.8, 0.5, 1.0, 0.0])
def test_flat_equals_brute_force_exactly(tmp_path, docs, pool, full_scan, weight, monkeypatch) -> None:
    """Both exact paths: the candidate pool (grown while the bound check fails) and, for small
    indexes, every chunk ranked at once."""
    monkeypatch.setattr("retrieval.search.FULL_SCAN_CHUNKS", 10**9 if full_scan else 0)
    encoder = BagOfWordsEncoder()
    store = build(tmp_path / "idx", "Flat", docs, encoder)
    engine = SearchEngine(store, pool=pool)
    k = 10
    got = engine.search(QUERIES, encoder.encode(QUERIES), k, weight, distinct=False)
    for query, hits in zip(QUERIES, got):
        assert [h.chunk_id for h in hits] == reference(store, encoder, query, weight)[:k], query


@pytest.mark.parametrize("factory", ["HNSW32", "IVF8,Flat", "IVF8,PQ8"])
def test_approximate_factories_recall_at_k(tmp_path, docs, factory) -> None:
    encoder = BagOfWordsEncoder()
    store = build(tmp_path / "idx", factory, docs, encoder)
    assert store.effective_factory == factory
    assert store.scores_are_exact() == ("PQ" not in factory)  # FAISS's own scores serve as cosines where exact
    engine, k = SearchEngine(store), 10
    got = engine.search(QUERIES, encoder.encode(QUERIES), k, 0.8, distinct=False)
    # A chunk that is both a dense and a lexical candidate is returned once.
    assert all(len({h.chunk_id for h in hits}) == len(hits) == k for hits in got)
    found = sum(len({h.chunk_id for h in hits} & set(reference(store, encoder, q, 0.8)[:k])) for q, hits in zip(QUERIES, got))
    assert found / (k * len(QUERIES)) >= 0.95


def test_distinct_hits_are_the_first_distinct_texts_of_the_reference(tmp_path, docs) -> None:
    encoder = BagOfWordsEncoder()
    store = build(tmp_path / "idx", "Flat", docs, encoder)
    texts = {r.id: r.text for r in store.chunks()}
    got = SearchEngine(store, pool=5).search(QUERIES, encoder.encode(QUERIES), 6, 0.8, distinct=True)
    for query, hits in zip(QUERIES, got):
        expected = list(dict.fromkeys(texts[i] for i in reference(store, encoder, query, 0.8)))[:6]
        assert [h.text for h in hits] == expected


def test_saved_bm25_equals_rank_bm25_and_is_checksummed(tmp_path, docs) -> None:
    from rank_bm25 import BM25Okapi

    encoder = BagOfWordsEncoder()
    store = build(tmp_path / "idx", "Flat", docs, encoder)
    saved = store.lexical_index()
    assert isinstance(saved._data.base, np.memmap) or isinstance(saved._data, np.memmap)  # mapped, not loaded
    okapi = BM25Okapi([lexical_tokens(r.text) or ["\0"] for r in store.chunks()])
    for query in QUERIES:
        np.testing.assert_allclose(saved.scores(query), okapi.get_scores(lexical_tokens(query)), rtol=1e-12, atol=1e-12)
    data = tmp_path / "idx" / f"v{store.version:06d}" / "bm25" / "data.csc.index.npy"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF  # same size, other content: only the checksum can tell
    data.write_bytes(bytes(blob))
    with pytest.raises(IndexCorruptedError, match="data.csc.index.npy"):
        IndexStore.open(tmp_path / "idx")


def test_incremental_bm25_equals_a_fresh_build_and_tokenises_only_added_texts(tmp_path, docs, monkeypatch) -> None:
    import retrieval.lexical as lexical

    encoder = BagOfWordsEncoder()
    store = build(tmp_path / "idx", "Flat", docs[:40], encoder)
    tokenised: list[int] = []
    original = lexical.TermCounts.of.__func__

    def counting(cls, texts, vocab=None):
        tokenised.append(len(texts))
        return original(cls, texts, vocab)

    monkeypatch.setattr(lexical.TermCounts, "of", classmethod(counting))
    for document, _ in docs[:40:5]:  # removals change every idf and the mean length
        store.remove_document(document.doc_id)
    added = docs[40:46]
    for document, chunks in added:
        store.add_document(document, chunks, encoder.encode([c.text for c in chunks]))
    store.commit()
    assert tokenised == [sum(len(chunks) for _, chunks in added)]  # only the added chunks, once
    store = IndexStore.open(tmp_path / "idx")
    saved, fresh = store.lexical_index(), BM25Index([r.text for r in store.chunks()])
    assert saved.size == len(store.chunks())
    for query in [*QUERIES, "river river river", " ".join(WORDS)]:
        np.testing.assert_array_equal(saved.scores(query), fresh.scores(query))  # exact: same numbers
    tokenised.clear()
    store.remove_document(added[0][0].doc_id)  # a commit that only removes tokenises nothing
    store.commit()
    assert tokenised == [0]
    saved, fresh = IndexStore.open(tmp_path / "idx").lexical_index(), BM25Index([r.text for r in store.chunks()])
    for query in QUERIES:
        np.testing.assert_array_equal(saved.scores(query), fresh.scores(query))


def test_bounded_lexical_lookups_agree_with_full_scores(docs) -> None:
    texts = [c.text for _, chunks in docs for c in chunks]
    index = BM25Index(texts)
    rows = np.arange(0, len(texts), 7)
    for query in [*QUERIES, "river river stone"]:
        full = index.scores(query)
        np.testing.assert_allclose(index.scores_of(query, rows), full[rows], rtol=1e-12, atol=1e-12)
        found, lacking = index.candidates(query, 2, 3)
        frequency = {w: sum(w in lexical_tokens(t) for t in texts) for w in set(lexical_tokens(query)) & set(WORDS)}
        third = sorted(frequency.values())[2] if len(frequency) > 2 else float("inf")
        surely_rarest = [w for w, df in frequency.items() if df < third]  # among the 2 rarest whatever the ties
        holders = [i for i, t in enumerate(texts) if set(frequency) & set(lexical_tokens(t))]
        assert set(found.tolist()) <= set(holders)  # texts holding a query word only
        for word in surely_rarest:  # each such word's 3 texts of highest contribution are in (ties: lower text first)
            single = index.scores(word)
            best = sorted(np.flatnonzero(single > 0).tolist(), key=lambda i: (-single[i], i))[:3]
            assert set(best) <= set(found.tolist()), (query, word)
        if lacking:  # "surely": then some text holds no query word, so the minimum score is 0
            assert full.min() == 0.0


@pytest.mark.parametrize("factory", ["HNSW32", "IVF8,Flat", "IVF8,PQ8"])
def test_compiled_bounded_search_ranks_as_the_numpy_path(tmp_path, docs, factory) -> None:
    """The compiled bounded search (built with the package here) against the NumPy path it stands
    for: the same chunks in the same order and the same scores up to summation order, for every
    weight and with FAISS's own scores (HNSW, IVF-Flat) or recomputed cosines (PQ)."""
    encoder = BagOfWordsEncoder()
    engine = SearchEngine(build(tmp_path / "idx", factory, docs, encoder))
    assert engine._compiled is not None, "retrieval._hybrid_kernel was not built: pip install -e . needs a C compiler"
    queries = [*QUERIES, "river river river stone", " ".join(WORDS), ""]
    vectors = encoder.encode(queries)
    for weight in (0.8, 0.5, 1.0, 0.0):
        for depth in (1, 10, 200):
            compiled = engine.hybrid(queries, vectors, depth, weight)
            compiled_index, engine._compiled = engine._compiled, None
            reference = engine.hybrid(queries, vectors, depth, weight)
            engine._compiled = compiled_index
            for query, got, expected in zip(queries, compiled, reference):
                assert [h.chunk_id for h in got] == [h.chunk_id for h in expected], (weight, depth, query)
                # the sampled dense floor is a float32 product in both, summed in another order
                np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], rtol=0, atol=1e-6)


def test_compiled_bounded_search_refuses_arrays_that_do_not_fit(tmp_path, docs) -> None:
    """A damaged saved index is an error, never a read outside the arrays."""
    from retrieval import _hybrid_kernel

    encoder = BagOfWordsEncoder()
    engine = SearchEngine(build(tmp_path / "idx", "HNSW32", docs, encoder))
    arrays = list(engine.compiled_arrays())
    vector = encoder.encode(["river stone"])[0].astype(np.float32)
    scores, found = engine.store.search_ids(vector[None, :], 8)
    columns = engine._lexical.query_columns("river stone")

    def search(index, query=vector, hits=found[0], terms=columns, depth=5) -> list:
        return _hybrid_kernel.bounded_search(index, scores[0], hits, terms, query, 0.8, 4, 4, depth)

    assert [p for p, _ in search(_hybrid_kernel.prepare(tuple(arrays)))] == [h.chunk_id for h in engine.hybrid(
        ["river stone"], vector[None, :], 5, 0.8)[0]]  # chunk ids are record positions in this index
    assert search(_hybrid_kernel.prepare(tuple(arrays)), depth=0) == []
    with pytest.raises(TypeError):
        search(_hybrid_kernel.prepare(tuple(arrays)), terms=[*columns, "stone"])
    heads = arrays[-1].copy()
    heads[:] = len(engine.records)  # every head names a text past the last one
    with pytest.raises(ValueError, match="outside its own arrays"):
        search(_hybrid_kernel.prepare((*arrays[:-1], heads)))
    with pytest.raises(ValueError, match="outside its own arrays"):
        search(_hybrid_kernel.prepare(tuple(arrays)), hits=np.full(8, len(engine.records), dtype=np.int64))
    with pytest.raises(ValueError, match="do not fit together"):
        _hybrid_kernel.prepare((*arrays[:6], arrays[6][:-1], *arrays[7:]))  # one length part short
    with pytest.raises(ValueError, match="do not fit the index"):
        search(_hybrid_kernel.prepare(tuple(arrays)), query=vector.astype(np.float64))


def test_compiled_bounded_search_is_thread_safe(tmp_path, docs) -> None:
    from concurrent.futures import ThreadPoolExecutor

    encoder = BagOfWordsEncoder()
    engine = SearchEngine(build(tmp_path / "idx", "HNSW32", docs, encoder))
    vectors = encoder.encode(QUERIES)
    alone = [[h.chunk_id for h in hits] for hits in engine.hybrid(QUERIES, vectors, 10, 0.8)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: [h.chunk_id for h in engine.hybrid([QUERIES[i % 8]], vectors[i % 8:i % 8 + 1],
                                                                               10, 0.8)[0]], range(400)))
    assert together == [alone[i % 8] for i in range(400)]


@pytest.mark.slow
def test_bm25_files_survive_sigkill_during_commit(tmp_path) -> None:
    index_dir = tmp_path / "idx"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    torn = 0
    for attempt, delay in enumerate((0.05, 0.2, 0.45)):
        child = subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers_commit_loop.py"), str(index_dir)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            start = IndexStore.open(index_dir).version if attempt else 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and child.poll() is None:
                current = index_dir / "CURRENT"
                if current.is_file() and int(current.read_text().strip()[1:]) >= start + 2:
                    break
                time.sleep(0.01)
            assert child.poll() is None, f"the committer ended before it could be killed: {child.communicate()[1][-2000:]!r}"
            time.sleep(delay)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        torn += any(p.name.startswith(".tmp-") for p in index_dir.iterdir())
        store = IndexStore.open(index_dir, verify=True)  # every listed file, BM25 ones included, checksummed
        texts = [r.text for r in store.chunks()]
        fresh = BM25Index(texts)
        for query in QUERIES:
            np.testing.assert_array_equal(store.lexical_index().scores(query), fresh.scores(query))
    assert torn >= 1, "no kill landed inside a commit: the test showed nothing"


def test_langchain_filter_and_mmr_through_its_api(tmp_path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
    from support import WordsEmbedding

    from retrieval.langchain_adapters import RagpressVectorStore

    embedding = WordsEmbedding()
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(60)]
    metadatas = [{"topic": "a" if i % 3 == 0 else "b", "n": i} for i in range(len(texts))]
    store = RagpressVectorStore(tmp_path / "lc", embedding)
    store.add_texts(texts, metadatas, ids=[f"t{i}" for i in range(len(texts))])
    matrix = np.asarray(embedding.embed_documents(texts))
    query = "river stone lamp violin"
    q = np.asarray(embedding.embed_query(query))
    order = sorted(range(len(texts)), key=lambda i: (-(matrix[i] @ q), i))

    got = store.similarity_search(query, k=5, filter={"topic": "a"})
    expected = [i for i in order if metadatas[i]["topic"] == "a"][:5]
    assert [d.metadata["n"] for d in got] == expected
    assert all(d.metadata["topic"] == "a" for d in got)
    assert [d.metadata["n"] for d in store.similarity_search(query, k=5, filter={"topic": "a", "n": expected[2]})] == [expected[2]]
    with pytest.raises(ValueError, match="equalities"):
        store.similarity_search(query, k=5, filter={"n": {"$gt": 3}})
    with pytest.raises(ValueError, match="dict"):
        store.similarity_search(query, k=5, filter=lambda m: True)

    retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 4, "fetch_k": 12, "lambda_mult": 0.3})
    fetched = order[:12]
    chosen = maximal_marginal_relevance(q, matrix[fetched].tolist(), 0.3, 4)
    assert [d.metadata["n"] for d in retriever.invoke(query)] == [fetched[i] for i in chosen]
    assert [d.metadata["n"] for d in retriever.invoke(query)] != order[:4], "MMR equal to plain top 4: the test shows nothing"

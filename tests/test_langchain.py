"""The LangChain adapters against brute force, hand-computed spans and LangChain's own behaviour.

LangChain is optional: the module skips without ``langchain_core``; the ``langchain-tests``
standard suites run when that package is installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document as LCDocument  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402

from compression.base import Budget, CompressionResult, KeptSpan  # noqa: E402
from pipeline.langchain_adapters import (  # noqa: E402
    EVALUATED_HYBRID_WEIGHT,
    RagpressDocumentCompressor,
    RagpressRetriever,
    documents_from_result,
)
from retrieval.errors import InputError  # noqa: E402
from retrieval.index_store import IndexStore, current_version  # noqa: E402
from retrieval.indexing import index_paths  # noqa: E402
from retrieval.langchain_adapters import LiveIndex, RagpressEmbeddings, RagpressVectorStore  # noqa: E402

DIM = 32
WORDS = ("faiss index vector search chunk token model query prefect flow dask worker cluster budget "
         "compress rate span recall precision python module string list dict").split()


class HashedWords(Embeddings):
    """A fast deterministic bag-of-words embedding (hashed into DIM buckets), with a model id."""

    model_id = "test:hashed-words"
    dim = DIM

    def _one(self, text: str) -> np.ndarray:
        vector = np.zeros(DIM, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        norm = np.linalg.norm(vector)
        return vector / norm if norm else vector

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t).tolist() for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text).tolist()

    # the retrieval.base.Encoder protocol, so the same model can build an index with index_paths
    def encode(self, texts, *, show_progress: bool = False) -> np.ndarray:
        return np.stack([self._one(t) for t in texts]).astype(np.float32) if texts else np.zeros((0, DIM), np.float32)


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


def _brute_force(embedding: HashedWords, texts: list[str], query: str, k: int) -> list[tuple[int, float]]:
    matrix = np.stack([embedding._one(t) for t in texts])
    scores = matrix @ embedding._one(query)
    order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:k]
    return [(i, float(scores[i])) for i in order]


@pytest.fixture
def filled(tmp_path: Path) -> tuple[RagpressVectorStore, list[str]]:
    texts = _texts(40)
    store = RagpressVectorStore(tmp_path / "lc", HashedWords())
    store.add_texts(texts, [{"n": i} for i in range(len(texts))], ids=[f"t{i}" for i in range(len(texts))])
    return store, texts


def test_similarity_search_with_score_matches_brute_force(filled) -> None:
    store, texts = filled
    embedding = store.embeddings
    for query in ("faiss vector search", "dask worker cluster", "python string"):
        got = store.similarity_search_with_score(query, k=5)
        everything = _brute_force(embedding, texts, query, len(texts))
        assert [round(s, 5) for _, s in got] == [round(s, 5) for _, s in everything[:5]]
        # ties may come in any order (even across the k-th place): each hit must have its score
        for doc, score in got:
            assert doc.page_content in {texts[i] for i, s in everything if abs(s - score) < 1e-5}
            assert doc.metadata == {"n": int(doc.id[1:])} and texts[int(doc.id[1:])] == doc.page_content


def test_add_replace_delete_get_by_ids_and_reopen(filled) -> None:
    store, texts = filled
    store.add_texts(["budget compress rate"], [{"n": "new"}], ids=["t3"])  # replace by id
    store.delete(["t5", "missing"])
    assert store.get_by_ids(["t3", "t5", "t7"]) == [
        LCDocument(page_content="budget compress rate", metadata={"n": "new"}, id="t3"),
        LCDocument(page_content=texts[7], metadata={"n": 7}, id="t7"),
    ]
    reopened = RagpressVectorStore(store.index_dir, HashedWords())  # a new process would see the same
    assert reopened.get_by_ids(["t3"]) == store.get_by_ids(["t3"])
    assert len(IndexStore.open(store.index_dir).documents) == len(texts) - 1
    assert reopened.similarity_search("budget compress rate", k=1)[0].id == "t3"


def test_relevance_scores_and_as_retriever(filled) -> None:
    store, texts = filled
    with_scores = store.similarity_search_with_score("faiss index", k=3)
    relevance = store.similarity_search_with_relevance_scores("faiss index", k=3)
    assert [d for d, _ in relevance] == [d for d, _ in with_scores]
    assert [r for _, r in relevance] == pytest.approx([(1 + s) / 2 for _, s in with_scores])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert retriever.invoke("faiss index") == [d for d, _ in with_scores[:2]]


def test_retriever_invoke_batch_ainvoke_equal_the_store(filled) -> None:
    store, _ = filled
    retriever = RagpressRetriever(index_dir=str(store.index_dir), k=3, embeddings=HashedWords(), hybrid_weight=None,
                                  distinct=False)
    questions = ["faiss vector search", "dask worker", "compress rate span"]
    expected = [store.similarity_search(q, k=3) for q in questions]
    assert [retriever.invoke(q) for q in questions] == expected
    assert retriever.batch(questions) == expected
    assert asyncio.run(retriever.ainvoke(questions[0])) == expected[0]
    assert retriever.invoke(questions[0], k=1) == expected[0][:1]
    chain = retriever | RunnableLambda(lambda docs: [d.id for d in docs])
    assert chain.invoke(questions[1]) == [d.id for d in expected[1]]


def test_retriever_default_retrieves_as_ragpress_query(tmp_path: Path) -> None:
    """Hybrid dense + BM25 at the evaluated weight, k different texts, copies named in the metadata."""
    from retrieval.config import BEST_HYBRID_WEIGHT
    from retrieval.indexing import search_texts

    assert EVALUATED_HYBRID_WEIGHT == BEST_HYBRID_WEIGHT
    texts = _texts(30, seed=5) + ["faiss vector search index"] * 2  # the same text under two ids
    store = RagpressVectorStore(tmp_path / "dup", HashedWords())
    store.add_texts(texts, ids=[f"t{i}" for i in range(len(texts))])
    retriever = RagpressRetriever(index_dir=str(store.index_dir), k=4, embeddings=HashedWords())
    snapshot = IndexStore.open(store.index_dir)
    for question in ("faiss vector search", "dask worker cluster", "compress rate span"):
        expected = search_texts(snapshot, HashedWords(), [question], 4, hybrid_weight=BEST_HYBRID_WEIGHT)[0]
        dense = search_texts(snapshot, HashedWords(), [question], 4, hybrid_weight=None)[0]
        assert [h.doc_id for h in dense] != [h.doc_id for h in expected]  # so a dense fallback would fail here
        got = retriever.invoke(question)
        assert [(d.id, d.page_content) for d in got] == [(h.doc_id, h.text) for h in expected]
        assert len({d.page_content for d in got}) == 4
        for document, hit in zip(got, expected):
            copies = [{"source": s, "start": a, "end": b} for s, a, b in hit.copies]
            assert document.metadata.get("ragpress_copies", []) == copies
    first = retriever.invoke("faiss vector search")[0]
    assert first.page_content == "faiss vector search index"
    assert first.metadata["ragpress_copies"] == [{"source": "t31", "start": 0, "end": len(first.page_content)}]
    plain = RagpressRetriever(index_dir=str(store.index_dir), k=2, embeddings=HashedWords(), hybrid_weight=None,
                              distinct=False).invoke("faiss vector search")
    assert [d.page_content for d in plain] == ["faiss vector search index"] * 2  # what distinct collapses


def test_store_over_a_ragpress_index_gives_provenance(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number, text in enumerate(_texts(6, seed=3)):
        (corpus / f"doc{number}.txt").write_text((text + ". ") * 30)
    from retrieval.chunkers import make_chunker

    index_paths([corpus], tmp_path / "idx", make_chunker("token", chunk_size=32), HashedWords())
    store = RagpressVectorStore(tmp_path / "idx", HashedWords())
    docs = store.similarity_search("faiss vector", k=4)
    assert len(docs) == 4
    for doc in docs:
        source = Path(doc.metadata["source"]).read_text()
        assert source[doc.metadata["start"]:doc.metadata["end"]] == doc.page_content
        assert doc.id == doc.metadata["doc_id"]
    records = [c for c in IndexStore.open(tmp_path / "idx").chunks() if c.doc_id == "doc0.txt"]
    whole = store.get_by_ids(["doc0.txt", "nope"])
    assert [(d.page_content, d.metadata["chunk_id"], d.metadata["start"]) for d in whole] == \
        [(c.text, c.id, c.start) for c in records] and len(records) > 1


def test_live_index_picks_up_new_versions(filled) -> None:
    store, texts = filled
    live = LiveIndex(store.index_dir)
    query = np.asarray([store.embeddings.embed_query("budget")], dtype=np.float32)
    version, _ = live.search(query, 1)
    store.add_texts(["budget budget budget"], ids=["b"])
    new_version, hits = live.search(query, 1)
    assert new_version == version + 1 and hits[0][0].doc_id == "b"


def test_live_index_reads_current_only_after_a_commit_replaced_it(filled, monkeypatch) -> None:
    import retrieval.live_index as live_index

    store, _ = filled
    live, reads = LiveIndex(store.index_dir), []
    monkeypatch.setattr(live_index, "current_version", lambda directory: reads.append(1) or current_version(directory))
    first, opened = live.snapshot(), len(reads)
    assert live.snapshot() is first and len(reads) == opened  # CURRENT unchanged: its stat suffices
    store.add_texts(["budget budget budget"], ids=["b"])
    assert live.snapshot().version == first.version + 1 and len(reads) > opened


def test_clear_errors(tmp_path: Path, filled) -> None:
    store, _ = filled
    with pytest.raises(InputError, match="was built with test:hashed-words"):
        RagpressVectorStore(store.index_dir, DeterministicFakeEmbedding(size=DIM)).similarity_search("x", k=1)
    with pytest.raises(ValueError, match="needs the ids"):
        store.delete()
    with pytest.raises(ValueError, match="index_dir"):
        RagpressVectorStore.from_texts(["a"], HashedWords())
    with pytest.raises(ValueError, match="JSON"):
        store.add_texts(["a"], [{"x": object()}])
    with pytest.raises(ValueError, match="2 texts, 1 metadatas"):
        store.add_texts(["a", "b"], [{}])
    with pytest.raises(ValueError, match="unknown compression method 'nope'; valid:"):
        RagpressDocumentCompressor(method="nope")
    with pytest.raises(ValueError, match="rate must be in"):
        RagpressDocumentCompressor(rate=1.5)


class KeepWordsWith:
    """A compressor keeping the words containing a letter: spans computable by hand."""

    name = "keep-letter"

    def __init__(self, letter: str) -> None:
        self.letter = letter

    def compress(self, contexts, budget: Budget, question=None) -> CompressionResult:
        kept = tuple(KeptSpan(i, m.start(), m.end()) for i, text in enumerate(contexts)
                     for m in re.finditer(r"\S+\s*", text) if self.letter in m.group())
        text = "\n\n".join("".join(contexts[s.context][s.start:s.end] for s in kept if s.context == i)
                           for i in range(len(contexts)))
        return CompressionResult(text, kept, 10, 4, self.name)


def test_document_compressor_hand_computed_spans() -> None:
    docs = [LCDocument(page_content="alpha beta gamma", metadata={"m": 1}, id="a"),
            LCDocument(page_content="no letter here", id="b"),
            LCDocument(page_content="zeta eta", metadata={"m": 3}, id="c")]
    compressor = RagpressDocumentCompressor(compressor=KeepWordsWith("t"))
    out = compressor.compress_documents(docs, "q")
    assert out == [
        LCDocument(page_content="beta ", metadata={"m": 1, "kept_spans": [[6, 11]], "compression_method": "keep-letter"}, id="a"),
        LCDocument(page_content="letter ", metadata={"kept_spans": [[3, 10]], "compression_method": "keep-letter"}, id="b"),
        LCDocument(page_content="zeta eta", metadata={"m": 3, "kept_spans": [[0, 5], [5, 8]], "compression_method": "keep-letter"}, id="c"),
    ]
    assert asyncio.run(compressor.acompress_documents(docs, "q")) == out
    assert compressor.compress_documents([], "q") == []
    far = LCDocument(page_content="one two. three four. five!")
    assert documents_from_result([far], CompressionResult("", (KeptSpan(0, 0, 8), KeptSpan(0, 21, 26)), 6, 3, "x"))[0] \
        .page_content == "one two. five!"  # a space where the dropped text had one
    word = LCDocument(page_content="foobar")
    assert documents_from_result([word], CompressionResult("", (KeptSpan(0, 0, 3), KeptSpan(0, 4, 6)), 2, 1, "x"))[0] \
        .page_content == "fooar"  # no whitespace dropped inside a word: nothing inserted
    assert RagpressDocumentCompressor(compressor=KeepWordsWith("q")).compress_documents(docs, "q") == []


def test_retriever_and_compressor_run_the_pipelines_stages(filled, monkeypatch) -> None:
    """The LangChain retriever and document compressor are the pipeline's retrieve and compress stages."""
    from pipeline.pipeline import Pipeline

    store, _ = filled
    stages: list[tuple[str, object]] = []
    retrieve_many, compress = Pipeline.retrieve_many, Pipeline.compress

    def spy_retrieve(self, snapshot, questions, vectors, **options):
        stages.append(("retrieve", self.config.retrieval))
        return retrieve_many(self, snapshot, questions, vectors, **options)

    def spy_compress(self, question, contexts, budget=None):
        stages.append(("compress", budget))
        return compress(self, question, contexts, budget)

    monkeypatch.setattr(Pipeline, "retrieve_many", spy_retrieve)
    monkeypatch.setattr(Pipeline, "compress", spy_compress)
    docs = RagpressRetriever(index_dir=str(store.index_dir), k=3, embeddings=HashedWords(), hybrid_weight=0.5).invoke("dask worker")
    out = RagpressDocumentCompressor(compressor=KeepWordsWith("a"), target_tokens=4).compress_documents(docs, "dask worker")
    settings = stages[0][1]
    assert [name for name, _ in stages] == ["retrieve", "compress"] and len(docs) == 3 and out
    assert (settings.k, settings.retrieval, settings.hybrid_weight, settings.distinct) == (3, "hybrid", 0.5, True)
    assert stages[1][1] == Budget(target_tokens=4)


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("method", ["extractive", "llmlingua", "extractive+llmlingua"])
def test_document_compressor_equals_the_compressor(method: str) -> None:
    """Each registered compressor through the adapter gives exactly what it gives directly."""
    from compression.registry import make_compressor

    contexts = ["FAISS is a library for efficient similarity search of dense vectors. It was written at Meta. "
                "It supports GPUs.",
                "Prefect schedules Python flows. A deployment runs a flow on a cron schedule for a folder."]
    question = "What does FAISS do?"
    direct = make_compressor(method).compress(contexts, Budget(rate=0.5), question=question)
    docs = [LCDocument(page_content=c, id=str(i)) for i, c in enumerate(contexts)]
    out = RagpressDocumentCompressor(method=method, rate=0.5).compress_documents(docs, question)
    assert out == documents_from_result(docs, direct)
    # the same text as the compressor's, up to whitespace at the joins between kept pieces
    assert "".join("".join(d.page_content for d in out).split()) == "".join(direct.text.split())


# ------------------------------------------------- langchain-tests standard suites
try:
    from langchain_tests.integration_tests import (
        EmbeddingsIntegrationTests,
        RetrieversIntegrationTests,
        VectorStoreIntegrationTests,
    )
except ImportError:  # optional: pip install langchain-tests
    EmbeddingsIntegrationTests = RetrieversIntegrationTests = VectorStoreIntegrationTests = None



def _mark_async(cls):
    """pytest-asyncio (strict mode) runs only marked coroutines: mark the suite's async tests."""
    for name in dir(cls):
        if name.startswith("test_") and inspect.iscoroutinefunction(getattr(cls, name)):
            setattr(cls, name, pytest.mark.asyncio(getattr(cls, name)))
    return cls


if VectorStoreIntegrationTests is not None:

    @_mark_async
    class TestStandardVectorStore(VectorStoreIntegrationTests):
        @pytest.fixture
        def vectorstore(self, tmp_path: Path):
            return RagpressVectorStore(tmp_path / "std", self.get_embeddings())

    @_mark_async
    class TestStandardRetriever(RetrieversIntegrationTests):
        index_dir: str = ""

        @pytest.fixture(autouse=True)
        def _index(self, tmp_path: Path) -> None:
            store = RagpressVectorStore(tmp_path / "std", HashedWords())
            store.add_texts(_texts(8, seed=1))
            type(self).index_dir = str(tmp_path / "std")

        @property
        def retriever_constructor(self):
            return RagpressRetriever

        @property
        def retriever_constructor_params(self) -> dict:
            return {"index_dir": self.index_dir, "embeddings": HashedWords()}

        @property
        def retriever_query_example(self) -> str:
            return "faiss vector search"

    @_mark_async
    @pytest.mark.slow  # loads the real MiniLM (~25 s on a loaded machine)
    @pytest.mark.real_model
    class TestStandardEmbeddings(EmbeddingsIntegrationTests):
        @property
        def embeddings_class(self):
            return RagpressEmbeddings

"""LangChain-core interfaces over the answer pipeline: a ``BaseRetriever`` (the retrieve stage) and a
``BaseDocumentCompressor`` (the compress stage).

LangChain is optional: this module imports ``langchain_core`` at the top, and nothing else in
``pipeline`` imports it. Both run the stages of ``pipeline.Pipeline``, so a LangChain chain
retrieves and compresses as ``ragpress ask`` does. Chain them with LangChain's
``ContextualCompressionRetriever``, or call them one after the other::

    docs = RagpressRetriever(index_dir=".ragpress/index", k=5).invoke(question)
    short = RagpressDocumentCompressor(method="extractive", rate=0.33).compress_documents(docs, question)

The vector store the retriever reads (``RagpressVectorStore``) and the embeddings stay in
``retrieval.langchain_adapters``: they are the index, not a stage of the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun, Callbacks
from langchain_core.documents import BaseDocumentCompressor
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from compression.base import Budget, CompressionResult, Compressor
from compression.config import CompressionConfig
from pipeline.config import PipelineConfig
from pipeline.pipeline import Pipeline
from retrieval.config import BEST_HYBRID_WEIGHT, RetrievalConfig
from retrieval.langchain_adapters import RagpressVectorStore, normalised

# The evaluated default of ``ragpress query`` (``retrieval.config.BEST_RETRIEVAL``).
EVALUATED_HYBRID_WEIGHT = BEST_HYBRID_WEIGHT


def retrieval_settings(k: int, hybrid_weight: float | None, distinct: bool) -> RetrievalConfig:
    """The retrieve stage's settings of a retriever: ``hybrid_weight`` None is plain dense search."""
    if hybrid_weight is None:
        return RetrievalConfig(k=k, retrieval="dense", distinct=distinct)
    return RetrievalConfig(k=k, retrieval="hybrid", hybrid_weight=hybrid_weight, distinct=distinct)


class RagpressRetriever(BaseRetriever):
    """A LangChain retriever over a ragpress index directory: ``invoke(question)`` -> top-``k`` documents.

    Runs the pipeline's retrieve stage over the newest committed version of the index. By default
    it retrieves as ``ragpress query`` does: hybrid dense + BM25 scoring (``hybrid_weight`` on the
    dense side; ``None``: plain dense search) and ``k`` different texts (``distinct``): a chunk
    whose text repeats a better-ranked one word for word is collapsed into it, its
    ``{"source", "start", "end"}`` listed under the metadata key ``ragpress_copies`` (a namespaced
    key, so it never overwrites metadata of yours). ``hybrid_weight=None, distinct=False`` equals
    ``store.similarity_search``. ``k`` can be overridden per call: ``retriever.invoke(question, k=3)``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index_dir: str
    k: int = 4
    embeddings: Embeddings | None = None
    hybrid_weight: float | None = EVALUATED_HYBRID_WEIGHT
    distinct: bool = True
    _store: RagpressVectorStore | None = PrivateAttr(default=None)
    _pipeline: tuple[tuple[tuple[type, Any], ...], Pipeline] | None = PrivateAttr(default=None)

    @property
    def store(self) -> RagpressVectorStore:
        """The vector store over ``index_dir``, opened on first use."""
        if self._store is None:
            self._store = RagpressVectorStore(self.index_dir, self.embeddings)
        return self._store

    def pipeline(self) -> Pipeline:
        """The pipeline whose retrieve stage this retriever runs, built again (and its settings
        validated) whenever a field it depends on changed since the last call: LangChain lets
        fields change after construction."""
        settings = (self.k, self.hybrid_weight, self.distinct)
        typed = tuple((type(value), value) for value in settings)  # 1, 1.0 and True differ to validation
        if self._pipeline is None or self._pipeline[0] != typed:
            self._pipeline = (typed, Pipeline(PipelineConfig(retrieval=retrieval_settings(*settings))))
        return self._pipeline[1]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[LCDocument]:
        pipeline = self.pipeline()
        snapshot = self.store.searchable()
        if snapshot is None:
            return []
        vectors = normalised([self.store.embeddings.embed_query(query)])
        hits = pipeline.retrieve_many(snapshot, [query], vectors, k=k)[0]
        return self.store.documents_of(snapshot, hits)


def _join_pieces(text: str, kept: Sequence[tuple[int, int]]) -> str:
    """The kept pieces in order; a space joins two pieces only where the dropped text between
    them held whitespace and neither piece brings its own (so sentences do not run together)."""
    out: list[str] = []
    previous_end = None
    for start, end in kept:
        piece = text[start:end]
        if (out and previous_end is not None and start > previous_end and any(c.isspace() for c in text[previous_end:start])
                and not out[-1][-1:].isspace() and not piece[:1].isspace()):
            out.append(" ")
        out.append(piece)
        previous_end = end
    return "".join(out)


def documents_from_result(documents: Sequence[LCDocument], result: CompressionResult) -> list[LCDocument]:
    """One document per input that kept something, in the order the result kept them."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for span in result.kept:
        spans.setdefault(span.context, []).append((span.start, span.end))
    out = []
    for context, kept in spans.items():
        source = documents[context]
        text = _join_pieces(source.page_content, kept)
        metadata = {**source.metadata, "kept_spans": [list(s) for s in kept], "compression_method": result.method}
        out.append(LCDocument(page_content=text, metadata=metadata, id=source.id))
    return out


class RagpressDocumentCompressor(BaseDocumentCompressor):
    """Compress retrieved documents with the pipeline's compress stage under one budget for all of them.

    ``method`` is a name of ``compression.registry.COMPRESSORS`` (built lazily with ``options``),
    or pass a ready ``compressor``. Exactly one of ``rate`` and ``target_tokens`` sets the budget.
    Each input document becomes one context; each output document holds the text kept from one
    input (its kept spans in order, a space between pieces where whitespace was dropped), with the
    input's metadata plus ``kept_spans`` (``[[start, end], ...]`` into the input's text) and the
    ``compression_method``. Inputs with nothing kept are dropped; order follows the compressor's.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    method: str = "extractive"
    rate: float | None = 0.33
    target_tokens: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    compressor: Any = None
    _pipeline: Pipeline | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        """Check the budget and the method at construction (a target token count overrides the rate)."""
        if self.target_tokens is not None:
            self.rate = None
        Budget(rate=self.rate, target_tokens=self.target_tokens)
        if self.compressor is None:
            from compression.registry import compressor_target

            compressor_target(self.method)  # an unknown method is refused here, not at the first call

    def pipeline(self) -> Pipeline:
        """The pipeline whose compress stage this runs, its compressor built once."""
        if self._pipeline is None:
            # A ready compressor carries its own name; the stage only needs a compressing method.
            method = self.method if self.compressor is None else "extractive"
            config = PipelineConfig(compression=CompressionConfig(method=method))
            self._pipeline = Pipeline(config, compressor_factory=self._build)
        return self._pipeline

    def _build(self, method: str) -> Compressor:
        if self.compressor is not None:
            return self.compressor
        from compression.registry import make_compressor

        return make_compressor(method, **self.options)

    def compress_documents(self, documents: Sequence[LCDocument], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[LCDocument]:
        """The compressed documents: kept text, with the kept spans in each one's metadata."""
        documents = list(documents)
        if not documents:
            return []
        budget = Budget(rate=self.rate, target_tokens=self.target_tokens)
        result = self.pipeline().compress(query, [d.page_content for d in documents], budget)
        assert result is not None  # the method is a compressor, never "none"
        return documents_from_result(documents, result)

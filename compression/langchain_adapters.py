"""A LangChain ``BaseDocumentCompressor`` over any ragpress compressor.

LangChain is optional: this module imports ``langchain_core`` at the top, and nothing else in
``compression`` imports it. Use it in a ``ContextualCompressionRetriever``::

    RagpressDocumentCompressor(method="extractive", rate=0.33)

Each input document becomes one context; each output document holds the text kept from one
input (its kept spans in order, a space between pieces where whitespace was dropped), with the
input's metadata plus ``kept_spans`` (``[[start, end], ...]`` into the input's text) and the
``compression_method``. Inputs with nothing kept are dropped; order follows the compressor's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor
from langchain_core.documents import Document as LCDocument
from pydantic import ConfigDict, Field, PrivateAttr

from compression.base import Budget, CompressionResult, Compressor


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
    """Compress retrieved documents with a ragpress compressor under one budget for all of them.

    ``method`` is a name of ``compression.registry.COMPRESSORS`` (built lazily with ``options``),
    or pass a ready ``compressor``. Exactly one of ``rate`` and ``target_tokens`` sets the budget.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    method: str = "extractive"
    rate: float | None = 0.33
    target_tokens: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    compressor: Any = None
    _built: Compressor | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        """Check the budget when the compressor is built (a target token count overrides the rate)."""
        if self.target_tokens is not None:
            self.rate = None
        Budget(rate=self.rate, target_tokens=self.target_tokens)  # bad budgets fail at construction
        if self.compressor is None:
            from compression.registry import COMPRESSORS

            if self.method not in COMPRESSORS:
                raise ValueError(f"unknown compression method '{self.method}'; valid: {', '.join(sorted(COMPRESSORS))}")

    def _compressor(self) -> Compressor:
        if self.compressor is not None:
            return self.compressor
        if self._built is None:
            from compression.registry import make_compressor

            self._built = make_compressor(self.method, **self.options)
        return self._built

    def compress_documents(self, documents: Sequence[LCDocument], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[LCDocument]:
        """The compressed documents: kept text, with the kept spans in each one's metadata."""
        documents = list(documents)
        if not documents:
            return []
        budget = Budget(rate=self.rate, target_tokens=self.target_tokens)
        result = self._compressor().compress([d.page_content for d in documents], budget, question=query or None)
        return documents_from_result(documents, result)

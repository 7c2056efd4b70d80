"""The one answer chain: retrieve -> compress -> generate with chunk-cache reuse, from one config.

``Pipeline`` builds its compressor and generator in one place (``make_generator`` here is the
only way a generator, and the local LM's chunk-cache engine, is made) and exposes each stage as a
plain method, so ``flows/`` can wrap each in a task and ``eval/`` can cache and score each stage
without composing the chain again. ``ragpress ask``, ``query --compress``, ``pipeline``, the demo,
the evaluation and the LangChain adapters all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compression.base import Budget, CompressionResult, Compressor, KeptSpan
from generation.base import Answer, Generator
from pipeline.base import PipelineAnswer
from pipeline.config import PipelineConfig
from retrieval.base import Encoder, Hit

if TYPE_CHECKING:
    from retrieval.index_store import IndexStore

LOCAL_LM = {"backend": "local", "model": "smollm2"}


def kv_cache_dir(index: str | Path, cache_dir: str | Path | None) -> Path:
    """Chunk caches live next to the index unless another directory is given."""
    return Path(cache_dir) if cache_dir else Path(index) / "kv-cache"


def make_generator(llm: dict[str, Any] | None, kv_dir: str | Path | None) -> Generator:
    """The generator of ``llm`` (``generation.registry`` options, default the local SmolLM2); a local
    one keeps chunk caches in memory and in ``kv_dir``."""
    from generation.registry import generator_from_options

    return generator_from_options(dict(llm or LOCAL_LM), str(kv_dir) if kv_dir else None)


def make_compressor(method: str) -> Compressor:
    """The compressor registered as ``method``."""
    from compression.registry import make_compressor as from_registry

    return from_registry(method)


class Pipeline:
    """Retrieve, compress and generate under one ``PipelineConfig``; models load on first use.

    ``generator`` / ``compressor_factory`` replace the built ones (an evaluation shares one generator
    across configurations; tests pass stand-ins).
    """

    def __init__(self, config: PipelineConfig, *, llm: dict[str, Any] | None = None, kv_dir: str | Path | None = None,
                 generator: Generator | None = None, compressor_factory: Callable[[str], Compressor] | None = None) -> None:
        self.config = config
        self._llm, self._kv_dir = llm, kv_dir
        self._generator = generator
        self._compressor_factory = compressor_factory or make_compressor
        self._compressor: Compressor | None = None

    def generator(self) -> Generator:
        """The generator, built on first use (it loads its model when it first answers)."""
        if self._generator is None:
            self._generator = make_generator(self._llm, self._kv_dir)
        return self._generator

    def compressor(self) -> Compressor:
        """The configured compressor, built once."""
        if self._compressor is None:
            self._compressor = self._compressor_factory(self.config.compression.method)
        return self._compressor

    def preflight(self) -> None:
        """Refuse what the generator cannot serve (a reuse mode, a model) before any model loads."""
        self.generator().preflight(self.config.generation.reuse())

    # -- the stages ------------------------------------------------------------------------
    def retrieve(self, store: IndexStore, encoder: Encoder, question: str) -> list[Hit]:
        """The top-k hits of ``question`` in ``store`` (the one search engine, ``retrieval.search``)."""
        from retrieval.indexing import search_texts

        settings = self.config.retrieval
        return search_texts(store, encoder, [question], settings.fixed_k, settings.search_weight, settings.distinct)[0]

    def retrieve_many(self, store: IndexStore, questions: Sequence[str], vectors: np.ndarray, *, k: int | None = None,
                      fused_dense: bool = False) -> list[list[Hit]]:
        """The retrieve stage for a batch of already embedded ``questions`` (one engine call):
        ``vectors`` their query rows, ``k`` overrides the configured one. ``fused_dense``: dense
        retrieval ranks through the fused scores (weight 1), whose exact ties keep chunk order, as
        the evaluation has always ranked; otherwise dense is the FAISS ranking, as ``retrieve``."""
        from retrieval.search import engine_for

        settings = self.config.retrieval
        weight = 1.0 if fused_dense and settings.search_weight is None else settings.search_weight
        return engine_for(store).search(list(questions), vectors, settings.fixed_k if k is None else k, weight, settings.distinct)

    def compress(self, question: str, contexts: Sequence[str], budget: Budget | None = None) -> CompressionResult | None:
        """The configured compressor's output for ``contexts`` (under ``budget``, default the configured
        rate); None when nothing is compressed."""
        if self.config.compression.method == "none":
            return None
        budget = budget or Budget(rate=self.config.compression.rate)
        return self.compressor().compress(list(contexts), budget, question=question or None)

    def generate(self, question: str, contexts: Sequence[str], kept: Sequence[KeptSpan] | Sequence[tuple[int, int, int]] | None = None,
                 kv_mode: str | None = None) -> Answer:
        """Answer from ``contexts`` (only their ``kept`` spans when given); ``kv_mode`` overrides the
        configured reuse mode (a full-prefill reference uses ``none``)."""
        spans = None if kept is None else [span if isinstance(span, tuple) else (span.context, span.start, span.end) for span in kept]
        settings = self.config.generation
        return self.generator().answer(list(contexts), question, reuse=settings.reuse(kv_mode),
                                       max_new_tokens=settings.max_new_tokens, kept=spans)

    def run(self, store: IndexStore, encoder: Encoder, question: str) -> PipelineAnswer:
        """Every stage for one question."""
        hits = self.retrieve(store, encoder, question)
        contexts = [hit.text for hit in hits]
        compressed = self.compress(question, contexts)
        answer = self.generate(question, contexts, compressed.kept if compressed else None)
        return PipelineAnswer(question, tuple(hits), compressed, answer)

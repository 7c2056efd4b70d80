"""Any LangChain ``BaseChatModel`` passed in from Python as the generator.

The answer is streamed (``chat_model.stream``) so the time to first token is measured; token
counts come from the chunks' ``usage_metadata`` when the model reports it (None otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from generation.base import NO_REUSE, Answer, KeptSpans, ReuseOptions
from generation.messages import chat_messages


class LangChainGenerator:
    """Answers with ``chat_model`` (a ``langchain_core.language_models.BaseChatModel``)."""

    name = "langchain"

    def __init__(self, chat_model: Any, *, system: str | None = None) -> None:
        from langchain_core.language_models import BaseChatModel

        if not isinstance(chat_model, BaseChatModel):
            raise ValueError(f"the langchain generator needs a BaseChatModel, got {type(chat_model).__name__}")
        self.chat_model, self.system = chat_model, system

    def identity(self) -> dict[str, Any]:
        """The chat model's class and its identifying parameters (model name, temperature ...)."""
        params = self.chat_model._identifying_params
        return {"backend": self.name, "model": type(self.chat_model).__name__,
                "params": {key: str(value) for key, value in sorted(params.items())}}

    def preflight(self, reuse: ReuseOptions) -> None:
        """Chunk-cache reuse needs the model's KV in this process: refused for LangChain models."""
        if reuse.reuses:
            raise ValueError(f"chunk-cache reuse (--kv-reuse {reuse.mode}) is not available for a LangChain chat model; "
                             "use kv_reuse none")

    def answer(self, contexts: Sequence[str], question: str, *, reuse: ReuseOptions = NO_REUSE,
               max_new_tokens: int = 64, kept: KeptSpans | None = None) -> Answer:
        """Stream one answer; ``max_new_tokens`` is the model's own setting in LangChain and is not applied here."""
        self.preflight(reuse)
        messages = [(m["role"], m["content"]) for m in chat_messages(contexts, question, kept, self.system)]
        started = time.perf_counter()
        first: float | None = None
        merged: Any = None
        for chunk in self.chat_model.stream(messages):
            if first is None and chunk.content:
                first = time.perf_counter()
            merged = chunk if merged is None else merged + chunk
        total = time.perf_counter() - started
        usage = (getattr(merged, "usage_metadata", None) or {}) if merged is not None else {}
        text = str(merged.text) if merged is not None else ""  # langchain-core >= 1: .text is a str property
        return Answer(text=text.strip(), prompt_tokens=usage.get("input_tokens"),
                      completion_tokens=usage.get("output_tokens"), ttft_s=(first or time.perf_counter()) - started,
                      total_s=total, chunk_caches_reused=False, prefilled_tokens=usage.get("input_tokens"))

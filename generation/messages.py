"""The chat messages of a RAG question for back-ends that take text (HTTP, LangChain).

Same wording as the local prompt (``compression.kv.prompt``): the system text, then one
``Document:`` block per context (only its kept spans, re-joined, when a compressor ran), then the
question.
"""

from __future__ import annotations

from collections.abc import Sequence

from compression.base import KeptSpan
from compression.chain import rejoin
from generation.base import KeptSpans


def kept_texts(contexts: Sequence[str], kept: KeptSpans | None) -> list[str]:
    """The contexts as the model reads them: whole, or their kept spans re-joined (empty ones dropped)."""
    if kept is None:
        return list(contexts)
    return rejoin(contexts, [KeptSpan(*span) for span in kept])[0]


def chat_messages(contexts: Sequence[str], question: str, kept: KeptSpans | None = None,
                  system: str | None = None) -> list[dict[str, str]]:
    """OpenAI-style ``[{role, content}]`` messages: system text (default the local prompt's), then documents and question."""
    from compression.kv.prompt import DEFAULT_SYSTEM, document_block  # its package computes on tensors: imported on use

    system = DEFAULT_SYSTEM if system is None else system
    if not question.strip():
        raise ValueError("the question is empty; pass the text to answer")
    documents = "".join(document_block(text) for text in kept_texts(contexts, kept))
    return [{"role": "system", "content": system}, {"role": "user", "content": f"{documents}Question: {question.strip()}"}]

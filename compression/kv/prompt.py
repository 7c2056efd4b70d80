"""Splitting a RAG prompt into separately tokenised pieces so chunk tokens never depend on order.

Layout (chat template of the model, the user turn holding the documents then the question):
prefix = system turn + start of the user turn; one ``Document:\\n<text>\\n\\n`` block per chunk
(no rank numbers); suffix = ``Question: <q>`` + end of turn + assistant header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compression.kv.base import Prompt

DEFAULT_SYSTEM = "Answer the question using only the documents. Be brief."
_SENTINEL = "\x00RAGPRESS_USER_CONTENT\x00"


def document_block(text: str) -> str:
    """How one retrieved chunk appears in the prompt."""
    return f"Document:\n{text}\n\n"


def _template_halves(tokenizer: Any, system: str) -> tuple[str, str]:
    """Text before and after the user content in the model's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return f"{system}\n\n", "\nAnswer:"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, sep, after = rendered.partition(_SENTINEL)
    if not sep:
        raise ValueError("the tokenizer's chat template dropped the user message; pass a model with a standard chat template")
    return before, after


def _ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_prompt(tokenizer: Any, contexts: Sequence[str], question: str, system: str = DEFAULT_SYSTEM) -> Prompt:
    """The prompt pieces, each tokenised alone (the same ids serve the cache and the full prefill)."""
    if not question.strip():
        raise ValueError("the question is empty; pass the text to answer")
    before, after = _template_halves(tokenizer, system)
    return Prompt(
        prefix_ids=_ids(tokenizer, before),
        chunk_ids=tuple(_ids(tokenizer, document_block(text)) for text in contexts),
        suffix_ids=_ids(tokenizer, f"Question: {question.strip()}{after}"),
    )

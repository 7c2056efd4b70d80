"""The ``Generator`` protocol and its records.

A generator answers a question from retrieved contexts. ``kept`` spans (a compressor's output:
``(context index, start, end)`` character ranges) say which parts of the contexts the model reads;
``None`` means all of them. Only the local back-end can reuse chunk caches; the others read the
kept text as a plain prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from compression.kv.modes import DEFAULT_BLEND_SCORE, KV_REUSE_MODES

KeptSpans = Sequence[tuple[int, int, int]]


class GenerationError(RuntimeError):
    """A generator could not answer; the message is one line naming the cause and the fix."""


@dataclass(frozen=True)
class ReuseOptions:
    """How (and whether) chunk caches are reused: a ``--kv-reuse`` mode and its recovery settings."""

    mode: str = "none"
    blend_r: float = 0.15
    edge_tokens: int = 16
    blend_score: str = DEFAULT_BLEND_SCORE

    def __post_init__(self) -> None:
        if self.mode not in KV_REUSE_MODES:
            raise ValueError(f"unknown --kv-reuse mode '{self.mode}'; valid: {', '.join(KV_REUSE_MODES)}")

    @property
    def reuses(self) -> bool:
        """Whether chunk caches are reused at all."""
        return self.mode != "none"


NO_REUSE = ReuseOptions()


@dataclass(frozen=True)
class Answer:
    """One generated answer and what it cost.

    ``prompt_tokens``: tokens of the whole prompt the model read (for HTTP the server's
    ``usage.prompt_tokens``; None when the back-end reports no usage). ``context_tokens`` /
    ``retrieved_tokens``: tokens of the context part after / before compression, known only where
    the prompt is tokenised here (local). ``ttft_s``: request start to the first generated token;
    ``total_s``: request start to the end of the answer. ``prefilled_tokens`` / ``reused_tokens``:
    prompt tokens computed now vs taken from chunk caches (``chunk_caches_reused`` when any were).
    """

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_s: float
    total_s: float
    chunk_caches_reused: bool
    prefilled_tokens: int | None = None
    reused_tokens: int = 0
    context_tokens: int | None = None
    retrieved_tokens: int | None = None
    chunk_caches_computed: int = 0
    chunk_cache_compute_s: float = 0.0


class Generator(Protocol):
    """Answers questions from contexts."""

    name: str

    def identity(self) -> dict[str, Any]:
        """Everything that decides the answers (model, weights hash, dtype, endpoint), as JSON
        values, known without loading a model: part of every cache key of an answer."""
        ...

    def preflight(self, reuse: ReuseOptions) -> None:
        """Everything that can be refused before work starts, cheaply and without loading a model:
        ValueError (one line, naming the fix) if ``reuse`` or an option cannot be served, or a
        server does not serve the model."""
        ...

    def answer(self, contexts: Sequence[str], question: str, *, reuse: ReuseOptions = NO_REUSE,
               max_new_tokens: int = 64, kept: KeptSpans | None = None) -> Answer:
        """Answer ``question`` from ``contexts`` (only their ``kept`` spans when given), greedily."""
        ...

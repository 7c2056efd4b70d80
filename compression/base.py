"""Shared records and protocols of the compression stage.

A compressor takes one or more contexts (e.g. retrieved chunks) and returns a shorter text
plus the character spans of the original contexts it kept, so evaluation can score what
survived against reference spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Budget:
    """How much to keep: a rate of the input tokens, or an absolute token count.

    Exactly one of ``rate`` (0 < rate <= 1) and ``target_tokens`` (>= 0) is set.
    """

    rate: float | None = None
    target_tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.target_tokens is None):
            raise ValueError("Budget needs exactly one of rate= or target_tokens=")
        if self.rate is not None and not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}; e.g. --rate 0.33")
        if self.target_tokens is not None and self.target_tokens < 0:
            raise ValueError(f"target_tokens must be >= 0, got {self.target_tokens}")

    def tokens_for(self, n_input_tokens: int) -> int:
        """The number of tokens to keep out of ``n_input_tokens``."""
        if self.target_tokens is not None:
            return min(self.target_tokens, n_input_tokens)
        return round(self.rate * n_input_tokens)  # type: ignore[operator]


@dataclass(frozen=True)
class KeptSpan:
    """A kept character range ``[start, end)`` of context number ``context``."""

    context: int
    start: int
    end: int


@dataclass(frozen=True)
class CompressionResult:
    """The compressed text and the provenance of every kept piece."""

    text: str
    kept: tuple[KeptSpan, ...]
    original_tokens: int
    compressed_tokens: int
    method: str

    @property
    def rate(self) -> float:
        """compressed / original tokens; 1.0 for an empty input (nothing was removed)."""
        if self.original_tokens == 0:
            return 1.0
        return self.compressed_tokens / self.original_tokens


class Compressor(Protocol):
    """Compresses contexts under a budget, optionally conditioned on a question."""

    name: str

    def compress(
        self,
        contexts: Sequence[str],
        budget: Budget,
        question: str | None = None,
    ) -> CompressionResult:
        """Compress ``contexts`` to ``budget``; every kept piece is an exact span of its context."""
        ...

"""Shared records and protocols of the retrieval stage.

Every chunker, encoder and index in this package speaks these types; flows and the
other packages depend only on them, never on a concrete implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """A window of a source text. Invariant: ``source_text[start:end] == text``."""

    text: str
    start: int
    end: int
    n_tokens: int


@dataclass(frozen=True)
class Document:
    """A source text with a stable id and the hash of its content."""

    doc_id: str
    source: str
    text: str
    content_hash: str


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: where it comes from, its exact span, and its score.

    ``copies``: ``(source, start, end)`` of lower-ranked hits with exactly this text, collapsed
    into this one (``retrieval.postprocess.distinct_hits``); empty when nothing was collapsed.
    """

    doc_id: str
    source: str
    chunk_id: int
    start: int
    end: int
    score: float
    text: str
    copies: tuple[tuple[str, int, int], ...] = ()


class TokenCounter(Protocol):
    """Tokenises text into ids with character offsets into that text."""

    name: str

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids (no special tokens) and their ``(start, end)`` character offsets."""
        ...

    def count(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        ...


@runtime_checkable
class Chunker(Protocol):
    """Splits a text into chunks with exact character spans."""

    def chunk(self, text: str) -> list[Chunk]:
        """Chunks of ``text`` with exact character spans."""
        ...


class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """One L2-normalised float32 vector per text."""
        ...

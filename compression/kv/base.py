"""Records and protocols of chunk-cache KV reuse.

Tensors are laid out ``[layers, kv_heads, tokens, head_dim]`` (batch 1 dropped), keys post-RoPE
at the positions the record says. Everything that decides whether a cache may be reused lives in
``CacheKey``; a stored cache whose key differs from the expected one is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch


class CacheMismatch(ValueError):
    """A stored cache was computed under different settings; the message names the field."""


class CacheCorrupted(ValueError):
    """A stored cache file cannot be read or is inconsistent with its own header."""


@dataclass(frozen=True)
class CacheKey:
    """Everything a chunk's KV depends on. ``token_ids`` are the chunk's own tokens."""

    model_id: str
    weights_hash: str
    dtype: str
    tokenizer: str
    token_ids: tuple[int, ...]
    prefix_hash: str
    start: int
    rope: str

    def as_dict(self) -> dict[str, Any]:
        """The key's fields by name (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class PrefixKV:
    """The shared system prefix and its KV at positions ``0..len(token_ids)-1``."""

    token_ids: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor
    digest: str


@dataclass(frozen=True)
class ChunkKV:
    """One chunk's KV, computed right after the prefix (positions ``key.start..``)."""

    key: CacheKey
    keys: torch.Tensor
    values: torch.Tensor

    @property
    def n_tokens(self) -> int:
        """Tokens this cache covers."""
        return len(self.key.token_ids)

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value tensors."""
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


@dataclass(frozen=True)
class Prompt:
    """A prompt split into separately tokenised pieces: prefix, one block per chunk, the question turn.

    ``cut``: indices of chunks that compression cut tokens out of (``keep``). Every chunk's cache is
    computed right after the prefix, so a whole first chunk sits where its cache was computed and
    that cache is exact (``exact_tokens``); a cut one is not: its entries attended to dropped tokens.
    """

    prefix_ids: tuple[int, ...]
    chunk_ids: tuple[tuple[int, ...], ...]
    suffix_ids: tuple[int, ...]
    cut: frozenset[int] = frozenset()

    @property
    def context_ids(self) -> list[int]:
        """Token ids of every chunk, in prompt order."""
        return [t for ids in self.chunk_ids for t in ids]

    @property
    def all_ids(self) -> list[int]:
        """The whole prompt: prefix, chunks, question turn."""
        return [*self.prefix_ids, *self.context_ids, *self.suffix_ids]

    @property
    def exact_tokens(self) -> int:
        """How many leading context tokens have a reused cache equal to a full prefill's."""
        return len(self.chunk_ids[0]) if self.chunk_ids and 0 not in self.cut else 0

    def keep(self, positions: Sequence[Sequence[int]]) -> Prompt:
        """The prompt made of the kept tokens only (``positions[i]``: indices into chunk i); chunks
        that keep nothing are left out. This is what the LM reads from compressed context."""
        chunks: list[tuple[int, ...]] = []
        cut: set[int] = set()
        for index, (ids, keep) in enumerate(zip(self.chunk_ids, positions)):
            kept = tuple(ids[i] for i in keep)
            if kept:
                if index in self.cut or len(kept) < len(ids):
                    cut.add(len(chunks))
                chunks.append(kept)
        return Prompt(self.prefix_ids, tuple(chunks), self.suffix_ids, frozenset(cut))


@dataclass(frozen=True)
class Generation:
    """What one answer cost and produced."""

    text: str
    token_ids: tuple[int, ...]
    first_logits: torch.Tensor
    ttft_s: float
    prefilled_tokens: int
    reused_tokens: int
    mode: str


class KVStore(Protocol):
    """Where chunk caches live between questions."""

    def get(self, key: CacheKey) -> ChunkKV | None:
        """The cache stored under ``key``, or None."""
        ...

    def put(self, kv: ChunkKV) -> None:
        """Store ``kv`` under its key."""
        ...

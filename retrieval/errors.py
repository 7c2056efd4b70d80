"""Errors of the retrieval stage. Every message names the problem and the fix.

``InputError`` is a ``ValueError`` so callers that only know "bad input" can catch that;
the CLI turns any of these into a one-line error and exit code 2.
"""

from __future__ import annotations

from retrieval.models import EmbeddingModelUnavailable

__all__ = [
    "EmbeddingModelUnavailable",
    "EmptyIndexError",
    "IndexCorruptedError",
    "IndexMismatchError",
    "IndexStoreError",
    "InputError",
]


class InputError(ValueError):
    """A user-supplied file, folder or query cannot be used as given."""


class IndexStoreError(RuntimeError):
    """Base class of index-store problems."""


class IndexMismatchError(IndexStoreError, ValueError):
    """An existing index was built with another model, dimension or FAISS factory."""


class IndexCorruptedError(IndexStoreError):
    """A file of the index is missing, truncated or corrupted."""


class EmptyIndexError(IndexStoreError, ValueError):
    """A search was asked of an index that holds no chunks."""

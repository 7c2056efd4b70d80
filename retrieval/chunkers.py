"""The chunker registry: pick a chunker by name, and serialise chunks for the CLI."""

from __future__ import annotations

from collections.abc import Iterable

from retrieval.base import Chunk, Chunker, TokenCounter
from retrieval.chunk_recursive import RecursiveChunker
from retrieval.chunk_sentence import SentenceChunker
from retrieval.chunk_token import TokenChunker, check_sizes

CHUNKERS: dict[str, type] = {
    "token": TokenChunker,
    "recursive": RecursiveChunker,
    "sentence": SentenceChunker,
}


def make_chunker(
    name: str, chunk_size: int, overlap: int = 0, tokenizer: TokenCounter | None = None, **options: object
) -> Chunker:
    """A chunker by registry name; ``tokenizer`` defaults to the embedding model's.

    ``options`` go to the chunker (e.g. ``count_special_tokens=True`` for ``recursive``,
    ``splitter="rules"`` for ``sentence``).
    """
    cls = CHUNKERS.get(name)
    if cls is None:
        raise ValueError(f"unknown chunker '{name}'; valid chunkers: {', '.join(sorted(CHUNKERS))}")
    check_sizes(chunk_size, overlap)
    try:
        return cls(chunk_size, overlap, tokenizer, **options)
    except TypeError as exc:  # an option this chunker does not take
        raise ValueError(f"bad option for chunker '{name}': {exc}") from exc


def chunks_to_json(chunks: Iterable[Chunk]) -> list[dict[str, int]]:
    """``[{"start", "end", "n_tokens"}, ...]``: the spans, without repeating the text."""
    return [{"start": c.start, "end": c.end, "n_tokens": c.n_tokens} for c in chunks]

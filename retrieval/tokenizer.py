"""The token counter every chunker measures with: a Hugging Face ``tokenizer.json``.

Loaded once per model (memoised) through the ``tokenizers`` library, never through
``transformers``: it is the same Rust tokenizer the embedding model uses, without the weights.
Texts are encoded in blocks cut at whitespace so a very long file never becomes one giant
``Encoding``; offsets are shifted back so they are always character offsets into ``text``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from retrieval.models import DEFAULT_EMBEDDING_MODEL, resolve_embedding_model

# 20k characters per block: a 50 MB file never sits in memory as one Encoding (~100 bytes per
# token on the Rust side), and small encodings are cheaper per token: measured here, one encode of
# 2 MB took 1.35 s of CPU, 250k-character blocks 1.08 s, 20k-character blocks 0.77 s (5k: same).
# Blocks are encoded BLOCKS_PER_BATCH at a time with encode_batch, which the tokenizers library
# spreads over its thread pool when TOKENIZERS_PARALLELISM allows it (and runs serially if not).
DEFAULT_BLOCK_CHARS = 20_000
BLOCKS_PER_BATCH = 32
_SURROGATES = re.compile("[\ud800-\udfff]")


class HFTokenCounter:
    """A :class:`retrieval.base.TokenCounter` backed by a ``tokenizers.Tokenizer``.

    Special tokens ([CLS]/[SEP]) are never added; truncation and padding are off.
    """

    def __init__(self, tokenizer: Tokenizer, name: str, block_chars: int = DEFAULT_BLOCK_CHARS) -> None:
        if block_chars < 1_000:
            raise ValueError(f"block_chars must be >= 1000, got {block_chars}")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.backend = tokenizer
        self.name = name
        self.block_chars = block_chars

    def __repr__(self) -> str:
        return f"HFTokenCounter(name={self.name!r})"

    def encode_block(self, text: str) -> Encoding:
        """One ``Encoding`` of ``text`` (no special tokens); lone surrogates count as U+FFFD."""
        try:
            return self.backend.encode(text, add_special_tokens=False)
        except TypeError:
            # Rust strings cannot hold lone surrogates; U+FFFD has the same length in
            # characters, so every offset stays valid for the original text.
            if not _SURROGATES.search(text):
                raise
            return self.backend.encode(_SURROGATES.sub("\ufffd", text), add_special_tokens=False)

    def iter_blocks(self, text: str) -> Iterator[tuple[int, Encoding]]:
        """``(char_offset, encoding)`` per block; blocks are cut at whitespace, in order."""
        bounds = list(block_bounds(text, self.block_chars))
        if len(bounds) == 1:
            yield 0, self.encode_block(text)
            return
        for i in range(0, len(bounds), BLOCKS_PER_BATCH):
            group = bounds[i : i + BLOCKS_PER_BATCH]
            yield from zip((s for s, _ in group), self.encode_batch([text[s:e] for s, e in group]))

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        """``encode_block`` of several texts in one call (parallel if TOKENIZERS_PARALLELISM allows)."""
        try:
            return self.backend.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            return [self.encode_block(t) for t in texts]  # a lone surrogate somewhere

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and their character offsets (encoded block by block)."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for shift, enc in self.iter_blocks(text):
            ids.extend(enc.ids)
            offsets.extend(enc.offsets if shift == 0 else [(s + shift, e + shift) for s, e in enc.offsets])
        return ids, offsets

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        return sum(len(enc) for _, enc in self.iter_blocks(text))


def joins_previous(ch: str) -> bool:
    """True for a character that belongs to the one before it: combining marks, ZWJ, variation
    selectors (category M) and emoji skin-tone modifiers. Cuts never go right before one."""
    return unicodedata.category(ch)[0] == "M" or ch == "\u200d" or "\U0001f3fb" <= ch <= "\U0001f3ff"


def _last_punctuation(text: str, lo: int, hi: int) -> int:
    """Index of the last Unicode punctuation character in ``text[lo:hi]``, or -1."""
    for i in range(hi - 1, lo - 1, -1):
        if unicodedata.category(text[i])[0] == "P":
            return i
    return -1


def block_bounds(text: str, block_chars: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` ranges covering ``text``, each at most ``block_chars`` long.

    A cut is placed at the last space or newline in the second half of the block, which the
    tokenizer treats as a word boundary, so tokens are the same as for one whole encode. Without
    whitespace (e.g. Japanese) the cut goes before the last punctuation mark (also a word boundary
    for BERT); failing that (one enormous word) it is cut hard, but never before a combining mark.
    """
    n = len(text)
    start = 0
    while n - start > block_chars:
        limit = start + block_chars
        floor = start + block_chars // 2
        cut = max(text.rfind(" ", floor, limit), text.rfind("\n", floor, limit))
        if cut <= start:
            cut = _last_punctuation(text, floor, limit)
        if cut <= start:
            cut = limit
            while cut > floor and joins_previous(text[cut]):
                cut -= 1
        yield start, cut
        start = cut
    if start < n:
        yield start, n


@lru_cache(maxsize=8)
def _load(path: str, name: str) -> HFTokenCounter:
    return HFTokenCounter(Tokenizer.from_file(path), name)


def load_tokenizer(name_or_path: str | None = None) -> HFTokenCounter:
    """The memoised token counter of an embedding model (default all-MiniLM-L6-v2).

    ``name_or_path`` is a model name known to :func:`retrieval.models.resolve_embedding_model`,
    a model directory containing ``tokenizer.json``, or a ``tokenizer.json`` file.
    """
    name = name_or_path or DEFAULT_EMBEDDING_MODEL
    candidate = Path(name).expanduser()
    if candidate.is_file():
        path = candidate
    else:
        path = Path(resolve_embedding_model(name)) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"no tokenizer.json for '{name}' (looked at {path}); pass a model directory that "
            "contains tokenizer.json or the path of a tokenizer.json file"
        )
    return _load(str(path.resolve()), name)

"""``token`` chunker: fixed windows of ``chunk_size`` tokens, ``overlap`` tokens shared.

The text is encoded once (in blocks, see :mod:`retrieval.tokenizer`); windows are then laid over
the token sequence and only the tokens at window edges are looked at, so chunking costs little
more than the encode itself. A window edge that would fall inside a word split into several
word-pieces snaps back to the start of that word when that still makes progress: a chunk cut
between word-pieces would re-tokenize differently on its own. Windows that still start or end
inside a word (a word longer than the window) are re-counted and shrunk until they fit.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from tokenizers import Encoding
from tokenizers.pre_tokenizers import BertPreTokenizer

from retrieval.base import Chunk, TokenCounter
from retrieval.tokenizer import HFTokenCounter, joins_previous, load_tokenizer


def check_sizes(chunk_size: int, overlap: int) -> None:
    """Reject impossible budgets with the fix in the message."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}; e.g. --chunk-size 256")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 tokens, got {overlap}; use --overlap 0 for no overlap")
    if overlap >= chunk_size:
        raise ValueError(
            f"overlap ({overlap}) must be smaller than chunk_size ({chunk_size}); "
            f"e.g. --overlap {chunk_size // 4} with --chunk-size {chunk_size}"
        )


class _BlockView:
    """Random access to the tokens of a block-encoded text, loading blocks on demand.

    Blocks behind the current window are released, so memory stays ~ one block of Encodings.
    """

    def __init__(self, counter: HFTokenCounter, text: str) -> None:
        self._source = counter.iter_blocks(text)
        self._encs: list[Encoding | None] = []
        self._char0: list[int] = []
        self._tok0: list[int] = []
        self._released = 0
        self.loaded = 0
        self.done = False
        # BERT pre-tokenization splits words at whitespace/punctuation with a per-character
        # normaliser, so a span cut at word starts re-tokenizes to exactly its window's tokens.
        # Other pre-tokenizers (byte-level BPE, Metaspace, ...) make no such promise: re-count.
        self.exact_at_word_starts = isinstance(counter.backend.pre_tokenizer, BertPreTokenizer)

    def ensure(self, i: int) -> None:
        """Load blocks until token ``i`` exists or the text is exhausted."""
        while i >= self.loaded and not self.done:
            block = next(self._source, None)
            if block is None:
                self.done = True
                return
            self._char0.append(block[0])
            self._tok0.append(self.loaded)
            self._encs.append(block[1])
            self.loaded += len(block[1])

    def release(self, i: int) -> None:
        """Forget the blocks that end at or before token ``i``."""
        k = self._released
        while k < len(self._encs) - 1 and self._tok0[k + 1] <= i:
            self._encs[k] = None
            k += 1
        self._released = k

    def _locate(self, i: int) -> tuple[Encoding, int, int]:
        k = bisect_right(self._tok0, i) - 1
        enc = self._encs[k]
        assert enc is not None, "token of a released block"
        return enc, i - self._tok0[k], self._char0[k]

    def span(self, i: int) -> tuple[int, int]:
        enc, local, shift = self._locate(i)
        chars = enc.token_to_chars(local)
        assert chars is not None, "every token of an encoding without special tokens has characters"
        return chars[0] + shift, chars[1] + shift

    def word_start(self, i: int) -> bool:
        enc, local, _ = self._locate(i)
        return local == 0 or enc.token_to_word(local) != enc.token_to_word(local - 1)


@dataclass
class _ListView:
    """Tokens of any :class:`TokenCounter` (one ``encode_offsets`` call); word starts guessed."""

    text: str
    offsets: list[tuple[int, int]]
    exact_at_word_starts: bool = False  # unknown tokenizer: every window is re-counted

    def __post_init__(self) -> None:
        self.loaded = len(self.offsets)
        self.done = True

    def ensure(self, i: int) -> None:
        pass

    def release(self, i: int) -> None:
        pass

    def span(self, i: int) -> tuple[int, int]:
        return self.offsets[i]

    def word_start(self, i: int) -> bool:
        start, prev_end = self.offsets[i][0], self.offsets[i - 1][1] if i else 0
        if i == 0 or start == 0:
            return True
        return start > prev_end or not (self.text[start - 1].isalnum() and self.text[start].isalnum())


class TokenChunker:
    """Fixed token windows over one encode of the whole text."""

    name = "token"

    def __init__(self, chunk_size: int, overlap: int = 0, tokenizer: TokenCounter | None = None) -> None:
        check_sizes(chunk_size, overlap)
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()

    def chunk(self, text: str) -> list[Chunk]:
        """Chunks of ``text``: windows of ``chunk_size`` tokens."""
        return self.chunk_span(text, 0, len(text))

    def chunk_span(self, text: str, lo: int, hi: int) -> list[Chunk]:
        """Chunks of ``text[lo:hi]`` with spans into ``text`` (used by the other chunkers)."""
        piece = text[lo:hi]
        if isinstance(self.tokenizer, HFTokenCounter):
            view: _BlockView | _ListView = _BlockView(self.tokenizer, piece)
        else:
            view = _ListView(piece, self.tokenizer.encode_offsets(piece)[1])
        chunks: list[Chunk] = []
        start = 0
        view.ensure(0)
        while start < view.loaded:
            end = start + self.chunk_size
            view.ensure(end)
            end = min(end, view.loaded) if end >= view.loaded else _snap(view, end, start)
            chunk, end = self._window(view, piece, start, end)
            chunks.append(Chunk(chunk.text, chunk.start + lo, chunk.end + lo, chunk.n_tokens))
            if end >= view.loaded:
                break
            nxt = end - self.overlap
            start = _snap(view, nxt if nxt > start else end, start)
            view.release(start)
        return chunks

    def _window(self, view: _BlockView | _ListView, text: str, start: int, end: int) -> tuple[Chunk, int]:
        """The chunk of tokens ``[start, end)``; re-counted (and shrunk) when an edge is mid-word."""
        exact = view.exact_at_word_starts and view.word_start(start) and (end >= view.loaded or view.word_start(end))
        while True:
            s, e = view.span(start)[0], view.span(end - 1)[1]
            limit = view.span(end)[0] if end < view.loaded else len(text)
            while e < limit and joins_previous(text[e]):
                e += 1  # keep combining marks the tokenizer dropped with their base character
            if exact:
                return Chunk(text[s:e], s, e, end - start), end
            n = self.tokenizer.count(text[s:e])
            shorter = _prev_char_start(view, end - 1, start)
            if n <= self.chunk_size or shorter is None:
                # shorter is None: one character needs more tokens than the budget; keep it whole
                return Chunk(text[s:e], s, e, n), end
            end = shorter


def _char_start(view: _BlockView | _ListView, i: int) -> bool:
    """Token ``i`` begins a new character (several tokens can come from one, e.g. Hangul)."""
    return i == 0 or view.span(i)[0] >= view.span(i - 1)[1]


def _prev_char_start(view: _BlockView | _ListView, i: int, floor: int) -> int | None:
    for j in range(i, floor, -1):
        if _char_start(view, j):
            return j
    return None


def _snap(view: _BlockView | _ListView, i: int, floor: int) -> int:
    """A window edge at or before token ``i`` and after ``floor``: a word start if one exists,
    else a character start; failing both, the next character start after ``i``."""
    for j in range(i, floor, -1):
        if view.word_start(j):
            return j
    found = _prev_char_start(view, i, floor)
    if found is not None:
        return found
    j = i + 1
    view.ensure(j)
    while j < view.loaded and not _char_start(view, j):
        j += 1
        view.ensure(j)
    return j

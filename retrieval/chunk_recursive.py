"""``recursive`` chunker: LangChain's RecursiveCharacterTextSplitter, on exact spans.

Same algorithm as ``langchain_text_splitters.RecursiveCharacterTextSplitter`` with
``keep_separator="start"`` and ``strip_whitespace=True`` (tests compare the chunk texts with
LangChain's), but every piece is a ``(start, end)`` range of the source text, so chunk spans are
exact instead of being found again with ``str.find``. The length of a piece is its token count;
``count_special_tokens=True`` adds the 2 [CLS]/[SEP] tokens to every measured piece, which is how
the Chroma chunking benchmark sized its "Recursive" chunks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from retrieval.base import Chunk, TokenCounter
from retrieval.chunk_token import TokenChunker, check_sizes
from retrieval.tokenizer import load_tokenizer

DEFAULT_SEPARATORS = ("\n\n", "\n", ".", "?", "!", " ", "")

Span = tuple[int, int]


class RecursiveChunker:
    """Split on the first separator present, recurse into pieces over budget, merge the rest."""

    name = "recursive"

    def __init__(
        self,
        chunk_size: int,
        overlap: int = 0,
        tokenizer: TokenCounter | None = None,
        separators: Sequence[str] = DEFAULT_SEPARATORS,
        count_special_tokens: bool = False,
    ) -> None:
        check_sizes(chunk_size, overlap)
        self.special = 2 if count_special_tokens else 0
        if chunk_size <= self.special:
            raise ValueError(
                f"chunk_size ({chunk_size}) must exceed the {self.special} special tokens counted "
                "with count_special_tokens=True; use a larger --chunk-size"
            )
        if not separators or separators[-1] != "":
            raise ValueError(f"separators must end with '' (split into characters last), got {list(separators)}")
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.separators = tuple(separators)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()

    def chunk(self, text: str) -> list[Chunk]:
        """Chunks of ``text``, split at the coarsest separator that fits the chunk size."""
        self._text = text
        self._lengths: dict[Span, int] = {}
        try:
            spans = self._split((0, len(text)), self.separators)
            return [c for span in spans for c in self._finish(span)]
        finally:
            del self._text, self._lengths

    def _len(self, span: Span) -> int:
        """LangChain's length_function on a piece, memoised per call of :meth:`chunk`."""
        n = self._lengths.get(span)
        if n is None:
            n = self.tokenizer.count(self._text[span[0] : span[1]]) + self.special
            self._lengths[span] = n
        return n

    def _split(self, span: Span, separators: tuple[str, ...]) -> list[Span]:
        """``RecursiveCharacterTextSplitter._split_text`` on spans."""
        separator = separators[-1]
        rest: tuple[str, ...] = ()
        for i, sep in enumerate(separators):
            if not sep:
                separator = sep
                break
            if self._text.find(sep, span[0], span[1]) >= 0:
                separator, rest = sep, separators[i + 1 :]
                break
        chunks: list[Span] = []
        good: list[Span] = []
        for piece in self._pieces(span, separator):
            if self._len(piece) < self.chunk_size:
                good.append(piece)
                continue
            if good:
                chunks.extend(self._merge(good))
                good = []
            chunks.extend(self._split(piece, rest) if rest else [piece])
        if good:
            chunks.extend(self._merge(good))
        return chunks

    def _pieces(self, span: Span, separator: str) -> list[Span]:
        """Non-empty pieces, each starting at a separator occurrence (``keep_separator="start"``)."""
        lo, hi = span
        if not separator:
            return [(i, i + 1) for i in range(lo, hi)]
        cuts = [0, *(m.start() for m in re.finditer(re.escape(separator), self._text[lo:hi])), hi - lo]
        return [(lo + a, lo + b) for a, b in zip(cuts, cuts[1:]) if b > a]

    def _merge(self, splits: list[Span]) -> list[Span]:
        """``TextSplitter._merge_splits`` with separator "" (pieces keep theirs), on spans."""
        sep_len = self._len((0, 0))
        docs: list[Span] = []
        current: list[Span] = []
        total = 0
        for piece in splits:
            n = self._len(piece)
            if total + n + (sep_len if current else 0) > self.chunk_size and current:
                docs.append((current[0][0], current[-1][1]))
                while total > self.overlap or (total + n + (sep_len if current else 0) > self.chunk_size and total > 0):
                    total -= self._len(current[0]) + (sep_len if len(current) > 1 else 0)
                    current = current[1:]
            current.append(piece)
            total += n + (sep_len if len(current) > 1 else 0)
        if current:
            docs.append((current[0][0], current[-1][1]))
        return docs

    def _finish(self, span: Span) -> list[Chunk]:
        """Strip whitespace (span moves with it), drop chunks with no tokens, and re-split the
        rare chunk over budget by tokens."""
        start, end = span
        while start < end and self._text[start].isspace():
            start += 1
        while end > start and self._text[end - 1].isspace():
            end -= 1
        if start == end:
            return []
        piece = self._text[start:end]
        n = self.tokenizer.count(piece)
        if n == 0:
            return []  # only characters the tokenizer drops (e.g. control characters)
        if n + self.special <= self.chunk_size or end - start == 1:
            return [Chunk(piece, start, end, n)]
        # The sum of the pieces' token counts fit, but the joined text tokenizes longer
        # (possible when pieces were single characters of one word): never exceed the budget.
        fallback = TokenChunker(self.chunk_size - self.special, 0, self.tokenizer)
        return fallback.chunk_span(self._text, start, end)

"""``sentence`` chunker: whole sentences packed under the token budget.

Sentence boundaries come from pysbd (``splitter="pysbd"``, the default) or from a few fast rules
(``splitter="rules"``: terminal punctuation followed by whitespace, CJK full stops, blank lines).
Either way they are only used as cut positions in the source text, so spans are exact even when
pysbd normalises a sentence it returns. A sentence longer than the budget is split by the
``token`` chunker; ``overlap`` carries whole trailing sentences (at most ``overlap`` tokens).
"""

from __future__ import annotations

import re
from functools import lru_cache

from retrieval.base import Chunk, TokenCounter
from retrieval.chunk_token import TokenChunker, check_sizes
from retrieval.tokenizer import load_tokenizer

SPLITTERS = ("pysbd", "rules")
# End of a sentence: . ! ? (and closing quotes/brackets) then whitespace; CJK stops; blank lines.
_RULE_BOUNDARY = re.compile(r"[.!?]+[\"'’”)\]]*\s+|[。！？]+[」』”’)]*\s*|\n\s*\n\s*")

Span = tuple[int, int]


@lru_cache(maxsize=1)
def _pysbd_segmenter():
    import pysbd  # imported lazily: it compiles many regexes

    return pysbd.Segmenter(language="en", clean=False)


def sentence_cuts(text: str, splitter: str = "pysbd") -> list[int]:
    """Sorted cut positions (0 and ``len(text)`` included) between sentences of ``text``."""
    if splitter == "rules":
        inner = [m.end() for m in _RULE_BOUNDARY.finditer(text)]
    elif splitter == "pysbd":
        inner, pos = [], 0
        for sentence in _pysbd_segmenter().segment(text):
            found = text.find(sentence, pos)
            if found < 0:
                continue  # pysbd altered this sentence: it stays glued to its neighbour
            inner.append(found)
            pos = found + len(sentence)
    else:
        raise ValueError(f"unknown sentence splitter '{splitter}'; valid: {', '.join(SPLITTERS)}")
    return sorted({0, len(text), *(c for c in inner if 0 < c < len(text))})


def sentence_spans(text: str, splitter: str = "pysbd") -> list[Span]:
    """Non-empty sentence spans with surrounding whitespace excluded."""
    cuts = sentence_cuts(text, splitter)
    spans = []
    for lo, hi in zip(cuts, cuts[1:]):
        while lo < hi and text[lo].isspace():
            lo += 1
        while hi > lo and text[hi - 1].isspace():
            hi -= 1
        if hi > lo:
            spans.append((lo, hi))
    return spans


class SentenceChunker:
    """Greedy packing of consecutive sentences; oversized sentences go to the token chunker."""

    name = "sentence"

    def __init__(
        self, chunk_size: int, overlap: int = 0, tokenizer: TokenCounter | None = None, splitter: str = "pysbd"
    ) -> None:
        check_sizes(chunk_size, overlap)
        if splitter not in SPLITTERS:
            raise ValueError(f"unknown sentence splitter '{splitter}'; valid: {', '.join(SPLITTERS)}")
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.splitter = splitter
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()

    def chunk(self, text: str) -> list[Chunk]:
        """Chunks of whole sentences, up to the chunk size each."""
        if not text.strip():
            return []
        chunks: list[Chunk] = []
        current: list[tuple[Span, int]] = []  # (sentence span, its token count)
        for span in sentence_spans(text, self.splitter):
            n = self.tokenizer.count(text[span[0] : span[1]])
            if n == 0 and not current:
                continue  # nothing the tokenizer sees (e.g. only control characters)
            if n > self.chunk_size:
                self._flush(text, current, chunks)
                current = []
                chunks.extend(TokenChunker(self.chunk_size, self.overlap, self.tokenizer).chunk_span(text, *span))
                continue
            if current and sum(c for _, c in current) + n > self.chunk_size:
                self._flush(text, current, chunks)
                current = self._carry(current, n)
            current.append((span, n))
        self._flush(text, current, chunks)
        return chunks

    def _carry(self, previous: list[tuple[Span, int]], n_next: int) -> list[tuple[Span, int]]:
        """Trailing sentences of the previous chunk to repeat: <= overlap tokens, never all of it,
        and leaving room for the next sentence."""
        carried: list[tuple[Span, int]] = []
        total = 0
        for item in reversed(previous[1:]):
            if total + item[1] > self.overlap or total + item[1] + n_next > self.chunk_size:
                break
            carried.insert(0, item)
            total += item[1]
        return carried

    def _flush(self, text: str, current: list[tuple[Span, int]], chunks: list[Chunk]) -> None:
        """Emit ``current`` as chunks, measured on the joined text (dropping sentences off the
        end into their own chunk in the rare case that joining tokenizes longer)."""
        while current:
            k = len(current)
            while True:
                lo, hi = current[0][0][0], current[k - 1][0][1]
                n = self.tokenizer.count(text[lo:hi])
                if n <= self.chunk_size or k == 1:
                    break
                k -= 1
            if n > 0:
                chunks.append(Chunk(text[lo:hi], lo, hi, n))
            current = current[k:]

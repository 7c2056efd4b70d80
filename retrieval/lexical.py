"""BM25 lexical scoring over chunk texts, and its fusion with dense scores (hybrid retrieval).

The scores are Okapi BM25 as ``rank_bm25.BM25Okapi`` defines them (k1 1.5, b 0.75, a term in
more than half of the texts gets 0.25 x the mean idf instead of a negative idf), computed in
its order of operations so fused rankings stay what they were. An index holds:

- the *term counts* (per text, in row order: term ids and frequencies, a CSR matrix): what an
  update starts from, so adding texts tokenises only those and removing texts tokenises nothing;
- the *score matrix* (per term: the texts holding it and their BM25 contribution, CSC, texts
  ascending), recomputed from the counts with array operations at every update (idf and the
  mean length change with every text), saved and memory-mapped in ``bm25s``'s format;
- the *heads*: per term its ``HEAD`` texts of highest contribution, the lexical candidates of
  the bounded search (``retrieval.search``).

An index updated with ``updated`` equals one built from scratch over the same texts: the term
numbering may differ, no score does (the idf floor is an exactly rounded sum, ``math.fsum``).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
K1, B, EPSILON = 1.5, 0.75, 0.25  # rank_bm25's BM25Okapi defaults
EMPTY_TEXT_TOKEN = "\0"  # stands for a text without words, so every text has a length
SLOT = np.uint16  # query-word slots of the bounded BM25 look-up (a query of more distinct words scores every text)
HEAD = 64  # texts kept per term in the heads (the most a bounded search asks for)
# What a saved index consists of: bm25s's own files, then the counts and heads; all are checked on open.
BM25S_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
               "params.index.json")
COUNT_FILES = ("counts.indptr.npy", "counts.terms.npy", "counts.freqs.npy", "counts.lengths.npy", "heads.indptr.npy",
               "heads.texts.npy")
SAVED_FILES = BM25S_FILES + COUNT_FILES


def lexical_tokens(text: str) -> list[str]:
    """Lower-cased word tokens: what BM25 matches on (punctuation and case ignored)."""
    return _WORD.findall(text.lower())


def okapi_idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    """Okapi idf per term from its document frequency, negative values floored as rank_bm25 does.
    Words no text holds any more (left by removed texts) are not terms: they do not count in the mean."""
    idf = np.array([math.log(n_docs - df + 0.5) - math.log(df + 0.5) for df in doc_freq.tolist()], dtype=np.float64)
    present = idf[doc_freq > 0]
    floor = EPSILON * (math.fsum(present.tolist()) / len(present)) if len(present) else 0.0
    return np.where(idf < 0, floor, idf)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(start, start + length)`` for every pair, without a loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.asarray(starts, dtype=np.int64) - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class QueryTerms:
    """A query's distinct terms in one index (term ids, ascending) and how often the query holds each."""

    terms: np.ndarray
    repeats: np.ndarray


class TermCounts:
    """Per text (row): its term ids and their frequencies (CSR), and the vocabulary (word -> term id)."""

    def __init__(self, indptr: np.ndarray, terms: np.ndarray, freqs: np.ndarray, vocab: dict[str, int]) -> None:
        self.indptr, self.terms, self.freqs, self.vocab = indptr, terms, freqs, vocab

    @classmethod
    def of(cls, texts: Sequence[str], vocab: dict[str, int] | None = None) -> TermCounts:
        """Tokenise ``texts``; new words extend (a copy of) ``vocab``."""
        vocab = dict(vocab or {})
        terms: list[int] = []
        freqs: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            counts = Counter(lexical_tokens(text) or [EMPTY_TEXT_TOKEN])
            lengths[row] = len(counts)
            terms += [vocab.setdefault(word, len(vocab)) for word in counts]
            freqs += counts.values()
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(indptr, np.asarray(terms, dtype=np.int32), np.asarray(freqs, dtype=np.int32), vocab)

    @property
    def rows(self) -> int:
        """How many texts (rows) the counts hold."""
        return len(self.indptr) - 1

    def take(self, rows: np.ndarray) -> TermCounts:
        """The counts of ``rows`` (positions, in the order given)."""
        lengths = np.diff(self.indptr)[rows]
        entries = _ranges(self.indptr[rows], lengths)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return TermCounts(indptr, np.asarray(self.terms[entries]), np.asarray(self.freqs[entries]), self.vocab)

    def extended(self, texts: Sequence[str]) -> TermCounts:
        """These rows followed by the rows of ``texts`` (only those are tokenised)."""
        new = TermCounts.of(texts, self.vocab)
        indptr = np.concatenate([self.indptr, self.indptr[-1] + new.indptr[1:]])
        terms = np.concatenate([self.terms, new.terms]).astype(np.int32)
        return TermCounts(indptr, terms, np.concatenate([self.freqs, new.freqs]).astype(np.int32), new.vocab)

    def compacted(self) -> TermCounts:
        """Without the words no row holds any more (renumbered, order kept)."""
        present = np.bincount(self.terms, minlength=len(self.vocab)) > 0
        if present.all():
            return self
        number = (np.cumsum(present) - 1).astype(np.int32)
        words = sorted(self.vocab, key=self.vocab.__getitem__)
        kept = [word for word, keep in zip(words, present.tolist()) if keep]
        return TermCounts(self.indptr, number[self.terms], self.freqs, {word: i for i, word in enumerate(kept)})


class BM25Index:
    """Okapi BM25 over a list of texts; ``scores(query)`` gives one score per text, in order."""

    def __init__(self, texts: Sequence[str]) -> None:
        if not texts:
            raise ValueError("BM25Index needs at least one text; index some chunks first")
        self._adopt_counts(TermCounts.of(texts))

    @classmethod
    def from_counts(cls, counts: TermCounts) -> BM25Index:
        """The index of already tokenised texts (words no text holds are dropped)."""
        if counts.rows == 0:
            raise ValueError("BM25Index needs at least one text; index some chunks first")
        index = cls.__new__(cls)
        index._adopt_counts(counts.compacted())
        return index

    def updated(self, kept_rows: np.ndarray, new_texts: Sequence[str]) -> BM25Index:
        """The index of the texts at ``kept_rows`` (in that order) followed by ``new_texts``:
        only the new texts are tokenised; the scores are recomputed from the counts."""
        counts = TermCounts(self._counts_indptr, self._terms, self._freqs, self._vocab)
        return BM25Index.from_counts(counts.take(np.asarray(kept_rows, dtype=np.int64)).extended(new_texts))

    def _adopt_counts(self, counts: TermCounts) -> None:
        n, vocab_size = counts.rows, len(counts.vocab)
        text_of_entry = np.repeat(np.arange(n, dtype=np.int32), np.diff(counts.indptr))
        text_length = np.bincount(text_of_entry, weights=counts.freqs, minlength=n)  # tokens per text
        doc_freq = np.bincount(counts.terms, minlength=vocab_size)
        idf = okapi_idf(doc_freq, n)
        average = float(text_length.sum()) / n
        tf = counts.freqs.astype(np.float64)
        # rank_bm25's expression, in its order: idf * (tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)))
        data = idf[counts.terms] * (tf * (K1 + 1) / (tf + K1 * (1 - B + B * text_length[text_of_entry] / average)))
        by_term = np.argsort(counts.terms, kind="stable")  # within a term, texts stay ascending
        self._data, self._indices = data[by_term], text_of_entry[by_term]
        self._indptr = np.concatenate([[0], np.cumsum(doc_freq)]).astype(np.int64)
        self._counts_indptr, self._terms, self._freqs = counts.indptr, counts.terms, counts.freqs
        self._vocab, self.size, self._lengths, self._average = counts.vocab, n, text_length.astype(np.int64), average
        self._derived: tuple[np.ndarray, np.ndarray] | None = None
        self._scratch = threading.local()
        self._heads_indptr, self._heads = _heads(self._data, self._indices, self._indptr)

    # ------------------------------------------------------------ files
    def save(self, directory: str | Path) -> tuple[str, ...]:
        """Write the index into ``directory`` (the score matrix via bm25s); returns the file names."""
        import bm25s

        directory = Path(directory)
        model = bm25s.BM25(k1=K1, b=B, method="atire", idf_method="lucene", dtype="float64")
        model.scores = {"data": self._data, "indices": self._indices, "indptr": self._indptr, "num_docs": self.size}
        model.vocab_dict, model.nonoccurrence_array = self._vocab, None  # what bm25s.index would set
        model.save(str(directory), show_progress=False)
        small = len(self._freqs) and int(np.max(self._freqs)) < 1 << 16
        freqs = self._freqs.astype(np.uint16) if small else self._freqs
        arrays = (self._counts_indptr, self._terms, freqs, self._lengths, self._heads_indptr, self._heads)
        for name, array in zip(COUNT_FILES, arrays):
            with open(directory / name, "wb") as handle:
                np.save(handle, np.asarray(array), allow_pickle=False)
        return SAVED_FILES

    @staticmethod
    def saved_in(directory: str | Path) -> bool:
        """Whether ``directory`` holds a complete saved index (older versions lack the counts)."""
        return all((Path(directory) / name).is_file() for name in SAVED_FILES)

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> BM25Index:
        """A saved index (``save``), its arrays memory-mapped unless ``mmap`` is false."""
        directory = Path(directory)
        mode: Literal["r"] | None = "r" if mmap else None
        # Plain ndarray views of the mapped arrays: slicing a np.memmap costs microseconds per slice.
        arrays = [np.asarray(np.load(directory / name, mmap_mode=mode, allow_pickle=False))
                  for name in (*BM25S_FILES[:3], *COUNT_FILES)]
        index = cls.__new__(cls)
        index._data, index._indices, index._indptr = arrays[:3]
        index._counts_indptr, index._terms, index._freqs, index._lengths, index._heads_indptr, index._heads = arrays[3:]
        index._vocab = json.loads((directory / "vocab.index.json").read_text(encoding="utf-8"))
        index.size = len(index._counts_indptr) - 1
        index._average, index._derived = float(index._lengths.sum()) / index.size, None
        index._scratch = threading.local()
        return index

    # ------------------------------------------------------------ scoring
    def query_columns(self, query: str) -> list[int]:
        """``query``'s words that are terms of this index, as term columns in query order (repeats kept)."""
        return [column for column in map(self._vocab.get, lexical_tokens(query)) if column is not None]

    def query_terms(self, query: str | QueryTerms) -> QueryTerms:
        """``query``'s terms of this index, tokenised once for several look-ups."""
        if isinstance(query, QueryTerms):
            return query
        terms, repeats = np.unique(np.array(self.query_columns(query), dtype=np.int64), return_counts=True)
        return QueryTerms(terms, repeats.astype(np.float64))

    def scores(self, query: str) -> np.ndarray:
        """Okapi BM25 of every text for ``query`` (float64; a repeated query word counts each time)."""
        columns = self.query_columns(query)
        if not columns:
            return np.zeros(self.size, dtype=np.float64)
        spans = [slice(int(self._indptr[c]), int(self._indptr[c + 1])) for c in columns]
        # bincount adds each text's contributions in query-word order, as a loop over the words would.
        return np.bincount(np.concatenate([self._indices[s] for s in spans]),
                           weights=np.concatenate([self._data[s] for s in spans]), minlength=self.size)

    def scores_of(self, query: str | QueryTerms, rows: np.ndarray) -> np.ndarray:
        """``scores(query)[rows]`` up to rounding (a text's contributions are summed in another
        order), without scoring every text: from the term counts of ``rows`` alone (any order,
        repeats allowed)."""
        query = self.query_terms(query)
        rows = np.asarray(rows, dtype=np.int64)
        if not len(query.terms) or not len(rows):
            return np.zeros(len(rows), dtype=np.float64)
        if len(query.terms) >= np.iinfo(SLOT).max:  # more distinct words than slots: score every text
            return self.scores(" ".join(self._words_of(query)))[rows]
        starts = self._counts_indptr[rows]
        sizes = self._counts_indptr[rows + 1] - starts
        entries = _ranges(starts, sizes)
        ends = np.cumsum(sizes)  # where each row's entries end in ``entries``
        # A small per-term table of query slots (0: not a query word) keeps the look-ups in cache.
        slots = self._term_slots()
        slots[query.terms] = np.arange(1, len(query.terms) + 1, dtype=SLOT)
        try:
            matched = slots[self._terms[entries]]
        finally:
            slots[query.terms] = 0
        hit = np.flatnonzero(matched)
        owner = np.searchsorted(ends, hit, side="right")
        idf, norm = self._per_term_and_text()
        weight = np.concatenate(([0.0], idf[query.terms] * query.repeats))[matched[hit]]
        tf = self._freqs[entries[hit]].astype(np.float64)
        return np.bincount(owner, weights=weight * (tf * (K1 + 1) / (tf + norm[rows[owner]])), minlength=len(rows))

    def _term_slots(self) -> np.ndarray:
        """This thread's all-zero table of one slot per term (set and cleared around each use)."""
        slots = getattr(self._scratch, "slots", None)
        if slots is None:
            slots = self._scratch.slots = np.zeros(len(self._indptr) - 1, dtype=SLOT)
        return slots

    def _words_of(self, query: QueryTerms) -> list[str]:
        words = {term: word for word, term in self._vocab.items()}
        return [words[int(t)] for t, n in zip(query.terms, query.repeats) for _ in range(int(n))]

    def _per_term_and_text(self) -> tuple[np.ndarray, np.ndarray]:
        """Per term its idf, per text its length part ``k1 * (1 - b + b * |d| / avgdl)``; computed on
        first use (one pass over the terms and the texts, not over the postings)."""
        if self._derived is None:
            idf = okapi_idf(np.diff(self._indptr), self.size)
            self._derived = idf, K1 * (1 - B + B * np.asarray(self._lengths, dtype=np.float64) / self._average)
        return self._derived

    def search_arrays(self) -> tuple[np.ndarray, ...]:
        """What the compiled bounded search reads (``retrieval/_hybrid_kernel.c``): per text its term
        counts (indptr, term ids, frequencies) and length part, per term its idf, postings indptr
        and heads (indptr, texts). Views of the loaded arrays, no copies."""
        idf, norm = self._per_term_and_text()
        freqs = self._freqs if self._freqs.dtype in (np.uint16, np.int32) else self._freqs.astype(np.int32)
        arrays = (self._counts_indptr, self._terms, freqs, norm, idf, self._indptr, self._heads_indptr, self._heads)
        dtypes = ("int64", "int32", freqs.dtype.name, "float64", "float64", "int64", "int64", "int32")
        return tuple(np.ascontiguousarray(a, dtype=d) for a, d in zip(arrays, dtypes))

    def candidates(self, query: str | QueryTerms, words: int, per_word: int) -> tuple[np.ndarray, bool]:
        """The texts among the ``per_word`` highest contributions of each of the query's ``words``
        rarest words (repeats possible): where the highest scores are, since a rare word weighs
        most. Also whether some text surely holds no query word (the minimum score is then 0)."""
        columns = self.query_terms(query).terms.tolist()
        if not columns:
            return np.zeros(0, dtype=np.int64), True
        # A few words: plain Python on their postings' bounds costs less than array calls.
        bounds = [(int(self._indptr[c]), int(self._indptr[c + 1])) for c in columns]
        holders = [end - start for start, end in bounds]
        rare = sorted(range(len(columns)), key=holders.__getitem__)[:words]  # stable: ties keep term order
        heads = []
        for column in (columns[i] for i in rare):
            start, end = int(self._heads_indptr[column]), int(self._heads_indptr[column + 1])
            heads.append(self._heads[start:min(end, start + per_word)])
        return np.concatenate(heads).astype(np.int64), sum(holders) < self.size


def _heads(data: np.ndarray, texts: np.ndarray, indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per term, its ``HEAD`` texts of highest contribution, best first (ties: lower text first)."""
    doc_freq = np.diff(indptr)
    term_of_entry = np.repeat(np.arange(len(doc_freq), dtype=np.int64), doc_freq)
    order = np.lexsort((-data, term_of_entry))  # per term, contributions descending; stable on ties
    lengths = np.minimum(doc_freq, HEAD)
    heads = texts[order[_ranges(indptr[:-1], lengths)]]
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), heads.astype(np.int32)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; constant scores map to 0 (they carry no ranking information)."""
    low, high = float(np.min(scores)), float(np.max(scores))
    if high - low <= 0.0:
        return np.zeros_like(scores, dtype=np.float64)
    return (scores - low) / (high - low)


def fuse(dense: np.ndarray, lexical: np.ndarray, dense_weight: float) -> np.ndarray:
    """Convex combination of min-max normalised dense and BM25 scores (weight on dense)."""
    if dense.shape != lexical.shape:
        raise ValueError(f"score arrays differ in shape: dense {dense.shape} vs lexical {lexical.shape}")
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError(f"dense_weight must be in [0, 1], got {dense_weight}")
    return dense_weight * minmax(dense) + (1.0 - dense_weight) * minmax(lexical)

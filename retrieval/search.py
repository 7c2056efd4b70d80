"""The search engine every caller uses: one committed index version, dense, lexical or hybrid.

Dense candidates come from the version's FAISS index (whatever its factory), lexical scores
from its saved BM25 index (memory-mapped, ``retrieval.lexical``). Hybrid scores are today's
min-max fusion (``retrieval.lexical.fuse``): ``w * minmax(cosine) + (1 - w) * minmax(BM25)``
over every chunk.

Exact factories (Flat) compute it exactly for a candidate pool:

- BM25 is scored for every chunk (a sparse sum), so its min and max are exact;
- cosines of the candidates are recomputed in float64 from the stored vectors; the dense max is
  the FAISS top-1 and the dense min the FAISS top-1 of the negated query (one batched search);
- the pool is the union of the ``pool`` best dense and ``pool`` best BM25 chunks. A chunk
  outside it scores at most ``w * minmax(pool-th cosine) + (1 - w) * minmax(pool-th BM25)``;
  while the ``depth``-th fused score does not beat that bound the pool grows (x4), so the
  result equals a full exact scan.

Approximate factories (HNSW, IVF, PQ) touch no per-chunk array, so a query costs about what
the FAISS search costs (``_bounded``, in compiled code where the package was built with it,
``retrieval/_hybrid_kernel.c``; else in NumPy): the candidates are the FAISS top ``BOUNDED_POOL`` and
the saved BM25 heads (the chunks of highest contribution) of the query's rarest words; the
candidates' cosines (FAISS's own float32 scores where the index keeps the vectors as they are,
else recomputed in float64) and BM25 scores are exact, the score ranges are estimated from
them (BM25 min 0 whenever some chunk holds no query word; dense min also over a fixed sample
of stored vectors). Their recall against the exact ranking is measured (``benchmarks/scale.py``).

Ties keep chunk-id order (the order of a stable sort over chunks by id). ``distinct``: ``k``
different texts (``retrieval.postprocess.distinct_hits``), searching deeper until found.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from retrieval.base import Hit
from retrieval.errors import EmptyIndexError, InputError
from retrieval.index_store import IndexStore
from retrieval.lexical import HEAD, fuse
from retrieval.postprocess import distinct_hits

_hybrid_kernel: ModuleType | None
try:  # built with the package where a C compiler was at hand; the NumPy path gives the same ranking
    from retrieval import _hybrid_kernel
except ImportError:  # pragma: no cover - depends on the build
    _hybrid_kernel = None

DEFAULT_POOL = 64  # candidates per side before the bound check (4x more while it fails); = HNSW's efSearch
BOUNDED_POOL = 64  # approximate factories: FAISS candidates (= efSearch; 32 lost recall: fused top 5 reach dense rank 64)
LEXICAL_WORDS, LEXICAL_POOL = 4, 4  # approximate factories: the rarest query words, candidates per word (<= HEAD)
FLOOR_SAMPLE = 128  # stored vectors whose minimum cosine stands for the dense min of approximate indexes
EXACT_FACTORIES = ("Flat",)
FULL_SCAN_CHUNKS = 512  # exact indexes up to this size rank every chunk (per query: 67 vs 116 us at 300 chunks, 223 vs 190 at 1,000)
SMALL_INDEX_VALUES = 8_000_000  # vector values below which a float64 copy is kept in memory (64 MB)
MEMO_SIZE = 8  # engines kept open (one per index version)


def check_weight(dense_weight: float) -> None:
    """Raise ValueError unless ``dense_weight`` is a weight in [0, 1]."""
    if isinstance(dense_weight, bool) or not isinstance(dense_weight, (int, float)) or not 0.0 <= dense_weight <= 1.0:
        raise ValueError(f"hybrid weight must be in [0, 1], got {dense_weight!r}; e.g. 0.8 (dense) / 0.2 (BM25)")


def _scaled(values: np.ndarray | float, low: float, high: float) -> np.ndarray:
    """``minmax`` with a known range (constant scores map to 0, as ``retrieval.lexical.minmax``)."""
    values = np.asarray(values, dtype=np.float64)
    if high - low <= 0.0:
        return np.zeros_like(values)
    return (values - low) / (high - low)


class SearchEngine:
    """Dense, lexical and hybrid search over one committed version of an ``IndexStore``.

    ``search(queries, vectors, k, dense_weight, distinct)``: ``dense_weight`` None is the FAISS
    ranking alone; a weight in [0, 1] is hybrid (0: BM25 alone). Open with ``engine_for``,
    which keeps one engine per version.
    """

    def __init__(self, store: IndexStore, pool: int = DEFAULT_POOL, lexical_pool: int = LEXICAL_POOL) -> None:
        if store.ntotal == 0:
            raise EmptyIndexError(f"the index in {store.directory} holds no chunks; index documents first: "
                                  f"ragpress index PATH --index {store.directory}")
        if pool <= 0 or not 0 < lexical_pool <= HEAD:
            raise ValueError(f"pool must be a positive number of candidates and lexical_pool one in 1..{HEAD}, "
                             f"got {pool} and {lexical_pool}")
        self.store, self.version, self.pool, self.lexical_pool = store, store.version, pool, lexical_pool
        self.records = store.chunks()  # by chunk id: the row order of the BM25 index and of ties
        self._chunk_ids = np.fromiter((r.id for r in self.records), dtype=np.int64, count=len(self.records))
        ids, vectors = store.row_vectors()
        self._vectors = np.asarray(vectors)  # a plain view of the (memory-mapped) rows: no np.memmap per slice
        self._stored_rows = self._vectors  # float32, as stored: what the compiled search reads
        if self._vectors.size <= SMALL_INDEX_VALUES:  # small: keep the float64 rows the cosines are computed in
            self._vectors = self._vectors.astype(np.float64)
        order = np.argsort(ids)
        self._vector_row = order[np.searchsorted(ids, self._chunk_ids, sorter=order)]  # record -> vectors row
        self._lexical = store.lexical_index()
        self.exact = store.effective_factory in EXACT_FACTORIES
        self._faiss_scores_exact = store.scores_are_exact()
        self._ids_are_positions = bool(self._chunk_ids[0] == 0 and self._chunk_ids[-1] == len(self._chunk_ids) - 1)
        # Small exact indexes rank every chunk: their vectors in record order, float64.
        small = self.exact and len(self.records) <= FULL_SCAN_CHUNKS
        self._record_vectors = np.asarray(self._vectors[self._vector_row], dtype=np.float64) if small else None
        sample = np.linspace(0, len(self.records) - 1, min(FLOOR_SAMPLE, len(self.records))).astype(np.int64)
        self._floor_rows = np.asarray(self._vectors[np.sort(self._vector_row[sample])], dtype=np.float32)
        self._compiled = self._compiled_index() if not self.exact else None

    # ------------------------------------------------------------------ API
    def search(self, queries: Sequence[str], query_vectors: np.ndarray, k: int, dense_weight: float | None,
               distinct: bool = True) -> list[list[Hit]]:
        """Top-``k`` hits per query (its text and vector row), best first, ``k`` clamped to the index."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}; e.g. k=5")
        if dense_weight is not None:
            check_weight(dense_weight)
        vectors = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
        if len(vectors) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(vectors)} query vectors; give one vector per query")
        if dense_weight is None:
            ranked: Callable[[np.ndarray, int], list[list[Hit]]] = self.store.search
        else:
            def ranked(rows: np.ndarray, depth: int) -> list[list[Hit]]:
                return self.hybrid(queries, rows, depth, dense_weight)
        with _single_threaded():
            return search_distinct(ranked, vectors, int(k)) if distinct else ranked(vectors, int(k))

    def hybrid(self, queries: Sequence[str], query_vectors: np.ndarray, depth: int, dense_weight: float) -> list[list[Hit]]:
        """The ``depth`` best chunks per query under the fused score (see the module docstring)."""
        depth = min(depth, len(self.records))
        if not self.exact:
            return self._bounded(queries, query_vectors, depth, dense_weight)
        # Weight 1 is the dense ranking alone: no BM25 scores (all zero) and no lexical candidates.
        lexical = [self._lexical.scores(query) if dense_weight < 1.0 else np.zeros(len(self.records)) for query in queries]
        if self._record_vectors is not None:
            return [self._ranked_all(vector, scores, depth, dense_weight) for vector, scores in zip(query_vectors, lexical)]
        results: list[list[Hit] | None] = [None] * len(queries)
        pending, pool = list(range(len(queries))), max(self.pool, depth)
        while pending:
            pool = min(pool, len(self.records))
            dense_ids, floors = self._dense_candidates(query_vectors[pending], pool)
            still = []
            for row, number in enumerate(pending):
                hits = self._fuse(query_vectors[number], lexical[number], dense_ids[row], floors[row], pool, depth, dense_weight)
                if hits is None:
                    still.append(number)
                results[number] = hits
            pending, pool = still, pool * 4
        return [hits or [] for hits in results]

    def vectors_of(self, chunk_ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``chunk_ids`` (float32 rows, in the order given)."""
        positions = np.searchsorted(self._chunk_ids, np.asarray(chunk_ids, dtype=np.int64))
        return np.asarray(self._vectors[self._vector_row[positions]], dtype=np.float32)

    # ------------------------------------------------------------ internals
    def _ranked_all(self, vector: np.ndarray, lexical: np.ndarray, depth: int, weight: float) -> list[Hit]:
        """Every chunk fused and ranked (a small index: one product over all its vectors costs less
        than gathering a candidate pool's)."""
        assert self._record_vectors is not None
        fused = fuse(self._record_vectors @ vector.astype(np.float64), lexical, weight)
        best = np.argsort(-fused, kind="stable")[:depth]  # ties: lower chunk first
        return [self._hit(int(i), float(fused[i])) for i in best]

    def _dense_candidates(self, query_vectors: np.ndarray, pool: int) -> tuple[np.ndarray, list[int | None]]:
        """Record positions of the ``pool`` best FAISS hits per query (-1: none), and per query the
        position of the lowest-cosine chunk when the index is exact (None: use the sample)."""
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        _, positions = self._faiss_top(queries, pool)
        # The negated query's top 1 is the lowest cosine of all chunks (exact indexes only).
        if not self.exact:
            return positions, [None] * len(queries)
        return positions, [int(p) for p in self._faiss_top(-queries, 1)[1][:, 0]]

    def _faiss_top(self, queries: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's scores and the record positions of its ``pool`` best hits per query (-1: none)."""
        scores, ids = self.store.search_ids(queries, pool)
        if self._ids_are_positions:  # chunk ids 0..n-1: an id is its record's position
            return scores, ids
        return scores, np.where(ids >= 0, np.searchsorted(self._chunk_ids, ids), -1)

    def _fuse(self, vector: np.ndarray, lexical: np.ndarray, dense_ids: np.ndarray, floor: int | None, pool: int,
              depth: int, weight: float) -> list[Hit] | None:
        """The ``depth`` best hits, or None when a chunk outside the pool could still beat them."""
        n = len(self.records)
        dense_ids = dense_ids[dense_ids >= 0]
        if weight == 1.0:
            candidates = dense_ids
        else:
            lexical_ids = np.argpartition(-lexical, pool - 1)[:pool] if pool < n else np.arange(n)
            candidates = np.unique(np.concatenate([dense_ids, lexical_ids]))
        query = vector.astype(np.float64)
        # One product for the candidates, the lowest-cosine chunk (exact indexes) and the dense pool's edge.
        extra = [floor] if floor is not None else []
        cosines = self._cosines(query, np.concatenate([candidates, extra, dense_ids[-1:]]).astype(np.int64))
        dense = cosines[:len(candidates)]
        low = float(cosines[len(candidates)]) if floor is not None else float(np.min(self._floor_rows @ vector))
        low, high = min(low, float(dense.min())), float(dense.max())
        lex_low, lex_high = float(lexical.min()), float(lexical.max())
        fused = weight * _scaled(dense, low, high)
        if weight < 1.0:
            fused += (1.0 - weight) * _scaled(lexical[candidates], lex_low, lex_high)
        best = np.lexsort((candidates, -fused))[:depth]
        if pool < n:
            dense_edge = float(cosines[-1]) if len(dense_ids) else low
            lexical_edge = float(np.min(lexical[lexical_ids])) if weight < 1.0 else lex_high
            bound = weight * float(_scaled(dense_edge, low, high)) + (1.0 - weight) * float(_scaled(lexical_edge, lex_low, lex_high))
            if not fused[best[-1]] > bound:
                return None
        return [self._hit(int(candidates[i]), float(fused[i])) for i in best]

    def _bounded(self, queries: Sequence[str], query_vectors: np.ndarray, depth: int, weight: float) -> list[list[Hit]]:
        """Approximate factories: the fused ranking of a bounded pool, one pass, no full scan.

        Candidates: the FAISS top ``BOUNDED_POOL`` and, for each of the ``LEXICAL_WORDS`` rarest
        query words, its ``lexical_pool`` chunks of highest BM25 contribution (the saved heads).
        Their cosines and BM25 scores are exact (cosines: FAISS's own scores where it stores the
        vectors as they are, else recomputed; BM25 from the term counts); the BM25 max is the
        candidates' max, the min 0 when some chunk holds no query word (else the candidates'
        min); the dense max the candidates' max, the min also over a fixed sample. Recall against
        the exact ranking: ``benchmarks/scale.py``."""
        pool = min(max(BOUNDED_POOL, depth), len(self.records))
        query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        faiss_scores, found = self._faiss_top(query_vectors, pool)
        if self._compiled is not None:
            return [self._bounded_compiled(query, vector, scores, positions, depth, weight)
                    for query, vector, scores, positions in zip(queries, query_vectors, faiss_scores, found)]
        return self._bounded_numpy(queries, query_vectors, faiss_scores, found, depth, weight)

    def compiled_arrays(self) -> tuple[np.ndarray, ...]:
        """What the compiled bounded search reads, in its order: the stored vectors, each record's
        vectors row, the floor sample, then the BM25 index's ``search_arrays``."""
        return (self._stored_rows, np.ascontiguousarray(self._vector_row, dtype=np.int64), self._floor_rows,
                *self._lexical.search_arrays())

    def _compiled_index(self) -> object | None:
        """The compiled bounded search's view of this version's arrays, their pages mapped in now so
        no query waits on a page fault (None: the NumPy path)."""
        if _hybrid_kernel is None or self._stored_rows.dtype != np.float32 or not self._stored_rows.flags.c_contiguous:
            return None
        return _hybrid_kernel.prepare(self.compiled_arrays())

    def _bounded_compiled(self, query: str, vector: np.ndarray, faiss_scores: np.ndarray, found: np.ndarray,
                          depth: int, weight: float) -> list[Hit]:
        """``_bounded_numpy`` for one query, in one call of the compiled search (rows of float32
        and int64 arrays, as ``_faiss_top`` and ``search`` make them)."""
        assert self._compiled is not None and _hybrid_kernel is not None
        given = faiss_scores if self._faiss_scores_exact else faiss_scores[:0]  # empty: recompute the cosines
        ranked = _hybrid_kernel.bounded_search(self._compiled, given, found, self._lexical.query_columns(query), vector,
                                               float(weight), LEXICAL_WORDS, self.lexical_pool, depth)
        return [self._hit(position, score) for position, score in ranked]

    def _bounded_numpy(self, queries: Sequence[str], query_vectors: np.ndarray, faiss_scores: np.ndarray,
                       found: np.ndarray, depth: int, weight: float) -> list[list[Hit]]:
        floors = np.min(self._floor_rows @ query_vectors.T, axis=0).tolist()  # per query, its lowest sampled cosine
        results = []
        for row, (query, vector) in enumerate(zip(queries, query_vectors)):
            candidates, dense = found[row], faiss_scores[row]
            if candidates[-1] < 0:  # fewer hits than asked for
                candidates, dense = candidates[candidates >= 0], dense[candidates >= 0]
            if not self._faiss_scores_exact:
                dense = self._cosines(vector, candidates)
            lexical_part: np.ndarray | float = 0.0
            if weight < 1.0:
                terms = self._lexical.query_terms(query)
                lexical_ids, lacking = self._lexical.candidates(terms, LEXICAL_WORDS, self.lexical_pool)
                # Repeats are dropped after ranking: fewer array calls than a de-duplication here.
                candidates = np.concatenate([candidates, lexical_ids])
                dense = np.concatenate([dense, self._cosines(vector, lexical_ids)])
                lexical = self._lexical.scores_of(terms, candidates)
                lexical_part = (1.0 - weight) * _scaled(lexical, 0.0 if lacking else float(lexical.min()), float(lexical.max()))
            fused = weight * _scaled(dense, min(floors[row], float(dense.min())), float(dense.max())) + lexical_part
            order = np.lexsort((candidates, -fused)).tolist()  # ties: lower chunk first
            results.append(self._first_hits(candidates.tolist(), fused.tolist(), order, depth))
        return results

    def _first_hits(self, candidates: list[int], fused: list[float], order: list[int], depth: int) -> list[Hit]:
        """The hits of the first ``depth`` different candidates in ``order``."""
        hits: list[Hit] = []
        seen: set[int] = set()
        for i in order:
            if candidates[i] not in seen:
                seen.add(candidates[i])
                hits.append(self._hit(candidates[i], fused[i]))
                if len(hits) == depth:
                    break
        return hits

    def _cosines(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        rows = self._vector_row[positions]
        return self._vectors[rows].astype(np.float64, copy=False) @ query

    def _hit(self, position: int, score: float) -> Hit:
        r = self.records[position]
        return Hit(r.doc_id, r.source, r.id, r.start, r.end, score, r.text)


def search_distinct(search: Callable[[np.ndarray, int], list[list[Hit]]], vectors: np.ndarray, k: int) -> list[list[Hit]]:
    """``k`` distinct-text hits per query row from ``search(vectors, depth)``, doubling the depth
    while some row is short of ``k`` and its search was not yet exhaustive."""
    depth = k
    while True:
        ranked = search(vectors, depth)
        distinct = [distinct_hits(row, k) for row in ranked]
        if all(len(hits) == k or len(row) < depth for hits, row in zip(distinct, ranked)):
            return distinct
        depth *= 2


@contextmanager
def _single_threaded() -> Iterator[None]:
    """FAISS on one thread: OpenMP threads spin-waiting on shared cores cost more than they give
    for the small query batches searched here (7x slower measured on a loaded 2-core machine)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


_ENGINES: OrderedDict[tuple, SearchEngine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
_BY_STORE: weakref.WeakKeyDictionary[IndexStore, SearchEngine] = weakref.WeakKeyDictionary()


def engine_for(store: IndexStore) -> SearchEngine:
    """The engine of ``store``'s committed version, memoised per version (a version never changes)."""
    if store.dirty:
        raise InputError("the index has uncommitted changes; commit() before searching it")
    known = _BY_STORE.get(store)
    if known is not None and known.version == store.version:  # the same open store: no file-system look-up
        return known
    meta = store.directory / f"v{store.version:06d}" / "meta.json"
    stamp = os.stat(meta).st_mtime_ns if meta.exists() else None
    key = (str(store.directory.resolve()), store.version, stamp, store.nprobe, store.ef_search)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            _ENGINES.move_to_end(key)
    if engine is None:
        engine = SearchEngine(store)
        with _ENGINES_LOCK:
            _ENGINES[key] = engine
            while len(_ENGINES) > MEMO_SIZE:
                _ENGINES.popitem(last=False)
    _BY_STORE[store] = engine
    return engine

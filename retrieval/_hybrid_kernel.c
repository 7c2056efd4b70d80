/* The bounded hybrid search after the FAISS search, in one call (retrieval/search.py, _bounded).
 *
 * For approximate indexes the lexical half of a hybrid query reads a few dozen candidates' term
 * counts and vectors that the FAISS search has just pushed out of the caches. As separate NumPy
 * calls that costs about twice the FAISS search itself; here the rows are loaded together first, so
 * their memory latencies overlap, and each term count is tested with one bit before any look-up.
 *
 * It computes what SearchEngine._bounded_numpy computes, in the same order of operations (inner
 * products are summed in another order, so cosines may differ in the last bits): the candidates are
 * the FAISS hits, then the heads of the query's rarest words; BM25 as rank_bm25 defines it, from the
 * term counts; min-max fusion; ties by record position.
 * Every index read from the saved arrays is bounds-checked: a damaged index raises, never crashes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif
#endif

/* The sampled floor's products are compiled for several instruction sets and the widest the CPU
   has is chosen when the module loads. Built without fused multiply-add (-ffp-contract=off),
   every variant sums in the same order, so the results do not depend on the CPU. */
#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define WIDEST_VECTORS __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef WIDEST_VECTORS
#define WIDEST_VECTORS
#endif

#define SELECTED_DEPTH 16 /* up to this many hits are kept by insertion while scoring; deeper: one sort */
#define FILTER_BLOCK 256   /* term counts tested against the query's filter per pass */

#define K1_PLUS_ONE 2.5 /* rank_bm25's k1 (1.5) + 1; the length part k1 * (1 - b + b |d| / avgdl) comes in ``norm`` */

typedef struct { double score; int64_t position; } Scored;

typedef struct {
    const float *vectors; Py_ssize_t rows, dim;  /* stored vectors (rows x dim) */
    const int64_t *vector_row; Py_ssize_t texts; /* record position -> vectors row */
    const float *floor_rows; Py_ssize_t floor_count;
    const int64_t *counts_indptr; const int32_t *terms; const void *freqs; int wide_freqs; Py_ssize_t entries;
    const double *norm, *idf;
    const int64_t *postings_indptr; Py_ssize_t vocabulary; /* per term: its texts' span (document frequency) */
    const int64_t *heads_indptr; const int32_t *heads; Py_ssize_t head_count;
} Index;

static int by_score(const void *a, const void *b) {
    const Scored *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->position > y->position) - (x->position < y->position);
}

/* Keeps the ``depth`` best distinct positions in ``best`` (``*count`` of them, best first);
   a position offered twice keeps its higher score, as the first of them in a sorted list. */
static void keep_best(Scored *best, Py_ssize_t *count, Py_ssize_t depth, Scored offered) {
    if (depth <= 0) return;
    Py_ssize_t at = 0;
    while (at < *count && best[at].position != offered.position) at++;
    if (at < *count || *count == depth) {
        Py_ssize_t replaced = at < *count ? at : depth - 1;  /* the same position, else the worst */
        if (by_score(&offered, &best[replaced]) >= 0) return;
        memmove(&best[replaced], &best[replaced + 1], sizeof(Scored) * (size_t)(*count - replaced - 1));
        (*count)--;
    }
    Py_ssize_t j = *count;
    for (; j > 0 && by_score(&offered, &best[j - 1]) < 0; j--) best[j] = best[j - 1];
    best[j] = offered;
    (*count)++;
}

/* float64 inner product of two float32 rows, as NumPy's float64 product of the upcast rows. */
static inline double dot(const float *a, const float *b, Py_ssize_t n) {
    double acc[8] = {0};
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)a[i + j] * (double)b[i + j];
    double sum = 0.0;
    for (; i < n; i++) sum += (double)a[i] * (double)b[i];
    for (int j = 0; j < 8; j++) sum += acc[j];
    return sum;
}

/* float32 inner product, as NumPy's float32 matrix product gives the sampled floor. */
static inline float dot32(const float *a, const float *b, Py_ssize_t n) {
    float acc[16] = {0};
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float sum = 0.0f;
    for (; i < n; i++) sum += a[i] * b[i];
    for (int j = 0; j < 16; j++) sum += acc[j];
    return sum;
}

/* The lowest float32 inner product of ``query`` with ``count`` rows, each summed as dot32 sums it;
   four rows at a time, so that their independent sums overlap in the pipeline. */
WIDEST_VECTORS static double lowest_product(const float *rows, Py_ssize_t count, const float *query, Py_ssize_t dim) {
    double low = 1e300;
    Py_ssize_t r = 0;
    for (; r + 4 <= count; r += 4) {
        float acc[4][16] = {{0}};
        Py_ssize_t i = 0;
        for (; i + 16 <= dim; i += 16)
            for (int k = 0; k < 4; k++)
                for (int j = 0; j < 16; j++) acc[k][j] += rows[(r + k) * dim + i + j] * query[i + j];
        for (int k = 0; k < 4; k++) {
            float sum = 0.0f;
            for (Py_ssize_t t = i; t < dim; t++) sum += rows[(r + k) * dim + t] * query[t];
            for (int j = 0; j < 16; j++) sum += acc[k][j];
            if (sum < low) low = sum;
        }
    }
    for (; r < count; r++) {
        double product = dot32(rows + r * dim, query, dim);
        if (product < low) low = product;
    }
    return low;
}

static uint64_t slot_of(int64_t term, Py_ssize_t size) {
    return ((uint64_t)term * 0x9E3779B97F4A7C15ull) >> 40 & (uint64_t)(size - 1);
}

typedef struct {  /* the query's terms: a 4096-bit filter, then an open-addressing table */
    uint64_t bits[64];
    int64_t *keys; Py_ssize_t *slot; Py_ssize_t size;
} TermTable;

static int table_init(TermTable *table, const int64_t *terms, Py_ssize_t count) {
    table->size = 16;
    while (table->size < 2 * count) table->size *= 2;
    table->keys = malloc(sizeof(int64_t) * table->size);
    table->slot = malloc(sizeof(Py_ssize_t) * table->size);
    if (!table->keys || !table->slot) return -1;
    for (int i = 0; i < 64; i++) table->bits[i] = 0;
    for (Py_ssize_t i = 0; i < table->size; i++) table->keys[i] = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint64_t h = slot_of(terms[i], table->size);
        while (table->keys[h] != -1) h = (h + 1) & (uint64_t)(table->size - 1);
        table->keys[h] = terms[i];
        table->slot[h] = i;
        table->bits[(terms[i] >> 6) & 63] |= 1ull << (terms[i] & 63);
    }
    return 0;
}

/* The query slot of ``term`` (-1: not a query term); ``bm25`` tests the filter bit before asking. */
static Py_ssize_t table_find(const TermTable *table, int64_t term) {
    uint64_t h = slot_of(term, table->size);
    while (table->keys[h] != -1 && table->keys[h] != term) h = (h + 1) & (uint64_t)(table->size - 1);
    return table->keys[h] == term ? table->slot[h] : -1;
}

/* Okapi BM25 of text ``p``: its term counts summed in their stored order, as numpy's bincount does.
   The filter test runs without branches and keeps the few entries that pass: a branch per entry
   would be mispredicted at every query word. */
static double bm25(const Index *ix, const TermTable *table, const double *weights, int64_t p) {
    double score = 0.0, norm = ix->norm[p];
    int64_t passed[FILTER_BLOCK];
    for (int64_t start = ix->counts_indptr[p], end = ix->counts_indptr[p + 1]; start < end; start += FILTER_BLOCK) {
        int64_t stop = end - start < FILTER_BLOCK ? end : start + FILTER_BLOCK;
        Py_ssize_t count = 0;
        for (int64_t e = start; e < stop; e++) {
            int32_t term = ix->terms[e];
            passed[count] = e;
            count += (Py_ssize_t)(table->bits[(term >> 6) & 63] >> (term & 63) & 1);
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            int64_t e = passed[i];
            Py_ssize_t slot = table_find(table, ix->terms[e]);
            if (slot < 0) continue;
            double tf = ix->wide_freqs ? ((const int32_t *)ix->freqs)[e] : ((const uint16_t *)ix->freqs)[e];
            score += weights[slot] * (tf * K1_PLUS_ONE / (tf + norm));
        }
    }
    return score;
}

static int text_ok(const Index *ix, int64_t p) {
    if (p < 0 || p >= ix->texts) return 0;
    int64_t row = ix->vector_row[p], start = ix->counts_indptr[p], end = ix->counts_indptr[p + 1];
    return row >= 0 && row < ix->rows && start >= 0 && start <= end && end <= ix->entries;
}

/* Appends the heads of the ``words`` rarest query terms (``per_word`` each) to ``candidates``;
   returns the new count, or -1 when the saved heads point outside the index. */
static Py_ssize_t add_heads(const Index *ix, const int64_t *terms, Py_ssize_t count, Py_ssize_t words,
                            Py_ssize_t per_word, char *taken, int64_t *candidates, Py_ssize_t m) {
    for (Py_ssize_t w = 0; w < words && w < count; w++) {
        Py_ssize_t rarest = -1;
        int64_t fewest = 0;
        for (Py_ssize_t i = 0; i < count; i++) {  /* ties: the lower term, as a stable sort */
            int64_t holders = ix->postings_indptr[terms[i] + 1] - ix->postings_indptr[terms[i]];
            if (!taken[i] && (rarest < 0 || holders < fewest)) { rarest = i; fewest = holders; }
        }
        taken[rarest] = 1;
        int64_t start = ix->heads_indptr[terms[rarest]], end = ix->heads_indptr[terms[rarest] + 1];
        if (start < 0 || start > end || end > ix->head_count) return -1;
        if (end > start + per_word) end = start + per_word;
        for (int64_t e = start; e < end; e++) candidates[m++] = ix->heads[e];
    }
    return m;
}

/* One byte of every cache line of [start, end), folded together. Plain loads, not prefetch hints:
   the loads of many rows overlap out of order, while hints at random rows of large mappings were
   dropped (the search took as long as with no hints at all, and half as long with loads). */
static char load_span(const char *start, const char *end) {
    char folded = 0;
    for (const char *x = start; x < end; x += 64) folded ^= *x;
    return start < end ? folded ^ end[-1] : folded;
}

/* Brings text ``p``'s term counts (and its vector, when its cosine is to be computed) into the caches. */
static char load_text(const Index *ix, int64_t p, int with_vector) {
    int64_t start = ix->counts_indptr[p], end = ix->counts_indptr[p + 1];
    Py_ssize_t freq_size = ix->wide_freqs ? 4 : 2;
    char folded = load_span((const char *)(ix->terms + start), (const char *)(ix->terms + end));
    folded ^= load_span((const char *)ix->freqs + start * freq_size, (const char *)ix->freqs + end * freq_size);
    folded ^= (char)(ix->norm[p] > 0.0);
    if (with_vector) {
        const char *row = (const char *)(ix->vectors + ix->vector_row[p] * ix->dim);
        folded ^= load_span(row, row + ix->dim * 4);
    }
    return folded;
}

typedef struct {
    const float *given; Py_ssize_t given_count;  /* FAISS's scores of its hits (none: recompute) */
    const int64_t *found; Py_ssize_t found_count; /* FAISS's hits (record positions, -1: none) */
    const int64_t *terms; const double *repeats; Py_ssize_t term_count; /* the query's terms, ascending; repeats */
    const float *query;
    double weight; Py_ssize_t words, per_word, depth;
    int64_t *out_positions; double *out_scores;  /* room for ``depth`` hits */
} Query;

/* The fused top ``depth``; returns how many were found, -1 for a damaged index, -2 out of memory. */
static Py_ssize_t search(const Index *ix, const Query *q) {
    int lexical = q->weight < 1.0;  /* weight 1 is the dense ranking: no lexical candidates */
    Py_ssize_t capacity = q->found_count + (lexical ? q->words * q->per_word : 0) + 1;
    int64_t *candidates = malloc(sizeof(int64_t) * capacity);
    double *dense = malloc(sizeof(double) * capacity), *lex = calloc(capacity, sizeof(double));
    Scored *scored = malloc(sizeof(Scored) * (capacity + SELECTED_DEPTH));  /* the scored, then the kept */
    char *taken = calloc(q->term_count + 1, 1);
    double *weights = malloc(sizeof(double) * (q->term_count + 1));  /* per query term: idf x repeats */
    TermTable table = {{0}, NULL, NULL, 0};
    Py_ssize_t m = 0, found = 0, given = 0;
    if (!candidates || !dense || !lex || !scored || !taken || !weights || table_init(&table, q->terms, q->term_count) < 0) {
        found = -2;
        goto done;
    }
    int64_t holders = 0;  /* texts holding a query word, counted once per word */
    for (Py_ssize_t i = 0; i < q->term_count; i++) {
        int64_t t = q->terms[i];
        if (t < 0 || t >= ix->vocabulary) { found = -1; goto done; }
        weights[i] = ix->idf[t] * q->repeats[i];
        holders += ix->postings_indptr[t + 1] - ix->postings_indptr[t];
    }
    for (Py_ssize_t i = 0; i < q->found_count; i++) {
        if (q->found[i] < 0) continue;
        if (q->given) dense[given++] = q->given[i];
        candidates[m++] = q->found[i];
    }
    if (lexical) {
        m = add_heads(ix, q->terms, q->term_count, q->words, q->per_word, taken, candidates, m);
        if (m < 0) { found = -1; goto done; }
    }
    char folded = 0;
    for (Py_ssize_t c = 0; c < m; c++) {
        if (!text_ok(ix, candidates[c])) { found = -1; goto done; }
        folded ^= load_text(ix, candidates[c], c >= given);
    }
    volatile char loaded = folded;  /* keeps the loads: their values are not needed */
    (void)loaded;
    double low = lowest_product(ix->floor_rows, ix->floor_count, q->query, ix->dim);
    double high = -1e300, lex_low = 1e300, lex_high = -1e300;
    for (Py_ssize_t c = 0; c < m; c++) {
        if (c >= given) dense[c] = dot(ix->vectors + ix->vector_row[candidates[c]] * ix->dim, q->query, ix->dim);
        if (dense[c] < low) low = dense[c];
        if (dense[c] > high) high = dense[c];
        if (!lexical) continue;
        lex[c] = bm25(ix, &table, weights, candidates[c]);
        if (lex[c] < lex_low) lex_low = lex[c];
        if (lex[c] > lex_high) lex_high = lex[c];
    }
    if (holders < ix->texts) lex_low = 0.0;  /* some text holds no query word: its score is 0 */
    double span = high - low, lex_span = lex_high - lex_low;
    for (Py_ssize_t c = 0; c < m; c++) {
        double fused = q->weight * (span > 0.0 ? (dense[c] - low) / span : 0.0);
        if (lexical) fused += (1.0 - q->weight) * (lex_span > 0.0 ? (lex[c] - lex_low) / lex_span : 0.0);
        scored[c].score = fused;
        scored[c].position = candidates[c];
    }
    if (q->depth <= SELECTED_DEPTH) {
        for (Py_ssize_t c = 0; c < m; c++) keep_best(scored + m, &found, q->depth, scored[c]);
        for (Py_ssize_t c = 0; c < found; c++) {
            q->out_positions[c] = scored[m + c].position;
            q->out_scores[c] = scored[m + c].score;
        }
        goto done;
    }
    qsort(scored, m, sizeof(Scored), by_score);
    for (Py_ssize_t c = 0; c < m && found < q->depth; c++) {  /* the first of repeated candidates */
        int repeated = 0;
        for (Py_ssize_t j = 0; j < found && !repeated; j++) repeated = q->out_positions[j] == scored[c].position;
        if (repeated) continue;
        q->out_positions[found] = scored[c].position;
        q->out_scores[found++] = scored[c].score;
    }
done:
    free(candidates); free(dense); free(lex); free(scored); free(taken); free(weights); free(table.keys);
    free(table.slot);
    return found;
}

#define INDEX_BUFFERS 11
#define CAPSULE_NAME "retrieval._hybrid_kernel.Index"

typedef struct {  /* what ``prepare`` holds: the arrays' buffers (kept until the capsule is freed) */
    Py_buffer buffers[INDEX_BUFFERS];
    Index index;
} Prepared;

/* Item sizes of the index arrays, in ``prepare``'s order (0: 2 or 4 bytes, the term frequencies). */
static const Py_ssize_t ITEM_SIZES[INDEX_BUFFERS] = {4, 8, 4, 8, 4, 0, 8, 8, 8, 8, 4};

static void release_prepared(PyObject *capsule) {
    Prepared *prepared = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (!prepared) return;
    for (int i = 0; i < INDEX_BUFFERS; i++) PyBuffer_Release(&prepared->buffers[i]);
    PyMem_Free(prepared);
}

static int sizes_fit(const Py_buffer *b) {
    Py_ssize_t dim = b[0].ndim == 2 ? b[0].shape[1] : -1, texts = b[1].len / 8, vocabulary = b[8].len / 8 - 1;
    for (int i = 0; i < INDEX_BUFFERS; i++) {
        Py_ssize_t size = b[i].itemsize;
        if (ITEM_SIZES[i] ? size != ITEM_SIZES[i] : size != 2 && size != 4) return 0;
    }
    return dim > 0 && b[2].ndim == 2 && b[2].shape[1] == dim && b[3].len / 8 == texts + 1 && b[6].len / 8 == texts &&
           b[7].len / 8 == vocabulary && b[9].len / 8 == vocabulary + 1 && b[5].len / b[5].itemsize == b[4].len / 4;
}

/* Maps the arrays' pages in now (reading them from disk if they are not cached), so a query never
   waits on a page fault at a random row, and pages a process maps are not reclaimed as idle cache.
   Without MADV_POPULATE_READ (Linux < 5.14, other systems) the pages come in at first use instead. */
static void map_in(const Py_buffer *buffers) {
#ifdef __linux__
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < INDEX_BUFFERS; i++) {
        uintptr_t start = (uintptr_t)buffers[i].buf & ~(page - 1), end = (uintptr_t)buffers[i].buf + buffers[i].len;
        if (buffers[i].len > 0) (void)madvise((void *)start, end - start, MADV_POPULATE_READ);
    }
#else
    (void)buffers;
#endif
}

/* prepare(arrays) -> the index the searches read: its arrays' buffers taken once, not per query. */
static PyObject *prepare(PyObject *self, PyObject *arrays) {
    (void)self;
    if (!PyTuple_Check(arrays) || PyTuple_GET_SIZE(arrays) != INDEX_BUFFERS) {
        PyErr_Format(PyExc_TypeError, "prepare takes a tuple of %d arrays", INDEX_BUFFERS);
        return NULL;
    }
    Prepared *prepared = PyMem_Calloc(1, sizeof(Prepared));
    if (!prepared) return PyErr_NoMemory();
    Py_buffer *b = prepared->buffers;
    for (int i = 0; i < INDEX_BUFFERS; i++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(arrays, i), &b[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            while (i--) PyBuffer_Release(&b[i]);
            PyMem_Free(prepared);
            return NULL;
        }
    }
    if (!sizes_fit(b)) {
        for (int i = 0; i < INDEX_BUFFERS; i++) PyBuffer_Release(&b[i]);
        PyMem_Free(prepared);
        PyErr_SetString(PyExc_ValueError, "the index arrays do not fit together (item sizes or lengths)");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    map_in(b);
    Py_END_ALLOW_THREADS
    Index *ix = &prepared->index;
    ix->vectors = b[0].buf; ix->dim = b[0].shape[1]; ix->rows = b[0].shape[0];
    ix->vector_row = b[1].buf; ix->texts = b[1].len / 8;
    ix->floor_rows = b[2].buf; ix->floor_count = b[2].shape[0];
    ix->counts_indptr = b[3].buf; ix->terms = b[4].buf; ix->entries = b[4].len / 4;
    ix->freqs = b[5].buf; ix->wide_freqs = b[5].itemsize == 4;
    ix->norm = b[6].buf; ix->idf = b[7].buf;
    ix->postings_indptr = b[8].buf; ix->vocabulary = b[8].len / 8 - 1;
    ix->heads_indptr = b[9].buf; ix->heads = b[10].buf; ix->head_count = b[10].len / 4;
    PyObject *capsule = PyCapsule_New(prepared, CAPSULE_NAME, release_prepared);
    if (!capsule) {
        for (int i = 0; i < INDEX_BUFFERS; i++) PyBuffer_Release(&b[i]);
        PyMem_Free(prepared);
    }
    return capsule;
}

static int ascending(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The query's term columns (a list in query order, repeats allowed) as its distinct terms,
   ascending, and how often the query holds each; -1 with an exception set. */
static int query_terms(PyObject *columns, int64_t **terms, double **repeats, Py_ssize_t *count) {
    if (!PyList_Check(columns)) {
        PyErr_SetString(PyExc_TypeError, "the query's terms: a list of term columns");
        return -1;
    }
    Py_ssize_t given = PyList_GET_SIZE(columns);
    *terms = PyMem_Malloc(sizeof(int64_t) * (given + 1));
    *repeats = PyMem_Malloc(sizeof(double) * (given + 1));
    if (!*terms || !*repeats) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < given; i++) {
        (*terms)[i] = PyLong_AsLongLong(PyList_GET_ITEM(columns, i));
        if ((*terms)[i] == -1 && PyErr_Occurred()) return -1;
    }
    qsort(*terms, given, sizeof(int64_t), ascending);
    *count = 0;
    for (Py_ssize_t i = 0; i < given; i++) {
        if (*count && (*terms)[*count - 1] == (*terms)[i]) {
            (*repeats)[*count - 1] += 1.0;
        } else {
            (*terms)[*count] = (*terms)[i];
            (*repeats)[(*count)++] = 1.0;
        }
    }
    return 0;
}

/* [(record position, fused score), ...], best first. */
static PyObject *hit_list(const int64_t *positions, const double *scores, Py_ssize_t count) {
    PyObject *hits = PyList_New(count);
    for (Py_ssize_t i = 0; hits && i < count; i++) {
        PyObject *hit = Py_BuildValue("(Ld)", (long long)positions[i], scores[i]);
        if (!hit) {
            Py_CLEAR(hits);
            break;
        }
        PyList_SET_ITEM(hits, i, hit);
    }
    return hits;
}

static PyObject *bounded_search(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *capsule, *columns, *hits = NULL;
    Py_buffer given, found, query;
    Query q = {0};
    if (!PyArg_ParseTuple(args, "Oy*y*Oy*dnnn", &capsule, &given, &found, &columns, &query, &q.weight,
                          &q.words, &q.per_word, &q.depth))
        return NULL;
    Prepared *prepared = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    int64_t *term_ids = NULL;
    double *counts = NULL;
    if (!prepared || query_terms(columns, &term_ids, &counts, &q.term_count) < 0) goto done;
    const Index *ix = &prepared->index;
    q.given = given.len ? given.buf : NULL; q.given_count = given.len / 4;
    q.found = found.buf; q.found_count = found.len / 8;
    q.terms = term_ids; q.repeats = counts; q.query = query.buf;
    if (query.len != ix->dim * 4 || (q.given && q.given_count != q.found_count) || q.words < 0 || q.per_word < 0 ||
        q.depth < 0) {
        PyErr_SetString(PyExc_ValueError, "query arrays do not fit the index (float32 query row, int64 hits)");
        goto done;
    }
    q.out_positions = PyMem_Malloc(sizeof(int64_t) * (q.depth + 1));
    q.out_scores = PyMem_Malloc(sizeof(double) * (q.depth + 1));
    if (!q.out_positions || !q.out_scores) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t result;
    Py_BEGIN_ALLOW_THREADS
    result = search(ix, &q);
    Py_END_ALLOW_THREADS
    if (result == -1)
        PyErr_SetString(PyExc_ValueError, "the saved index points outside its own arrays; rebuild the index");
    else if (result == -2)
        PyErr_NoMemory();
    else
        hits = hit_list(q.out_positions, q.out_scores, result);
done:
    PyMem_Free(term_ids); PyMem_Free(counts); PyMem_Free(q.out_positions); PyMem_Free(q.out_scores);
    PyBuffer_Release(&given); PyBuffer_Release(&found); PyBuffer_Release(&query);
    return hits;
}

static PyMethodDef methods[] = {
    {"prepare", prepare, METH_O, "prepare(arrays) -> the index ``bounded_search`` reads (see SearchEngine)"},
    {"bounded_search", bounded_search, METH_VARARGS,
     "bounded_search(index, faiss_scores, faiss_positions, columns, query, weight, words, per_word, depth) "
     "-> [(record position, fused score)], best first"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hybrid_kernel", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hybrid_kernel(void) { return PyModule_Create(&module); }

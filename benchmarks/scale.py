"""The search engine at 100k and 1M chunks: Flat, HNSW32 and IVF-PQ, dense-only and hybrid.

Data (built once per size into ``benchmarks/.work/scale``):

* text: the shared corpora (chroma, jadon-cyber) and Python's pydoc topics: chroma as below,
  the others cut into windows of ``WORDS_PER_CHUNK`` words (the *base* chunks, ~7k); the index
  holds them and perturbed copies
  (each copy drops ~15% of the words, swaps ~5% for random corpus words and starts at a random
  word of its base), as many as the size needs;
* vectors: real all-MiniLM-L6-v2 vectors for the chroma corpora's chunks as ``ragpress eval``
  cuts them by default (recursive, 150 tokens: 316 chunks, from the evaluation's embedding
  cache; they are base chunks too). Every other chunk gets a cheap vector: the idf-weighted
  mean of *word vectors* (each word's vector = mean of the real vectors of the real chunks
  holding it), L2-normalised, one sparse matrix product, so texts and vectors roughly agree and
  the 1M set costs seconds instead of hours of MiniLM on 2 shared cores (MiniLM embeds ~10
  chunks/s here under load);
* queries: the 200 chroma questions, embedded with MiniLM.

Per (size, factory), in fresh child processes: **build** (all chunks staged, one
``IndexStore.commit()``: FAISS train/add, BM25 (term counts, score matrix, heads), vectors,
meta.json, checksums;
wall seconds, peak RSS, bytes on disk of the version) and **query** (opened as ``ragpress
query`` opens it: memory-mapped; RSS after the queries). A query's latency is one call of
``SearchEngine.search([question], vector, k=5, ..., distinct=True)`` on an open engine,
sequentially, one question at a time: FAISS search, BM25 (hybrid: over every chunk for Flat,
over the bounded candidate pool for HNSW and IVF-PQ, see ``retrieval/search.py``), fusion, the
distinct texts rule and building the hits. The question's MiniLM encoding is measured apart (the same
for both modes) and reported as its own p50, with the end-to-end ratio
(encode + hybrid) / (encode + dense). Recall@5 of each approximate factory = overlap of its top 5
with the exact Flat top 5 (the Flat engine equals a brute-force scan; ``tests/test_search.py``),
per mode; and the same overlap counted by *base* text (a hit counts when it is a copy of the
same base as an exact hit): the copies of one base text are near-ties in both scores (~20 per
base at 100k, ~200 at 1M), so which copies the exact ranking puts first is mostly arbitrary.
Medians and ratios only: the machine is shared.

    nice -n 10 .venv/bin/python benchmarks/scale.py --sizes 100000 [1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORK = REPO / "benchmarks" / ".work" / "scale"
RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("RAGPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
WORDS_PER_CHUNK = 100
CHUNKS_PER_DOC = 100
QUERIES = 100  # questions timed per mode (all 200 for recall)
K = 5
HYBRID_WEIGHT = 0.8
_WORD = re.compile(r"\S+")


def factories(size: int) -> dict[str, str]:
    """FAISS factory per label; IVF lists ~ sqrt(n) (FAISS's advice of >= 39 training vectors each holds)."""
    nlist = 256 if size <= 200_000 else 1024
    return {"Flat": "Flat", "HNSW32": "HNSW32", "IVF-PQ": f"IVF{nlist},PQ48"}


# ------------------------------------------------------------------------------ data
def base_chunks() -> list[str]:
    from eval.datasets import pydoc_topics_corpus

    texts = [p.read_text(encoding="utf-8") for p in sorted((DATA / "jadon-cyber" / "corpora").glob("*"))]
    texts += list(pydoc_topics_corpus().values())
    chunks = []
    for text in texts:
        words = _WORD.findall(text)
        chunks += [" ".join(words[i:i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]
    return [c for c in chunks if len(c.split()) >= 20]


def perturbed(base: str, rng: np.random.Generator, vocabulary: list[str]) -> str:
    words = base.split()
    start = int(rng.integers(0, max(1, len(words) // 4)))
    words = words[start:] + words[:start]
    kept = [w for w in words if rng.random() > 0.15]
    return " ".join(vocabulary[int(rng.integers(len(vocabulary)))] if rng.random() < 0.05 else w for w in kept)


def word_vector_model(texts: list[str], vectors: np.ndarray) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Vocabulary, per-word vectors (mean of the real vectors holding the word) and idf."""
    from retrieval.lexical import lexical_tokens

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for row, text in enumerate(texts):
        for word in set(lexical_tokens(text)):
            rows.append(row)
            cols.append(vocab.setdefault(word, len(vocab)))
    import scipy.sparse as sp

    a = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(vocab)))
    df = np.asarray(a.sum(axis=0)).ravel()
    words = (a.T @ vectors) / df[:, None]
    return vocab, words.astype(np.float32), np.log((1 + len(texts)) / (1 + df)).astype(np.float32) + 1.0


def cheap_vectors(texts: list[str], vocab: dict[str, int], words: np.ndarray, idf: np.ndarray) -> np.ndarray:
    import scipy.sparse as sp

    from retrieval.lexical import lexical_tokens

    out = np.zeros((len(texts), words.shape[1]), dtype=np.float32)
    for block in range(0, len(texts), 50_000):
        rows, cols = [], []
        for row, text in enumerate(texts[block:block + 50_000]):
            ids = [vocab[w] for w in lexical_tokens(text) if w in vocab]
            rows += [row] * len(ids)
            cols += ids
        a = sp.csr_matrix((idf[cols], (rows, cols)), shape=(min(50_000, len(texts) - block), len(vocab)))
        out[block:block + a.shape[0]] = a @ words
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def prepare(size: int) -> Path:
    """Texts and vectors of ``size`` chunks, and the embedded questions, under WORK/<size>."""
    target = WORK / str(size)
    if (target / "done").is_file():
        return target
    from eval.datasets import load_chroma
    from eval.defaults import BEST_CONFIG
    from eval.embedding_cache import EmbeddingCache
    from eval.runner import chunk_corpora, default_chunker_factory
    from retrieval.encoder import load_encoder

    started = time.perf_counter()
    dataset = load_chroma(DATA / "chroma" / "questions.csv", DATA / "chroma" / "corpora")
    real_texts = [c.text for c in chunk_corpora(dataset.corpora, default_chunker_factory(BEST_CONFIG))]
    bases = real_texts + base_chunks()
    encoder, cache = load_encoder(), EmbeddingCache()
    rng = np.random.default_rng(0)
    real_rows = np.arange(len(real_texts))
    real = cache.embed(encoder, real_texts)
    model = word_vector_model(real_texts, real)
    vocabulary = sorted(model[0])
    texts = list(bases)
    while len(texts) < size:
        texts.append(perturbed(bases[len(texts) % len(bases)], rng, vocabulary))
    texts = texts[:size]
    vectors = cheap_vectors(texts, *model)
    vectors[real_rows[real_rows < size]] = real[real_rows < size]
    questions = [q.text for q in dataset.questions]
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / "vectors.npy", vectors)
    np.save(target / "questions.npy", cache.embed(encoder, questions))
    (target / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    (target / "questions.json").write_text(json.dumps(questions), encoding="utf-8")
    (target / "prepare.json").write_text(json.dumps({"seconds": time.perf_counter() - started, "base_chunks": len(bases),
                                                     "real_vectors": int(len(real_rows))}))
    (target / "done").write_text("ok")
    return target


# ------------------------------------------------------------------------ children
def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def child_build(size: int, label: str) -> dict:
    from retrieval.base import Chunk, Document
    from retrieval.index_store import IndexStore

    data = WORK / str(size)
    texts = json.loads((data / "texts.json").read_text(encoding="utf-8"))
    vectors = np.load(data / "vectors.npy")
    directory = WORK / f"index-{size}-{label}"
    shutil.rmtree(directory, ignore_errors=True)
    started = time.perf_counter()
    store = IndexStore(directory, "all-MiniLM-L6-v2@scale-benchmark", vectors.shape[1], factories(size)[label])
    for start in range(0, len(texts), CHUNKS_PER_DOC):
        pieces = texts[start:start + CHUNKS_PER_DOC]
        chunks, offset = [], 0
        for piece in pieces:
            chunks.append(Chunk(piece, offset, offset + len(piece), len(piece.split())))
            offset += len(piece) + 1
        store.add_document(Document(f"d{start}", f"d{start}.txt", "\n".join(pieces), str(start)), chunks,
                           vectors[start:start + len(pieces)])
    staged = time.perf_counter()
    store.commit()
    committed = time.perf_counter()
    version = directory / f"v{store.version:06d}"
    disk = {p.relative_to(version).as_posix(): p.stat().st_size for p in version.rglob("*") if p.is_file()}
    return {"stage_s": staged - started, "commit_s": committed - staged, "build_s": committed - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "effective_factory": store.effective_factory,
            "disk_mb": sum(disk.values()) / 1e6, "disk_mb_by_file": {k: v / 1e6 for k, v in sorted(disk.items())}}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def child_query(size: int, label: str) -> dict:
    from retrieval.encoder import load_encoder
    from retrieval.index_store import IndexStore
    from retrieval.search import SearchEngine

    data = WORK / str(size)
    questions = json.loads((data / "questions.json").read_text(encoding="utf-8"))
    vectors = np.load(data / "questions.npy")
    before = rss_mb()
    opened = time.perf_counter()
    engine = SearchEngine(IndexStore.open(WORK / f"index-{size}-{label}", verify=False))
    open_s = time.perf_counter() - opened
    encoder = load_encoder()
    out: dict = {"open_s": open_s, "rss_after_open_mb": rss_mb(), "rss_before_open_mb": before}
    modes = {"dense": None, "hybrid": HYBRID_WEIGHT}
    for weight in modes.values():  # warm-up (page cache, first-call costs)
        engine.search(questions[:5], vectors[:5], K, weight)
    latency: dict[str, list[float]] = {"dense": [], "hybrid": [], "encode": []}
    count = min(QUERIES, len(questions))
    for i in range(count):  # apart: torch's threads still spinning after an encode would slow the next search
        started = time.perf_counter()
        encoder.encode([questions[i]])
        latency["encode"].append(time.perf_counter() - started)
    for i in range(count):  # modes interleaved per question, in alternating order: same machine load
        for mode in (("dense", "hybrid") if i % 2 == 0 else ("hybrid", "dense")):
            started = time.perf_counter()
            engine.search([questions[i]], vectors[i:i + 1], K, modes[mode])
            latency[mode].append(time.perf_counter() - started)
    for mode, values in latency.items():
        out[f"{mode}_p50_ms"] = percentile(values, 50) * 1000
        out[f"{mode}_p95_ms"] = percentile(values, 95) * 1000
    out["hybrid_over_dense_p50"] = out["hybrid_p50_ms"] / out["dense_p50_ms"]
    out["with_encoding_hybrid_over_dense_p50"] = ((out["encode_p50_ms"] + out["hybrid_p50_ms"]) /
                                                   (out["encode_p50_ms"] + out["dense_p50_ms"]))
    out["top"] = {mode: [[h.chunk_id for h in hits] for hits in engine.search(questions, vectors, K, weight)]
                  for mode, weight in modes.items()}
    out["rss_after_queries_mb"] = rss_mb()
    return out


def run_child(stage: str, size: int, label: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, __file__, "--child", stage, str(size), label], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} {size} {label} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------- report
def recall(approx: list[list[int]], exact: list[list[int]], bases: int | None = None) -> float:
    """Mean overlap of the top lists; with ``bases``, of their base texts (chunk id i is a copy of
    base i mod bases: the texts are the bases followed by their perturbed copies, in that order)."""
    def key(chunk_id: int) -> int:
        return chunk_id % bases if bases else chunk_id

    return float(np.mean([len({key(i) for i in a} & {key(i) for i in e}) / len({key(i) for i in e})
                          for a, e in zip(approx, exact)]))


def _fraction(row: dict, key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "n/a (no Flat row)"


def markdown(report: dict) -> str:
    lines = ["# Search engine at scale", "", f"Machine: {report['machine']}", "",
             f"Command: `{report['command']}`", "", report["method"], "",
             "| chunks | factory | build s | disk MB | peak RSS build MB | RSS query MB | dense p50 / p95 ms | "
             "hybrid p50 / p95 ms | hybrid/dense p50 | with encoding | recall@5 dense | recall@5 hybrid | "
             "by base text: dense / hybrid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['size']:,} | {row['factory']} | {row['build_s']:.1f} | {row['disk_mb']:.0f} | {row['peak_rss_mb']:.0f} | "
                     f"{row['rss_after_queries_mb']:.0f} | {row['dense_p50_ms']:.2f} / {row['dense_p95_ms']:.2f} | "
                     f"{row['hybrid_p50_ms']:.2f} / {row['hybrid_p95_ms']:.2f} | {row['hybrid_over_dense_p50']:.2f} | "
                     f"{row['with_encoding_hybrid_over_dense_p50']:.2f} | {_fraction(row, 'recall_dense')} | {_fraction(row, 'recall_hybrid')} | "
                     f"{_fraction(row, 'recall_dense_base')} / {_fraction(row, 'recall_hybrid_base')} |")
    lines += ["", "Question encoding (MiniLM, p50 ms): " + ", ".join(f"{r['size']:,} {r['factory']}: {r['encode_p50_ms']:.1f}"
                                                              for r in report["rows"]), ""]
    if report.get("missing"):
        lines += ["Not measured: " + report["missing"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32", "IVF-PQ"])
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        stage, size, label = args.child
        print(json.dumps((child_build if stage == "build" else child_query)(int(size), label)))
        return
    from eval.report import machine_info

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    machine = {**machine_info(), "cpu": cpu, "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}
    report = {"machine": machine, "command": "nice -n 10 .venv/bin/python benchmarks/scale.py --sizes "
              + " ".join(map(str, args.sizes)), "method": __doc__.split("\n\n", 1)[1].split("    nice")[0].strip(), "rows": []}
    for size in args.sizes:
        data = prepare(size)
        report.setdefault("prepare", {})[size] = json.loads((data / "prepare.json").read_text())
        tops: dict[str, dict] = {}
        for label in args.factories:
            row = {"size": size, "factory": factories(size)[label], "label": label, **run_child("build", size, label)}
            row.update(run_child("query", size, label))
            tops[label] = row.pop("top")
            report["rows"].append(row)
            add_recalls([r for r in report["rows"] if r["size"] == size], tops, size)
            shutil.rmtree(WORK / f"index-{size}-{label}", ignore_errors=True)
            write(report)  # row by row: an interrupted run keeps what it measured
            print(json.dumps({k: v for k, v in row.items() if k != "disk_mb_by_file"}), flush=True)


def add_recalls(rows: list[dict], tops: dict[str, dict], size: int) -> None:
    """Recall@5 against the exact (Flat) ranking, for every row of one size once Flat has run (in
    this run, or in an earlier one of the same data: its top 5 are kept in WORK/<size>)."""
    saved = WORK / str(size) / "exact_top.json"
    if "Flat" in tops:
        saved.write_text(json.dumps(tops["Flat"]), encoding="utf-8")
    elif saved.is_file():
        tops = {**tops, "Flat": json.loads(saved.read_text(encoding="utf-8"))}
    else:
        return
    bases = json.loads((WORK / str(size) / "prepare.json").read_text())["base_chunks"]
    for row in rows:
        if row.get("label") in tops:
            for mode in ("dense", "hybrid"):
                row[f"recall_{mode}"] = recall(tops[row["label"]][mode], tops["Flat"][mode])
                row[f"recall_{mode}_base"] = recall(tops[row["label"]][mode], tops["Flat"][mode], bases)


def write(report: dict) -> None:
    """The JSON and markdown results; rows of an earlier (or a concurrent) run for other (size,
    factory) pairs are kept."""
    import fcntl

    RESULTS.mkdir(exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = RESULTS / "scale.json"
        if previous.is_file():
            ran = {(r["size"], r["factory"]) for r in report["rows"]}
            kept = [r for r in json.loads(previous.read_text())["rows"] if (r["size"], r["factory"]) not in ran]
            report = {**report, "rows": sorted(kept + report["rows"], key=lambda r: (r["size"], r["factory"] != "Flat", r["factory"]))}
        missing = sorted({1_000_000, 100_000} - {r["size"] for r in report["rows"]})
        report["missing"] = f"sizes {', '.join(f'{m:,}' for m in missing)} (not run)" if missing else ""
        (RESULTS / "scale.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        (RESULTS / "scale.md").write_text(markdown(report), encoding="utf-8")


if __name__ == "__main__":
    main()

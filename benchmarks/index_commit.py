"""Cost of a small incremental commit on a large index: ragpress vs its session-6 commit vs the array floor.

An ``IndexStore`` (Flat, dim 384 as all-MiniLM-L6-v2, chunks of 800 characters, 100 chunks per
document) is filled with N chunks of random unit vectors and committed once. Then, interleaved per
repeat in ONE process, each of three steps writes one more document (100 chunks):

* ``ragpress``: ``add_document`` + ``commit()`` as shipped;
* ``before``: the same with ``meta.json`` built by ``dataclasses.asdict`` and written by the
  standard ``json`` module, as up to session 6 (the reference this change is measured against; the
  JSON it writes has the same content, see ``tests/test_index_store.py``);
* ``floor``: only what any commit of the whole version must write: ``faiss.write_index`` of the
  index and ``np.save`` of ids and vectors, fsynced, into a fresh directory.

Opening the committed index (as every query does: meta.json parsed, checksums verified, arrays
memory-mapped) is timed too, with meta.json parsed by orjson (ragpress) and by the standard json
module (session 6). Medians over the repeats and the ratios of medians are reported. A commit still rewrites the whole
version (index, arrays and meta.json with every chunk's text): this measures what that costs.

    .venv/bin/python benchmarks/index_commit.py [--sizes 20000 100000 300000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from indexing import machine  # noqa: E402  (benchmarks/indexing.py: CPU, load average, versions)

from filestore import atomic_write_text, fsync_path  # noqa: E402
from retrieval import index_store  # noqa: E402
from retrieval.base import Chunk, Document  # noqa: E402
from retrieval.index_store import FORMAT_VERSION, IndexStore  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DIM, PER_DOC, CHUNK_CHARS = 384, 100, 800


def session6_meta(self: IndexStore, number: int, files: dict) -> dict:
    """``IndexStore._meta`` as it was up to session 6 (``dataclasses.asdict`` deep-copies every record)."""
    documents = [dict(asdict(d), chunk_ids=list(d.chunk_ids)) for d in (self._docs[k] for k in sorted(self._docs))]
    return {
        "format": FORMAT_VERSION, "version": number, "model_id": self.model_id, "dim": self.dim,
        "factory": self.factory, "effective_factory": self.effective_factory,
        "chunker_config": self._chunker_config, "next_id": self._next_id, "files": files,
        "documents": documents, "chunks": [asdict(c) for c in self.chunks()],
    }


class Session6Json:
    """Stands in for ``orjson`` inside ``retrieval.index_store``: meta.json written by the standard json module, as up to session 6."""

    @staticmethod
    def loads(data: bytes) -> dict:
        return json.loads(data.decode("utf-8"))

    @staticmethod
    def dumps(meta: dict) -> bytes:
        return json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def document(number: int, rng: np.random.Generator) -> tuple[Document, list[Chunk], np.ndarray]:
    words = " ".join(f"word{number}x{i}" for i in range(PER_DOC * CHUNK_CHARS // 10))[: PER_DOC * CHUNK_CHARS]
    chunks = [Chunk(words[i * CHUNK_CHARS:(i + 1) * CHUNK_CHARS], i * CHUNK_CHARS, (i + 1) * CHUNK_CHARS, 200) for i in range(PER_DOC)]
    vectors = rng.standard_normal((PER_DOC, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Document(f"doc{number}", f"/corpus/doc{number}.txt", words, f"hash{number}"), chunks, vectors


def timed_commit(store: IndexStore, number: int, rng: np.random.Generator, session6: bool = False) -> float:
    doc, chunks, vectors = document(number, rng)
    store.add_document(doc, chunks, vectors)
    with contextlib.ExitStack() as patches:
        if session6:
            patches.enter_context(mock.patch.object(IndexStore, "_meta", session6_meta))
            patches.enter_context(mock.patch.object(index_store, "orjson", Session6Json))
        start = time.perf_counter()
        store.commit()
        return time.perf_counter() - start


def timed_open(directory: Path, session6: bool = False) -> float:
    """Open the committed index as every query does (checksums verified, arrays memory-mapped)."""
    with mock.patch.object(index_store, "orjson", Session6Json) if session6 else contextlib.nullcontext():
        start = time.perf_counter()
        IndexStore.open(directory)
        return time.perf_counter() - start


def timed_floor(store: IndexStore, scratch: Path) -> float:
    """Write the committed index and arrays the way a whole-version commit must, and nothing else."""
    target = Path(tempfile.mkdtemp(dir=scratch))
    start = time.perf_counter()
    faiss.write_index(store._index, str(target / "index.faiss"))
    for name, array in (("ids.npy", store._ids), ("vectors.npy", np.asarray(store._vectors))):
        with open(target / name, "wb") as handle:
            np.save(handle, array)
    for name in ("index.faiss", "ids.npy", "vectors.npy"):
        fsync_path(target / name)
    elapsed = time.perf_counter() - start
    shutil.rmtree(target)
    return elapsed


def measure(n: int, repeats: int, scratch: Path) -> dict:
    rng = np.random.default_rng(n)
    directory = Path(tempfile.mkdtemp(dir=scratch))
    store = IndexStore(directory, "bench-model", DIM, "Flat")
    for number in range(n // PER_DOC):
        store.add_document(*document(number, rng))
    start = time.perf_counter()
    store.commit()
    first = time.perf_counter() - start
    times: dict[str, list[float]] = {"ragpress": [], "before": [], "floor": [], "open": [], "open before": []}
    number = n // PER_DOC
    for _ in range(repeats):
        times["ragpress"].append(timed_commit(store, number, rng))
        times["before"].append(timed_commit(store, number + 1, rng, session6=True))
        times["floor"].append(timed_floor(store, scratch))
        number += 2
        times["open"].append(timed_open(directory))
        times["open before"].append(timed_open(directory, session6=True))
    sizes = {p.name: p.stat().st_size for p in (directory / f"v{store.version:06d}").iterdir()}
    shutil.rmtree(directory)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"chunks": n, "first_commit_s": first, "times_s": times, "median_s": medians, "version_bytes": sizes,
            "before_over_ragpress": medians["before"] / medians["ragpress"], "ragpress_over_floor": medians["ragpress"] / medians["floor"],
            "open_before_over_ragpress": medians["open before"] / medians["open"]}


def markdown(result: dict) -> str:
    host = result["machine"]
    lines = [
        "# One-document commit on a large index: ragpress vs session 6 vs the array floor",
        "",
        f"Machine: {host['nproc']} CPUs ({host['cpu']}), shared; load average {' '.join(host['loadavg_at_start'])} at the start; "
        f"Python {host['python']}, faiss-cpu {host['faiss-cpu']}. Data: random unit vectors, dim {DIM}, Flat, "
        f"{PER_DOC} chunks of {CHUNK_CHARS} characters per document; each commit adds one document. "
        f"Medians over {result['repeats']} interleaved repeats.",
        "",
        "| chunks in the index | ragpress commit (s) | session-6 commit (s) | floor: write index + arrays (s) | session 6 / ragpress | ragpress / floor | open: ragpress / session 6 (s) | version on disk (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        m = row["median_s"]
        lines.append(f"| {row['chunks']:,} | {m['ragpress']:.2f} | {m['before']:.2f} | {m['floor']:.2f} | {row['before_over_ragpress']:.2f}x | "
                     f"{row['ragpress_over_floor']:.2f}x | {m['open']:.2f} / {m['open before']:.2f} | {sum(row['version_bytes'].values()) / 1e6:.0f} |")
    lines += ["", f"Reproduce: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[20_000, 100_000, 300_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="index_commit")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    host = machine()  # now, so its load average is the one at the start
    scratch = Path(tempfile.mkdtemp(prefix="ragpress-index-commit-"))
    try:
        rows = []
        for n in args.sizes:
            rows.append(measure(n, args.repeats, scratch))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "times_s"}), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    command = "python benchmarks/index_commit.py " + " ".join(sys.argv[1:])
    result = {"machine": host, "repeats": args.repeats, "rows": rows, "command": command.strip()}
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

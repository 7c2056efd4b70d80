"""Indexing throughput: ragpress ``index_paths`` end to end vs the bare embedding floor.

Data: the pydoc help topics (one file per topic, repeated ``--copies`` times into separate
folders), chunked by the ``token`` chunker at 254 tokens (fits the 256-token window with [CLS]/[SEP]), no overlap.
Floor: ``SentenceTransformer.encode`` of exactly those chunk texts (batch size 64, the same
model object, the same flags ragpress passes: no progress bar, normalised), nothing else. End to end: ``index_paths`` into a fresh directory: discover +
load + hash + chunk + embed (with the truncation check) + FAISS Flat + atomic persist.
Both are run in ONE process, interleaved per repeat, and the ratio of median throughputs
(chunks/s) is reported; the target is end to end >= 0.85x the floor.

    .venv/bin/python benchmarks/indexing.py [--copies 1] [--repeats 3] [--commit-every 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filestore import atomic_write_text  # noqa: E402
from retrieval.chunkers import make_chunker  # noqa: E402
from retrieval.encoder import TruncationWarning, load_encoder  # noqa: E402
from retrieval.index_store import IndexStore  # noqa: E402
from retrieval.indexing import chunk_documents, index_paths, load_documents  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / ".work" / "indexing"
# 254 + [CLS] + [SEP] = the model's 256-token window: no chunk is truncated by the model.
CHUNK_SIZE, BATCH_SIZE, TARGET = 254, 64, 0.85


def write_corpus(root: Path, copies: int) -> Path:
    """One UTF-8 file per pydoc topic, ``copies`` times in separate folders."""
    import pydoc_data.topics

    shutil.rmtree(root, ignore_errors=True)
    for copy in range(copies):
        folder = root / f"copy{copy:02d}"
        folder.mkdir(parents=True)
        for name, text in sorted(pydoc_data.topics.topics.items()):
            (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return root


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3], "python": platform.python_version(),
            "torch": version("torch"), "sentence-transformers": version("sentence-transformers"), "faiss-cpu": version("faiss-cpu")}


def run(copies: int, repeats: int, commit_every: int) -> dict:
    host = machine()  # now, so its load average is the one at the start
    corpus = write_corpus(WORK / "corpus", copies)
    encoder, chunker = load_encoder(), make_chunker("token", CHUNK_SIZE, 0)
    docs, _ = load_documents([corpus])
    texts = [c.text for _, chunks in chunk_documents(docs, chunker) for c in chunks]
    model = encoder._model  # the bare SentenceTransformer
    model.encode(texts[:BATCH_SIZE], batch_size=BATCH_SIZE)  # warm-up
    floor_s, e2e_s, e2e_parts = [], [], []
    for repeat in range(repeats):
        # Alternate the order so slow drifts of the machine's load hit both sides alike.
        for side in (("floor", "e2e") if repeat % 2 == 0 else ("e2e", "floor")):
            if side == "floor":
                start = time.perf_counter()
                model.encode(texts, batch_size=BATCH_SIZE, show_progress_bar=False, normalize_embeddings=True)
                floor_s.append(time.perf_counter() - start)
            else:
                index_dir = Path(tempfile.mkdtemp(dir=WORK, prefix="index-"))
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TruncationWarning)
                    summary = index_paths([corpus], index_dir, chunker, encoder, commit_every=commit_every)
                e2e_s.append(time.perf_counter() - start)
                e2e_parts.append(dict(summary.timings))
                indexed = sorted(c.text for c in IndexStore.open(index_dir).chunks())
                assert indexed == sorted(texts), "end to end indexed other chunks than the floor encoded"
                shutil.rmtree(index_dir)
        print(f"repeat {repeat}: floor {floor_s[-1]:.1f} s, end to end {e2e_s[-1]:.1f} s", flush=True)
    n = len(texts)
    floor_tp, e2e_tp = n / statistics.median(floor_s), n / statistics.median(e2e_s)
    return {
        "machine": host,
        "data": {"source": "pydoc_data.topics", "copies": copies, "files": len(docs),
                 "bytes": sum(len(d.text.encode()) for d in docs), "chunks": n,
                 "chunk_tokens_total": sum(c.n_tokens for _, cs in chunk_documents(docs, chunker) for c in cs),
                 "chunks_truncated_by_model": encoder.count_too_long(texts)},
        "config": {"chunker": "token", "chunk_size": CHUNK_SIZE, "overlap": 0, "batch_size": BATCH_SIZE,
                   "factory": "Flat", "commit_every": commit_every, "repeats": repeats, "model_id": encoder.model_id},
        "floor_s": floor_s, "e2e_s": e2e_s, "e2e_timings": e2e_parts,
        "floor_chunks_per_s": floor_tp, "e2e_chunks_per_s": e2e_tp,
        "ratio_e2e_vs_floor": e2e_tp / floor_tp, "paired_ratios": [f / e for f, e in zip(floor_s, e2e_s)],
        "target": TARGET, "meets_target": e2e_tp / floor_tp >= TARGET,
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
    }


def markdown(r: dict) -> str:
    m, d, c = r["machine"], r["data"], r["config"]
    parts = {k: statistics.median(t[k] for t in r["e2e_timings"]) for k in r["e2e_timings"][0]}
    return "\n".join([
        "# Indexing throughput: end to end vs the embedding floor", "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch threads {m['torch_threads']}, load average "
        f"{' '.join(m['loadavg_at_start'])} at start, {' '.join(r['loadavg_at_end'])} at end (other jobs share the CPUs).",
        f"Data: pydoc help topics x{d['copies']}: {d['files']} files, {d['bytes'] / 1e6:.2f} MB, {d['chunks']} chunks "
        f"({c['chunker']} chunker, {c['chunk_size']} tokens, overlap {c['overlap']}); model {c['model_id']}, batch {c['batch_size']}.",
        f"{d['chunks_truncated_by_model']} of {d['chunks']} chunks exceed the model's 256-token window once [CLS]/[SEP] "
        "are added; both sides embed the same texts.", "",
        "| | median s | chunks/s | vs floor |", "|---|---:|---:|---:|",
        f"| floor: bare `SentenceTransformer.encode` | {statistics.median(r['floor_s']):.2f} | {r['floor_chunks_per_s']:.1f} | 1.00 |",
        f"| ragpress `index_paths` end to end | {statistics.median(r['e2e_s']):.2f} | {r['e2e_chunks_per_s']:.1f} | {r['ratio_e2e_vs_floor']:.3f} |",
        "",
        f"Target: end to end >= {r['target']}x the floor: **{'met' if r['meets_target'] else 'NOT met'}** "
        f"(ratio of medians over {c['repeats']} interleaved repeats; paired per-repeat ratios "
        f"{', '.join(f'{x:.3f}' for x in r['paired_ratios'])}).",
        "End-to-end median split (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + ".",
        "", "Reproduce: `.venv/bin/python benchmarks/indexing.py "
        f"--copies {d['copies']} --repeats {c['repeats']} --commit-every {c['commit_every']}`", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=1, help="how many times the pydoc topics are written (0.47 MB each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commit-every", type=int, default=100, help="documents per commit (checkpoint)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    result = run(args.copies, args.repeats, args.commit_every)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "indexing.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / "indexing.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

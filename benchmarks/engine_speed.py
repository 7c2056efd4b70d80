"""Retrieval time of ``ragpress eval`` (old ranking vs the search engine) and the LangChain retriever's overhead.

1. **Eval retrieval**, the default configuration (``eval.defaults.BEST_CONFIG``) on the shared
   Chroma data (200 questions), in child processes alternating the base commit's code (a
   ``git archive`` export of ``--base``: float64 scan + ``rank_bm25`` rebuilt per process, its own
   ranking in ``eval/runner.py``) and this checkout (index version + ``retrieval.search``).
   Each child evaluates once to warm up (chunking, cached embeddings, and the base's BM25 or
   this checkout's index version: built, or reused from the cache), then ``--repeats`` times;
   the figure is ``timings["retrieve_s"]`` of those warm runs (base: scoring and ranking every
   question; this checkout: searching every question, distinct top k included). Recall and IoU
   of both are reported (they must agree within 0.3).
2. **LangChain retriever vs the engine**, this checkout, per question (interleaved, medians):
   ``RagpressRetriever.invoke(question)`` against ``retrieval.indexing.search_texts`` (the
   engine, what ``ragpress query`` calls), both with the same MiniLM encoder, hybrid 0.8,
   distinct, k 5, on the evaluation's index version; and the same on a LangChain-built store of
   20,000 texts with metadata and a cheap hashed embedding (where metadata handling is the
   largest share of a query).

    nice -n 10 .venv/bin/python benchmarks/engine_speed.py [--base 77ef981 --questions 200]

The base commit's code is exported with ``git archive`` into ``benchmarks/.work/engine-base-<commit>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("RAGPRESS_SHARED_DATA", REPO.parent / "shared" / "data")) / "chroma"

CHILD = """
import json, sys, time
from pathlib import Path
from eval.datasets import load_chroma
from eval.defaults import BEST_CONFIG
from eval.runner import Evaluator
from retrieval.encoder import load_encoder
data = Path(sys.argv[1])
evaluator = Evaluator(load_chroma(data / "questions.csv", data / "corpora"), load_encoder())
first = evaluator.evaluate(BEST_CONFIG)
runs = [evaluator.evaluate(BEST_CONFIG) for _ in range(int(sys.argv[2]))]
print(json.dumps({"recall": first.overall.recall, "iou": first.overall.iou, "n_chunks": first.n_chunks,
                  "questions": first.overall.n_questions, "first_timings": dict(first.timings),
                  "retrieve_s": [r.timings["retrieve_s"] for r in runs]}))
"""


def run_eval_child(code_dir: Path, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    done = subprocess.run([sys.executable, "-c", CHILD, str(DATA), str(repeats)], env=env, cwd=code_dir,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def eval_retrieval(base_dir: Path, rounds: int, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {"base": [], "engine": []}
    for _ in range(rounds):  # alternate, so both see the same machine load
        runs["base"].append(run_eval_child(base_dir, repeats))
        runs["engine"].append(run_eval_child(REPO, repeats))
    out = {}
    for name, children in runs.items():
        times = [t for child in children for t in child["retrieve_s"]]
        out[name] = {"median_retrieve_s": statistics.median(times), "retrieve_s": times, "recall": children[0]["recall"],
                     "iou": children[0]["iou"], "n_chunks": children[0]["n_chunks"], "questions": children[0]["questions"],
                     "first_run_timings": [c["first_timings"] for c in children]}
    out["speedup"] = out["base"]["median_retrieve_s"] / out["engine"]["median_retrieve_s"]
    return out


def interleaved(first, second, questions: list[str]) -> tuple[list[float], list[float]]:
    a, b = [], []
    for question in questions:
        started = time.perf_counter()
        first(question)
        a.append(time.perf_counter() - started)
        started = time.perf_counter()
        second(question)
        b.append(time.perf_counter() - started)
    return a, b


def summary(engine: list[float], retriever: list[float]) -> dict:
    e, r = statistics.median(engine), statistics.median(retriever)
    return {"engine_median_ms": e * 1000, "retriever_median_ms": r * 1000, "ratio": r / e}


def langchain_overhead(work: Path, count: int) -> dict:
    from eval.datasets import load_chroma
    from eval.defaults import BEST_CONFIG
    from eval.runner import Evaluator
    from pipeline.langchain_adapters import RagpressRetriever
    from retrieval.encoder import load_encoder
    from retrieval.index_store import IndexStore
    from retrieval.indexing import search_texts
    from retrieval.langchain_adapters import RagpressVectorStore

    dataset = load_chroma(DATA / "questions.csv", DATA / "corpora")
    evaluator = Evaluator(dataset, load_encoder())
    _, _, built = evaluator.index_store(BEST_CONFIG)
    questions = [q.text for q in dataset.questions][:count]
    encoder, store = load_encoder(), IndexStore.open(built.directory)
    retriever = RagpressRetriever(index_dir=str(built.directory), k=5)
    assert [d.page_content for d in retriever.invoke(questions[0])] == [h.text for h in search_texts(store, encoder, [questions[0]], 5, 0.8)[0]]
    for question in questions[:5]:  # warm-up
        retriever.invoke(question)
        search_texts(store, encoder, [question], 5, 0.8)
    chroma = summary(*interleaved(lambda q: search_texts(store, encoder, [q], 5, 0.8), retriever.invoke, questions))

    sys.path.insert(0, str(REPO / "tests"))
    from support import WordsEmbedding

    rng = np.random.default_rng(0)
    words = " ".join(c.text for c in store.chunks()).split()
    texts = [" ".join(rng.choice(words, size=30)) for _ in range(20_000)]
    lc_dir = work / "langchain-20k"
    if not IndexStore.exists(lc_dir):
        RagpressVectorStore(lc_dir, WordsEmbedding()).add_texts(texts, [{"n": i, "tag": f"t{i % 10}"} for i in range(len(texts))],
                                                               ids=[f"id{i}" for i in range(len(texts))])
    lc_retriever = RagpressRetriever(index_dir=str(lc_dir), k=5, embeddings=WordsEmbedding())
    lc_store = IndexStore.open(lc_dir)
    embedder = WordsEmbedding()

    class Encode:  # the retrieval.base.Encoder protocol over the same embedding
        model_id, dim = embedder.model_id, 32

        @staticmethod
        def encode(batch: list[str], *, show_progress: bool = False) -> np.ndarray:
            vectors = np.asarray(embedder.embed_documents(list(batch)), dtype=np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    for question in questions[:5]:
        lc_retriever.invoke(question)
        search_texts(lc_store, Encode(), [question], 5, 0.8)
    metadata = summary(*interleaved(lambda q: search_texts(lc_store, Encode(), [q], 5, 0.8), lc_retriever.invoke, questions))
    return {"chroma_minilm": chroma, "langchain_store_20k_metadata": metadata}


def markdown(report: dict) -> str:
    ev, lc = report["eval"], report["langchain"]
    lines = ["# Search engine: eval retrieval time and LangChain overhead", "", f"Machine: {report['machine']}", "",
             f"Command: `{report['command']}`", "", report["method"], "",
             "## ragpress eval, default configuration, shared Chroma data", "",
             "| code | questions | chunks | recall | IoU | retrieval s (median of warm runs) |", "|---|---|---|---|---|---|"]
    for name in ("base", "engine"):
        row = ev[name]
        lines.append(f"| {name} | {row['questions']} | {row['n_chunks']} | {row['recall']:.2f} | {row['iou']:.2f} | {row['median_retrieve_s']:.4f} |")
    lines += ["", f"Retrieval time, base / engine: **{ev['speedup']:.1f}x**.", "",
              "## LangChain retriever vs the engine (per question, medians, encoding included)", "",
              "| index | engine ms | retriever ms | retriever / engine |", "|---|---|---|---|"]
    for name, row in lc.items():
        lines.append(f"| {name} | {row['engine_median_ms']:.2f} | {row['retriever_median_ms']:.2f} | {row['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="77ef981")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--questions", type=int, default=200, help="questions timed in the LangChain comparison")
    args = parser.parse_args()
    base_dir = REPO / "benchmarks" / ".work" / f"engine-base-{args.base}"
    if not (base_dir / "eval" / "runner.py").is_file():
        base_dir.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", args.base], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_dir)], input=archive, check=True)
    from eval.report import machine_info

    work = REPO / "benchmarks" / ".work" / "engine_speed"
    work.mkdir(parents=True, exist_ok=True)
    report = {"machine": {**machine_info(), "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]},
              "command": (f"nice -n 10 .venv/bin/python benchmarks/engine_speed.py --base {args.base} --rounds {args.rounds} "
                          f"--repeats {args.repeats} --questions {args.questions}"),
              "method": __doc__.split("\n\n", 1)[1].split("    nice")[0].strip(), "base": args.base}
    report["eval"] = eval_retrieval(base_dir, args.rounds, args.repeats)
    report["langchain"] = langchain_overhead(work, args.questions)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_speed.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (RESULTS / "engine_speed.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()

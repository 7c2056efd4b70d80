"""Chunk-cache KV reuse vs full prefill on CPU, for any local causal LM reuse supports (default SmolLM2-135M-Instruct).

For k in {4, 8, 12} retrieved ~256-token chunks (in the model's own tokens) of the shared Chroma corpora and >= 30 questions,
measures, in one run and against a full prefill of the same prompt: time to first token (median),
first-token top-1 agreement, 32-token greedy output token-F1 vs the full-prefill output, and answer
token-F1 vs the question's reference text. Chunk caches are precomputed (the indexing step) and
kept in memory; that cost is reported separately.

    .venv/bin/python benchmarks/kv_reuse.py            # full run -> benchmarks/results/kv_reuse.{json,md}
    .venv/bin/python benchmarks/kv_reuse.py --questions 6 --ks 8 --name kv_reuse_small
    .venv/bin/python benchmarks/kv_reuse.py --workers 2 --cache-dir ~/.cache/ragpress/kv-bench  # precompute once
    .venv/bin/python benchmarks/kv_reuse.py --model qwen2.5-coder-0.5b --dtype bfloat16 --threads 1 --workers 2 --ks 8 \
        --modes naive=none blend-q=blend:r=0.15,score=attention blend-q35=blend:r=0.35,score=attention \
        --name kv_reuse_qwen2.5-coder-0.5b      # another scale (--model: a folder, a .gguf, or a name of benchmarks/gguf_parts.py)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.metrics import token_f1  # noqa: E402  (SQuAD-style answer F1)
from filestore import atomic_write_text  # noqa: E402

DATA = Path(os.environ.get("RAGPRESS_SHARED_DATA", REPO.parent / "shared" / "data")) / "chroma"


def load_corpus_chunks(tokenizer, chunk_tokens: int) -> list[list[str]]:
    """Each corpus's chunks, in corpus (file name) and text order."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(tokenizer, chunk_size=chunk_tokens, chunk_overlap=0)
    return [splitter.split_text(corpus.read_text(encoding="utf-8")) for corpus in sorted((DATA / "corpora").glob("*.md"))]


def load_chunks(tokenizer, chunk_tokens: int) -> list[str]:
    return [chunk for corpus in load_corpus_chunks(tokenizer, chunk_tokens) for chunk in corpus]


def load_questions(n: int, seed: int) -> list[dict]:
    with open(DATA / "questions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picked = random.Random(seed).sample(rows, n)
    return [{"question": r["question"], "reference": " ".join(ref["content"] for ref in json.loads(r["references"]))} for r in picked]


def retrieve(chunks: list[str], questions: list[dict], k_max: int) -> list[list[int]]:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from retrieval.models import resolve_embedding_model

    encoder = SentenceTransformer(resolve_embedding_model(), device="cpu")
    doc = encoder.encode(chunks, normalize_embeddings=True, batch_size=32)
    query = encoder.encode([q["question"] for q in questions], normalize_embeddings=True)
    return np.argsort(-(query @ doc.T), axis=1)[:, :k_max].tolist()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES),
                        help="name=recovery[:option=value,...], e.g. blend=blend:r=0.15")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2",
                        help="'smollm2', a causal-LM folder, a .gguf file, or a benchmark model of benchmarks/gguf_parts.py")
    parser.add_argument("--dtype", default="float32", help="float32 (the 135M figures), bfloat16, float16 or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="kv_reuse")
    parser.add_argument("--workers", type=int, default=1, help="question shards run in parallel processes")
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None,
                        help="keep chunk caches on disk here too (e.g. ~/.cache/ragpress/kv-bench) so a rerun skips the precompute")
    parser.add_argument("--summarise-only", action="store_true",
                        help="rebuild the reports from the rows already measured (pass the run's --workers and --name)")
    return parser.parse_args()


DEFAULT_MODES = ("naive=none", "edge=edge:n_tokens=16", "blend=blend:r=0.15", "blend-q=blend:r=0.15,score=attention",
                 "l1qa15=blend:r=0.15,check_layer=1,score=deviation*attention,resume=true")


def mode_names(args: argparse.Namespace) -> list[str]:
    return [spec.split("=", 1)[0] for spec in args.modes]


def recoveries(args: argparse.Namespace) -> dict:
    """``name=recovery:key=value,...`` -> recovery objects (numbers and true/false parsed, other values kept as text)."""
    from compression.kv.recovery import make_recovery

    table = {}
    for spec in args.modes:
        name, _, body = spec.partition("=")
        recovery, _, options = body.partition(":")
        parsed = {}
        for item in filter(None, options.split(",")):
            key, _, value = item.partition("=")
            if value in ("true", "false"):
                parsed[key] = value == "true"
            else:
                parsed[key] = value if not re.fullmatch(r"[-0-9.e]+", value) else (float(value) if "." in value or "e" in value else int(value))
        table[name] = make_recovery(recovery, **parsed)
    return table


def load_lm(args: argparse.Namespace):
    """The benchmarked LM: ``--model`` (a benchmark-only GGUF is assembled and verified first), ``--dtype``, ``--threads``."""
    from gguf_parts import MODELS, assemble

    from compression.lm import load_causal_lm

    source = str(assemble(args.model)) if args.model in MODELS else args.model
    return load_causal_lm(source, args.dtype, threads=args.threads)


def run(args: argparse.Namespace) -> dict:
    from compression.kv.generate import KVReuseEngine
    from compression.kv.store import DiskStore, MemoryStore, TieredStore

    lm = load_lm(args)
    chunks = load_chunks(lm.tokenizer, args.chunk_tokens)
    questions = load_questions(args.questions, args.seed)
    ranked = retrieve(chunks, questions, max(args.ks))
    store = MemoryStore(12 * 2**30)
    if args.cache_dir:  # disk hits are loaded in warm(), before the timed part, like memory hits
        store = TieredStore(store, DiskStore(Path(args.cache_dir).expanduser()))
    engine = KVReuseEngine(lm, store)
    modes = recoveries(args)
    shard, n_shards = map(int, (args.shard or "0/1").split("/"))
    rows_file = rows_path(args, shard)
    rows_file.unlink(missing_ok=True)
    rows, precompute_s, computed = [], 0.0, 0
    for qi, question in enumerate(questions):
        if qi % n_shards != shard:
            continue
        for k in args.ks:
            prompt = engine.prompt([chunks[i] for i in ranked[qi][:k]], question["question"])
            start = time.perf_counter()
            computed += engine.warm(prompt)
            precompute_s += time.perf_counter() - start
            full = engine.generate(prompt, None, args.new_tokens)
            row = {"q": qi, "k": k, "prompt_tokens": len(prompt.all_ids), "full": _record(full, full, question)}
            for mode, recovery in modes.items():
                row[mode] = _record(engine.generate(prompt, recovery, args.new_tokens), full, question)
            row["precompute_s"], precompute_s = precompute_s, 0.0
            row["chunks_computed"], computed = computed, 0
            rows.append(row)
            with open(rows_file, "a", encoding="utf-8") as handle:  # checkpoint: a cut-off run keeps its rows
                handle.write(json.dumps(row) + "\n")
            print(f"q{qi:02d} k={k:2d} T={row['prompt_tokens']:5d} " + " ".join(
                f"{m}:{row[m]['ttft_s']*1000:6.0f}ms/{row[m]['top1']:d}/{row[m]['out_f1']:.2f}" for m in ["full", *modes]), flush=True)
    return {"rows": rows, "precompute_s": precompute_s, "chunks_computed": computed, "n_chunks": len(chunks), "lm": lm.model_id,
            "dtype": lm.dtype}


def _record(gen, full, question) -> dict:
    return {
        "ttft_s": gen.ttft_s,
        "top1": int(gen.first_logits.argmax() == full.first_logits.argmax()),
        "out_f1": token_f1(gen.text, full.text),
        "answer_f1": token_f1(gen.text, question["reference"]),
        "prefilled": gen.prefilled_tokens,
        "reused": gen.reused_tokens,
        "text": gen.text,
    }


def summarise(result: dict, args: argparse.Namespace) -> dict:
    summary = {}
    for k in args.ks:
        rows = [r for r in result["rows"] if r["k"] == k]
        full_ttft = median([r["full"]["ttft_s"] for r in rows])
        summary[k] = {}
        if not rows:
            continue
        for mode in ["full", *mode_names(args)]:
            values = [r[mode] for r in rows]
            summary[k][mode] = {
                "ttft_median_s": median([v["ttft_s"] for v in values]),
                "speedup_vs_full": full_ttft / median([v["ttft_s"] for v in values]),
                "speedup_median_of_ratios": median([r["full"]["ttft_s"] / r[mode]["ttft_s"] for r in rows]),
                "first_token_agreement": statistics.mean(v["top1"] for v in values),
                "output_f1_vs_full": statistics.mean(v["out_f1"] for v in values),
                "answer_f1": statistics.mean(v["answer_f1"] for v in values),
                "prefilled_tokens_median": median([v["prefilled"] for v in values]),
                "reused_tokens_median": median([v["reused"] for v in values]),
            }
    return summary


def machine_facts(threads: int) -> dict:
    """The machine line of every KV benchmark's results."""
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": threads}


def write_json(name: str, payload: dict) -> Path:
    """``benchmarks/results/<name>.json`` (atomic); returns the results directory."""
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=1))
    return out


def write(result: dict, summary: dict, args: argparse.Namespace, elapsed: float) -> None:
    machine = {**machine_facts(args.threads), "python": platform.python_version()}
    payload = {"machine": machine, "args": vars(args), "lm": result["lm"], "data": str(DATA), "n_chunks": result["n_chunks"],
               "precompute_s": sum(r["precompute_s"] for r in result["rows"]), "elapsed_s": elapsed,
             "chunks_computed": sum(r["chunks_computed"] for r in result["rows"]),
               "summary": summary, "rows": result["rows"]}
    out = write_json(args.name, payload)
    lines = [f"# KV reuse vs full prefill ({result['lm']}, {result['dtype']})", "",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs (shared), torch {machine['torch']}, {args.threads} thread(s).",
             f"Command: `{' '.join(['.venv/bin/python benchmarks/kv_reuse.py', *sys.argv[1:]])}`",
             f"Data: {DATA} ({result['n_chunks']} chunks of <= {args.chunk_tokens} tokens of this model, MiniLM retrieval), "
             f"{len({r['q'] for r in result['rows']})} of {args.questions} questions measured (seed {args.seed}), {args.new_tokens} greedy tokens, "
             f"{args.workers} worker process(es) of {args.threads} torch thread(s); full prefill and reuse of a prompt are timed back to back in the same process.",
             "Modes: " + "; ".join(args.modes) + " (none = no recovery; edge = recompute first n tokens per chunk; "
             "blend = recompute fraction r by layer-1 value deviation, score=attention: by the question's attention on the reused cache, "
             "score=deviation*attention: their product, resume=true: the picked tokens resume from the exact early layers; "
             "both skip the first chunk, whose cache is exact).",
             f"Chunk-cache precompute (indexing step, not in TTFT): {payload['chunks_computed']} chunks computed in {payload['precompute_s']:.1f} s"
             + (f" (the others loaded from the disk cache {args.cache_dir})" if args.cache_dir else "") + f". Run took {elapsed/60:.1f} min.", "",
             "| k | mode | TTFT median (ms) | speed-up (ratio of medians) | median of per-question ratios | first-token agreement | output F1 vs full | answer F1 | prefilled / reused tokens (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, modes in summary.items():
        for mode, s in modes.items():
            lines.append(f"| {k} | {mode} | {s['ttft_median_s']*1000:.0f} | {s['speedup_vs_full']:.2f}x | {s['speedup_median_of_ratios']:.2f}x | "
                         f"{s['first_token_agreement']:.2f} | {s['output_f1_vs_full']:.3f} | {s['answer_f1']:.3f} | "
                         f"{s['prefilled_tokens_median']:.0f} / {s['reused_tokens_median']:.0f} |")
    atomic_write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")


def rows_path(args: argparse.Namespace, shard: int) -> Path:
    return REPO / "benchmarks" / "results" / f".{args.name}.rows{shard}.jsonl"


def run_sharded(args: argparse.Namespace) -> dict:
    """Shards of the questions in parallel processes (each times its own full prefill and reuse)."""
    import subprocess

    given = sys.argv[1:]
    kept = [a for i, a in enumerate(given) if not (a.startswith("--workers") or (i > 0 and given[i - 1] == "--workers"))]
    base = [sys.executable, __file__, *kept]
    procs = [subprocess.Popen([*base, "--workers", "1", "--shard", f"{i}/{args.workers}"]) for i in range(args.workers)]
    for proc in procs:
        proc.wait()
    return collect(args)


def collect(args: argparse.Namespace) -> dict:
    rows = []
    for shard in range(args.workers):
        path = rows_path(args, shard)
        if path.is_file():
            rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    lm = load_lm(args)
    return {"rows": sorted(rows, key=lambda r: (r["q"], r["k"])), "n_chunks": len(load_chunks(lm.tokenizer, args.chunk_tokens)), "lm": lm.model_id,
            "dtype": lm.dtype}


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    if args.shard is not None:
        run(args)
        return
    result = collect(args) if args.summarise_only else run_sharded(args)
    write(result, summarise(result, args), args, time.perf_counter() - start)
    if not args.summarise_only:  # the JSON holds every row now; a summary of a running run keeps them
        for shard in range(args.workers):
            rows_path(args, shard).unlink(missing_ok=True)
    print((REPO / "benchmarks" / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()

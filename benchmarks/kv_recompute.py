"""Cost of the KV-reuse recompute paths: in-place causal blocks vs the dense-mask reference.

On k = 8 prompts of kv_reuse.py's benchmark questions (seed 0), SmolLM2 on CPU, 1 thread: the
tokens blend-q picks (r = 0.15, question attention) plus the question are recomputed by
``recompute_dense`` (one call, fresh KV appended, dense [queries x all keys] mask) and by
``recompute`` (fresh KV written in place, attention in causal blocks of ``--block`` queries), and
the first ``--early`` layers of every context token are refreshed by the dense path
(``fresh_early_layers``) and the in-place one (``refresh_early_layers``). The variants run
interleaved, round after round, on a fresh assembled cache each time; medians per prompt, then
the median of the per-prompt ratios (dense / in place). Logits are checked equal.

    .venv/bin/python benchmarks/kv_recompute.py --cache-dir ~/.cache/ragpress/kv-bench
    -> benchmarks/results/kv_recompute.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # importing kv_reuse also sets the offline environment

from kv_reuse import DATA, load_chunks, load_questions, machine_facts, retrieve, write_json  # noqa: E402

from filestore import atomic_write_text  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--early", type=int, default=2, help="layers refreshed for every context token (blend check_layer + 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--name", default="kv_recompute")
    return parser.parse_args()


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from compression.kv import recovery
    from compression.kv.assemble import assemble, chunk_cache
    from compression.kv.generate import KVReuseEngine, recompute, recompute_dense
    from compression.kv.store import DiskStore, MemoryStore, TieredStore
    from compression.lm import load_causal_lm

    torch.set_num_threads(args.threads)
    lm = load_causal_lm()
    chunks = load_chunks(lm.tokenizer, 256)
    questions = load_questions(args.prompts, 0)
    ranked = retrieve(chunks, questions, args.k)
    store = MemoryStore(2**31)
    if args.cache_dir:
        store = TieredStore(store, DiskStore(Path(args.cache_dir).expanduser()))
    engine = KVReuseEngine(lm, store)
    rows = []
    for qi, question in enumerate(questions):
        prompt = engine.prompt([chunks[i] for i in ranked[qi][: args.k]], question["question"])
        engine.warm(prompt)
        prefix = engine.prefix(prompt)
        parts = [chunk_cache(lm, prefix, ids, store, engine._tokenizer_sig)[0] for ids in prompt.chunk_ids]

        def fresh():
            return assemble(lm.model, prefix, parts)

        selected = recovery.make_recovery("blend", r=0.15, score="attention").select(lm.model, fresh(), prompt)
        variants = {
            "recompute_dense": lambda cache: recompute_dense(lm.model, cache, prompt, selected),
            "recompute_blocks": lambda cache: recompute(lm.model, cache, prompt, selected, block=args.block),
            "early_dense": lambda cache: recovery.fresh_early_layers(lm.model, cache, prompt, args.early),
            "early_in_place": lambda cache: recovery.refresh_early_layers(lm.model, cache, prompt, args.early),
        }
        times = {name: [] for name in variants}
        outputs = {}
        for _ in range(args.rounds):
            for name, variant in variants.items():
                cache = fresh()
                start = time.perf_counter()
                outputs[name] = variant(cache)
                times[name].append(time.perf_counter() - start)
        gap = (outputs["recompute_dense"] - outputs["recompute_blocks"]).abs().max().item()
        row = {"q": qi, "prompt_tokens": len(prompt.all_ids), "recomputed": len(selected), "logit_max_abs_diff": gap,
               **{f"{name}_median_s": statistics.median(ts) for name, ts in times.items()}, "times": times}
        rows.append(row)
        print(f"q{qi} T={row['prompt_tokens']} " + " ".join(f"{n}={row[f'{n}_median_s'] * 1000:.0f}ms" for n in variants)
              + f" |dlogit|={gap:.1e}", flush=True)
    return rows


def write(rows: list[dict], args: argparse.Namespace, elapsed: float) -> None:
    machine = machine_facts(args.threads)

    def ratio(slow: str, fast: str) -> float:
        return statistics.median(r[f"{slow}_median_s"] / r[f"{fast}_median_s"] for r in rows)

    summary = {"recompute_dense_over_blocks": ratio("recompute_dense", "recompute_blocks"),
               "early_dense_over_in_place": ratio("early_dense", "early_in_place"),
               "max_logit_diff": max(r["logit_max_abs_diff"] for r in rows)}
    out = write_json(args.name, {"machine": machine, "args": vars(args), "summary": summary, "rows": rows})
    lines = [f"# KV-reuse recompute: in-place causal blocks vs dense mask (k={args.k})", "",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs (shared with other jobs), torch {machine['torch']}, {args.threads} thread. "
             f"Data: {DATA}, the first {len(rows)} of kv_reuse.py's questions (seed 0); blend-q's picks (r = 0.15) + the question; "
             f"{args.rounds} interleaved rounds, block {args.block}, early layers {args.early}. Run took {elapsed / 60:.1f} min. "
             f"Command: `.venv/bin/python benchmarks/kv_recompute.py {' '.join(sys.argv[1:])}`.", "",
             "| prompt tokens | recomputed | recompute dense (ms) | recompute blocks (ms) | early dense (ms) | early in place (ms) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prompt_tokens']} | {r['recomputed']} | {r['recompute_dense_median_s'] * 1000:.0f} | "
                     f"{r['recompute_blocks_median_s'] * 1000:.0f} | {r['early_dense_median_s'] * 1000:.0f} | {r['early_in_place_median_s'] * 1000:.0f} |")
    lines += ["", f"Median of per-prompt ratios: recompute dense / blocks = {summary['recompute_dense_over_blocks']:.2f}x; "
              f"early-layer refresh dense / in place = {summary['early_dense_over_in_place']:.2f}x. "
              f"Largest first-token logit difference between the two recomputes: {summary['max_logit_diff']:.1e}."]
    atomic_write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    rows = run(args)
    write(rows, args, time.perf_counter() - start)
    print((REPO / "benchmarks" / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()

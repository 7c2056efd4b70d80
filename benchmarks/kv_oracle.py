"""Ceiling diagnostic for KV-reuse recovery: how close to full prefill can ANY selection of r tokens get?

On a DEV set of questions disjoint from ``kv_reuse.py``'s 30 (seed 0), k chunks, SmolLM2 on CPU:
the oracle (``compression.kv.oracle``) puts the TRUE full-prefill KV back for the fraction r of
context tokens that deviate most (key+value, summed over all layers / over the last layers), or for
the tokens a cheap rule picked (so the rule's choice and its recompute are measured apart). Fidelity
as in kv_reuse.py: first-token top-1 agreement and 32-token greedy output token-F1 vs full prefill.
Cheap rules are run too (timed, with a profile of where their time goes).

    .venv/bin/python benchmarks/kv_oracle.py --cache-dir ~/.cache/ragpress/kv-bench
    -> benchmarks/results/kv_oracle.{json,md}

``--set bench`` runs on kv_reuse.py's own 30 questions (seed 0) instead, e.g. the ceiling there:

    .venv/bin/python benchmarks/kv_oracle.py --set bench --cache-dir ~/.cache/ragpress/kv-bench \
        --name kv_oracle_bench --rs 0.15 0.3 0.5 --oracles all qa --modes naive=none \
        blend-q=blend:r=0.15,score=attention --choices blend-q

APE-style attention scaling (``compression.kv.scaling``) is a rule like any other, e.g. naive reuse
with T = 0.9, S = 0.6 in the upper half of the layers (results: ``kv_dev_ape.md``):

    .venv/bin/python benchmarks/kv_oracle.py --cache-dir ~/.cache/ragpress/kv-bench --name kv_dev_ape_naive_upper \
        --rs --choices --modes naive=none nu=scaled:from_layer=15,temperature=0.9,scale=0.6
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # importing kv_reuse also sets the offline environment

from kv_reuse import DATA, load_chunks, load_questions, machine_facts, recoveries, retrieve, write_json  # noqa: E402

from eval.metrics import token_f1  # noqa: E402
from filestore import atomic_write_text  # noqa: E402

RULES = ("naive=none", "blend-q=blend:r=0.15,score=attention", "blend-l1=blend:r=0.15", "blend-l3=blend:r=0.15,check_layer=3")


def dev_questions(n: int, bench_n: int, bench_seed: int, seed: int) -> list[dict]:
    """``n`` questions none of which is among the benchmark's ``bench_n`` (seed ``bench_seed``)."""
    with open(DATA / "questions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    taken = {q["question"] for q in load_questions(bench_n, bench_seed)}
    pool = [r for r in rows if r["question"] not in taken]
    picked = random.Random(seed).sample(pool, n)
    return [{"question": r["question"], "reference": " ".join(ref["content"] for ref in json.loads(r["references"]))} for r in picked]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=None, help="default: 10 (dev), 30 (bench)")
    parser.add_argument("--set", choices=("dev", "bench"), default="dev",
                        help="dev: questions disjoint from kv_reuse.py's; bench: kv_reuse.py's own questions (seed 0)")
    parser.add_argument("--oracles", nargs="+", choices=("all", "last", "qa"), default=["all", "last"],
                        help="oracle rankings: deviation over all layers, over the last --last-layers layers, "
                             "qa: sqrt(deviation over all layers) x the question's attention in the full prefill")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--rs", type=float, nargs="*", default=[0.1, 0.15, 0.2, 0.3], help="oracle fractions (none: no oracle)")
    parser.add_argument("--modes", nargs="+", default=list(RULES), help="cheap rules, as in kv_reuse.py: name=recovery:key=value,...")
    parser.add_argument("--choices", nargs="*", default=["blend-q", "blend-l1", "blend-l3"],
                        help="rules whose own choice also gets the true KV (oracle-RULE-choice), at their r")
    parser.add_argument("--last-layers", type=int, default=10, help="the 'last layers' oracle sums deviation over these")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="dev-set seed (the benchmark's 30 use seed 0 and are excluded)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--name", default="kv_oracle")
    args = parser.parse_args()
    if args.questions is None:
        args.questions = 30 if args.set == "bench" else 10
    return args


def pick_questions(args: argparse.Namespace) -> list[dict]:
    """The benchmark's own questions (``load_questions(n, 0)``, as kv_reuse.py) or the disjoint dev set."""
    if args.set == "bench":
        return load_questions(args.questions, 0)
    return dev_questions(args.questions, 30, 0, args.seed)


def fidelity(engine, cache, logits, full_text, full_logits, new_tokens, bias=None) -> dict:
    from compression.kv.generate import greedy_continue

    tokens = greedy_continue(engine.lm.model, cache, logits, new_tokens, engine.eos_ids, bias)
    text = engine.lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return {"top1": int(logits.argmax() == full_logits.argmax()), "out_f1": token_f1(text, full_text), "text": text}


def timed_rule(engine, prompt, recovery) -> tuple[object, object, dict, object]:
    """``KVReuseEngine.prefill`` step by step, timing each step (a profile of the rule's overheads);
    returns the cache, first-token logits, the profile and the attention bias of a scaled rule."""
    from compression.kv.assemble import assemble, chunk_cache
    from compression.kv.generate import finish_prefill

    lm, marks = engine.lm, [time.perf_counter()]
    prefix = engine.prefix(prompt)
    chunks = [chunk_cache(lm, prefix, ids, engine.store, engine._tokenizer_sig)[0] for ids in prompt.chunk_ids]
    marks.append(time.perf_counter())
    cache = assemble(lm.model, prefix, chunks)
    marks.append(time.perf_counter())
    selected = recovery.select(lm.model, cache, prompt)
    marks.append(time.perf_counter())
    logits, bias = finish_prefill(lm.model, cache, prompt, selected, recovery)
    marks.append(time.perf_counter())
    steps = dict(zip(("load_s", "assemble_s", "select_s", "recompute_s"), (b - a for a, b in zip(marks, marks[1:]))))
    return cache, logits, {**steps, "ttft_s": marks[-1] - marks[0], "recomputed": len(selected)}, bias


def naive_cache(engine, prompt):
    """The prompt's reused cache as assembled, before any recovery."""
    from compression.kv.assemble import assemble, chunk_cache

    prefix = engine.prefix(prompt)
    chunks = [chunk_cache(engine.lm, prefix, ids, engine.store, engine._tokenizer_sig)[0] for ids in prompt.chunk_ids]
    return assemble(engine.lm.model, prefix, chunks)


def qa_scores(engine, truth, prompt):
    """Oracle ranking by the error each token adds to the question's attention output: sqrt of its
    true key+value deviation (all layers) times the attention the question pays it in the FULL prefill."""
    from compression.kv.assemble import cache_from_tensors
    from compression.kv.oracle import true_deviation
    from compression.kv.recovery import question_attention

    end = len(prompt.prefix_ids) + len(prompt.context_ids)
    exact = cache_from_tensors(truth[0][:, :, :end].clone(), truth[1][:, :, :end].clone())
    attention = question_attention(engine.lm.model, exact, prompt)
    deviation = true_deviation(naive_cache(engine, prompt), truth, prompt, range(truth[0].shape[0]))
    return deviation.sqrt() * attention


def top_positions(scores, prompt, r: float) -> tuple[int, ...]:
    import torch

    n_pick = min(len(scores), round(r * len(scores)))
    return tuple((torch.topk(scores, n_pick).indices.sort().values + len(prompt.prefix_ids)).tolist())


def run(args: argparse.Namespace, started: float) -> list[dict]:
    import torch

    from compression.kv.assemble import cache_tensors
    from compression.kv.generate import KVReuseEngine, full_prefill, greedy_continue, recompute
    from compression.kv.oracle import OracleRecovery
    from compression.kv.store import DiskStore, MemoryStore, TieredStore
    from compression.lm import load_causal_lm

    torch.set_num_threads(args.threads)
    lm = load_causal_lm()
    chunks = load_chunks(lm.tokenizer, args.chunk_tokens)
    questions = pick_questions(args)
    ranked = retrieve(chunks, questions, args.k)
    store = MemoryStore(4 * 2**30)
    if args.cache_dir:
        store = TieredStore(store, DiskStore(Path(args.cache_dir).expanduser()))
    engine = KVReuseEngine(lm, store)
    rules = recoveries(args)
    n_layers = len(lm.model.model.layers)
    oracles = {"oracle-all": None, f"oracle-last{args.last_layers}": tuple(range(n_layers - args.last_layers, n_layers))}
    oracles = {name: layers for name, layers in oracles.items() if name.removeprefix("oracle-").rstrip("0123456789") in args.oracles}
    rows = []
    for qi, question in enumerate(questions):
        prompt = engine.prompt([chunks[i] for i in ranked[qi][: args.k]], question["question"])
        engine.warm(prompt)
        start = time.perf_counter()
        full_cache, full_logits = full_prefill(lm.model, prompt)
        full_ttft = time.perf_counter() - start
        truth = tuple(t.clone() for t in cache_tensors(full_cache))
        full_tokens = greedy_continue(lm.model, full_cache, full_logits, args.new_tokens, engine.eos_ids)
        full_text = lm.tokenizer.decode(full_tokens, skip_special_tokens=True).strip()
        row = {"q": qi, "prompt_tokens": len(prompt.all_ids), "context_tokens": len(prompt.context_ids),
               "full": {"ttft_s": full_ttft, "text": full_text, "answer_f1": token_f1(full_text, question["reference"])}}
        for name, recovery in rules.items():
            cache, logits, profile, bias = timed_rule(engine, prompt, recovery)
            row[name] = {**profile, **fidelity(engine, cache, logits, full_text, full_logits, args.new_tokens, bias)}
            row[name]["answer_f1"] = token_f1(row[name]["text"], question["reference"])
        choices = {f"oracle-{name}-choice": rules[name].select(lm.model, naive_cache(engine, prompt), prompt)
                   for name in args.choices if args.rs}
        qa = qa_scores(engine, truth, prompt) if "qa" in args.oracles and args.rs else None
        for r in args.rs:
            variants = {name: OracleRecovery(truth, r=r, layers=layers) for name, layers in oracles.items()}
            if qa is not None:
                variants["oracle-qa"] = OracleRecovery(truth, positions=top_positions(qa, prompt, r))
            if r == 0.15:  # the rules' default fraction
                variants.update({name: OracleRecovery(truth, positions=tuple(chosen)) for name, chosen in choices.items()})
            for name, oracle in variants.items():
                cache = naive_cache(engine, prompt)
                oracle.select(lm.model, cache, prompt)
                logits = recompute(lm.model, cache, prompt, [])
                row[f"{name}@{r}"] = fidelity(engine, cache, logits, full_text, full_logits, args.new_tokens)
        rows.append(row)
        write(rows, summarise(rows), args, time.perf_counter() - started)  # checkpoint: a cut-off run keeps its rows
        print(f"q{qi:02d} T={row['prompt_tokens']} full={full_ttft:.1f}s " + " ".join(
            f"{m}:{v['out_f1']:.2f}" for m, v in row.items() if isinstance(v, dict) and "out_f1" in v), flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    names = [m for m, v in rows[0].items() if isinstance(v, dict) and "out_f1" in v]
    full_ttft = statistics.median(r["full"]["ttft_s"] for r in rows)
    summary = {"full": {"ttft_median_s": full_ttft, "answer_f1": statistics.mean(r["full"]["answer_f1"] for r in rows)}}
    for name in names:
        present = [r[name] for r in rows if name in r]
        entry = {"n": len(present), "first_token_agreement": statistics.mean(v["top1"] for v in present),
                 "output_f1_vs_full": statistics.mean(v["out_f1"] for v in present)}
        if "ttft_s" in present[0]:
            entry["speedup_median_of_ratios"] = statistics.median(r["full"]["ttft_s"] / r[name]["ttft_s"] for r in rows)
            entry["answer_f1"] = statistics.mean(v["answer_f1"] for v in present)
            for step in ("load_s", "assemble_s", "select_s", "recompute_s", "ttft_s"):
                entry[f"{step}_median"] = statistics.median(v[step] for v in present)
        summary[name] = entry
    return summary


def write(rows: list[dict], summary: dict, args: argparse.Namespace, elapsed: float) -> None:
    machine = machine_facts(args.threads)
    out = write_json(args.name, {"machine": machine, "args": vars(args), "summary": summary, "rows": rows})
    lines = [f"# KV-reuse recovery ceiling (oracle) at k={args.k}", "",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs (shared), torch {machine['torch']}, {args.threads} thread. "
             + (f"Benchmark set: kv_reuse.py's own questions ({len(rows)} of {args.questions} measured) from {DATA}/questions.csv (seed 0); " if args.set == "bench" else
                f"Dev set: {len(rows)} questions from {DATA}/questions.csv (seed {args.seed}), disjoint from kv_reuse.py's 30 (seed 0); ")
             + f"{args.new_tokens} greedy tokens. Run took {elapsed / 60:.1f} min. Command: `.venv/bin/python benchmarks/kv_oracle.py "
             + " ".join(sys.argv[1:]) + "`.", "",
             "oracle-all@r: TRUE full-prefill KV (all layers) put back for the fraction r of context tokens with the largest "
             "true key+value deviation summed over all layers; oracle-lastN: deviation over the last N layers only; "
             "oracle-qa: true KV for the top r by sqrt(true deviation, all layers) x the question's attention in the full prefill; "
             "oracle-RULE-choice: true KV for exactly the tokens RULE picks (its choice without its recompute error). "
             "Cheap rules (timed; TTFT = load + assemble + select + recompute of the question): " + "; ".join(args.modes) + ".", "",
             "| mode | first-token agreement | output F1 vs full | speed-up (median of ratios) | answer F1 | TTFT / select / recompute (median ms) |",
             "|---|---|---|---|---|---|",
             f"| full | 1.00 | 1.000 | 1.00x | {summary['full']['answer_f1']:.3f} | {summary['full']['ttft_median_s'] * 1000:.0f} / - / - |"]
    for name, s in summary.items():
        if name == "full":
            continue
        timing = (f"{s['speedup_median_of_ratios']:.2f}x | {s['answer_f1']:.3f} | {s['ttft_s_median'] * 1000:.0f} / "
                  f"{s['select_s_median'] * 1000:.0f} / {s['recompute_s_median'] * 1000:.0f}") if "ttft_s_median" in s else "- | - | -"
        lines.append(f"| {name} | {s['first_token_agreement']:.2f} | {s['output_f1_vs_full']:.3f} | {timing} |")
    atomic_write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    rows = run(args, start)
    summary = summarise(rows)
    write(rows, summary, args, time.perf_counter() - start)
    print((REPO / "benchmarks" / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()

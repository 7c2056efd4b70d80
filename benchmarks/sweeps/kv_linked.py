"""Dev-only probe (issue 6): order-preserving layout + chunk caches linked to their corpus predecessor.

Idea (OP-RAG, Yu et al. 2024, for the layout; Cache-Craft-style context variants for the caches):
lay the retrieved chunks out in corpus order instead of rank order, so chunks that follow each
other in their document follow each other in the prompt (at k = 8, ~46 % of the retrieved chunks
here have their corpus predecessor retrieved too). Such a chunk's KV can then be precomputed right
after its predecessor's block, i.e. exactly as a full prefill of "prefix, predecessor, chunk" gives
it: the cross-chunk attention it misses most (to the text just before it) is restored at no query
cost. The other chunks keep their usual cache (computed right after the prefix).

Compares, on the same questions, k chunks, SmolLM2 on CPU, 32 greedy tokens, layouts (``--layouts``):
``r`` rank order (as ``kv_reuse.py``); ``c`` corpus order; ``g`` runs of corpus-consecutive chunks
in corpus order, the runs by best rank; ``cl`` / ``gl`` the same with linked caches. Each layout's
full prefill is its own reference for fidelity.

Result (session 11, ``benchmarks/results/kv_linked.md``): NOT adopted. Linked caches raised blend-q's
output F1 on the 10 dev questions (0.724 -> 0.871 in the ``g`` layout) but not on the benchmark's 30
(0.699 -> 0.707, paired +0.009 ± 0.037).

    .venv/bin/python benchmarks/sweeps/kv_linked.py --set dev                       # r c cl, 10 questions disjoint from kv_reuse.py's
    .venv/bin/python benchmarks/sweeps/kv_linked.py --set dev --layouts g gl
    .venv/bin/python benchmarks/sweeps/kv_linked.py --set bench --questions 30 --layouts g gl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from kv_oracle import dev_questions  # noqa: E402
from kv_reuse import _record, load_corpus_chunks, load_questions, median, recoveries, retrieve  # noqa: E402


def corpus_chunks(tokenizer, chunk_tokens: int) -> tuple[list[str], list[int]]:
    """kv_reuse.py's chunks and the corpus number of each (chunks of a corpus are consecutive)."""
    per_corpus = load_corpus_chunks(tokenizer, chunk_tokens)
    return ([chunk for pieces in per_corpus for chunk in pieces],
            [number for number, pieces in enumerate(per_corpus) for _ in pieces])


def grouped(ranked: list[int], corpus: list[int]) -> list[int]:
    """Runs of corpus-consecutive chunks, each in corpus order, the runs in order of their best rank."""
    runs: list[list[int]] = []
    for index in sorted(ranked):
        if runs and index == runs[-1][-1] + 1 and corpus[index] == corpus[runs[-1][-1]]:
            runs[-1].append(index)
        else:
            runs.append([index])
    rank = {chunk: position for position, chunk in enumerate(ranked)}
    return [chunk for run in sorted(runs, key=lambda run: min(rank[c] for c in run)) for chunk in run]


LAYOUTS = {"r": "rank order", "c": "corpus order", "cl": "corpus order, linked caches",
           "g": "runs by best rank", "gl": "runs by best rank, linked caches"}


def make_engine(lm, store):
    import torch

    from compression.kv.assemble import assemble, chunk_cache, encode_chunk
    from compression.kv.base import ChunkKV, PrefixKV
    from compression.kv.generate import KVReuseEngine, reuse_prefill

    class LinkedEngine(KVReuseEngine):
        """``linked``: prompt chunk indices whose cache is computed right after the previous prompt chunk."""

        def __init__(self, lm, store) -> None:
            super().__init__(lm, store)
            self.linked: frozenset = frozenset()
            self._memo: dict = {}  # (previous ids, chunk ids) -> linked ChunkKV, kept in memory for the run

        def linked_kv(self, prefix, previous: ChunkKV, ids) -> ChunkKV:
            memo_key = (previous.key.token_ids, tuple(ids))
            if memo_key not in self._memo:
                dtype = prefix.keys.dtype
                context = PrefixKV(
                    token_ids=prefix.token_ids + previous.key.token_ids,
                    keys=torch.cat([prefix.keys, previous.keys.to(dtype)], dim=2),
                    values=torch.cat([prefix.values, previous.values.to(dtype)], dim=2),
                    digest=hashlib.sha256(f"{prefix.digest}|{list(previous.key.token_ids)}".encode()).hexdigest(),
                )
                own, _ = chunk_cache(self.lm, prefix, ids, self.store, self._tokenizer_sig)
                keys, values = encode_chunk(self.lm.model, context, ids)
                key = replace(own.key, prefix_hash=context.digest, start=len(context.token_ids))
                self._memo[memo_key] = ChunkKV(key=key, keys=keys, values=values)
            return self._memo[memo_key]

        def chunk_kvs(self, prompt):
            prefix = self.prefix(prompt)
            own = [chunk_cache(self.lm, prefix, ids, self.store, self._tokenizer_sig)[0] for ids in prompt.chunk_ids]
            return prefix, [self.linked_kv(prefix, own[i - 1], prompt.chunk_ids[i]) if i in self.linked else own[i]
                            for i in range(len(own))]

        def warm(self, prompt) -> int:
            self.chunk_kvs(prompt)
            return 0

        @torch.inference_mode()
        def prefill(self, prompt, recovery, keep=None):
            prefix, chunks = self.chunk_kvs(prompt)
            cache = assemble(self.lm.model, prefix, chunks)
            logits, selected, bias = reuse_prefill(self.lm.model, cache, prompt, recovery)
            prefilled = len(selected) + len(prompt.suffix_ids)
            return cache, logits, prefilled, len(prompt.all_ids) - prefilled, bias

    return LinkedEngine(lm, store)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=("dev", "bench"), default="dev")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1, help="dev-set seed")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--modes", nargs="+", default=[
        "naive=none", "blend-q=blend:r=0.15,score=attention",
        "l1qa15=blend:r=0.15,check_layer=1,score=deviation*attention,resume=true"])
    parser.add_argument("--layouts", nargs="+", default=["r", "c", "cl"], choices=list(LAYOUTS),
                        help="a linked layout (cl, gl) must follow its plain one (c, g): it reuses that full prefill")
    parser.add_argument("--cache-dir", default="~/.cache/ragpress/kv-bench")
    parser.add_argument("--out", type=Path, default=None, help="rows as JSON lines (default /tmp/kv_linked-SET.jsonl)")
    return parser.parse_args()


def main() -> None:
    import torch

    from compression.kv.store import DiskStore, MemoryStore, TieredStore
    from compression.lm import load_causal_lm

    args = parse_args()
    args.ks, args.chunk_tokens = [args.k], 256
    torch.set_num_threads(1)
    lm = load_causal_lm()
    chunks, corpus = corpus_chunks(lm.tokenizer, args.chunk_tokens)
    questions = load_questions(args.questions, 0) if args.set == "bench" else dev_questions(args.questions, 30, 0, args.seed)
    ranked = retrieve(chunks, questions, args.k)
    store = TieredStore(MemoryStore(12 * 2**30), DiskStore(Path(args.cache_dir).expanduser()))
    engine = make_engine(lm, store)
    modes = recoveries(args)
    rows = []
    args.out = args.out or Path(f"/tmp/kv_linked-{args.set}.jsonl")
    args.out.unlink(missing_ok=True)
    for qi, question in enumerate(questions):
        row = {"q": qi}
        for layout in args.layouts:
            linked = layout.endswith("l")
            order = {"r": ranked[qi], "c": sorted(ranked[qi]), "g": grouped(ranked[qi], corpus)}[layout[0]]
            prompt = engine.prompt([chunks[i] for i in order], question["question"])
            engine.linked = frozenset(
                i for i in range(1, len(order)) if linked and order[i] == order[i - 1] + 1 and corpus[order[i]] == corpus[order[i - 1]])
            engine.warm(prompt)
            if not linked:  # a linked layout reads the same prompt as the plain one before it
                full = engine.generate(prompt, None, args.new_tokens)
                row[f"full-{layout}"] = _record(full, full, question)
            row[f"linked-{layout}"] = len(engine.linked)
            for name, recovery in modes.items():
                row[f"{name}-{layout}"] = _record(engine.generate(prompt, recovery, args.new_tokens), full, question)
        rows.append(row)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"q{qi:02d} linked {max(v for m, v in row.items() if m.startswith('linked'))} " + " ".join(
            f"{m}:{v['out_f1']:.2f}/{v['answer_f1']:.2f}" for m, v in row.items() if isinstance(v, dict)), flush=True)
    report(rows)


def report(rows: list[dict]) -> None:
    names = [m for m, v in rows[0].items() if isinstance(v, dict)]
    linked = [max(v for m, v in r.items() if m.startswith("linked")) for r in rows]
    print(f"\n{len(rows)} questions; linked chunks per question (median) {median(linked)}")
    print("| mode | first-token agreement | output F1 vs full (same layout) | answer F1 | TTFT ratio (median of per-question) |")
    print("|---|---|---|---|---|")
    for name in names:
        full = "full-" + name.rsplit("-", 1)[1][0]
        ratio = median([r[full]["ttft_s"] / r[name]["ttft_s"] for r in rows])
        print(f"| {name} | {statistics.mean(r[name]['top1'] for r in rows):.2f} | {statistics.mean(r[name]['out_f1'] for r in rows):.3f} "
              f"| {statistics.mean(r[name]['answer_f1'] for r in rows):.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"took {(time.perf_counter() - started) / 60:.1f} min")

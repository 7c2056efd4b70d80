"""Two cache-layout probes for KV reuse that cost (almost) nothing at query time. Both were negative.

On kv_oracle.py's DEV questions (disjoint from kv_reuse.py's 30), k chunks, SmolLM2 on CPU, with
the same fidelity measures (first-token top-1 agreement and 32-token greedy output token-F1 against
a full prefill, answer token-F1 against the reference):

* filler: each chunk's cache is computed after the shared prefix PLUS a fixed filler document
  (so its tokens see a "mid-prompt" context, as they will in the assembled prompt, rather than
  sitting right after the system turn), then re-rotated into place. Zero query-time cost; the
  first chunk keeps its exact cache unless the variant says ``-all``. Alone and under blend-q.
* tail: the chunks' caches are reused for layers < m; layers >= m are recomputed for ALL context
  tokens jointly, starting from each chunk's isolated hidden states at layer m (which could be
  stored with its cache). Timed against the full prefill in the same run.

    .venv/bin/python benchmarks/kv_layout_probe.py          # -> benchmarks/results/kv_layout_probe.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # importing kv_reuse also sets the offline environment

from kv_oracle import dev_questions, fidelity, naive_cache  # noqa: E402
from kv_reuse import DATA, load_chunks, machine_facts, retrieve, write_json  # noqa: E402

from eval.metrics import token_f1  # noqa: E402
from filestore import atomic_write_text  # noqa: E402

FILLER_TEXT = "The following documents were collected from several sources. " * 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1, help="dev-set seed (kv_oracle.py's default)")
    parser.add_argument("--tail-layers", type=int, nargs="*", default=[22, 26], help="m: first recomputed layer")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--name", default="kv_layout_probe")
    return parser.parse_args()


class Probe:
    """The model, the prompt's prefix, and the cache layouts under test."""

    def __init__(self, engine, fillers: dict[str, str]) -> None:
        from compression.kv.rope import inv_freq

        self.engine, self.model, self.fillers = engine, engine.lm.model, fillers
        self.frequencies = inv_freq(self.model)
        self._filler_kv: dict[str, tuple] = {}

    def _after(self, keys, values, ids):
        """KV of ``ids`` computed after the given cache (cloned: the prefix stays untouched)."""
        import torch

        from compression.hf_cache import cache_arg, returned_cache
        from compression.kv.assemble import cache_from_tensors, cache_tensors

        cache = cache_from_tensors(keys.clone(), values.clone())
        out = self.model(input_ids=torch.tensor([list(ids)]), use_cache=True, logits_to_keep=1, **cache_arg(self.model, cache))
        return cache_tensors(returned_cache(out))

    def filler_kv(self, name: str, prefix):
        if name not in self._filler_kv:
            from compression.kv.prompt import document_block

            ids = self.engine.lm.tokenizer(document_block(self.fillers[name]), add_special_tokens=False)["input_ids"]
            self._filler_kv[name] = self._after(prefix.keys, prefix.values, ids)
        return self._filler_kv[name]

    def filler_cache(self, prompt, filler: str | None, exact_first: bool):
        """Prefix + chunks, each computed after the prefix (+ the filler), re-rotated end to end."""
        import torch

        from compression.kv.assemble import cache_from_tensors
        from compression.kv.rope import rerotate

        if filler is None:
            return naive_cache(self.engine, prompt)
        prefix = self.engine.prefix(prompt)
        base_keys, base_values = self.filler_kv(filler, prefix) if filler else (prefix.keys, prefix.values)
        keys, values, position = [prefix.keys], [prefix.values], prefix.keys.shape[2]
        for j, ids in enumerate(prompt.chunk_ids):
            after = (prefix.keys, prefix.values) if exact_first and j == 0 else (base_keys, base_values)
            chunk_keys, chunk_values = self._after(*after, ids)
            start = after[0].shape[2]
            keys.append(rerotate(chunk_keys[:, :, start:], position - start, self.frequencies))
            values.append(chunk_values[:, :, start:])
            position += len(ids)
        return cache_from_tensors(torch.cat(keys, 2), torch.cat(values, 2))

    def isolated_hidden(self, prompt, m: int):
        """Each chunk's hidden states entering layer m, computed alone after the prefix."""
        import torch

        p = len(prompt.prefix_ids)
        states = [self.model(input_ids=torch.tensor([[*prompt.prefix_ids, *ids]]), output_hidden_states=True,
                             logits_to_keep=1).hidden_states[m][:, p:] for ids in prompt.chunk_ids]
        return torch.cat(states, dim=1)

    def tail_cache(self, prompt, m: int, hidden):
        """The reused cache (loaded and assembled) with layers >= m recomputed for every context token, jointly."""
        import torch

        from compression.hf_cache import cache_arg
        from compression.kv.recovery import causal_mask

        cache = naive_cache(self.engine, prompt)
        inner, p, n = self.model.model, len(prompt.prefix_ids), hidden.shape[1]
        positions = torch.arange(p, p + n)[None]
        for layer in cache.layers[m:]:
            layer.keys, layer.values = layer.keys[:, :, :p], layer.values[:, :, :p]
        embeddings = inner.rotary_emb(hidden, position_ids=positions)
        mask = causal_mask(n, p, p + n, hidden.dtype)
        for layer in inner.layers[m:]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=embeddings, position_ids=positions,
                           use_cache=True, **cache_arg(layer, cache))
        return cache


def run(args: argparse.Namespace, started: float) -> list[dict]:
    import torch

    from compression.kv.generate import KVReuseEngine, full_prefill, greedy_continue, recompute
    from compression.kv.recovery import BlendRecovery
    from compression.kv.store import MemoryStore
    from compression.lm import load_causal_lm

    torch.set_num_threads(1)
    lm = load_causal_lm()
    chunks = load_chunks(lm.tokenizer, 256)
    questions = dev_questions(args.questions, 30, 0, args.seed)
    ranked = retrieve(chunks, questions, args.k)
    engine = KVReuseEngine(lm, MemoryStore(4 * 2**30))
    probe = Probe(engine, {"generic": FILLER_TEXT, "corpus": chunks[len(chunks) // 2]})
    layouts = {"naive": (None, True), "filler-generic": ("generic", True), "filler-generic-all": ("generic", False),
               "filler-corpus": ("corpus", True)}
    blend_q = BlendRecovery(r=0.15, score="attention")
    rows = []
    with torch.inference_mode():
        for qi, question in enumerate(questions):
            prompt = engine.prompt([chunks[i] for i in ranked[qi][: args.k]], question["question"])
            engine.warm(prompt)  # the chunk caches, as precomputed at indexing time
            start = time.perf_counter()
            full_cache, full_logits = full_prefill(lm.model, prompt)
            full_s = time.perf_counter() - start
            full_text = lm.tokenizer.decode(greedy_continue(lm.model, full_cache, full_logits, args.new_tokens, engine.eos_ids),
                                            skip_special_tokens=True).strip()
            row = {"q": qi, "full": {"ttft_s": full_s, "answer_f1": token_f1(full_text, question["reference"])}}
            for name, (filler, exact_first) in layouts.items():
                for suffix, recovery in (("", None), ("+blend-q", blend_q)):
                    cache = probe.filler_cache(prompt, filler, exact_first)
                    selected = recovery.select(lm.model, cache, prompt) if recovery else []
                    logits = recompute(lm.model, cache, prompt, selected)
                    row[name + suffix] = fidelity(engine, cache, logits, full_text, full_logits, args.new_tokens)
            for m in args.tail_layers:
                hidden = probe.isolated_hidden(prompt, m)  # stored with the chunk in a real system: not timed
                start = time.perf_counter()
                cache = probe.tail_cache(prompt, m, hidden)
                logits = recompute(lm.model, cache, prompt, [])
                elapsed = time.perf_counter() - start
                row[f"tail-{m}"] = {**fidelity(engine, cache, logits, full_text, full_logits, args.new_tokens), "ttft_s": elapsed}
            for name, value in row.items():
                if isinstance(value, dict) and "text" in value:
                    value["answer_f1"] = token_f1(value["text"], question["reference"])
            rows.append(row)
            write(rows, args, time.perf_counter() - started)
            print(f"q{qi:02d} " + " ".join(f"{m}:{v['out_f1']:.2f}" for m, v in row.items() if isinstance(v, dict) and "out_f1" in v), flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    names = [m for m, v in rows[0].items() if isinstance(v, dict) and "out_f1" in v]
    summary = {"full": {"answer_f1": statistics.mean(r["full"]["answer_f1"] for r in rows)}}
    for name in names:
        entry = {"first_token_agreement": statistics.mean(r[name]["top1"] for r in rows),
                 "output_f1_vs_full": statistics.mean(r[name]["out_f1"] for r in rows),
                 "answer_f1": statistics.mean(r[name]["answer_f1"] for r in rows)}
        if "ttft_s" in rows[0][name]:
            entry["speedup_median_of_ratios"] = statistics.median(r["full"]["ttft_s"] / r[name]["ttft_s"] for r in rows)
        summary[name] = entry
    return summary


def write(rows: list[dict], args: argparse.Namespace, elapsed: float) -> None:
    summary = summarise(rows)
    machine = machine_facts(1)
    out = write_json(args.name, {"machine": machine, "args": vars(args), "summary": summary, "rows": rows})
    lines = [f"# KV-reuse cache-layout probes at k={args.k} (both negative)", "",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs (shared), torch {machine['torch']}, 1 thread. "
             f"Dev set: {len(rows)} questions from {DATA}/questions.csv (seed {args.seed}, kv_oracle.py's), disjoint from "
             f"kv_reuse.py's 30; {args.new_tokens} greedy tokens. Run took {elapsed / 60:.1f} min. "
             f"Command: `.venv/bin/python benchmarks/kv_layout_probe.py {' '.join(sys.argv[1:])}`.", "",
             "filler-X: every chunk but the first cached after the prefix plus a fixed filler document X (generic: a "
             "repeated neutral sentence; corpus: one fixed corpus chunk), then re-rotated into place; `-all`: the first "
             "chunk too. tail-m: chunk caches reused below layer m, layers >= m recomputed for all context tokens "
             "jointly from the chunks' isolated hidden states at layer m (speed-up: full prefill / this recompute, "
             "hidden states assumed stored). +blend-q: blend r=0.15 by the question's attention on top.", "",
             "| layout | first-token agreement | output F1 vs full | answer F1 | speed-up |", "|---|---|---|---|---|",
             f"| full prefill | 1.00 | 1.000 | {summary['full']['answer_f1']:.3f} | 1x |"]
    for name, entry in summary.items():
        if name == "full":
            continue
        speed = f"{entry['speedup_median_of_ratios']:.2f}x" if "speedup_median_of_ratios" in entry else "-"
        lines.append(f"| {name} | {entry['first_token_agreement']:.2f} | {entry['output_f1_vs_full']:.3f} | {entry['answer_f1']:.3f} | {speed} |")
    atomic_write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")


def main() -> None:
    args = parse_args()
    rows = run(args, time.perf_counter())
    print(json.dumps(summarise(rows), indent=1))


if __name__ == "__main__":
    main()

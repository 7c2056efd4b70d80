"""Prepacked prefill: packed rows vs padded batches vs one sequence at a time, on real chunk lengths.

Data: the shared corpora (``../shared/data``: chroma and jadon-cyber), chunked like
``eval.defaults.BEST_CONFIG`` (recursive chunker, 150 MiniLM tokens, no overlap), so the chunks
have the length spread indexing sees. Three measurements, all in ONE process, variants
interleaved per repeat (the order rotates), medians and ratios against baselines of the same run:

1. Chunk-cache precompute with the packaged SmolLM2 (``load_causal_lm``), ``--lm-chunks``
   chunks drawn at random from all corpora, each as its ``Document:`` block after the shared
   system prefix: packed rows (``compression.kv.packing.encode_chunks``, one variant per
   ``--row-tokens`` budget), padded batches (chunks sorted by length, longest first, each batch
   filled while ``batch size x its longest chunk`` stays within the same token budget as a
   packed row; right-padded, prefix KV as past, HF's padding mask), and one chunk per pass
   (``assemble.encode_chunk``, the unpacked path).
2. MiniLM embedding of ``--embed-chunks`` chunks: packed rows (``retrieval.packing``), the
   library's padded batches (``SentenceTransformer.encode``, batch 64, which sorts by length),
   and one text per call.
3. Indexing end to end (``index_paths`` of one chroma corpus file) with the encoder's packing on
   and off vs the bare ``SentenceTransformer.encode`` of the same chunk texts.

Every part runs at each ``--threads`` count (torch threads), all in the one process.

Cost is CPU seconds of this process (``time.process_time``) per 1,000 real tokens (padding and
the repeated prefix not counted); wall seconds are recorded too. Every variant's output is
checked against the one-at-a-time reference once.

    nice -n 10 .venv/bin/python benchmarks/prepack.py [--repeats 3] [--lm-chunks 96] [--row-tokens 2048] [--embed-chunks 200] [--threads 1,2] [--skip lm] [--tag name]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filestore import atomic_write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / ".work" / "prepack"
DATA = Path(os.environ.get("RAGPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
CHUNKER, CHUNK_SIZE = "recursive", 150
EMBED_BATCH = 64
LM_TARGET = 1.5  # packed vs padded, chunk-cache precompute
DEFAULT_LM_ROW_TOKENS = 2048  # compression.kv.packing.DEFAULT_ROW_TOKENS, without importing torch at start


def counts(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]`` (positive integers)."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def corpus_files() -> list[Path]:
    return sorted(p for sub in ("chroma", "jadon-cyber") for p in (DATA / sub / "corpora").glob("*") if p.is_file())


def load_chunk_texts(max_chars: int) -> dict[str, list[str]]:
    """Chunk texts per corpus file (its first ``max_chars`` characters), as indexing makes them."""
    from retrieval.chunkers import make_chunker

    chunker = make_chunker(CHUNKER, CHUNK_SIZE, 0)
    return {path.name: [c.text for c in chunker.chunk(path.read_text(encoding="utf-8")[:max_chars])] for path in corpus_files()}


def timed(function: Callable[[], object]) -> tuple[float, float, object]:
    """(CPU seconds, wall seconds, result) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, label: str) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Run every variant ``repeats`` times, rotating the order each repeat: CPU and wall seconds,
    and each variant's first result (checked against the reference by the caller)."""
    times: dict[str, dict[str, list[float]]] = {name: {"cpu_s": [], "wall_s": []} for name in variants}
    first: dict[str, Any] = {}
    names = list(variants)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            cpu, wall, result = timed(variants[name])
            first.setdefault(name, result)
            times[name]["cpu_s"].append(cpu)
            times[name]["wall_s"].append(wall)
            print(f"{label} repeat {repeat}: {name} cpu {cpu:.1f} s, wall {wall:.1f} s", flush=True)
    return times, first


# --- chunk-cache precompute -------------------------------------------------------------------

def padded_groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices sorted by length (longest first) cut into batches whose padded size
    (``count x longest``) stays within ``budget`` tokens: the least padding for that budget."""
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def padded_batches(model, prefix, chunks, budget):
    """Each chunk's KV after ``prefix`` (in input order), from length-sorted padded batches of at most ``budget`` tokens."""
    import torch

    from compression.hf_cache import cache_arg, returned_cache
    from compression.kv.assemble import cache_from_tensors

    n_prefix, out = len(prefix.token_ids), {}
    for indices in padded_groups([len(c) for c in chunks], budget):
        group = [chunks[i] for i in indices]
        longest = max(len(c) for c in group)
        ids = torch.zeros((len(group), longest), dtype=torch.long)
        mask = torch.zeros((len(group), n_prefix + longest), dtype=torch.long)
        mask[:, :n_prefix] = 1
        for row, chunk in enumerate(group):
            ids[row, :len(chunk)] = torch.tensor(chunk)
            mask[row, n_prefix:n_prefix + len(chunk)] = 1
        cache = cache_from_tensors(prefix.keys, prefix.values)
        for layer in cache.layers:  # the prefix once per row of the batch
            layer.keys, layer.values = layer.keys.expand(len(group), -1, -1, -1), layer.values.expand(len(group), -1, -1, -1)
        with torch.inference_mode():
            result = returned_cache(model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **cache_arg(model, cache)))
        for row, (index, chunk) in enumerate(zip(indices, group)):
            end = n_prefix + len(chunk)
            out[index] = (torch.stack([layer.keys[row, :, n_prefix:end] for layer in result.layers]),
                          torch.stack([layer.values[row, :, n_prefix:end] for layer in result.layers]))
    return [out[i] for i in range(len(chunks))]


def lm_variants(lm, prefix, chunks, row_budgets: list[int]) -> dict[str, Callable[[], object]]:
    from compression.kv.packing import encode_chunks

    def packed(budget: int) -> Callable[[], object]:
        return lambda: [kv for _, *kv in sorted(encode_chunks(lm.model, prefix, chunks, budget), key=lambda t: t[0])]

    def single():
        return [kv for _, *kv in encode_chunks(lm.model, prefix, chunks, None)]

    return {**{f"packed_{budget}": packed(budget) for budget in row_budgets},
            "padded": lambda: padded_batches(lm.model, prefix, chunks, max(row_budgets)), "single": single}


def check_lm(results: dict[str, Any]) -> float:
    """Largest absolute difference of any variant's KV from one chunk per pass."""
    reference = results["single"]
    worst = 0.0
    for name in (n for n in results if n != "single"):
        for (keys, values), (ref_keys, ref_values) in zip(results[name], reference):
            worst = max(worst, float((keys - ref_keys).abs().max()), float((values - ref_values).abs().max()))
    assert worst < 1e-3, f"a chunk-cache variant differs from one chunk per pass by {worst}"
    return worst


def run_lm(texts: list[str], n_chunks: int, row_budgets: list[int], repeats: int, seed: int, threads: int) -> dict:
    import torch

    from compression.kv.assemble import encode_prefix
    from compression.kv.prompt import build_prompt
    from compression.lm import load_causal_lm
    from retrieval.packing import pack_rows

    lm = load_causal_lm()
    torch.set_num_threads(threads)  # after the loader, which applies its own thread setting
    sample = random.Random(seed).sample(texts, min(n_chunks, len(texts)))
    prompt = build_prompt(lm.tokenizer, sample, "?")
    prefix = encode_prefix(lm.model, prompt.prefix_ids, lm.model_id)
    chunks = [list(ids) for ids in prompt.chunk_ids]
    times, results = interleaved(lm_variants(lm, prefix, chunks, row_budgets), repeats, f"chunk caches, {threads} thread(s)")
    worst = check_lm(results)
    lengths = [len(c) for c in chunks]
    groups = padded_groups(lengths, max(row_budgets))
    padded_tokens = sum(lengths[g[0]] * len(g) for g in groups)
    return summarise(times, sum(lengths), baseline="padded") | {
        "model_id": lm.model_id, "chunks": len(chunks), "prefix_tokens": len(prefix.token_ids),
        "chunk_tokens": {"total": sum(lengths), "min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "padded_budget": max(row_budgets), "padded_batches": len(groups), "padding_share": 1 - sum(lengths) / padded_tokens,
        "packed_rows": {budget: len(pack_rows(lengths, budget)) for budget in row_budgets}, "max_abs_diff_vs_single": worst,
    }


# --- embedding ----------------------------------------------------------------------------------

def run_embed(texts: list[str], n_chunks: int, repeats: int, seed: int, threads: int) -> dict:
    import numpy as np

    from retrieval.encoder import load_encoder
    from retrieval.packing import DEFAULT_ROW_TOKENS, encode_packed

    model = load_encoder()._model
    sample = random.Random(seed).sample(texts, min(n_chunks, len(texts)))
    variants = {
        "packed": lambda: encode_packed(model, sample, DEFAULT_ROW_TOKENS),
        "padded": lambda: model.encode(sample, batch_size=EMBED_BATCH, normalize_embeddings=True, show_progress_bar=False),
        "single": lambda: np.stack([model.encode([t], normalize_embeddings=True, show_progress_bar=False)[0] for t in sample]),
    }
    times, results = interleaved(variants, repeats, f"embedding, {threads} thread(s)")
    cosines = {name: float((results[name] * results["single"]).sum(axis=1).min()) for name in ("packed", "padded")}
    assert min(cosines.values()) >= 0.9999, f"an embedding variant differs from one text per call: {cosines}"
    tokens = sum(len(ids) for ids in model.tokenizer(sample, truncation=True, max_length=model.max_seq_length)["input_ids"])
    return summarise(times, tokens, baseline="padded") | {"chunks": len(sample), "tokens_with_specials": tokens,
                                                           "min_cosine_vs_single": cosines, "row_tokens": DEFAULT_ROW_TOKENS}


def run_indexing(repeats: int, file_name: str, threads: int) -> dict:
    from retrieval.chunkers import make_chunker
    from retrieval.encoder import SentenceEncoder, TruncationWarning, load_encoder
    from retrieval.indexing import chunk_documents, index_paths, load_documents
    from retrieval.packing import DEFAULT_ROW_TOKENS

    corpus = DATA / "chroma" / "corpora" / file_name
    loaded = load_encoder()
    # Packing forced on at any thread count, and off.
    encoders = {row_tokens: SentenceEncoder(loaded._model, loaded.name, loaded.model_dir, row_tokens=row_tokens, pack_max_threads=None)
                for row_tokens in (DEFAULT_ROW_TOKENS, None)}
    chunker = make_chunker(CHUNKER, CHUNK_SIZE, 0)
    docs, _ = load_documents([corpus])
    texts = [c.text for _, chunks in chunk_documents(docs, chunker) for c in chunks]
    model = loaded._model

    def end_to_end(encoder: SentenceEncoder) -> Callable[[], int]:
        def run() -> int:
            index_dir = Path(tempfile.mkdtemp(dir=WORK, prefix="index-"))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TruncationWarning)
                    return index_paths([corpus], index_dir, chunker, encoder).chunks_added
            finally:
                shutil.rmtree(index_dir)
        return run

    variants = {"bare_encode": lambda: model.encode(texts, batch_size=EMBED_BATCH, show_progress_bar=False, normalize_embeddings=True),
                "index_packed": end_to_end(encoders[DEFAULT_ROW_TOKENS]), "index_unpacked": end_to_end(encoders[None])}
    times, results = interleaved(variants, repeats, f"indexing, {threads} thread(s)")
    assert results["index_packed"] == results["index_unpacked"] == len(texts) == len(results["bare_encode"]), \
        "end to end indexed other chunks than the bare encode embeds"
    tokens = sum(len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"])
    return summarise(times, tokens, baseline="bare_encode") | {"chunks": len(texts), "packed_row_tokens": DEFAULT_ROW_TOKENS,
                                                               "files": [d.doc_id for d in docs]}


def summarise(times: dict[str, dict[str, list[float]]], tokens: int, baseline: str) -> dict:
    """Medians, CPU seconds per 1k tokens, and speed-ups over ``baseline`` (ratio of medians, and
    the median of per-repeat ratios)."""
    out: dict[str, Any] = {"times": times, "tokens": tokens, "baseline": baseline, "variants": {}}
    base = statistics.median(times[baseline]["cpu_s"])
    for name, t in times.items():
        cpu = statistics.median(t["cpu_s"])
        paired = [b / c for b, c in zip(times[baseline]["cpu_s"], t["cpu_s"])]
        out["variants"][name] = {"cpu_s_median": cpu, "wall_s_median": statistics.median(t["wall_s"]),
                                 "cpu_s_per_1k_tokens": 1000 * cpu / tokens, "speedup_vs_baseline": base / cpu,
                                 "paired_speedups": paired}
    return out


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version(), "torch": version("torch"), "transformers": version("transformers"),
            "sentence-transformers": version("sentence-transformers")}


def table(section: dict, labels: dict[str, str]) -> list[str]:
    rows = ["| variant | median CPU s | CPU s / 1k tokens | median wall s | speed-up vs " + section["baseline"] + " (paired) |",
            "|---|---:|---:|---:|---:|"]
    for name, v in section["variants"].items():
        paired = ", ".join(f"{x:.2f}" for x in v["paired_speedups"])
        rows.append(f"| {labels[name]} | {v['cpu_s_median']:.1f} | {v['cpu_s_per_1k_tokens']:.2f} | {v['wall_s_median']:.1f} | "
                    f"{v['speedup_vs_baseline']:.2f}x ({paired}) |")
    return rows


def markdown(r: dict) -> str:
    m, c = r["machine"], r["config"]
    parts = [
        "# Prepacked prefill: packed rows vs padded batches vs one at a time", "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), load average {' '.join(m['loadavg_at_start'])} "
        f"at start, {' '.join(r['loadavg_at_end'])} at end (other jobs share the CPUs); torch {m['torch']}, transformers "
        f"{m['transformers']}, sentence-transformers {m['sentence-transformers']}. Torch threads: {', '.join(map(str, c['threads']))} (each part at each count, one process).",
        f"Data: the shared corpora ({', '.join(r['data']['files'])}; the first {c['corpus_chars']:,} characters of each) chunked by the {CHUNKER} chunker at {CHUNK_SIZE} MiniLM "
        f"tokens: {r['data']['chunks']} chunks. Cost: CPU seconds of the process per 1,000 real tokens (padding and the "
        f"repeated prefix not counted); medians over {c['repeats']} interleaved repeats; paired = per-repeat ratios.", "",
    ]
    for threads, run in r["runs"].items():
        if run["lm"]:
            parts += lm_markdown(run["lm"], threads)
        if run["embed"]:
            parts += embed_markdown(run["embed"], threads)
        if run["indexing"]:
            parts += indexing_markdown(run["indexing"], threads)
    return "\n".join([*parts, "Reproduce: `nice -n 10 .venv/bin/python benchmarks/prepack.py "
                      f"--repeats {c['repeats']} --lm-chunks {c['lm_chunks']} --row-tokens {','.join(map(str, c['row_tokens']))} --embed-chunks {c['embed_chunks']} "
                      f"--threads {','.join(map(str, c['threads']))} --corpus-chars {c['corpus_chars']} --index-file {c['index_file']}"
                      + "".join(f" --skip {part}" for part in c["skip"]) + (f" --tag {c['tag']}" if c["tag"] else "") + "`", ""])


def verdict(variant: dict) -> str:
    """'met' when the ratio of medians and every paired ratio are above 1, else how it stands."""
    if variant["speedup_vs_baseline"] > 1 and min(variant["paired_speedups"]) > 1:
        return "met"
    return "not shown: within noise" if variant["speedup_vs_baseline"] > 1 else "NOT met"


def lm_markdown(lm: dict, threads: str) -> list[str]:
    ct, budgets = lm["chunk_tokens"], lm["packed_rows"]
    best = max((name for name in lm["variants"] if name.startswith("packed_")), key=lambda n: lm["variants"][n]["speedup_vs_baseline"])
    speedup = lm["variants"][best]["speedup_vs_baseline"]
    labels = {f"packed_{b}": f"packed rows of {int(b):,} tokens ({n} rows)" for b, n in budgets.items()}
    return [
        f"## Chunk-cache precompute ({lm['model_id']}), {threads} thread(s)", "",
        f"{lm['chunks']} random chunks as `Document:` blocks after the {lm['prefix_tokens']}-token system prefix: "
        f"{ct['total']} tokens (min {ct['min']}, median {ct['median']:.0f}, max {ct['max']} per chunk). Padded batches: the chunks "
        f"sorted by length, each batch as many as fit in {lm['padded_budget']:,} padded tokens ({lm['padded_batches']} batches, "
        f"{100 * lm['padding_share']:.0f}% of their positions padding). "
        f"Every variant's KV equals one chunk per pass within {lm['max_abs_diff_vs_single']:.1e}.", "",
        *table(lm, {**labels, "padded": "padded batches (length-sorted)", "single": "one chunk per pass (unpacked path)"}), "",
        f"Target: packed >= {LM_TARGET}x padded: **{'met' if speedup >= LM_TARGET else 'NOT met'}** ({speedup:.2f}x, {labels[best]}).", "",
    ]


def embed_markdown(emb: dict, threads: str) -> list[str]:
    return [
        f"## MiniLM embedding, {threads} thread(s)", "",
        f"{emb['chunks']} random chunks, {emb['tokens_with_specials']} tokens with [CLS]/[SEP]. Minimum cosine to one text "
        f"per call: packed {emb['min_cosine_vs_single']['packed']:.6f}, padded {emb['min_cosine_vs_single']['padded']:.6f}.", "",
        *table(emb, {"packed": f"packed rows ({emb['row_tokens']:,} tokens)", "padded": f"library batches of {EMBED_BATCH} (length-sorted, padded)",
                     "single": "one text per call"}), "",
    ]


def indexing_markdown(idx: dict, threads: str) -> list[str]:
    verdicts = {name: f"{verdict(idx['variants'][name])} ({idx['variants'][name]['speedup_vs_baseline']:.2f}x)" for name in ("index_packed", "index_unpacked")}
    return [
        f"## Indexing end to end, {threads} thread(s)", "",
        f"`index_paths` of {', '.join(idx['files'])} ({idx['chunks']} chunks) with the encoder's packing on (rows of "
        f"{idx['packed_row_tokens']:,} tokens) and off, vs the bare `SentenceTransformer.encode` of the same chunk texts (batch 64, normalised).", "",
        *table(idx, {"bare_encode": "bare `SentenceTransformer.encode`", "index_packed": "ragpress `index_paths`, packing on",
                     "index_unpacked": "ragpress `index_paths`, packing off"}), "",
        f"Target: end to end faster than the bare encode: packing on **{verdicts['index_packed']}**, packing off **{verdicts['index_unpacked']}**.", "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lm-chunks", type=int, default=96, help="chunks whose caches are precomputed per variant")
    parser.add_argument("--row-tokens", type=counts, default=[DEFAULT_LM_ROW_TOKENS],
                        help="packed row budgets, comma-separated (the padded batches get the largest)")
    parser.add_argument("--embed-chunks", type=int, default=200)
    parser.add_argument("--threads", type=counts, default=[1, 2], help="torch thread counts, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus-chars", type=int, default=120_000, help="characters chunked from the start of each corpus file")
    parser.add_argument("--index-file", default="chatlogs.md", help="chroma corpus indexed end to end")
    parser.add_argument("--skip", choices=("lm", "embed", "indexing"), action="append", default=[], help="leave a part out")
    parser.add_argument("--tag", default="", help="results go to prepack_<tag>.json/.md")
    parser.add_argument("--markdown-only", action="store_true", help="re-render the .md from the stored .json")
    args = parser.parse_args()
    name = f"prepack_{args.tag}" if args.tag else "prepack"
    if args.markdown_only:
        atomic_write_text(RESULTS / f"{name}.md", markdown(json.loads((RESULTS / f"{name}.json").read_text())))
        return
    import torch

    host = machine()
    WORK.mkdir(parents=True, exist_ok=True)
    per_file = load_chunk_texts(args.corpus_chars)
    texts = [t for chunks in per_file.values() for t in chunks]
    result: dict[str, Any] = {
        "machine": host, "data": {"files": list(per_file), "chunks": len(texts)},
        "config": {"repeats": args.repeats, "lm_chunks": args.lm_chunks, "row_tokens": args.row_tokens, "threads": args.threads,
                   "embed_chunks": args.embed_chunks, "seed": args.seed, "chunker": CHUNKER, "chunk_size": CHUNK_SIZE,
                   "skip": args.skip, "tag": args.tag, "corpus_chars": args.corpus_chars, "index_file": args.index_file},
        "runs": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        result["runs"][str(threads)] = {
            "lm": {} if "lm" in args.skip else run_lm(texts, args.lm_chunks, args.row_tokens, args.repeats, args.seed, threads),
            "embed": {} if "embed" in args.skip else run_embed(texts, args.embed_chunks, args.repeats, args.seed, threads),
            "indexing": {} if "indexing" in args.skip else run_indexing(args.repeats, args.index_file, threads)}
    result["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Prepacked prefill: packed rows vs padded batches vs one sequence at a time, on real chunk lengths.

Data: the shared corpora (``../shared/data``: chroma and jadon-cyber), chunked like
``eval.defaults.BEST_CONFIG`` (recursive chunker, 150 MiniLM tokens, no overlap), so the chunks
have the length spread indexing sees. Three measurements, all in ONE process, variants
interleaved per repeat (the order rotates), medians and ratios against baselines of the same run:

1. Chunk-cache precompute with the packaged SmolLM2 (``load_causal_lm``), ``--lm-chunks``
   chunks drawn at random from all corpora, each as its ``Document:`` block after the shared
   system prefix: packed rows (``compression.kv.packing.encode_chunks``, 2,048 tokens), padded
   batches of ``--lm-batch`` chunks (right-padded to the longest, prefix KV as past, HF's padding
   mask), and one chunk per pass (``assemble.encode_chunk``, the unpacked path).
2. MiniLM embedding of ``--embed-chunks`` chunks: packed rows (``retrieval.packing``), the
   library's padded batches (``SentenceTransformer.encode``, batch 64, which sorts by length),
   and one text per call.
3. Indexing end to end (``index_paths`` of one chroma corpus file, the encoder embedding in
   packed rows) vs the bare ``SentenceTransformer.encode`` of the same chunk texts.

Cost is CPU seconds of this process (``time.process_time``) per 1,000 real tokens (padding and
the repeated prefix not counted); wall seconds are recorded too. Every variant's output is
checked against the one-at-a-time reference once. ``--threads``: torch threads (1 by default:
under contention from other jobs one thread was the steadier and faster setting).

    nice -n 10 .venv/bin/python benchmarks/prepack.py [--repeats 3] [--lm-chunks 16] [--embed-chunks 120] [--threads 1] [--skip lm] [--tag name]
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

def padded_batches(model, prefix, chunks, batch):
    """Each chunk's KV after ``prefix``, ``batch`` chunks per pass, right-padded to the longest."""
    import torch

    from compression.hf_cache import cache_arg, returned_cache
    from compression.kv.assemble import cache_from_tensors

    n_prefix, out = len(prefix.token_ids), []
    for start in range(0, len(chunks), batch):
        group = chunks[start:start + batch]
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
        for row, chunk in enumerate(group):
            end = n_prefix + len(chunk)
            out.append((torch.stack([layer.keys[row, :, n_prefix:end] for layer in result.layers]),
                        torch.stack([layer.values[row, :, n_prefix:end] for layer in result.layers])))
    return out


def lm_variants(lm, prefix, chunks, batch: int) -> dict[str, Callable[[], object]]:
    from compression.kv.packing import DEFAULT_ROW_TOKENS, encode_chunks

    def packed():
        return [kv for _, *kv in sorted(encode_chunks(lm.model, prefix, chunks, DEFAULT_ROW_TOKENS), key=lambda t: t[0])]

    def single():
        return [kv for _, *kv in encode_chunks(lm.model, prefix, chunks, None)]

    return {"packed": packed, "padded": lambda: padded_batches(lm.model, prefix, chunks, batch), "single": single}


def check_lm(results: dict[str, Any]) -> float:
    """Largest absolute difference of any variant's KV from one chunk per pass."""
    reference = results["single"]
    worst = 0.0
    for name in ("packed", "padded"):
        for (keys, values), (ref_keys, ref_values) in zip(results[name], reference):
            worst = max(worst, float((keys - ref_keys).abs().max()), float((values - ref_values).abs().max()))
    assert worst < 1e-3, f"a chunk-cache variant differs from one chunk per pass by {worst}"
    return worst


def run_lm(texts: list[str], n_chunks: int, batch: int, repeats: int, seed: int) -> dict:
    from compression.kv.assemble import encode_prefix
    from compression.kv.prompt import build_prompt
    from compression.lm import load_causal_lm

    lm = load_causal_lm()
    sample = random.Random(seed).sample(texts, min(n_chunks, len(texts)))
    prompt = build_prompt(lm.tokenizer, sample, "?")
    prefix = encode_prefix(lm.model, prompt.prefix_ids, lm.model_id)
    chunks = [list(ids) for ids in prompt.chunk_ids]
    times, results = interleaved(lm_variants(lm, prefix, chunks, batch), repeats, "chunk caches")
    worst = check_lm(results)
    lengths = [len(c) for c in chunks]
    padded_tokens = sum(max(lengths[s:s + batch]) * len(lengths[s:s + batch]) for s in range(0, len(lengths), batch))
    return summarise(times, sum(lengths), baseline="padded") | {
        "model_id": lm.model_id, "chunks": len(chunks), "prefix_tokens": len(prefix.token_ids),
        "chunk_tokens": {"total": sum(lengths), "min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "padded_batch": batch, "padding_share": 1 - sum(lengths) / padded_tokens, "max_abs_diff_vs_single": worst,
    }


# --- embedding ----------------------------------------------------------------------------------

def run_embed(texts: list[str], n_chunks: int, repeats: int, seed: int) -> dict:
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
    times, results = interleaved(variants, repeats, "embedding")
    cosines = {name: float((results[name] * results["single"]).sum(axis=1).min()) for name in ("packed", "padded")}
    assert min(cosines.values()) >= 0.9999, f"an embedding variant differs from one text per call: {cosines}"
    tokens = sum(len(ids) for ids in model.tokenizer(sample, truncation=True, max_length=model.max_seq_length)["input_ids"])
    return summarise(times, tokens, baseline="padded") | {"chunks": len(sample), "tokens_with_specials": tokens,
                                                           "min_cosine_vs_single": cosines, "row_tokens": DEFAULT_ROW_TOKENS}


def run_indexing(repeats: int, file_name: str) -> dict:
    from retrieval.chunkers import make_chunker
    from retrieval.encoder import SentenceEncoder, TruncationWarning, load_encoder
    from retrieval.indexing import chunk_documents, index_paths, load_documents
    from retrieval.packing import DEFAULT_ROW_TOKENS

    corpus = DATA / "chroma" / "corpora" / file_name
    loaded = load_encoder()  # packing is off by default; this measures the encoder with it on
    encoder = SentenceEncoder(loaded._model, loaded.name, loaded.model_dir, row_tokens=DEFAULT_ROW_TOKENS)
    chunker = make_chunker(CHUNKER, CHUNK_SIZE, 0)
    docs, _ = load_documents([corpus])
    texts = [c.text for _, chunks in chunk_documents(docs, chunker) for c in chunks]
    model = encoder._model

    def end_to_end():
        index_dir = Path(tempfile.mkdtemp(dir=WORK, prefix="index-"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TruncationWarning)
                return index_paths([corpus], index_dir, chunker, encoder).chunks_added
        finally:
            shutil.rmtree(index_dir)

    variants = {"bare_encode": lambda: model.encode(texts, batch_size=EMBED_BATCH, show_progress_bar=False, normalize_embeddings=True),
                "index_paths": end_to_end}
    times, results = interleaved(variants, repeats, "indexing")
    assert results["index_paths"] == len(texts) == len(results["bare_encode"]), "end to end indexed other chunks than the bare encode embeds"
    tokens = sum(len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"])
    return summarise(times, tokens, baseline="bare_encode") | {"chunks": len(texts), "encoder_row_tokens": encoder.row_tokens,
                                                               "files": [d.doc_id for d in docs]}


def summarise(times: dict[str, dict[str, list[float]]], tokens: int, baseline: str) -> dict:
    """Medians, CPU seconds per 1k tokens, and speed-ups over ``baseline`` (ratio of medians, and
    the median of per-repeat ratios)."""
    out = {"times": times, "tokens": tokens, "baseline": baseline, "variants": {}}
    base = statistics.median(times[baseline]["cpu_s"])
    for name, t in times.items():
        cpu = statistics.median(t["cpu_s"])
        paired = [b / c for b, c in zip(times[baseline]["cpu_s"], t["cpu_s"])]
        out["variants"][name] = {"cpu_s_median": cpu, "wall_s_median": statistics.median(t["wall_s"]),
                                 "cpu_s_per_1k_tokens": 1000 * cpu / tokens, "speedup_vs_baseline": base / cpu,
                                 "paired_speedups": paired}
    return out


def machine(threads: int) -> dict:

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch_threads": threads, "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
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
    m = r["machine"]
    parts = [
        "# Prepacked prefill: packed rows vs padded batches vs one at a time", "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch threads {m['torch_threads']}, load average {' '.join(m['loadavg_at_start'])} "
        f"at start, {' '.join(r['loadavg_at_end'])} at end (other jobs share the CPUs); torch {m['torch']}, transformers "
        f"{m['transformers']}, sentence-transformers {m['sentence-transformers']}.",
        f"Data: the shared corpora ({', '.join(r['data']['files'])}; the first {r['config']['corpus_chars']:,} characters of each) chunked by the {CHUNKER} chunker at {CHUNK_SIZE} MiniLM "
        f"tokens: {r['data']['chunks']} chunks. Cost: CPU seconds of the process per 1,000 real tokens (padding and the "
        f"repeated prefix not counted); medians over {r['config']['repeats']} interleaved repeats; paired = per-repeat ratios.", "",
    ]
    if r["lm"]:
        parts += lm_markdown(r["lm"])
    if r["embed"]:
        parts += embed_markdown(r["embed"])
    if r["indexing"]:
        parts += indexing_markdown(r["indexing"])
    c = r["config"]
    return "\n".join([*parts, "Reproduce: `nice -n 10 .venv/bin/python benchmarks/prepack.py "
                      f"--repeats {c['repeats']} --lm-chunks {c['lm_chunks']} --embed-chunks {c['embed_chunks']} "
                      f"--lm-batch {c['lm_batch']} --threads {m['torch_threads']} --corpus-chars {c['corpus_chars']} --index-file {c['index_file']}"
                      + "".join(f" --skip {part}" for part in c["skip"]) + (f" --tag {c['tag']}" if c["tag"] else "") + "`", ""])


def verdict(variant: dict) -> str:
    """'met' when the ratio of medians and every paired ratio are above 1, else how it stands."""
    if variant["speedup_vs_baseline"] > 1 and min(variant["paired_speedups"]) > 1:
        return "met"
    return "not shown: within noise" if variant["speedup_vs_baseline"] > 1 else "NOT met"


def lm_markdown(lm: dict) -> list[str]:
    speedup, ct = lm["variants"]["packed"]["speedup_vs_baseline"], lm["chunk_tokens"]
    return [
        f"## Chunk-cache precompute ({lm['model_id']})", "",
        f"{lm['chunks']} random chunks as `Document:` blocks after the {lm['prefix_tokens']}-token system prefix: "
        f"{ct['total']} tokens (min {ct['min']}, median {ct['median']:.0f}, max {ct['max']} per chunk). Padded batches of "
        f"{lm['padded_batch']} chunks in drawn order waste {100 * lm['padding_share']:.0f}% of their positions on padding. "
        f"Every variant's KV equals one chunk per pass within {lm['max_abs_diff_vs_single']:.1e}.", "",
        *table(lm, {"packed": "packed rows (2,048 tokens)", "padded": f"padded batches of {lm['padded_batch']}",
                    "single": "one chunk per pass (unpacked path)"}), "",
        f"Target: packed >= {LM_TARGET}x padded: **{'met' if speedup >= LM_TARGET else 'NOT met'}** ({speedup:.2f}x).", "",
    ]


def embed_markdown(emb: dict) -> list[str]:
    return [
        "## MiniLM embedding", "",
        f"{emb['chunks']} random chunks, {emb['tokens_with_specials']} tokens with [CLS]/[SEP]. Minimum cosine to one text "
        f"per call: packed {emb['min_cosine_vs_single']['packed']:.6f}, padded {emb['min_cosine_vs_single']['padded']:.6f}.", "",
        *table(emb, {"packed": f"packed rows ({emb['row_tokens']:,} tokens)", "padded": f"library batches of {EMBED_BATCH} (length-sorted, padded)",
                     "single": "one text per call"}), "",
    ]


def indexing_markdown(idx: dict) -> list[str]:
    speedup = idx["variants"]["index_paths"]["speedup_vs_baseline"]
    return [
        "## Indexing end to end", "",
        f"`index_paths` of {', '.join(idx['files'])} ({idx['chunks']} chunks; encoder packing "
        f"{'on, rows of ' + format(idx['encoder_row_tokens'], ',') + ' tokens' if idx['encoder_row_tokens'] else 'off'}) "
        "vs the bare `SentenceTransformer.encode` of the same chunk texts (batch 64, normalised).", "",
        *table(idx, {"bare_encode": "bare `SentenceTransformer.encode`", "index_paths": "ragpress `index_paths` end to end"}), "",
        f"Target: end to end faster than the bare encode: **{verdict(idx['variants']['index_paths'])}** ({speedup:.2f}x).", "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lm-chunks", type=int, default=16, help="chunks whose caches are precomputed per variant")
    parser.add_argument("--lm-batch", type=int, default=8, help="chunks per padded batch")
    parser.add_argument("--embed-chunks", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
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

    torch.set_num_threads(args.threads)
    host = machine(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    per_file = load_chunk_texts(args.corpus_chars)
    texts = [t for chunks in per_file.values() for t in chunks]
    result = {"machine": host, "data": {"files": list(per_file), "chunks": len(texts)},
              "config": {"repeats": args.repeats, "lm_chunks": args.lm_chunks, "lm_batch": args.lm_batch,
                         "embed_chunks": args.embed_chunks, "seed": args.seed, "chunker": CHUNKER, "chunk_size": CHUNK_SIZE,
                         "skip": args.skip, "tag": args.tag, "corpus_chars": args.corpus_chars, "index_file": args.index_file}}
    result["lm"] = {} if "lm" in args.skip else run_lm(texts, args.lm_chunks, args.lm_batch, args.repeats, args.seed)
    result["embed"] = {} if "embed" in args.skip else run_embed(texts, args.embed_chunks, args.repeats, args.seed)
    result["indexing"] = {} if "indexing" in args.skip else run_indexing(args.repeats, args.index_file)
    result["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Dev-only: evidence kept with the question (rate 0.33 unless --rates), fast, for tuning ``compression/llmlingua/relevance.py``.

Same data, retrieval and survival measure as ``benchmarks/compression_llmlingua.py`` (imported from
it). Two modes:

* ``evidence`` (seconds): only ``choose_evidence`` with the compressor's budget (0.9 of the
  rate-0.33 target) and the packaged MiniLM; the share of the found reference characters inside the
  chosen sentences. Per-question lines with ``--detail``.
* ``full`` (minutes): the whole ``LLMLinguaCompressor`` at rate 0.33 with the question.

Variants are module constants of ``compression.llmlingua.relevance`` set for the run
(``--variant PRIOR=2,NEIGHBOUR=0.3 --variant LEXICAL=0.5``; the STEM / COVERAGE / STRONG / DUPLICATE
switches of session 4 exist only at commit 90d332a). Tuning uses the development sets only; the other
sets print their mean alone (no per-question lines), so they cannot be studied by accident.

Run: ``.venv/bin/python benchmarks/sweeps/evidence_dev.py --sets dev1 dev3 --rates 0.25 0.33 0.4 --variant PRIOR=3 --variant PRIOR=2``
(``--detail``: the development questions that lose reference characters).
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import compression_llmlingua as bench  # noqa: E402
import numpy as np  # noqa: E402

SETS = {
    "dev1": "rows[1::6] (development set)",
    "dev3": "rows[3::6] (development set)",
    "rows5": "rows[5::6] (untouched)",
    "s4": "rows[2::6]+rows[4::6] (untouched, session 4)",
}
DEV = ("dev1", "dev3")
CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "ragpress_evidence_dev_retrieval.pkl"


def retrieved(names: list[str]) -> dict[str, list[tuple[dict, list[dict]]]]:
    """(question, top-5 hits) per set; retrieval cached outside the repo between runs."""
    cache = pickle.loads(CACHE.read_bytes()) if CACHE.exists() else {}
    missing = [n for n in names if n not in cache]
    if missing:
        chunks = bench.chunk_corpora()
        for name in missing:
            rows = bench.held_out_rows(SETS[name])
            cache[name] = list(zip(rows, bench.retrieve(chunks, rows)))
        tmp = CACHE.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(cache))
        os.replace(tmp, CACHE)
    return {n: cache[n] for n in names}


def evidence_masks(question: str, contexts: list[str], tokenizer, encoder, rate: float = 0.33) -> list[np.ndarray]:
    """Characters of each context inside the evidence sentences the compressor would choose."""
    from compression.base import Budget
    from compression.llmlingua.compressor import LLMLinguaCompressor, _inner
    from compression.llmlingua.relevance import choose_evidence
    from compression.llmlingua.units import count_tokens, split_units, tokenize

    target = Budget(rate=rate).tokens_for(count_tokens(tokenizer, "\n\n".join(contexts)))
    units = []
    for text in contexts:
        ids, offsets = tokenize(tokenizer, text)
        units.append(split_units(text, offsets))
    order = list(range(len(contexts)))
    budget = int(LLMLinguaCompressor().evidence * _inner(target, order))
    masks = [np.zeros(len(c), dtype=bool) for c in contexts]
    for s in choose_evidence(question, contexts, units, order, budget, encoder):
        masks[s.context][units[s.context][s.first].start : units[s.context][s.last].end] = True
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("evidence", "full"), default="evidence")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(DEV))
    parser.add_argument("--rates", nargs="+", type=float, default=[0.33], help="evidence mode: mean over these rates")
    parser.add_argument("--detail", action="store_true", help="per-question lines (development sets only)")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]", help="compression.llmlingua.relevance constants for one run (repeatable)"
    )
    args = parser.parse_args()

    import compression.llmlingua.relevance as relevance
    from compression.base import Budget
    from compression.extractive.models import default_encoder
    from compression.llmlingua.compressor import LLMLinguaCompressor
    from compression.lm import load_causal_lm

    tokenizer, encoder = load_causal_lm().tokenizer, MemoEncoder(default_encoder())
    corpora = bench.load_corpora()
    sets = retrieved(args.sets)
    defaults = {name: getattr(relevance, name) for name in dir(relevance) if name.isupper()}
    for variant in args.variant or [""]:
        for name, value in defaults.items():
            setattr(relevance, name, value)
        for item in filter(None, variant.split(",")):
            name, value = item.split("=", 1)
            if name not in defaults:
                raise SystemExit(f"compression.llmlingua.relevance has no constant {name}")
            setattr(relevance, name, type(defaults[name])(float(value)))
        compressor = LLMLinguaCompressor(encoder=encoder) if args.mode == "full" else None
        for name, items in sets.items():
            shares = []
            for qi, (question, hits) in enumerate(items):
                contexts = [h["text"] for h in hits]
                for rate in args.rates if compressor is None else [0.33]:
                    if compressor is None:
                        masks = evidence_masks(question["question"], contexts, tokenizer, encoder, rate)
                    else:
                        result = compressor.compress(contexts, Budget(rate=rate), question=question["question"])
                        masks = bench.ragpress_masks(contexts, result)
                    found, kept = bench.survival(question, hits, corpora, masks)
                    if found:
                        shares.append(kept / found)
                        if args.detail and name in DEV and kept < found:
                            print(f"{name} q{qi} @{rate} {kept / found:.3f} {question['question']!r}", flush=True)
            print(f"{name}: {args.mode} mean share {statistics.mean(shares):.3f} over {len(shares)} question-rates [{variant}]", flush=True)


class MemoEncoder:
    """The encoder with its vectors memoised per text (variants re-encode the same sentences)."""

    def __init__(self, encoder) -> None:
        self.encoder, self.memo = encoder, {}
        self.model_id, self.dim = encoder.model_id, encoder.dim

    def encode(self, texts, **kwargs):
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            self.memo.update(zip(missing, self.encoder.encode(missing, **kwargs)))
        return np.stack([self.memo[t] for t in texts])

if __name__ == "__main__":
    main()

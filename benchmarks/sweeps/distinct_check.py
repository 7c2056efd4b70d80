"""Dev-only: does collapsing identical texts (``EvalConfig.distinct``, session 10) change retrieval?

For the fixed-token baseline, ``eval.defaults.BEST_CONFIG`` and every configuration of
``benchmarks/sweeps/eval_grid.yaml`` on the shared Chroma data (and the baseline and default on the
own pydoc-topics set), compares each question's top k and its recall / precision / IoU / retrieved
characters with ``distinct`` on and off, and prints what differs.

    .venv/bin/python benchmarks/sweeps/distinct_check.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from eval.datasets import load_chroma, load_pydoc_topics  # noqa: E402
from eval.defaults import BASELINE_CONFIG, BEST_CONFIG  # noqa: E402
from eval.embedding_cache import EmbeddingCache  # noqa: E402
from eval.runner import Evaluator  # noqa: E402
from eval.sweep import load_sweep  # noqa: E402
from retrieval.encoder import load_encoder  # noqa: E402


def compare(evaluator: Evaluator, config) -> tuple[int, int, str]:
    """Questions whose scores differ, questions whose top k differs, and both overall summaries."""
    on, off = (dataclasses.replace(config, distinct=flag) for flag in (True, False))
    results = evaluator.evaluate(on), evaluator.evaluate(off)
    key = lambda s: (s.recall, s.precision, s.iou, s.retrieved_chars)  # noqa: E731
    changed = sum(key(a) != key(b) for a, b in zip(results[0].questions, results[1].questions))
    tops = 0 if config.k == "min" else sum(a != b for a, b in zip(evaluator.retrieve(on), evaluator.retrieve(off)))
    summary = " / ".join(f"R {r.overall.recall:.1f} P {r.overall.precision:.2f} IoU {r.overall.iou:.2f}" for r in results)
    return changed, tops, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    encoder = load_encoder()
    chroma = load_chroma(args.data / "chroma" / "questions.csv", args.data / "chroma" / "corpora")
    grid = [BASELINE_CONFIG, BEST_CONFIG] + list(load_sweep(REPO / "benchmarks" / "sweeps" / "eval_grid.yaml"))
    for name, dataset, configs in (("chroma", chroma, grid), ("pydoc", load_pydoc_topics(), [BASELINE_CONFIG, BEST_CONFIG])):
        evaluator = Evaluator(dataset, encoder, cache=EmbeddingCache())
        differing = 0
        for config in configs:
            changed, tops, summary = compare(evaluator, config)
            differing += bool(changed or tops)
            if changed or tops:
                print(f"{name} {config.label}: scores differ on {changed}, top k on {tops} questions; distinct on / off: {summary}")
        print(f"{name}: {differing} of {len(configs)} configurations differ")


if __name__ == "__main__":
    main()

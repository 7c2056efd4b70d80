"""Dev-only: does collapsing identical texts (``EvalConfig.distinct``, session 10) change retrieval?

For the fixed-token baseline, ``eval.defaults.BEST_CONFIG`` and every configuration of
``benchmarks/sweeps/eval_grid.yaml`` on the shared Chroma data (and the baseline and default on the
own pydoc-topics set), compares each question's top k and its recall / precision / IoU / retrieved
characters with ``distinct`` on and off, and prints what differs.

    .venv/bin/python benchmarks/sweeps/distinct_check.py [--data ../shared/data]
    .venv/bin/python benchmarks/sweeps/distinct_check.py --contained

``--contained`` compares instead exact repeats (``distinct``) with also collapsing a text contained
in a better-ranked one (a topic page inside a longer page that includes it). Session 11, not
adopted: on the pydoc set's default configuration, 3 of 26 questions change their top k, recall stays
100.0 and precision / IoU fall 5.78 -> 5.61 (the contained copies count as retrieved places); on the
shared Chroma data 1 of 56 configurations differs, on 1 question. No recall to gain, and mirroring
compressed spans onto a contained copy would need offsets.
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

from eval import runner  # noqa: E402
from eval.datasets import load_chroma, load_pydoc_topics  # noqa: E402
from eval.defaults import BASELINE_CONFIG, BEST_CONFIG  # noqa: E402
from eval.embedding_cache import EmbeddingCache  # noqa: E402
from eval.runner import Evaluator  # noqa: E402
from eval.sweep import load_sweep  # noqa: E402
from retrieval.encoder import load_encoder  # noqa: E402
from retrieval.postprocess import first_distinct  # noqa: E402


def first_contained(texts, k: int) -> list[tuple[int, tuple[int, ...]]]:
    """``first_distinct``, also collapsing a text contained in an earlier kept one (``--contained``)."""
    kept: list[tuple[int, list[int], str]] = []
    for position, text in enumerate(texts if k > 0 else ()):
        host = next((entry for entry in kept if text in entry[2]), None)
        if host is not None:
            host[1].append(position)
            continue
        kept.append((position, [], text))
        if len(kept) == k:
            break
    return [(position, tuple(copies)) for position, copies, _ in kept]


def evaluate_both(evaluator: Evaluator, config, contained: bool) -> tuple[tuple, tuple]:
    """(result, top k) for distinct on and off, or (``contained``) for exact repeats and for containment."""
    if not contained:
        on, off = (dataclasses.replace(config, distinct=flag) for flag in (True, False))
        return tuple((evaluator.evaluate(c), None if c.k == "min" else evaluator.retrieve(c)) for c in (on, off))
    both = []
    for rule in (runner.first_distinct, first_contained):
        runner.first_distinct = rule
        try:
            both.append((evaluator.evaluate(config), None if config.k == "min" else evaluator.retrieve(config)))
        finally:
            runner.first_distinct = first_distinct
    return tuple(both)


def compare(evaluator: Evaluator, config, contained: bool = False) -> tuple[int, int, str]:
    """Questions whose scores differ, questions whose top k differs, and both overall summaries."""
    (first, first_tops), (second, second_tops) = evaluate_both(evaluator, config, contained)
    key = lambda s: (s.recall, s.precision, s.iou, s.retrieved_chars)  # noqa: E731
    changed = sum(key(a) != key(b) for a, b in zip(first.questions, second.questions))
    tops = 0 if first_tops is None else sum(a != b for a, b in zip(first_tops, second_tops))
    summary = " / ".join(f"R {r.overall.recall:.1f} P {r.overall.precision:.2f} IoU {r.overall.iou:.2f}" for r in (first, second))
    return changed, tops, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--contained", action="store_true", help="exact repeats vs also texts contained in a better-ranked one")
    args = parser.parse_args()
    encoder = load_encoder()
    chroma = load_chroma(args.data / "chroma" / "questions.csv", args.data / "chroma" / "corpora")
    grid = [BASELINE_CONFIG, BEST_CONFIG] + list(load_sweep(REPO / "benchmarks" / "sweeps" / "eval_grid.yaml"))
    for name, dataset, configs in (("chroma", chroma, grid), ("pydoc", load_pydoc_topics(), [BASELINE_CONFIG, BEST_CONFIG])):
        evaluator = Evaluator(dataset, encoder, cache=EmbeddingCache())
        differing = 0
        for config in configs:
            changed, tops, summary = compare(evaluator, config, args.contained)
            differing += bool(changed or tops)
            if changed or tops:
                label = "exact / contained" if args.contained else "distinct on / off"
                print(f"{name} {config.label}: scores differ on {changed}, top k on {tops} questions; {label}: {summary}")
        print(f"{name}: {differing} of {len(configs)} configurations differ")


if __name__ == "__main__":
    main()

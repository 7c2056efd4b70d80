"""Retrieval poisoning on the shared Chroma and jadon-cyber data: attack success and the defence.

For each dataset the probe (``eval/poison/probe.py``) clusters the questions into topics, plants
n = 1, 5, 10 passages per topic for each attack (random, query stuffing, keyword stuffing,
HotFlip) in a copy of the clean default index (recursive 150/0, neighbour context 2), and reports
attack success at k = 5, 10 for dense, BM25 and the default hybrid retrieval, with and without the
query-log defence, plus the targets' clean recall/IoU. The baselines measured in the same run are
random passages (the floor) and the unpoisoned index (clean recall).

    nice -n 10 .venv/bin/python benchmarks/poisoning.py [--topics 3] [--hotflip-steps 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.datasets import load_chroma  # noqa: E402
from eval.poison.probe import PoisonConfig, run_probe  # noqa: E402
from eval.poison.report import markdown_report, report_json  # noqa: E402
from eval.report import machine_info  # noqa: E402
from retrieval.atomic import atomic_write_text  # noqa: E402
from retrieval.encoder import load_encoder  # noqa: E402
from retrieval.tokenizer import load_tokenizer  # noqa: E402

# The shared data sits next to the checkout (../shared/data), or next to its parent for a worktree.
DATA = next((path for path in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data") if path.is_dir()),
            ROOT.parent / "shared" / "data")
DATASETS = ("chroma", "jadon-cyber")
RESULTS = ROOT / "benchmarks" / "results"


def summary(report: dict) -> dict:
    """The strongest attack (highest mean success without the defence over modes, n and k) and
    how much the defence removes of it, with the clean recall it costs."""
    rows = report["table"]
    by_attack: dict[str, list[dict]] = {}
    for row in rows:
        by_attack.setdefault(row["attack"], []).append(row)
    ks = sorted(int(key.split("@")[1]) for key in rows[0] if key.startswith("success@"))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    strength = {name: mean([r[f"success@{k}"] for r in group for k in ks]) for name, group in by_attack.items()}
    strongest = max(strength, key=strength.__getitem__)
    defended = mean([r[f"defended@{k}"] for r in by_attack[strongest] for k in ks])
    clean = [c for c in report["clean"] if c["attack"] is None]
    recall_drop = max(off["recall"] - on["recall"] for off in clean if not off["defence"]
                      for on in clean if on["defence"] and (on["mode"], on["k"]) == (off["mode"], off["k"]))
    return {"strength": strength, "strongest": strongest, "strongest_success": strength[strongest],
            "strongest_defended": defended,
            "relative_reduction": 1 - defended / strength[strongest] if strength[strongest] else 0.0,
            "max_clean_recall_drop": recall_drop}


def progress_printer(name: str):
    """Print the probe's progress lines prefixed with the dataset name."""
    def show(message: str) -> None:
        print(f"[{name}] {message}", flush=True)
    return show


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (chroma/, jadon-cyber/)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--topics", type=int, default=3)
    parser.add_argument("--hotflip-steps", type=int, default=8)
    parser.add_argument("--hotflip-candidates", type=int, default=8)
    args = parser.parse_args()
    config = PoisonConfig(topics=args.topics, hotflip_steps=args.hotflip_steps, hotflip_candidates=args.hotflip_candidates)
    encoder, counter = load_encoder(), load_tokenizer()
    out = {"machine": machine_info(), "config": config.model_dump(mode="json"), "datasets": {}}
    markdown = [f"# Retrieval poisoning\n\nMachine: {out['machine']}. Model {encoder.model_id}.\n"]
    for name in args.datasets:
        dataset = load_chroma(args.data / name / "questions.csv", args.data / name / "corpora", name=name)
        started = time.perf_counter()
        report = run_probe(config, dataset, encoder, counter, counter.backend.get_vocab(), progress=progress_printer(name))
        data = report_json(report)
        data["summary"] = summary(data)
        data["wall_s"] = time.perf_counter() - started
        out["datasets"][name] = data
        markdown.append(markdown_report(report))
        markdown.append(f"\nSummary: {json.dumps(data['summary'])}\n\nWall time {data['wall_s']:.0f} s.\n")
        print(markdown[-2] + markdown[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "poisoning.json", json.dumps(out, indent=1) + "\n")
    atomic_write_text(RESULTS / "poisoning_tables.md", "\n".join(markdown))


if __name__ == "__main__":
    main()

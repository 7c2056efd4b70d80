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


def mean(values: list[float]) -> float:
    """Plain mean (0 for nothing)."""
    return sum(values) / len(values) if values else 0.0


def summary(report: dict) -> dict:
    """The strongest attack (highest mean success without the defence over modes, n and k), how
    much the defence removes of it, the clean recall it costs, and HotFlip against query stuffing
    on dense retrieval."""
    rows = report["table"]
    ks = sorted(int(key.split("@")[1]) for key in rows[0] if key.startswith("success@"))
    by_attack: dict[str, list[dict]] = {}
    for row in rows:
        by_attack.setdefault(row["attack"], []).append(row)
    strength = {name: mean([r[f"success@{k}"] for r in group for k in ks]) for name, group in by_attack.items()}
    defended = {name: mean([r[f"defended@{k}"] for r in group for k in ks]) for name, group in by_attack.items()}
    strongest = max(strength, key=strength.__getitem__)
    clean = [c for c in report["clean"] if c["attack"] is None]
    drops = [off["recall"] - on["recall"] for off in clean if not off["defence"]
             for on in clean if on["defence"] and (on["mode"], on["k"]) == (off["mode"], off["k"])]
    dense = {name: mean([r[f"success@{k}"] for r in group if r["mode"] == "dense" for k in ks])
             for name, group in by_attack.items()}
    reduction = 1 - defended[strongest] / strength[strongest] if strength[strongest] else 0.0
    return {"success": strength, "defended": defended, "dense_success": dense, "strongest": strongest,
            "relative_reduction": reduction, "max_clean_recall_drop": max(drops),
            "target_met": reduction >= 0.5 and max(drops) <= 1.0}


def render(out: dict) -> str:
    """The results page: settings, per dataset the tables and what they say."""
    config = out["config"]
    lines = [
        "# Retrieval poisoning: planted passages against dense, BM25 and hybrid retrieval\n",
        f"Machine: {out['machine']}. Embedding model {out.get('model', 'all-MiniLM-L6-v2')}. Command: "
        "`nice -n 10 .venv/bin/python benchmarks/poisoning.py` (settings = `benchmarks/sweeps/poison.yaml`).\n",
        f"Index: the default (recursive {config['chunk_size']}/{config['overlap']}, neighbour context "
        f"{config['context_chunks']}), all corpora of a dataset in one index; planted passages go into a temporary "
        f"copy through the incremental indexing API, one document each. Topics: KMeans ({config['clusters']} clusters) "
        f"on the MiniLM question embeddings, the {config['topics']} largest clusters probed (a subset, for the CPU "
        f"budget); {config['attack_share']:.0%} of a cluster are the attacker's questions, the rest the held-out "
        "targets. Success = share of targets whose top k (distinct texts) holds a passage planted for their topic; "
        "the passages of all probed topics are planted together.\n",
        f"Attacks ({config['length']} MiniLM tokens per passage at most): random vocabulary words; query stuffing "
        "(the attack questions concatenated, n orders); keyword stuffing (their content words repeated by frequency, "
        f"n shuffles); HotFlip: from the first query-stuffing passage, {config['hotflip_steps']} gradient steps (up "
        f"to {2 * config['hotflip_steps']} until n flips are accepted) x {config['hotflip_candidates']} exactly "
        f"evaluated single-token flips sampled from the top {config['hotflip_top']} first-order substitutions per "
        "position, maximising the mean cosine to the attack questions; its n passages are the last n accepted states.\n",
        f"Defence (query-log, `eval/poison/defence.py`): score = mean of the {config['defence_top']} highest cosines "
        f"to the logged queries - mean of the {config['defence_top']} highest cosines to the clean index; threshold "
        f"= the {config['defence_quantile']} quantile of the clean chunks' scores; flagged chunks are skipped at "
        "query time. The query log is every question of the file except the held-out targets, so the attack "
        "questions are in it (an attacker copies queries users ask) and the targets are not.\n",
        "Columns: success@k / defended@k in %; `recall@5 lost` = the targets' recall@5 on the clean index minus "
        "under attack, in points (negative: the planted documents changed BM25 statistics in the targets' favour).\n",
    ]
    for name, data in out["datasets"].items():
        info = summary(data)
        topics = data["topics"]
        lines.append(f"## {name}\n\n{len(topics)} topics, {sum(len(t['attack']) for t in topics)} attack and "
                     f"{sum(len(t['targets']) for t in topics)} target questions, {data['n_chunks']} chunks. Defence "
                     f"threshold {data['defence']['threshold']:.3f}, {data['defence']['clean_flagged']} clean chunks "
                     f"flagged, {data['defence']['log_queries']} logged queries. Wall time {data['wall_s']:.0f} s.\n")
        lines.append(markdown_table(data["table"]))
        lines.append("Clean index, targets (recall in %, IoU in %):\n")
        clean = [c for c in data["clean"] if c["attack"] is None]
        rows = [{"mode": off["mode"], "k": off["k"], "recall": round(off["recall"], 1), "recall defended": round(on["recall"], 1),
                 "IoU": round(off["iou"], 2), "IoU defended": round(on["iou"], 2)}
                for off in clean if not off["defence"] for on in clean
                if on["defence"] and (on["mode"], on["k"]) == (off["mode"], off["k"])]
        lines.append(markdown_table(rows))
        objectives: dict[str, list[dict]] = {}
        for row in data["objectives"]:
            objectives.setdefault(row["attack"], []).append(row)
        cosines = ", ".join(f"{attack} {mean([r['attack_cosine'] for r in rows_]):.3f} / "
                            f"{mean([r['target_cosine'] for r in rows_]):.3f}" for attack, rows_ in objectives.items())
        traces = data["settings"]["hotflip_traces"]
        trace_text = "; ".join(f"{t[0]:.3f} -> {t[-1]:.3f} in {len(t) - 1} steps" for t in traces) or "not run"
        lines.append(
            f"Mean cosine of the passages to the attack / target questions: {cosines}. HotFlip objective per topic: "
            f"{trace_text}.\n\n"
            f"Mean success over modes, n and k (no defence -> defence): "
            + ", ".join(f"{a} {info['success'][a]:.1f} -> {info['defended'][a]:.1f}" for a in info["success"])
            + ". Dense only: " + ", ".join(f"{a} {v:.1f}" for a, v in info["dense_success"].items())
            + f".\n\nStrongest attack: **{info['strongest']}**; the defence lowers its mean success by "
            f"**{100 * info['relative_reduction']:.0f}%** (relative) while the targets' clean recall drops by at most "
            f"**{info['max_clean_recall_drop']:.1f}** points (any mode, any k): target (>= 50%, <= 1 point) "
            f"**{'met' if info['target_met'] else 'NOT met'}**.\n")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of dict rows."""
    from eval.poison.report import markdown_table as table

    return table(rows)


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
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.render:
        out = json.loads((RESULTS / "poisoning.json").read_text())
        atomic_write_text(RESULTS / "poisoning.md", render(out))
        return
    config = PoisonConfig(topics=args.topics, hotflip_steps=args.hotflip_steps, hotflip_candidates=args.hotflip_candidates)
    encoder, counter = load_encoder(), load_tokenizer()
    out = {"machine": machine_info(), "model": encoder.model_id, "config": config.model_dump(mode="json"), "datasets": {}}
    for name in args.datasets:
        dataset = load_chroma(args.data / name / "questions.csv", args.data / name / "corpora", name=name)
        started = time.perf_counter()
        report = run_probe(config, dataset, encoder, counter, counter.backend.get_vocab(), progress=progress_printer(name))
        data = report_json(report)
        data["summary"] = summary(data)
        data["wall_s"] = time.perf_counter() - started
        out["datasets"][name] = data
        print(markdown_report(report), json.dumps(data["summary"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "poisoning.json", json.dumps(out, indent=1) + "\n")
    atomic_write_text(RESULTS / "poisoning.md", render(out))


if __name__ == "__main__":
    main()

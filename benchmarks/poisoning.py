"""Retrieval poisoning on the shared Chroma and jadon-cyber data: attack success and the defence.

For each dataset the probe (``eval/poison/probe.py``) clusters the questions into topics, plants
n = 1, 5, 10 passages per topic for each attack (random, query stuffing, keyword stuffing,
HotFlip) in a copy of the clean default index (recursive 150/0, neighbour context 2), and reports
attack success at k = 5, 10 for dense, BM25 and the default hybrid retrieval, without and with each
defence (query-log, query-copy, fluency, fluency+copy), plus the targets' clean recall/IoU. The
baselines measured in the same run are random passages (the floor) and the unpoisoned index (clean
recall).

    nice -n 10 .venv/bin/python benchmarks/poisoning.py [--topics 3] [--hotflip-steps 8] [--defences ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.datasets import load_chroma  # noqa: E402
from eval.poison.probe import ATTACKS, PoisonConfig, run_probe  # noqa: E402
from eval.poison.report import markdown_report, report_json  # noqa: E402
from eval.report import machine_info  # noqa: E402
from filestore import atomic_write_text  # noqa: E402
from retrieval.encoder import load_encoder  # noqa: E402
from retrieval.tokenizer import load_tokenizer  # noqa: E402

# The shared data sits next to the checkout (../shared/data) unless RAGPRESS_SHARED_DATA says otherwise.
DATA = Path(os.environ.get("RAGPRESS_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = ("chroma", "jadon-cyber")
DEFENCES = ("query-log", "query-copy", "fluency", "fluency+copy")
RESULTS = ROOT / "benchmarks" / "results"


def mean(values: list[float]) -> float:
    """Plain mean (0 for nothing)."""
    return sum(values) / len(values) if values else 0.0


def summary(report: dict) -> dict:
    """The strongest attack (highest mean success without a defence over modes, n and k), how much
    each defence removes of it, the clean recall each costs, and HotFlip against query stuffing on
    dense retrieval."""
    cells = report["success"]
    names = list(dict.fromkeys(c["attack"] for c in cells))
    defences = [d for d in dict.fromkeys(c["defence"] for c in cells) if d != "none"]

    def success(attack: str, defence: str, mode: str | None = None) -> float:
        return 100 * mean([c["success"] for c in cells if c["attack"] == attack and c["defence"] == defence
                           and mode in (None, c["mode"])])

    strength = {a: success(a, "none") for a in names}
    strongest = max(strength, key=strength.__getitem__)
    clean = {(c["mode"], c["k"], c["defence"]): c["recall"] for c in report["clean"] if c["attack"] is None}
    out: dict = {"success": strength, "dense_success": {a: success(a, "none", "dense") for a in names},
                 "strongest": strongest, "defences": {}}
    for defence in defences:
        reduction = 1 - success(strongest, defence) / strength[strongest] if strength[strongest] else 0.0
        drop = max(clean[(mode, k, "none")] - clean[(mode, k, defence)] for mode, k, d in clean if d == "none")
        out["defences"][defence] = {"success": {a: success(a, defence) for a in names}, "relative_reduction": reduction,
                                    **({"hotflip_reduction": 1 - success("hotflip", defence) / strength["hotflip"]}
                                       if strength.get("hotflip") else {}),
                                    "max_clean_recall_drop": drop, "target_met": reduction >= 0.5 and drop <= 1.0,
                                    **report["defence"][defence]}
    return out


def gradient_note(info: dict, data: dict) -> str:
    """Whether HotFlip beats query stuffing on dense retrieval, and why not when it does not."""
    dense = info["dense_success"]
    if "hotflip" not in dense or "query-stuffing" not in dense:
        return ""
    if dense["hotflip"] > dense["query-stuffing"]:
        return f"HotFlip beats query stuffing on dense retrieval ({dense['hotflip']:.1f} vs {dense['query-stuffing']:.1f})."
    per_topic = mean([len(t["attack"]) for t in data["topics"]])
    return (f"HotFlip does NOT beat query stuffing on dense retrieval here ({dense['hotflip']:.1f} vs "
            f"{dense['query-stuffing']:.1f}): the topics are broad ({per_topic:.0f} attack questions each, of which a "
            "64-token passage holds about 3), the budget lifts the objective only to the cosines above "
            "(a 0.1 gain), and its n passages are consecutive states of one run (one flip apart) while query "
            "stuffing's n passages put different questions first, so more passages add coverage only for stuffing. "
            "One run per sub-cluster of the attack questions (as GASLITE does for several passages) and a larger "
            "budget are what it would need.")


def verdict(defence: dict) -> str:
    """Whether a defence meets the target, and whether that holds up for documents indexed later."""
    if not defence["target_met"]:
        return "NOT met"
    if defence["flagged_as_new"] > 0.05:
        return f"met on the indexed corpus only; it would also flag {100 * defence['flagged_as_new']:.0f}% of genuine new documents"
    return f"met, flagging {100 * defence['flagged_as_new']:.0f}% of genuine new documents" if defence["flagged_as_new"] else "met"


def render(out: dict) -> str:
    """The results page: settings, per dataset the tables and what they say."""
    config = out["config"]
    lines = [
        "# Retrieval poisoning: planted passages against dense, BM25 and hybrid retrieval\n",
        f"Machine: {out['machine']}, shared with other jobs (load 10-22 on 2 cores), so wall times are long. Embedding "
        f"model {out.get('model', 'all-MiniLM-L6-v2')}. Command: `nice -n 10 .venv/bin/python benchmarks/poisoning.py "
        "[--datasets chroma jadon-cyber]` (settings as `benchmarks/sweeps/poison.yaml`); "
        "`--render` rewrites this page from `poisoning.json`.\n",
        f"Index: the default (recursive {config['chunk_size']}/{config['overlap']}, neighbour context "
        f"{config['context_chunks']}), all corpora of a dataset in one index; planted passages go into a temporary "
        f"copy through the incremental indexing API, one document each. Topics: KMeans ({config['clusters']} clusters) "
        f"on the MiniLM question embeddings, the largest clusters probed (a subset, for the CPU budget; "
        f"how many per dataset below); {config['attack_share']:.0%} of a cluster are the attacker's questions, the rest the held-out "
        "targets. Success = share of targets whose top k (distinct texts) holds a passage planted for their topic; "
        "the passages of all probed topics are planted together. Baselines in the same run: random passages and "
        "the unpoisoned index.\n",
        f"Attacks ({config['length']} MiniLM tokens per passage at most): random vocabulary words; query stuffing "
        "(the attack questions concatenated, n orders); keyword stuffing (their content words repeated by frequency, "
        "n shuffles); HotFlip: from the first query-stuffing passage, S gradient steps (up to 2S until n flips are "
        f"accepted) x C exactly evaluated single-token flips sampled from the top {config['hotflip_top']} first-order substitutions per "
        "position, maximising the mean cosine to the attack questions; its n passages are the last n accepted states (S and C per dataset below).\n",
        "Defences (flagged chunks are skipped at query time; the query log is every question of the file except the "
        "held-out targets, so the attacker's questions are in it and the targets are not):\n",
        f"- `query-log` (`eval/poison/defence.py`): score = mean of the {config['defence_top']} highest cosines to the "
        f"log - the same to the clean index; threshold = {config['defence_quantile']} quantile of the clean chunks.\n"
        f"- `query-copy` (`eval/poison/defence_copy.py`): flag a passage that copies >= {config['copy_min_queries']} "
        f"logged queries (>= {config['copy_coverage']:.0%} of a query's word {config['copy_ngram']}-grams present).\n"
        + (f"- `fluency` (`eval/poison/defence_fluency.py`): score = mean surprisal (nats) of the "
           f"{config['fluency_top_share']:.0%} most surprising of the first {config['fluency_window']} tokens under "
           f"SmolLM2-135M ({config['fluency_lm']}), text lower-cased; threshold = {config['fluency_quantile']} quantile "
           f"of {config['fluency_sample']} sampled clean chunks; `flagged as new` measured on {config['fluency_sample']} "
           "other clean chunks.\n"
           "- `fluency+copy`: flagged by `fluency` or by `query-copy`.\n" if "fluency" in " ".join(config["defences"]) else ""),
        "Columns: success@k and <defence>@k in %; `recall@5 lost` = the targets' recall@5 on the clean index minus "
        "under attack, in points (negative: the planted documents changed BM25 statistics in the targets' favour). "
        "`flagged as new` = share of the clean chunks a defence flags when each one's document is scored as if it "
        "arrived after calibration: the false alarms on genuine new documents. A defence judges the chunks its "
        "query-time filter reaches (the same top k as judging every chunk); `clean chunks flagged` counts those.\n",
    ]
    for name, data in out["datasets"].items():
        info = summary(data)
        topics = data["topics"]
        own = data.get("config", config)
        lines.append(f"## {name}\n\n{len(topics)} topics, {sum(len(t['attack']) for t in topics)} attack and "
                     f"{sum(len(t['targets']) for t in topics)} target questions, {data['n_chunks']} chunks. HotFlip "
                     f"budget {own['hotflip_steps']} steps x {own['hotflip_candidates']} candidates. "
                     f"Wall time {data['wall_s']:.0f} s.\n")
        missing = [d for d in config["defences"] if d not in info["defences"]]
        if missing:
            lines.append(f"Defences not measured on this dataset: {', '.join(missing)} (a run of this script without "
                         "them; scoring the chunks of this index with the LM did not fit the CPU budget).\n")
        lines.append(markdown_table(data["table"]))
        lines.append("Clean index, targets (recall and IoU in %):\n")
        lines.append(markdown_table(data["clean_table"]))
        objectives: dict[str, list[dict]] = {}
        for row in data["objectives"]:
            objectives.setdefault(row["attack"], []).append(row)
        cosines = ", ".join(f"{attack} {mean([r['attack_cosine'] for r in rows_]):.3f} / "
                            f"{mean([r['target_cosine'] for r in rows_]):.3f}" for attack, rows_ in objectives.items())
        traces = data["settings"]["hotflip_traces"]
        trace_text = "; ".join(f"{t[0]:.3f} -> {t[-1]:.3f} in {len(t) - 1} steps" for t in traces) or "not run"
        lines.append(
            f"Mean cosine of the passages to the attack / target questions: {cosines}. HotFlip objective per topic: "
            f"{trace_text}.\n\nMean success over modes, n and k without a defence: "
            + ", ".join(f"{a} {v:.1f}" for a, v in info["success"].items())
            + "; dense only: " + ", ".join(f"{a} {v:.1f}" for a, v in info["dense_success"].items()) + ". "
            + gradient_note(info, data) + "\n")
        for defence, d in info["defences"].items():
            lines.append(
                f"- `{defence}`: mean success " + ", ".join(f"{a} {v:.1f}" for a, v in d["success"].items())
                + f". Strongest attack ({info['strongest']}) down **{100 * d['relative_reduction']:.0f}%** (relative); "
                f"clean recall of the targets down at most **{d['max_clean_recall_drop']:.1f}** points; "
                f"{d['clean_flagged']:g} of {d.get('clean_judged', data['n_chunks']):g} judged clean chunks flagged; flagged as "
                f"new **{100 * d['flagged_as_new']:.1f}%** (of {d.get('false_alarm_chunks', data['n_chunks']):g} chunks)"
                + (f"; HotFlip down {100 * d['hotflip_reduction']:.0f}%" if "hotflip_reduction" in d else "") + ". "
                f"Target (>= 50%, <= 1 point): **{verdict(d)}**.\n")
    lines.append(
        "## Limits of these figures\n\n"
        "- `query-log` compares a passage with the index it was calibrated on. Every indexed chunk has near-copies "
        "there (its neighbours share its neighbour-context embedding), a planted passage has none, and so does a "
        "genuine document added later: `flagged as new` shows it flags such documents wholesale. Its success here "
        "is that structural signal, not a usable defence.\n"
        "- `query-copy` only catches passages that keep logged queries word for word (query stuffing and HotFlip "
        "started from it, with few flips). A paraphrasing attacker, keyword stuffing, or a HotFlip run long enough "
        "to rewrite the questions pass it; FAQ-style documents that quote users' questions would be flagged.\n"
        "- `fluency` reads the text alone, so it judges a passage the same indexed or arriving later; its threshold "
        "is a quantile of a clean sample, so about 1% of genuine chunks are flagged by construction (`flagged as "
        "new` measures it on other clean chunks), and text unlike the sampled corpus (code, tables, another "
        "language) would be flagged more often; 100 calibration chunks make the 0.99 quantile coarse, so the "
        "false-alarm share on another corpus can be several times 1%. It catches substituted words, not fluent attacks: query stuffing "
        "is ordinary questions, which is why it is paired with `query-copy` in `fluency+copy`.\n"
        "- No adaptive attacker (one who knows the defence) was run: a gradient attack that adds the LM's "
        "surprisal to its objective, or only flips to tokens the LM expects, would pass `fluency`; the topics are a subset of the clusters; "
        "clean recall is measured on the held-out targets of the probed topics only.\n")
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
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=DEFENCES)
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.render:
        out = json.loads((RESULTS / "poisoning.json").read_text())
        atomic_write_text(RESULTS / "poisoning.md", render(out))
        return
    config = PoisonConfig(topics=args.topics, hotflip_steps=args.hotflip_steps, hotflip_candidates=args.hotflip_candidates,
                          defences=tuple(args.defences), attacks=tuple(args.attacks))
    encoder, counter = load_encoder(), load_tokenizer()
    out = {"machine": machine_info(), "model": encoder.model_id, "config": config.model_dump(mode="json"), "datasets": {}}
    for name in args.datasets:
        dataset = load_chroma(args.data / name / "questions.csv", args.data / name / "corpora", name=name)
        started = time.perf_counter()
        report = run_probe(config, dataset, encoder, counter, counter.backend.get_vocab(), progress=progress_printer(name))
        data = report_json(report)
        data["summary"] = summary(data)
        data["wall_s"] = time.perf_counter() - started
        data["config"] = out["config"]
        out["datasets"][name] = data
        print(markdown_report(report), json.dumps(data["summary"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "poisoning.json"
    if len(args.datasets) < len(DATASETS) and saved.is_file():  # one dataset at a time: keep the others' results
        previous = json.loads(saved.read_text())
        out["datasets"] = {**previous["datasets"], **out["datasets"]}
    atomic_write_text(saved, json.dumps(out, indent=1) + "\n")
    atomic_write_text(RESULTS / "poisoning.md", render(out))


if __name__ == "__main__":
    main()

"""The pipeline grid on the shared Chroma data, run twice in one process: the second run is cached.

Runs ``pipeline_flow`` (retrieve -> compress -> answer with chunk-cache reuse) over every
configuration of ``benchmarks/sweeps/pipeline_grid.yaml`` with the stage cache in ``--cache-dir``,
then runs the same grid again. Writes ``benchmarks/results/<name>.{json,md,html}``: per-config
per-stage summaries, the Pareto front and recommended configuration, and the wall time of both
runs with the stage-cache hits of each (a run's speed-up is only meaningful next to its hits: the
first run is cold only when the cache directory was empty or the code changed).

    .venv/bin/python benchmarks/pipeline_grid.py --cache-dir /tmp/ragpress-grid   # empty dir: cold, then cached
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.pipeline_report import markdown_pipeline_summary  # noqa: E402
from eval.pipeline_sweep import load_pipeline_sweep  # noqa: E402
from eval.report import machine_info  # noqa: E402
from filestore import atomic_write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("RAGPRESS_SHARED_DATA", REPO.parent / "shared" / "data")) / "chroma"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "benchmarks" / "sweeps" / "pipeline_grid.yaml")
    parser.add_argument("--cache-dir", type=Path, required=True, help="stage cache; empty for a cold first run")
    parser.add_argument("--name", default="pipeline_grid")
    return parser.parse_args()


def timed_run(configs: list, limit: int | None, cache_dir: Path, html: Path | None, command: str) -> tuple:
    from flows.pipeline import pipeline_flow

    started = time.perf_counter()
    run = pipeline_flow([c.to_dict() for c in configs], questions=str(DATA / "questions.csv"), corpora=str(DATA / "corpora"),
                        limit=limit, cache_dir=str(cache_dir), html_out=str(html) if html else None, command=command)
    return run, time.perf_counter() - started


def total_hits(run) -> dict[str, int]:
    totals: dict[str, int] = {}
    for result in run.results:
        for stage, hits in result.cache_hits.items():
            totals[stage] = totals.get(stage, 0) + hits
    return totals


def markdown(args: argparse.Namespace, first, first_s: float, second, second_s: float, command: str, empty_at_start: bool) -> str:
    n_configs, n_questions = len(first.results), first.results[0].summary.n_questions
    lookups = n_configs * n_questions
    rows = [
        f"# Pipeline grid: {n_configs} configurations x {n_questions} questions (shared Chroma data)",
        "",
        f"Machine: {machine_info()['platform']}, {os.cpu_count()} CPUs shared with other jobs; torch threads "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}. LM SmolLM2-135M-Instruct (Q4_1 GGUF, fp32 on CPU), embeddings all-MiniLM-L6-v2.",
        f"Data: {DATA} ({n_questions} questions evenly spread over questions.csv). Command: `{command}`",
        "",
        "| run | wall time | stage-cache hits (retrieval / compression / answer, of "
        f"{lookups} question lookups each) |",
        "|---|---|---|",
    ]
    for label, run, seconds in (("first" + (" (empty cache)" if empty_at_start else ""), first, first_s), ("second (same grid)", second, second_s)):
        hits = total_hits(run)
        rows.append(f"| {label} | {seconds:.1f} s | {hits.get('retrieval', 0)} / {hits.get('compression', 0)} / {hits.get('answer', 0)} |")
    rows += ["", f"Second run: **{first_s / second_s:.1f}x faster** than the first.", ""]
    rows.append(markdown_pipeline_summary(second.results, second.recommended, title="Pareto front and recommendation", command=command))
    return "\n".join(rows) + "\n"


def render_in_chromium(html: Path, screenshot: Path) -> str:
    """Render the dashboard in headless Chromium (as a reader's browser would) and screenshot it."""
    import shutil
    import subprocess
    import tempfile

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        return "chromium not installed: dashboard not rendered"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                               "--window-size=1300,2600", f"--screenshot={screenshot}", html.as_uri()],
                              capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0 or not screenshot.is_file():
        raise SystemExit(f"chromium failed to render {html}: {done.stderr[-1000:]}")
    return f"rendered in headless Chromium: {screenshot.name}"


def main() -> None:
    args = parse_args()
    configs, limit = load_pipeline_sweep(args.sweep)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    empty_at_start = not any(args.cache_dir.iterdir())
    command = f"python benchmarks/pipeline_grid.py --cache-dir {args.cache_dir} --name {args.name}"
    html = RESULTS / f"{args.name}.html"
    first, first_s = timed_run(configs, limit, args.cache_dir, None, command)
    second, second_s = timed_run(configs, limit, args.cache_dir, html, command)
    if [r.summary for r in first.results] != [r.summary for r in second.results]:
        raise SystemExit("the cached run's summaries differ from the first run's: the stage cache is broken")
    rendered = render_in_chromium(html, RESULTS / f"{args.name}.png")
    payload = {
        "machine": machine_info(), "dashboard": rendered, "command": command, "sweep": str(args.sweep.relative_to(REPO)), "questions": limit,
        "empty_cache_at_start": empty_at_start, "first_run_s": first_s, "second_run_s": second_s,
        "speedup": first_s / second_s, "first_run_hits": total_hits(first), "second_run_hits": total_hits(second),
        "recommended": second.recommended, "results": [result.to_dict() for result in second.results],
    }
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(payload, indent=1))
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(args, first, first_s, second, second_s, command, empty_at_start))
    print(rendered)
    print(f"first {first_s:.1f}s, second {second_s:.1f}s ({first_s / second_s:.1f}x); recommended: "
          f"{second.results[second.recommended].config.label}; wrote {RESULTS / args.name}.{{json,md,html}}")


if __name__ == "__main__":
    main()

"""The evaluation dashboard: one self-contained page over the stored runs, written to a file or served.

The page embeds its data (the runs with their questions, as the run store holds them), Chart.js
(vendored in ``eval/static``, see ``scripts/vendor_chartjs.sh``) and its own script, so it opens
with no network. It shows the runs over time for a headline metric, compares any two runs (config
diff, metric deltas with bootstrap intervals, questions that got better or worse), a sortable and
filterable question table, each question's evidence (the source around its references with the
reference, retrieved and kept characters highlighted), Pareto views, and the newest poisoning
probe of each dataset (``ragpress eval --poison``: attack success with and without each defence).

Every configuration has one colour and every kind of run (retrieval-only, or the pipeline's KV
mode) one marker, decided here once (``run_styles``) and used by every chart and table.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from eval.pareto import pareto_front
from eval.run_store import MEDIAN_METRICS, METRICS, RunRecord, RunStore
from filestore import atomic_write_text

# Tableau 10, then its light variants: distinct on white, and the order of first appearance is stable.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
# Chart.js point styles: retrieval-only runs, and pipeline runs by KV mode.
MARKERS = {"eval": "circle", "none": "rect", "naive": "triangle", "edge": "rectRot", "blend": "star"}
# (quality, cost, kind of run): the Pareto views; quality higher is better, cost lower.
PARETO_VIEWS = (("answer_f1", "tokens_sent", "pipeline"), ("answer_f1", "ttft_s", "pipeline"),
                ("compression.recall", "tokens_sent", "pipeline"), ("retrieval.recall", "retrieved_tokens", "eval"))
DEFAULT_RUNS = 200  # the newest runs a page shows (their headers: history, Pareto views, comparisons of summaries)
# The newest runs whose questions a page carries (a Chroma run is ~1 MB of questions and evidence);
# the served page loads others on request (``/?a=ID&b=ID``), a written one names the command.
QUESTION_RUNS = 12
PROBES = 50  # the newest poisoning probes read; the page shows the newest of each dataset


def run_styles(runs: Sequence[RunRecord]) -> dict[str, dict[str, str]]:
    """Colour and marker of every run by id: colour by configuration label, marker by kind/KV mode."""
    colours: dict[str, str] = {}
    styles = {}
    for run in runs:
        colour = colours.setdefault(run.label, PALETTE[len(colours) % len(PALETTE)])
        marker = MARKERS["eval"] if run.kind == "eval" else MARKERS.get(str(run.config.get("kv_mode")), "crossRot")
        styles[str(run.run_id)] = {"color": colour, "marker": marker}
    return styles


def pareto_views(runs: Sequence[RunRecord]) -> list[dict]:
    """Each view's points per dataset and its 2-D front (run ids by increasing cost)."""
    views = []
    for quality, cost, kind in PARETO_VIEWS:
        for dataset in sorted({run.dataset for run in runs}):
            members = [run for run in runs if run.kind == kind and run.dataset == dataset
                       and run.summary.get(quality) is not None and run.summary.get(cost) is not None]
            points = [(run.summary[quality], run.summary[cost]) for run in members]
            front = sorted(pareto_front(points, (True, False)), key=lambda i: (points[i][1], -points[i][0]))  # type: ignore[operator]
            views.append({"dataset": dataset, "quality": quality, "cost": cost, "kind": kind,
                          "runs": [run.run_id for run in members], "front": [members[i].run_id for i in front]})
    return views


def probe_tables(probes: Sequence[Mapping]) -> list[dict]:
    """The newest poisoning probe of each dataset (``probes`` newest first), as the page shows it:
    its attack-success table, its clean-index table and the defences' calibration."""
    newest: dict[str, Mapping] = {}
    for probe in probes:
        newest.setdefault(str(probe["dataset"]), probe)
    return [{"probe_id": probe["probe_id"], "created": probe["created"], "dataset": dataset,
             "n_chunks": probe["n_chunks"], "topics": len(probe["topics"]),
             "targets": sum(len(topic["targets"]) for topic in probe["topics"]),
             "table": probe["table"], "clean_table": probe["clean_table"],
             "defence": {name: {key: info.get(key) for key in ("clean_flagged", "clean_judged", "flagged_as_new")}
                         for name, info in probe["defence"].items()}}
            for dataset, probe in sorted(newest.items())]


def dashboard_data(runs: Sequence[RunRecord], selected: Sequence[int] = (), probes: Sequence[Mapping] = ()) -> dict:
    """The page's data: runs (headers, and questions where loaded), metric names, styles, Pareto views,
    selection, and the newest poisoning probe per dataset."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": {name: {"label": label, "higher": higher, "median": name in MEDIAN_METRICS}
                    for name, (label, higher) in METRICS.items()},
        "runs": [run.header() for run in runs],
        "questions": {str(run.run_id): [q.to_dict() for q in run.questions] for run in runs if len(run.questions) == run.n_questions},
        "styles": run_styles(runs),
        "pareto": pareto_views(runs),
        "selected": list(selected),
        "probes": probe_tables(probes),
    }


def _static(name: str) -> str:
    return files("eval").joinpath("static", name).read_text(encoding="utf-8")


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_dashboard(runs: Sequence[RunRecord], selected: Sequence[int] = (), title: str = "ragpress runs",
                     probes: Sequence[Mapping] = ()) -> str:
    """The self-contained page for ``runs`` (with or without their questions) and poisoning ``probes``
    (stored reports, newest first); ``selected``: runs A and B to open with."""
    chart_js = "\n".join(line for line in _static("chart.umd.min.js").splitlines() if not line.startswith("//# sourceMappingURL"))
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_static('dashboard.css')}</style></head><body>"
        f"{_static('dashboard.html').replace('{title}', html.escape(title))}"
        f'<script id="dashboard-data" type="application/json">{_script_json(dashboard_data(runs, selected, probes))}</script>'
        f"<script>{chart_js}</script><script>{_static('dashboard.js')}</script></body></html>\n"
    )


def load_runs(store: RunStore, limit: int = DEFAULT_RUNS, include: Sequence[int] = (),
              question_runs: int = QUESTION_RUNS) -> list[RunRecord]:
    """The newest ``limit`` runs and those of ``include``, oldest first; the newest ``question_runs``
    and those of ``include`` with their questions, the others as headers."""
    headers = {run.run_id: run for run in store.runs(limit)}
    headers.update({run_id: store.get(run_id, questions=False) for run_id in include if run_id not in headers})
    full = set(sorted(i for i in headers if i is not None)[-question_runs:] if question_runs else []) | set(include)
    return [store.get(run_id) if run_id in full else headers[run_id] for run_id in sorted(i for i in headers if i is not None)]


def write_dashboard(store: RunStore, path: Path | str, selected: Sequence[int] = (), limit: int = DEFAULT_RUNS,
                    title: str = "ragpress runs") -> Path:
    """Write the page for the newest runs of ``store`` (and ``selected``) to ``path``, atomically."""
    path = Path(path)
    atomic_write_text(path, render_dashboard(load_runs(store, limit, selected), selected, title, store.probes(PROBES)))
    return path


def make_server(store: RunStore, port: int = 8765, host: str = "127.0.0.1", limit: int = DEFAULT_RUNS,
                selected: Sequence[int] = ()) -> ThreadingHTTPServer:
    """An HTTP server answering ``/`` with the page of the store's newest runs, rendered per request
    (so runs recorded while it serves appear on reload); ``selected``: runs A and B to open with."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            url = urlsplit(self.path)
            if url.path not in ("/", "/index.html"):
                self.send_error(404, "the dashboard is at /")
                return
            query = parse_qs(url.query)
            # ?a=ID&b=ID: the runs to compare, with their questions (the page asks for them so)
            chosen = [int(query[key][0]) for key in ("a", "b") if query.get(key, [""])[0].isdigit()] or list(selected)
            try:
                runs = load_runs(store, limit, chosen)
            except KeyError as exc:
                self.send_error(404, str(exc.args[0]))
                return
            body = render_dashboard(runs, chosen, probes=store.probes(PROBES)).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # one line per request would drown the address the command printed

    return ThreadingHTTPServer((host, port), Handler)

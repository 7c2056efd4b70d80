"""Reports of evaluation runs: JSON, table rows, a markdown summary and a static HTML page.

Plots are drawn with matplotlib's Agg backend and embedded inline (SVG in the HTML page, PNG as
base64 in markdown), so the page opens with no network and no external files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from eval.base import EvalResult
from filestore import atomic_write_text

MAX_ANNOTATED = 15
METRICS = (("recall", "Recall"), ("precision", "Precision"), ("precision_omega", "PΩ"), ("iou", "IoU"))


def machine_info() -> dict[str, object]:
    """Python version, platform and CPU count of this machine."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}


def results_json(results: Sequence[EvalResult], extra: Mapping[str, object] | None = None) -> dict:
    """The JSON document of a run: machine, time, one entry per configuration."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **(dict(extra) if extra else {}),
        "results": [result.to_dict() for result in results],
    }


def write_json(results: Sequence[EvalResult], path: Path, extra: Mapping[str, object] | None = None) -> None:
    """Write the JSON report atomically."""
    atomic_write_text(path, json.dumps(results_json(results, extra), indent=1) + "\n")


def table_rows(results: Sequence[EvalResult]) -> list[dict[str, object]]:
    """One row per (configuration, corpus) plus an ``all`` row per configuration; means ×100."""
    rows = []
    for result in results:
        for corpus, summary in [("all", result.overall), *result.per_corpus.items()]:
            row: dict[str, object] = {"config": result.config.label, "corpus": corpus, "questions": summary.n_questions}
            row.update({name: round(getattr(summary, key), 1) for key, name in METRICS})
            row["tokens retrieved"] = round(summary.mean_retrieved_tokens, 0)
            rows.append(row)
    return rows


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_key(result: EvalResult) -> str:
    """Everything but the chunk size: points of one line in the 'against chunk size' plots."""
    label = result.config.label.split(" ", 2)
    return f"{result.config.chunker} ov={result.config.overlap} " + (label[2] if len(label) > 2 else "")


def plot_against_chunk_size(results: Sequence[EvalResult], metric: str, fmt: str = "svg") -> str:
    """``metric`` (overall, ×100) against chunk size, one line per chunker/retrieval variant."""
    plt = _figure()
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for result in results:
        series[_series_key(result)].append((result.config.chunk_size, getattr(result.overall, metric)))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, points in sorted(series.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    title = dict(METRICS)[metric]
    ax.set(xlabel="chunk size (tokens)", ylabel=f"{title} (mean ×100)", title=f"{title} against chunk size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    return _render(plt, fig, fmt)


def plot_recall_against_tokens(results: Sequence[EvalResult], fmt: str = "svg") -> str:
    """Overall recall against the mean number of tokens retrieved per question."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for result in results:
        ax.scatter(result.overall.mean_retrieved_tokens, result.overall.recall, s=18)
        if len(results) <= MAX_ANNOTATED:  # beyond that the labels only overprint each other
            ax.annotate(result.config.label, (result.overall.mean_retrieved_tokens, result.overall.recall), fontsize=5)
    ax.set(xlabel="tokens retrieved per question (mean)", ylabel="Recall (mean ×100)", title="Recall against tokens retrieved")
    ax.grid(alpha=0.3)
    return _render(plt, fig, fmt)


def _render(plt, fig, fmt: str) -> str:
    """SVG markup, or a base64 PNG data URI."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format=fmt, dpi=110)
    plt.close(fig)
    if fmt == "svg":
        svg = buffer.getvalue().decode("utf-8")
        return svg[svg.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(results: Sequence[EvalResult], fmt: str = "svg") -> dict[str, str]:
    """The report's plots by title, as SVG text or PNG data URIs."""
    return {
        "IoU against chunk size": plot_against_chunk_size(results, "iou", fmt),
        "Recall against chunk size": plot_against_chunk_size(results, "recall", fmt),
        "Recall against tokens retrieved": plot_recall_against_tokens(results, fmt),
    }


def markdown_summary(results: Sequence[EvalResult], title: str = "Evaluation") -> str:
    """Markdown: overall table and the plots as embedded PNGs (for a Prefect artifact)."""
    lines = [f"# {title}", "", "| config | corpus | recall | precision | PΩ | IoU | tokens |", "|---|---|---|---|---|---|---|"]
    for row in table_rows(results):
        lines.append(
            f"| {row['config']} | {row['corpus']} | {row['Recall']} | {row['Precision']} | {row['PΩ']} | {row['IoU']} | {row['tokens retrieved']:.0f} |"
        )
    for name, uri in plots(results, "png").items():
        lines += ["", f"## {name}", "", f"![{name}]({uri})"]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee} td.l,th.l{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0} figure svg{width:560px;height:auto}
"""


def _html_table(rows: Sequence[Mapping[str, object]], table_id: str) -> str:
    if not rows:
        return f'<table id="{table_id}"><tr><td>no results</td></tr></table>'
    columns = list(rows[0])
    head = "".join(f'<th class="{"l" if i < 2 else ""}">{html.escape(str(c))}</th>' for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < 2 else ""}">{html.escape(str(row[c]))}</td>' for i, c in enumerate(columns)) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(results: Sequence[EvalResult], title: str = "ragpress evaluation") -> str:
    """A self-contained page: summary table, inline SVG plots, per-question scores per config."""
    figures = "".join(
        f'<figure class="plot"><figcaption>{html.escape(name)}</figcaption>{svg}</figure>' for name, svg in plots(results).items()
    )
    details = []
    for number, result in enumerate(results):
        rows = [
            {"qid": s.qid, "corpus": s.corpus_id, "k": s.k, "Recall": round(100 * s.recall, 1), "Precision": round(100 * s.precision, 1),
             "PΩ": round(100 * s.precision_omega, 1), "IoU": round(100 * s.iou, 1), "tokens": s.retrieved_tokens}
            for s in result.questions
        ]
        details.append(
            f"<details><summary>{html.escape(result.config.label)}: per-question scores "
            f"({result.n_chunks} chunks, model {html.escape(result.model_id)})</summary>{_html_table(rows, f'questions-{number}')}</details>"
        )
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(results)} configuration(s); dataset {html.escape(results[0].dataset if results else '-')}; "
        f"created {created}. Scores are means over questions ×100 (character spans unless the config says tokens).</p>"
        f"<h2>Summary</h2>{_html_table(table_rows(results), 'summary')}"
        f'<h2>Plots</h2><div class="plots">{figures}</div>'
        f"<h2>Per question</h2>{''.join(details)}</body></html>\n"
    )


def write_html(results: Sequence[EvalResult], path: Path, title: str = "ragpress evaluation") -> None:
    """Write the HTML report atomically."""
    atomic_write_text(path, render_html(results, title))


# Public names of the helpers other reports reuse (eval/pipeline_report.py).
figure = _figure
render_figure = _render
html_table = _html_table
BASE_CSS = _CSS

"""The pipeline dashboard: a self-contained HTML page, table rows and a markdown summary.

Four views plot answer quality and reference recall sent to the LM against tokens sent and time to
first token; each shows every configuration, its 2-D Pareto front as a step line and the
recommended configuration (``eval.pareto.recommend``). Plots are inline SVG (matplotlib, Agg), so
the page opens with no network and no other files.

``recommended=None`` everywhere means "use ``recommend(results)`` with its default tolerances"
(nothing is marked when there are no results).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from eval.pareto import COST_METRICS, QUALITY_METRICS, VIEWS, front_2d, front_4d, recommend, recommend_rule
from eval.pipeline_base import PipelineResult
from eval.report import BASE_CSS, figure, html_table, machine_info, render_figure
from filestore import atomic_write_text

SHORT = {"answer_f1": "F1", "compression_recall": "recall", "tokens_sent": "tokens", "ttft_median_s": "TTFT"}
# Colour by compression method, marker by KV mode: the two choices a reader compares most.
COLOURS = {"none": "#1f77b4", "extractive": "#2ca02c", "llmlingua": "#ff7f0e", "extractive+llmlingua": "#9467bd"}
MARKERS = {"none": "o", "naive": "s", "edge": "^", "blend": "D"}
RECOMMENDED_MARK = "★ recommended"

_CSS = BASE_CSS + """
section#recommended{border:2px solid #c00;padding:.3em 1em;margin:1em 0;max-width:70em}
pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap}
figure svg{width:620px}
div.wide{overflow-x:auto} #configs td:nth-child(2){min-width:24em}
"""


def view_title(quality: str, cost: str) -> str:
    """Title of the plot of a quality metric against a cost."""
    return f"{QUALITY_METRICS[quality]} against {COST_METRICS[cost]}"


def _resolve(results: Sequence[PipelineResult], recommended: int | None) -> int | None:
    if recommended is None:
        return recommend(results) if results else None
    if not results:
        raise ValueError(f"recommended={recommended} but there are no results; pass None")
    if not 0 <= recommended < len(results):
        raise ValueError(f"recommended={recommended} is not an index of the {len(results)} results; pass 0..{len(results) - 1} or None")
    return recommended


def _views_on_front(results: Sequence[PipelineResult]) -> list[list[str]]:
    """For each result, the short names of the 2-D views whose front it is on."""
    names: list[list[str]] = [[] for _ in results]
    for quality, cost in VIEWS:
        for index in front_2d(results, quality, cost):
            names[index].append(f"{SHORT[quality]}/{SHORT[cost]}")
    return names


def _number(value: float | None, digits: int = 1) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return int(round(value)) if digits == 0 else round(value, digits)


def pipeline_table_rows(results: Sequence[PipelineResult], recommended: int | None = None) -> list[dict[str, object]]:
    """One row per configuration, stage by stage (reference scores are means x100, times medians).

    ``front``: "★ recommended", "4-D front" (on the front of all four objectives) or "";
    ``2-D fronts``: the views (quality/cost) whose front the configuration is on.
    The ``fidelity F1`` column is present only when some configuration measured it.
    """
    recommended = _resolve(results, recommended)
    on_front = set(front_4d(results))
    views = _views_on_front(results)
    with_fidelity = any(result.summary.fidelity_f1 is not None for result in results)
    rows = []
    for index, result in enumerate(results):
        s = result.summary
        mark = RECOMMENDED_MARK if index == recommended else "4-D front" if index in on_front else ""
        row: dict[str, object] = {"#": index, "config": result.config.label, "front": mark, "questions": s.n_questions}
        row.update({"retrieval R": _number(s.retrieval_recall), "retrieval P": _number(s.retrieval_precision),
                    "retrieval PΩ": _number(s.retrieval_precision_omega), "retrieval IoU": _number(s.retrieval_iou)})
        row.update({"compression R": _number(s.compression_recall), "compression IoU": _number(s.compression_iou),
                    "tokens in→out": f"{s.retrieved_tokens:.0f}→{s.tokens_sent:.0f}", "achieved rate": _number(s.achieved_rate, 2),
                    "compression CPU s": _number(s.compress_cpu_s, 2)})
        row.update({"TTFT median s": _number(s.ttft_median_s, 3), "prefilled/reused": f"{s.prefilled_tokens:.0f}/{s.reused_tokens:.0f}",
                    "answer F1": _number(s.answer_f1)})
        if with_fidelity:
            row["fidelity F1"] = _number(s.fidelity_f1)
        row.update({"wall median s": _number(s.wall_median_s, 2), "tokens sent": _number(s.tokens_sent, 0),
                    "cache hits": " · ".join(f"{stage} {hits}" for stage, hits in result.cache_hits.items()),
                    "run s": _number(result.seconds, 1), "2-D fronts": ", ".join(views[index])})
        rows.append(row)
    return rows


def plot_view(results: Sequence[PipelineResult], quality: str, cost: str, recommended: int | None, fmt: str = "svg") -> str:
    """One view: every configuration, the 2-D front as a step line, the recommended one starred."""
    plt = figure()
    xs = [getattr(result.summary, cost) for result in results]
    ys = [getattr(result.summary, quality) for result in results]
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, searchable
        fig, ax = plt.subplots(figsize=(6.8, 4.4))
        for result, x, y in zip(results, xs, ys):
            ax.scatter(x, y, s=28, color=COLOURS[result.config.compression], marker=MARKERS[result.config.kv_mode], alpha=0.8, zorder=3)
        front = front_2d(results, quality, cost)
        if front:
            ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="black", lw=1, zorder=2)
            for (x, y), members in _group_by_position(front, xs, ys).items():
                ax.annotate(",".join(f"#{i}" for i in members), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
        if recommended is not None:
            _mark_recommended(ax, results, xs, ys, recommended)
        _legend(ax, plt)
        ax.set(xlabel=COST_METRICS[cost], ylabel=f"{QUALITY_METRICS[quality]} (mean ×100)", title=view_title(quality, cost))
        ax.grid(alpha=0.3)
        return render_figure(plt, fig, fmt)


def _group_by_position(indices: Sequence[int], xs, ys) -> dict[tuple, list[int]]:
    """Front members by their point, so duplicates get one label ("#0,#1") instead of overprinting."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        groups.setdefault((xs[i], ys[i]), []).append(i)
    return groups


def _mark_recommended(ax, results, xs, ys, index: int) -> None:
    x, y = xs[index], ys[index]
    if x is None or y is None or math.isnan(x) or math.isnan(y):
        return  # not measured on this view: nothing to point at
    ax.scatter([x], [y], s=260, marker="*", facecolor="none", edgecolor="#c00", linewidth=1.5, zorder=4)
    finite = [v for v in xs if v is not None and not math.isnan(v)]
    right_half = x > (min(finite) + max(finite)) / 2
    ax.annotate(f"recommended #{index}: {results[index].config.label}", (x, y), xytext=(-12 if right_half else 12, -22),
                textcoords="offset points", ha="right" if right_half else "left", fontsize=6.5, color="#c00",
                arrowprops=dict(arrowstyle="-", color="#c00", lw=0.8), annotation_clip=False)


def _legend(ax, plt) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=colour, label="no compression" if name == "none" else name)
               for name, colour in COLOURS.items()]
    handles += [Line2D([], [], ls="", marker=marker, color="grey", label="full prefill" if name == "none" else f"KV {name}")
                for name, marker in MARKERS.items()]
    handles.append(Line2D([], [], color="black", lw=1, label="2-D front"))
    ax.legend(handles=handles, fontsize=6, loc="lower right", ncol=2)


def pipeline_plots(results: Sequence[PipelineResult], recommended: int | None = None, fmt: str = "svg") -> dict[str, str]:
    """The four views by title: SVG markup (``fmt="svg"``) or PNG data URIs (``fmt="png"``)."""
    recommended = _resolve(results, recommended)
    return {view_title(q, c): plot_view(results, q, c, recommended, fmt) for q, c in VIEWS}


def _recommended_html(results: Sequence[PipelineResult], index: int | None) -> str:
    if index is None:
        return '<section id="recommended"><h2>Recommended configuration</h2><p>No results: nothing to recommend.</p></section>'
    s = results[index].summary
    facts = (f"answer F1 {s.answer_f1:.1f}; reference recall sent to the LM {s.compression_recall:.1f}; "
             f"tokens sent {s.tokens_sent:.0f}; time to first token (median) {s.ttft_median_s:.3f} s")
    return (f'<section id="recommended"><h2>Recommended configuration</h2>'
            f"<p><strong>#{index}: {html.escape(results[index].config.label)}</strong></p><p>{html.escape(facts)}</p>"
            f"<p>Rule: {html.escape(recommend_rule())}</p></section>")


def _question_details(results: Sequence[PipelineResult]) -> str:
    parts = []
    for number, result in enumerate(results):
        rows = [{"qid": q.qid, "corpus": q.corpus_id, "retrieval R": round(100 * q.retrieval_recall, 1),
                 "compression R": round(100 * q.compression_recall, 1), "tokens sent": q.tokens_sent, "TTFT s": round(q.ttft_s, 3),
                 "answer F1": round(100 * q.answer_f1, 1), "answer": q.answer} for q in result.questions]
        parts.append(f"<details><summary>#{number} {html.escape(result.config.label)}: per question</summary>"
                     f"{html_table(rows, f'questions-{number}')}</details>")
    return "".join(parts)


def render_pipeline_html(results: Sequence[PipelineResult], title: str = "ragpress pipeline", recommended: int | None = None,
                         command: str | None = None) -> str:
    """The dashboard page: recommendation, four views with their fronts, every config stage by stage."""
    recommended = _resolve(results, recommended)
    figures = "".join(f'<figure class="plot" title="{html.escape(name)}">{svg}</figure>'
                      for name, svg in pipeline_plots(results, recommended).items())
    datasets = ", ".join(sorted({result.dataset for result in results})) or "-"
    machine = "; ".join(f"{key} {value}" for key, value in machine_info().items())
    created = datetime.now(UTC).isoformat(timespec="seconds")
    command_html = f"<p>Produced by:</p><pre><code>{html.escape(command)}</code></pre>" if command else ""
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(results)} configuration(s); dataset {html.escape(datasets)}; created {created}; {html.escape(machine)}. "
        "Reference scores and answer F1 are means over questions ×100; times are medians. "
        "Reference recall sent to the LM is the recall of what the compressor kept.</p>"
        f"{command_html}{_recommended_html(results, recommended)}"
        f'<h2>Pareto fronts</h2><div class="plots">{figures}</div>'
        "<h2>All configurations</h2><p><em>front</em>: on the Pareto front of all four objectives (answer F1 ↑, "
        "reference recall sent to the LM ↑, tokens sent ↓, TTFT ↓); <em>2-D fronts</em>: the views it is on.</p>"
        f'<div class="wide">{html_table(pipeline_table_rows(results, recommended), "configs")}</div>'
        f"<h2>Per question</h2>{_question_details(results)}</body></html>\n"
    )


def write_pipeline_html(results: Sequence[PipelineResult], path: Path | str, title: str = "ragpress pipeline",
                        recommended: int | None = None, command: str | None = None) -> None:
    """Write the dashboard page atomically."""
    atomic_write_text(path, render_pipeline_html(results, title, recommended, command))


def _cost_key(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _md(text: str) -> str:
    """A markdown table cell: labels contain '|'."""
    return text.replace("|", "\\|")


def markdown_pipeline_summary(results: Sequence[PipelineResult], recommended: int | None = None, *,
                              title: str = "Pipeline sweep", command: str | None = None) -> str:
    """Markdown for a Prefect artifact and the README: the recommendation, its rule, and the
    4-objective front as a table ordered by tokens sent (no images, so it stays small)."""
    recommended = _resolve(results, recommended)
    datasets = ", ".join(sorted({result.dataset for result in results})) or "-"
    lines = [f"# {title}", "", f"{len(results)} configuration(s) on {datasets}."]
    if command:
        lines += ["", "```", command, "```"]
    if recommended is not None:
        s = results[recommended].summary
        lines += ["", f"**Recommended:** `{results[recommended].config.label}` — answer F1 {s.answer_f1:.1f}, "
                      f"reference recall sent to the LM {s.compression_recall:.1f}, {s.tokens_sent:.0f} tokens sent, "
                      f"time to first token {s.ttft_median_s:.3f} s (median).", "", f"Rule: {recommend_rule()}"]
    views = _views_on_front(results)
    front = sorted(front_4d(results), key=lambda i: (_cost_key(results[i].summary.tokens_sent), _cost_key(results[i].summary.ttft_median_s), i))
    lines += ["", "## Pareto front (answer F1 ↑, reference recall sent to the LM ↑, tokens sent ↓, TTFT ↓)", "",
              "| # | config | answer F1 | reference recall sent to the LM | tokens sent | TTFT median s | 2-D fronts |",
              "|---|---|---|---|---|---|---|"]
    for i in front:
        s = results[i].summary
        star = " ★" if i == recommended else ""
        lines.append(f"| {i}{star} | {_md(results[i].config.label)} | {_number(s.answer_f1)} | {_number(s.compression_recall)} | "
                     f"{_number(s.tokens_sent, 0)} | {_number(s.ttft_median_s, 3)} | {', '.join(views[i])} |")
    return "\n".join(lines) + "\n"

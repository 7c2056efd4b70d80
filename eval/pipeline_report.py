"""Pipeline results as table rows and a markdown summary (the Prefect artifacts of a pipeline run).

Rows mark the configurations on the 4-objective Pareto front, the views (quality/cost) whose 2-D
front each is on, and the recommended configuration (``eval.pareto.recommend``). The interactive
views live in the dashboard (``eval/dashboard.py``).

``recommended=None`` everywhere means "use ``recommend(results)`` with its default tolerances"
(nothing is marked when there are no results).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from eval.pareto import VIEWS, front_2d, front_4d, recommend, recommend_rule
from eval.pipeline_base import PipelineResult

RECOMMENDED_MARK = "★ recommended"
SHORT = {"answer_f1": "F1", "compression_recall": "recall", "tokens_sent": "tokens", "ttft_median_s": "TTFT"}


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
        r, c = s.retrieval, s.compression
        row.update({"retrieval R": _number(r.recall), "retrieval P": _number(r.precision),
                    "retrieval PΩ": _number(r.precision_omega), "retrieval IoU": _number(r.iou)})
        row.update({"compression R": _number(c.recall), "compression IoU": _number(c.iou),
                    "tokens in→out": f"{r.mean_retrieved_tokens:.0f}→{c.mean_retrieved_tokens:.0f}", "achieved rate": _number(s.achieved_rate, 2),
                    "compression CPU s": _number(s.compress_cpu_s, 2)})
        row.update({"TTFT median s": _number(s.ttft_median_s, 3), "prefilled/reused": f"{s.prefilled_tokens:.0f}/{s.reused_tokens:.0f}",
                    "answer F1": _number(s.answer_f1)})
        if with_fidelity:
            row["fidelity F1"] = _number(s.fidelity_f1)
        row.update({"wall median s": _number(s.wall_median_s, 2), "tokens sent": _number(c.mean_retrieved_tokens, 0),
                    "cache hits": " · ".join(f"{stage} {hits}" for stage, hits in result.cache_hits.items()),
                    "run s": _number(result.seconds, 1), "2-D fronts": ", ".join(views[index])})
        rows.append(row)
    return rows


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
                      f"reference recall sent to the LM {s.compression.recall:.1f}, {s.compression.mean_retrieved_tokens:.0f} tokens sent, "
                      f"time to first token {s.ttft_median_s:.3f} s (median).", "", f"Rule: {recommend_rule()}"]
    views = _views_on_front(results)
    front = sorted(front_4d(results), key=lambda i: (_cost_key(results[i].summary.compression.mean_retrieved_tokens), _cost_key(results[i].summary.ttft_median_s), i))
    lines += ["", "## Pareto front (answer F1 ↑, reference recall sent to the LM ↑, tokens sent ↓, TTFT ↓)", "",
              "| # | config | answer F1 | reference recall sent to the LM | tokens sent | TTFT median s | 2-D fronts |",
              "|---|---|---|---|---|---|---|"]
    for i in front:
        s = results[i].summary
        star = " ★" if i == recommended else ""
        lines.append(f"| {i}{star} | {_md(results[i].config.label)} | {_number(s.answer_f1)} | {_number(s.compression.recall)} | "
                     f"{_number(s.compression.mean_retrieved_tokens, 0)} | {_number(s.ttft_median_s, 3)} | {', '.join(views[i])} |")
    return "\n".join(lines) + "\n"

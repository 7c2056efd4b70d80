"""The probe's tables (markdown, rows for dashboards) and its JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from eval.poison.base import CleanCell, PoisonReport


def report_json(report: PoisonReport) -> dict[str, Any]:
    """The whole report as JSON-able data (topics by question ids) with both tables."""
    data = asdict(report)
    data["topics"] = [{"topic_id": t.topic_id, "attack": [q.qid for q in t.attack], "targets": [q.qid for q in t.targets]}
                      for t in report.topics]
    data["table"] = success_rows(report)
    data["clean_table"] = clean_rows(report)
    return data


def _clean(report: PoisonReport, attack: str | None, n: int, mode: str, k: int, defence: str) -> CleanCell:
    return next(c for c in report.clean if (c.attack, c.n, c.mode, c.k, c.defence) == (attack, n, mode, k, defence))


def defences(report: PoisonReport) -> list[str]:
    """The defences measured, in report order (without ``none``)."""
    return [name for name in dict.fromkeys(c.defence for c in report.success) if name != "none"]


def success_rows(report: PoisonReport) -> list[dict[str, object]]:
    """One row per attack × n × mode: success (%) at each k without and with each defence, and the
    recall the attack costs the targets at the smallest k (points), without and with each defence."""
    cells = {(c.attack, c.n, c.mode, c.k, c.defence): c.success for c in report.success}
    ks = sorted({c.k for c in report.success})
    rows = []
    for attack, n, mode in dict.fromkeys((c.attack, c.n, c.mode) for c in report.success):
        row: dict[str, object] = {"attack": attack, "n": n, "mode": mode}
        for defence in ("none", *defences(report)):
            label = "success" if defence == "none" else defence
            for k in ks:
                row[f"{label}@{k}"] = round(100 * cells[(attack, n, mode, k, defence)], 1)
        base = _clean(report, None, 0, mode, ks[0], "none").recall
        for defence in ("none", *defences(report)):
            label = "" if defence == "none" else f" {defence}"
            row[f"recall@{ks[0]} lost{label}"] = round(base - _clean(report, attack, n, mode, ks[0], defence).recall, 1)
        rows.append(row)
    return rows


def clean_rows(report: PoisonReport) -> list[dict[str, object]]:
    """Recall and IoU (%) of the targets on the unpoisoned index, without and with each defence."""
    rows = []
    for mode, k in dict.fromkeys((c.mode, c.k) for c in report.clean if c.attack is None):
        row: dict[str, object] = {"mode": mode, "k": k}
        for defence in ("none", *defences(report)):
            cell = _clean(report, None, 0, mode, k, defence)
            label = "" if defence == "none" else f" {defence}"
            row[f"recall{label}"], row[f"IoU{label}"] = round(cell.recall, 1), round(cell.iou, 2)
        rows.append(row)
    return rows


def defence_text(report: PoisonReport) -> str:
    """One sentence per defence: its calibration and its false alarms (of the ``report.n_chunks``
    clean chunks, those some target's top k reached were judged)."""
    return " ".join(
        f"{name}: {info['clean_flagged']:g} of the {info['clean_judged']:g} clean chunks the top k reached flagged, "
        f"{100 * (info['flagged_as_new'] or 0.0):.1f}% of {info['false_alarm_chunks']:g} clean chunks flagged had their "
        "document arrived after calibration"
        + (f", threshold {info['threshold']:.3f}." if info["threshold"] is not None else ".")
        for name, info in report.defence.items())


def markdown_table(rows: list[dict[str, object]]) -> str:
    """A markdown table of dict rows (columns of the first row)."""
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_report(report: PoisonReport) -> str:
    """Both tables with the probe's size and the defence's calibration."""
    targets = sum(len(t.targets) for t in report.topics)
    attackers = sum(len(t.attack) for t in report.topics)
    head = (f"### Poisoning probe: {report.dataset}\n\n{len(report.topics)} topics, {attackers} attack questions, "
            f"{targets} held-out target questions, {report.n_chunks} indexed chunks. {defence_text(report)}\n\n")
    return head + markdown_table(success_rows(report)) + "\nClean index (targets):\n\n" + markdown_table(clean_rows(report))


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee} td.l,th.l{text-align:left}
"""


def html_table(rows: Sequence[Mapping[str, object]], table_id: str) -> str:
    """``rows`` as an HTML table (the first two columns left-aligned), escaped."""
    import html

    if not rows:
        return f'<table id="{table_id}"><tr><td>no results</td></tr></table>'
    columns = list(rows[0])
    align = ['class="l"' if i < 2 else "" for i in range(len(columns))]
    head = "".join(f"<th {a}>{html.escape(str(c))}</th>" for a, c in zip(align, columns))
    body = "".join("<tr>" + "".join(f"<td {a}>{html.escape(str(row[c]))}</td>" for a, c in zip(align, columns)) + "</tr>"
                   for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(report: PoisonReport) -> str:
    """A self-contained page with both tables (the styles of the evaluation report)."""
    import html

    title = f"ragpress poisoning probe: {report.dataset}"
    targets = sum(len(t.targets) for t in report.topics)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(report.topics)} topics, {targets} held-out target questions, {report.n_chunks} indexed chunks. "
        f"{html.escape(defence_text(report))} Success and recall in %; planted passages lived only in a temporary "
        "copy of the index.</p>"
        f"<h2>Attack success</h2>{html_table(success_rows(report), 'success')}"
        f"<h2>Clean index (targets)</h2>{html_table(clean_rows(report), 'clean')}</body></html>\n"
    )

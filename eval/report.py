"""Reports of evaluation runs: the JSON document, table rows and a markdown summary (Prefect artifacts).

The interactive views (history, comparisons, per-question evidence) are the dashboard's
(``eval/dashboard.py``), over the runs the run store records.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from eval.base import EvalResult
from filestore import atomic_write_text

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
    """Write ``results_json`` to ``path`` atomically."""
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


def markdown_summary(results: Sequence[EvalResult], title: str = "Evaluation") -> str:
    """Markdown: the overall table (for a Prefect artifact)."""
    lines = [f"# {title}", "", "| config | corpus | recall | precision | PΩ | IoU | tokens |", "|---|---|---|---|---|---|---|"]
    for row in table_rows(results):
        lines.append(
            f"| {row['config']} | {row['corpus']} | {row['Recall']} | {row['Precision']} | {row['PΩ']} | {row['IoU']} | {row['tokens retrieved']:.0f} |"
        )
    return "\n".join(lines) + "\n"

"""The pipeline dashboard on six hand-made results: every config named, fronts and recommendation
marked, four inline plots, and the page loads in headless Chromium."""

from __future__ import annotations

import dataclasses
import html
import re

import pytest
from support import (
    SYNTHETIC_FRONT,
    SYNTHETIC_PIPELINE,
    SYNTHETIC_RECOMMENDED,
    chromium,
    run_chromium,
    synthetic_pipeline_results,
)

from eval.pareto import front_4d
from eval.pipeline_report import (
    RECOMMENDED_MARK,
    markdown_pipeline_summary,
    pipeline_table_rows,
    render_pipeline_html,
    write_pipeline_html,
)

COMMAND = "ragpress pipeline --sweep grid.yaml --questions q.csv"


@pytest.fixture(scope="module")
def results():
    return synthetic_pipeline_results()


@pytest.fixture(scope="module")
def page(results):
    return render_pipeline_html(results, "Sweep", command=COMMAND)


def _rows_of(page: str, table_id: str) -> list[list[str]]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert table, f"table {table_id} missing"
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)]


def test_table_rows_follow_the_summaries(results):
    rows = pipeline_table_rows(results)
    assert [row["config"] for row in rows] == [result.config.label for result in results]
    marks = [row["front"] for row in rows]
    assert marks[SYNTHETIC_RECOMMENDED] == RECOMMENDED_MARK
    assert {i for i, mark in enumerate(marks) if mark} == set(SYNTHETIC_FRONT)
    for row, (_, _, (f1, recall, sent, ttft)) in zip(rows, SYNTHETIC_PIPELINE):
        assert (row["answer F1"], row["compression R"], row["tokens sent"], row["TTFT median s"]) == (f1, recall, sent, ttft)
    assert rows[2]["tokens in→out"] == "800→300" and rows[2]["achieved rate"] == 0.38
    assert rows[1]["fidelity F1"] == 92.0 and rows[0]["fidelity F1"] == "–"
    assert rows[4]["2-D fronts"] == ""  # dominated everywhere
    assert rows[3]["2-D fronts"] == "F1/tokens, F1/TTFT, recall/tokens, recall/TTFT"
    assert rows[0]["cache hits"] == "retrieve 2 · compress 0 · answer 0"


def test_fidelity_column_only_when_measured(results):
    without = [dataclasses.replace(r, summary=dataclasses.replace(r.summary, fidelity_f1=None)) for r in results]
    assert "fidelity F1" not in pipeline_table_rows(without)[0]


def test_page_names_every_config_and_marks_the_recommended(page, results):
    for result in results:
        assert html.escape(result.config.label) in page
    assert page.count("<svg") == 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from a network
    rows = _rows_of(page, "configs")
    assert len(rows) == 1 + len(results)
    starred = [row for row in rows[1:] if RECOMMENDED_MARK in row]
    assert len(starred) == 1 and starred[0][1] == html.escape(results[SYNTHETIC_RECOMMENDED].config.label)
    section = re.search(r'<section id="recommended">(.*?)</section>', page, re.S).group(1)
    assert html.escape(results[SYNTHETIC_RECOMMENDED].config.label) in section
    # every plot marks the recommended config by its number and label (SVG text stays text)
    label = html.escape(results[SYNTHETIC_RECOMMENDED].config.label)
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        assert f"recommended #{SYNTHETIC_RECOMMENDED}: {label}" in svg
    assert html.escape(COMMAND) in page
    assert "reference recall sent to the LM" in page


def test_explicit_recommendation_and_bad_index(results):
    page = render_pipeline_html(results, "Sweep", recommended=0)
    assert f"recommended #0: {html.escape(results[0].config.label)}" in page
    with pytest.raises(ValueError, match="recommended=6 is not an index of the 6 results"):
        render_pipeline_html(results, "Sweep", recommended=6)


def test_empty_results_render():
    page = render_pipeline_html([], "Empty")
    assert "no results" in page and "nothing to recommend" in page and page.count("<svg") == 4
    assert pipeline_table_rows([]) == []
    assert "0 configuration(s)" in markdown_pipeline_summary([])


def test_markdown_lists_the_front_and_the_recommendation(results):
    text = markdown_pipeline_summary(results, command=COMMAND)
    table = [line for line in text.splitlines() if re.match(r"\| \d", line)]
    assert len(table) == len(front_4d(results)) == len(SYNTHETIC_FRONT)
    assert f"**Recommended:** `{results[SYNTHETIC_RECOMMENDED].config.label}`" in text
    starred = [line for line in table if "★" in line]
    assert len(starred) == 1 and starred[0].startswith(f"| {SYNTHETIC_RECOMMENDED} ★ |")
    # labels contain '|': escaped, so every row keeps 7 cells
    assert all(len(re.split(r"(?<!\\)\|", line)) == 9 for line in table)
    assert COMMAND in text and "<svg" not in text and "base64" not in text


def test_write_is_atomic_and_complete(results, tmp_path):
    path = tmp_path / "out" / "pipeline.html"
    write_pipeline_html(results, path, "Sweep")
    assert path.read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert [p.name for p in path.parent.iterdir()] == ["pipeline.html"]  # no temp file left


@pytest.mark.slow
def test_dashboard_renders_in_headless_chromium(results, tmp_path):
    binary = chromium()
    page = tmp_path / "pipeline.html"
    write_pipeline_html(results, page, "Sweep", command=COMMAND)
    dom = run_chromium(binary, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rows = _rows_of(dom.stdout, "configs")
    assert len(rows) == 1 + len(results) and all(len(row) == len(rows[0]) for row in rows)
    plots = re.findall(r'<figure class="plot"[^>]*>(.*?)</figure>', dom.stdout, re.S)
    assert len(plots) == 4
    for plot in plots:
        assert "<svg" in plot and len(re.findall(r"<path", plot)) > 10, "a plot rendered empty"
        assert f"recommended #{SYNTHETIC_RECOMMENDED}" in plot
    shot = tmp_path / "pipeline.png"
    run_chromium(binary, tmp_path, f"--screenshot={shot}", "--window-size=1300,1800", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000  # a blank page compresses far smaller

"""The pipeline's artifact rows and markdown on six hand-made results: every config named, the fronts
and the recommendation marked."""

from __future__ import annotations

import dataclasses
import re

import pytest
from support import SYNTHETIC_FRONT, SYNTHETIC_PIPELINE, SYNTHETIC_RECOMMENDED, synthetic_pipeline_results

from eval.pareto import front_4d
from eval.pipeline_report import RECOMMENDED_MARK, markdown_pipeline_summary, pipeline_table_rows

COMMAND = "ragpress pipeline --sweep grid.yaml --questions q.csv"


@pytest.fixture(scope="module")
def results():
    return synthetic_pipeline_results()


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


def test_explicit_recommendation_and_bad_index(results):
    rows = pipeline_table_rows(results, recommended=0)
    assert rows[0]["front"] == RECOMMENDED_MARK
    with pytest.raises(ValueError, match="recommended=6 is not an index of the 6 results"):
        pipeline_table_rows(results, recommended=6)


def test_empty_results():
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

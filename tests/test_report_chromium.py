"""The static HTML report renders in headless Chromium: table rows and plots are present."""

from __future__ import annotations

import re

import pytest
from support import BagOfWordsEncoder, chromium, run_chromium, tiny_dataset

from eval.base import EvalConfig
from eval.embedding_cache import EmbeddingCache
from eval.report import markdown_summary, render_html, table_rows, write_html
from eval.runner import Evaluator


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    evaluator = Evaluator(tiny_dataset(), BagOfWordsEncoder(), cache=EmbeddingCache(tmp_path_factory.mktemp("cache")))
    configs = [EvalConfig(chunker="token", chunk_size=s, overlap=0, k=2, retrieval=r) for s in (8, 16) for r in ("dense", "bm25")]
    return [evaluator.evaluate(config) for config in configs]


def test_report_is_self_contained(results):
    page = render_html(results)
    assert page.count("<svg") == 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from a network
    # one 'all' row per config plus one row per corpus and config
    assert page.count("<tr>") - 1 >= len(table_rows(results))
    assert markdown_summary(results).count("data:image/png;base64,") == 3


@pytest.mark.slow
def test_report_renders_in_headless_chromium(results, tmp_path):
    binary = chromium()
    page = tmp_path / "report.html"
    write_html(results, page)
    dom = run_chromium(binary, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    summary = re.search(r'<table id="summary">(.*?)</table>', dom.stdout, re.S)
    assert summary, "summary table missing from the rendered DOM"
    rows = re.findall(r"<tr>(.*?)</tr>", summary.group(1), re.S)
    assert len(rows) == 1 + len(table_rows(results))
    assert all(re.findall(r"<td[^>]*>([^<]+)</td>", row) for row in rows[1:])
    plots = re.findall(r'<figure class="plot">(.*?)</figure>', dom.stdout, re.S)
    assert len(plots) == 3
    for plot in plots:
        assert "<svg" in plot and len(re.findall(r"<path", plot)) > 10, "a plot rendered empty"
    shot = tmp_path / "report.png"
    run_chromium(binary, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000  # a blank page compresses far smaller

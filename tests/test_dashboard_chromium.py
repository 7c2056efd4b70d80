"""The dashboard in a real headless Chromium (driven through chromedriver by Selenium).

1. Open the page of a small pipeline run, filter the question table, open a question, and check
   that the highlighted reference / retrieved / kept characters are exactly those of the run's JSON.
2. Pick two eval runs in the page, and check the metric deltas and the changed questions against
   the two runs' JSON.
3. Store a poisoning probe's report and check that the page's tables show exactly its JSON tables.
All check that the page made no network request, and leave screenshots in the artifacts dir
(``$RAGPRESS_ARTIFACTS``, default ``.ragpress/artifacts``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support import (
    CHROMIUM_FLAGS,
    POISON_SMALL,
    BagOfWordsEncoder,
    chromium,
    eval_results,
    pipeline_results,
    poison_dataset,
    tiny_dataset,
    union_length,
)

from eval.dashboard import write_dashboard
from eval.run_store import RunStore, eval_run, pipeline_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("RAGPRESS_ARTIFACTS", REPO / ".ragpress" / "artifacts"))


def chromedriver() -> str:
    path = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
    if path:
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromedriver is not installed but CI=true: the CI set-up must apt-get install chromium-driver")
    pytest.skip("chromedriver is not installed (apt-get install -y chromium-driver); skipped outside CI")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('profile')}", "--window-size=1400,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver()), options=options)
    yield driver
    driver.quit()


def open_page(driver, page: Path) -> None:
    driver.get_log("performance")  # drop what the browser did before the page (its start-up tabs)
    driver.get(page.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def assert_no_network(driver, page: Path) -> None:
    """Every request since ``open_page`` is the page itself; no resource was fetched."""
    urls = [json.loads(entry["message"])["message"]["params"]["request"]["url"]
            for entry in driver.get_log("performance") if '"Network.requestWillBeSent"' in entry["message"]]
    assert set(urls) <= {page.as_uri()}, urls
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def test_question_evidence_matches_the_run_json(browser, tmp_path):
    from selenium.webdriver.common.by import By

    dataset = tiny_dataset()
    results, models = pipeline_results(tmp_path)
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.add(pipeline_run(results[1], dataset, models=models))  # the compressed one: kept < retrieved
    page = write_dashboard(store, tmp_path / "dashboard.html", selected=[run_id])
    run_json = json.loads(json.dumps(results[1].to_dict()))
    open_page(browser, page)

    rows = browser.find_elements(By.CSS_SELECTOR, "#q-table tbody tr")
    assert len(rows) == len(dataset.questions)
    needle = "planet"
    browser.find_element(By.ID, "q-filter").send_keys(needle)
    shown = [row.get_attribute("data-qid") for row in browser.find_elements(By.CSS_SELECTOR, "#q-table tbody tr")]
    assert shown == [q.qid for q in dataset.questions if needle in q.text.lower() or needle in q.corpus_id]
    assert 0 < len(shown) < len(dataset.questions)

    qid = shown[0]
    browser.find_element(By.CSS_SELECTOR, f'#q-table tbody tr[data-qid="{qid}"]').click()
    question = next(q for q in dataset.questions if q.qid == qid)
    assert browser.find_element(By.ID, "detail-question").text.endswith(question.text)
    record = next(q for q in run_json["questions"] if q["qid"] == qid)
    assert browser.find_element(By.ID, "detail-answer").text == (record["answer"].strip() or "(empty)")
    counted = browser.execute_script(
        "const n = (c) => [...document.querySelectorAll('#detail-body pre.excerpt .seg.' + c)]"
        ".reduce((s, e) => s + e.textContent.length, 0); return {ref: n('ref'), ret: n('ret'), kept: n('kept')};")
    expected = {
        "ref": union_length([(question.corpus_id, r.start, r.end) for r in question.references]),
        "ret": union_length([(s["corpus_id"], s["start"], s["end"]) for s in record["retrieved_spans"]]),
        "kept": union_length([(s["corpus_id"], s["start"], s["end"]) for s in record["kept_spans"]]),
    }
    assert counted == expected
    assert 0 < expected["kept"] < expected["ret"]  # the compressor kept part of what was retrieved
    # the highlighted reference characters are the reference's own text
    ref_text = browser.execute_script(
        "return [...document.querySelectorAll('#detail-body pre.excerpt .seg.ref')].map((e) => e.textContent).join('')")
    assert ref_text == "".join(r.content for r in sorted(question.references, key=lambda r: r.start))
    scores = {row.get_attribute("data-metric"): row.find_elements(By.TAG_NAME, "td")[1].text
              for row in browser.find_elements(By.CSS_SELECTOR, "#detail-scores tbody tr")}
    assert scores["compression.recall"] == f"{100 * record['compression']['recall']:.2f}"
    assert scores["tokens_sent"] == f"{record['tokens_sent']:.2f}"
    screenshot(browser, "dashboard-question.png")
    assert_no_network(browser, page)


def test_comparing_two_runs_finds_the_changed_questions(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dataset = tiny_dataset()
    results = eval_results(tmp_path)
    store = RunStore(tmp_path / "runs.sqlite")
    a, b = (store.add(eval_run(r, dataset)) for r in results)
    page = write_dashboard(store, tmp_path / "dashboard.html")
    ja, jb = (json.loads(json.dumps(r.to_dict())) for r in results)
    open_page(browser, page)

    Select(browser.find_element(By.ID, "run-a")).select_by_value(str(a))
    Select(browser.find_element(By.ID, "run-b")).select_by_value(str(b))
    diff = {row.get_attribute("data-key") for row in browser.find_elements(By.CSS_SELECTOR, "#config-diff tbody tr")}
    assert diff == {key for key in ja["config"] if ja["config"][key] != jb["config"][key]}
    deltas = {row.get_attribute("data-metric"): float(row.get_attribute("data-delta"))
              for row in browser.find_elements(By.CSS_SELECTOR, "#deltas tbody tr")}
    for metric, key in (("retrieval.recall", "recall"), ("retrieval.precision", "precision"), ("retrieval.iou", "iou"),
                        ("retrieval.precision_omega", "precision_omega")):
        assert deltas[metric] == pytest.approx(jb["overall"][key] - ja["overall"][key], abs=1e-9)

    assert Select(browser.find_element(By.ID, "change-metric")).first_selected_option.get_attribute("value") == "retrieval.iou"
    iou = {qa["qid"]: qb["iou"] - qa["iou"] for qa, qb in zip(ja["questions"], jb["questions"])}
    better = {li.get_attribute("data-qid") for li in browser.find_elements(By.CSS_SELECTOR, "#better li")}
    worse = {li.get_attribute("data-qid") for li in browser.find_elements(By.CSS_SELECTOR, "#worse li")}
    assert better == {q for q, d in iou.items() if d > 0} and worse == {q for q, d in iou.items() if d < 0}
    assert better and worse

    browser.find_element(By.ID, "q-changed").click()
    changed_rows = {row.get_attribute("data-qid") for row in browser.find_elements(By.CSS_SELECTOR, "#q-table tbody tr")}
    assert changed_rows == better | worse
    # sorting by the delta column puts the largest loss first
    browser.find_element(By.CSS_SELECTOR, '#q-table th[data-key="delta"]').click()
    first = browser.find_element(By.CSS_SELECTOR, "#q-table tbody tr").get_attribute("data-qid")
    assert first == min(better | worse, key=lambda q: iou[q])
    browser.find_element(By.CSS_SELECTOR, f'#worse li[data-qid="{first}"]').click()
    assert browser.find_element(By.ID, "detail-question").text.startswith(f"{first} ")
    screenshot(browser, "dashboard-compare.png")
    assert_no_network(browser, page)


def rendered_rows(driver, table_id: str) -> list[dict[str, str]]:
    """The cells of a rendered table, by column name."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')].map((tr) => "
        "Object.fromEntries([...tr.querySelectorAll('td')].map((td) => [td.dataset.key, td.textContent])));", table_id)


def as_shown(column: str, value: object) -> str:
    """A report value as the page prints it: rates and recall with 1 decimal, IoU with 2."""
    if isinstance(value, float):
        return f"{value:.2f}" if column.startswith("IoU") else f"{value:.1f}"
    return str(value)


def test_the_poison_tables_show_the_probe_json(browser, tmp_path):
    from eval.poison.probe import PoisonConfig, run_probe
    from eval.poison.report import report_json
    from retrieval.tokenizer import load_tokenizer

    counter = load_tokenizer()
    config = PoisonConfig(attacks=("random", "query-stuffing"), **POISON_SMALL)
    report = run_probe(config, poison_dataset(), BagOfWordsEncoder(), counter, counter.backend.get_vocab(), cache=tmp_path / "cache")
    probe_json = json.loads(json.dumps(report_json(report)))  # what the store and the --json file hold
    store = RunStore(tmp_path / "runs.sqlite")
    probe_id = store.add_probe(probe_json)
    page = write_dashboard(store, tmp_path / "dashboard.html")
    open_page(browser, page)

    shown = rendered_rows(browser, f"poison-{probe_id}")
    assert shown == [{column: as_shown(column, value) for column, value in row.items()} for row in probe_json["table"]]
    assert len(shown) == 2 * 2 * 3 and {"success@2", "query-log@3", "query-copy@2", "recall@2 lost"} <= set(shown[0])
    assert any(float(row["success@3"]) > 0 for row in shown if row["attack"] == "query-stuffing")
    clean = rendered_rows(browser, f"poison-clean-{probe_id}")
    assert clean == [{column: as_shown(column, value) for column, value in row.items()} for row in probe_json["clean_table"]]
    screenshot(browser, "dashboard-poison.png")
    assert_no_network(browser, page)

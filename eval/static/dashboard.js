// The ragpress dashboard: everything it shows comes from the JSON embedded in the page.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("dashboard-data").textContent);
  const METRICS = DATA.metrics;
  const RUNS = DATA.runs;
  const BY_ID = Object.fromEntries(RUNS.map((r) => [String(r.run_id), r]));
  const RESAMPLES = 2000;
  const state = { dataset: null, a: null, b: null, sortKey: null, sortDir: 1, openQid: null, charts: [] };

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  };
  const fmt = (value, digits) => (value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits === undefined ? 2 : digits));
  const digits = (name) => (name.endsWith("_s") ? 3 : 2); // seconds need more than two decimals
  const fmtMetric = (name, value) => fmt(value, digits(name));
  const label = (name) => (METRICS[name] ? METRICS[name].label : name);
  const runName = (run) => `#${run.run_id} ${run.kind}: ${run.label}`;
  const style = (run) => DATA.styles[String(run.run_id)];
  const questionsOf = (runId) => DATA.questions[String(runId)] || [];
  const loaded = (runId) => runId === null || String(runId) in DATA.questions;
  const served = window.location.protocol.startsWith("http");

  // -- statistics (the same as eval/run_compare.py) ------------------------------------------
  const mean = (xs) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const median = (xs) => { const s = [...xs].sort((p, q) => p - q); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
  const statistic = (name) => (METRICS[name] && METRICS[name].median ? median : mean);
  function rng(seed) { // mulberry32: a small seeded generator, so a pair's interval is stable
    let t = seed >>> 0;
    return () => { t = (t + 0x6d2b79f5) >>> 0; let r = Math.imul(t ^ (t >>> 15), 1 | t); r ^= r + Math.imul(r ^ (r >>> 7), 61 | r); return ((r ^ (r >>> 14)) >>> 0) / 4294967296; };
  }
  function paired(a, b, name) {
    const other = Object.fromEntries(questionsOf(b).map((q) => [q.qid, q.metrics[name]]));
    const out = [];
    for (const q of questionsOf(a)) {
      const x = q.metrics[name], y = other[q.qid];
      if (x !== null && x !== undefined && y !== null && y !== undefined) out.push([q.qid, x, y]);
    }
    return out;
  }
  function delta(a, b, name) {
    const pairs = paired(a, b, name);
    if (!pairs.length) return null;
    const stat = statistic(name), xs = pairs.map((p) => p[1]), ys = pairs.map((p) => p[2]);
    const random = rng(1 + a * 7919 + b), boot = [];
    for (let r = 0; r < RESAMPLES; r++) {
      const sx = [], sy = [];
      for (let i = 0; i < xs.length; i++) { const j = Math.floor(random() * xs.length); sx.push(xs[j]); sy.push(ys[j]); }
      boot.push(stat(sy) - stat(sx));
    }
    boot.sort((p, q) => p - q);
    const pick = (f) => boot[Math.min(boot.length - 1, Math.max(0, Math.round(f * (boot.length - 1))))];
    return { a: stat(xs), b: stat(ys), delta: stat(ys) - stat(xs), low: pick(0.025), high: pick(0.975), n: xs.length };
  }
  function changes(a, b, name) {
    const higher = METRICS[name].higher;
    return paired(a, b, name).filter((p) => p[2] !== p[1]).map(([qid, x, y]) => ({ qid, a: x, b: y, delta: y - x, better: (y > x) === higher }))
      .sort((p, q) => Math.abs(q.delta) - Math.abs(p.delta) || (p.qid < q.qid ? -1 : 1));
  }

  // -- selection -------------------------------------------------------------------------------
  const runsOfDataset = () => RUNS.filter((r) => r.dataset === state.dataset);
  function fillSelect(select, options, value) {
    select.replaceChildren(...options.map(([v, text]) => el("option", { value: v, textContent: text })));
    if (value !== null && value !== undefined) select.value = String(value);
  }
  function initControls() {
    const datasets = [...new Set(RUNS.map((r) => r.dataset))];
    const sel = DATA.selected.map(String).filter((id) => BY_ID[id]);
    const newest = RUNS.length ? RUNS[RUNS.length - 1] : null;
    state.dataset = sel.length ? BY_ID[sel[0]].dataset : newest ? newest.dataset : null;
    fillSelect($("dataset"), datasets.map((d) => [d, d]), state.dataset);
    $("dataset").onchange = () => { state.dataset = $("dataset").value; pickDefaultRuns([]); refresh(); };
    pickDefaultRuns(sel);
    $("run-a").onchange = () => { state.a = Number($("run-a").value) || null; state.openQid = null; refresh(); };
    $("run-b").onchange = () => { state.b = Number($("run-b").value) || null; refresh(); };
    const names = Object.keys(METRICS);
    fillSelect($("history-metric"), names.map((n) => [n, label(n)]), names[0]);
    $("history-metric").onchange = drawHistory;
    $("change-metric").onchange = drawCompare;
    $("q-filter").oninput = drawQuestionRows;
    $("q-changed").onchange = drawQuestionRows;
  }
  function pickDefaultRuns(selected) {
    const runs = runsOfDataset();
    state.a = selected.length ? Number(selected[0]) : runs.length ? runs[runs.length - 1].run_id : null;
    state.b = selected.length > 1 ? Number(selected[1]) : null;
    if (!selected.length && runs.length > 1) { state.b = state.a; state.a = runs[runs.length - 2].run_id; }
  }
  function refreshSelects() {
    const options = runsOfDataset().map((r) => [r.run_id, runName(r)]);
    fillSelect($("run-a"), options, state.a);
    fillSelect($("run-b"), [["", "(none)"], ...options], state.b === null ? "" : state.b);
  }

  // -- runs table and history ------------------------------------------------------------------
  function headline(run) { return Object.keys(METRICS).filter((n) => run.summary[n] !== null && run.summary[n] !== undefined); }
  function drawRunsTable() {
    const runs = runsOfDataset();
    const names = Object.keys(METRICS).filter((n) => runs.some((r) => r.summary[n] !== null && r.summary[n] !== undefined));
    const head = el("tr", {}, el("th", {}, "run"), el("th", { class: "l" }, "created"), el("th", { class: "l" }, "kind"),
      el("th", { class: "l" }, "configuration"), el("th", {}, "questions"), ...names.map((n) => el("th", {}, label(n))),
      el("th", { class: "l" }, "code"), el("th", { class: "l" }, "models"));
    const rows = runs.map((r) => el("tr", { "data-run": r.run_id }, el("td", {}, `#${r.run_id}`), el("td", { class: "l" }, r.created),
      el("td", { class: "l" }, r.kind), el("td", { class: "l" }, el("span", { class: "swatch", style: `background:${style(r).color}` }), r.label),
      el("td", {}, r.n_questions), ...names.map((n) => el("td", {}, fmtMetric(n, r.summary[n]))), el("td", { class: "l" }, r.code_version),
      el("td", { class: "l" }, Object.entries(r.models).map(([k, v]) => `${k} ${v}`).join("; "))));
    $("runs-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  }
  const baseOptions = (xTitle, yTitle) => ({
    animation: false, responsive: true, maintainAspectRatio: false,
    plugins: { legend: { position: "bottom", labels: { usePointStyle: true, boxWidth: 8 } } },
    scales: { x: { title: { display: true, text: xTitle }, grace: "5%" }, y: { title: { display: true, text: yTitle }, grace: "5%" } },
  });
  function newChart(canvas, config) { const chart = new Chart(canvas, config); state.charts.push(chart); return chart; }
  function drawHistory() {
    if (state.history) state.history.destroy();
    const name = $("history-metric").value;
    const runs = runsOfDataset().filter((r) => r.summary[name] !== null && r.summary[name] !== undefined);
    const labels = [...new Set(runs.map((r) => r.label))];
    const datasets = labels.map((configLabel) => {
      const first = runs.find((r) => r.label === configLabel);
      return { label: configLabel, borderColor: style(first).color, backgroundColor: style(first).color,
        pointStyle: runs.map((r) => style(r).marker), pointRadius: 5, spanGaps: true,
        data: runs.map((r) => (r.label === configLabel ? r.summary[name] : null)) };
    });
    const options = baseOptions("run (oldest → newest)", label(name));
    options.scales.x = { title: { display: true, text: "run (oldest → newest)" } };
    options.plugins.tooltip = { callbacks: { title: (items) => { const r = runs[items[0].dataIndex]; return `${runName(r)} (${r.created})`; } } };
    state.history = new Chart($("history-chart"), { type: "line", data: { labels: runs.map((r) => `#${r.run_id}`), datasets }, options });
  }

  // -- comparison ------------------------------------------------------------------------------
  function drawCompare() {
    const ok = state.a !== null && state.b !== null && BY_ID[state.a] && BY_ID[state.b] && loaded(state.a) && loaded(state.b);
    $("compare-empty").textContent = state.note || "Pick two runs (A and B) above.";
    $("compare-empty").style.display = ok ? "none" : "";
    $("compare-body").style.display = ok ? "" : "none";
    if (!ok) return;
    const A = BY_ID[state.a], B = BY_ID[state.b];
    const keys = [...new Set([...Object.keys(A.config), ...Object.keys(B.config)])].sort();
    const same = (x, y) => JSON.stringify(x) === JSON.stringify(y);
    const diff = keys.filter((k) => !same(A.config[k], B.config[k]));
    $("config-diff").replaceChildren(el("thead", {}, el("tr", {}, el("th", { class: "l" }, "key"), el("th", { class: "l" }, `A #${A.run_id}`), el("th", { class: "l" }, `B #${B.run_id}`))),
      el("tbody", {}, ...(diff.length ? diff.map((k) => el("tr", { "data-key": k }, el("td", { class: "l" }, k), el("td", { class: "l" }, JSON.stringify(A.config[k] ?? null)), el("td", { class: "l" }, JSON.stringify(B.config[k] ?? null))))
        : [el("tr", {}, el("td", { class: "l", colSpan: 3 }, "same configuration"))])));
    const rows = [];
    for (const name of Object.keys(METRICS)) {
      const d = delta(A.run_id, B.run_id, name);
      if (!d) continue;
      const sign = d.delta === 0 ? "" : (d.delta > 0) === METRICS[name].higher ? "better" : "worse";
      const sure = d.low > 0 || d.high < 0;
      rows.push(el("tr", { "data-metric": name, "data-delta": String(d.delta) }, el("td", { class: "l" }, label(name) + (METRICS[name].median ? " (median)" : "")),
        el("td", {}, fmtMetric(name, d.a)), el("td", {}, fmtMetric(name, d.b)), el("td", { class: `delta ${sign}` }, (d.delta > 0 ? "+" : "") + fmtMetric(name, d.delta)),
        el("td", {}, `[${fmtMetric(name, d.low)}, ${fmtMetric(name, d.high)}]`), el("td", {}, sure ? "yes" : "no"), el("td", {}, d.n)));
    }
    $("deltas").replaceChildren(el("thead", {}, el("tr", {}, ...["metric", "A", "B", "Δ", "95% interval", "interval excludes 0", "paired questions"].map((h, i) => el("th", { class: i ? "" : "l" }, h)))),
      el("tbody", {}, ...rows));
    const shared = Object.keys(METRICS).filter((n) => rows.some((r) => r.dataset.metric === n));
    const current = $("change-metric").value;
    const preferred = shared.includes(current) ? current : shared.includes("answer_f1") ? "answer_f1" : shared.includes("retrieval.iou") ? "retrieval.iou" : shared[0];
    fillSelect($("change-metric"), shared.map((n) => [n, label(n)]), preferred);
    const changed = preferred ? changes(A.run_id, B.run_id, preferred) : [];
    state.changed = Object.fromEntries(changed.map((c) => [c.qid, c]));
    const text = Object.fromEntries(questionsOf(A.run_id).map((q) => [q.qid, q.question]));
    const item = (c) => el("li", { "data-qid": c.qid, onclick: () => openQuestion(c.qid) }, `${c.qid}: ${fmt(c.a)} → ${fmt(c.b)} (${c.delta > 0 ? "+" : ""}${fmt(c.delta)}) ${text[c.qid] || ""}`);
    const better = changed.filter((c) => c.better), worse = changed.filter((c) => !c.better);
    $("better").replaceChildren(...better.map(item));
    $("worse").replaceChildren(...worse.map(item));
    $("n-better").textContent = better.length;
    $("n-worse").textContent = worse.length;
  }

  // -- Pareto views ----------------------------------------------------------------------------
  function drawPareto() {
    state.charts.forEach((c) => c.destroy());
    state.charts = [];
    const holder = $("pareto-charts");
    holder.replaceChildren();
    for (const view of DATA.pareto.filter((v) => v.dataset === state.dataset && v.runs.length)) {
      const canvas = el("canvas", {});
      const title = `${label(view.quality)} against ${label(view.cost)}`;
      holder.append(el("figure", { class: "pareto", "data-quality": view.quality, "data-cost": view.cost }, el("figcaption", {}, title), el("div", { class: "chart" }, canvas)));
      const runs = view.runs.map((id) => BY_ID[id]);
      const labels = [...new Set(runs.map((r) => r.label))];
      const point = (r) => ({ x: r.summary[view.cost], y: r.summary[view.quality], run: r.run_id });
      const datasets = labels.map((configLabel) => {
        const members = runs.filter((r) => r.label === configLabel);
        return { type: "scatter", label: configLabel, data: members.map(point), pointStyle: members.map((r) => style(r).marker),
          backgroundColor: style(members[0]).color, borderColor: style(members[0]).color, pointRadius: 6, pointHoverRadius: 8 };
      });
      datasets.push({ type: "line", label: "2-D front", data: view.front.map((id) => point(BY_ID[id])), stepped: "before",
        borderColor: "#000", borderWidth: 1, pointRadius: 0, fill: false, order: 1 });
      const options = baseOptions(label(view.cost), label(view.quality) + " (↑ better)");
      options.scales.x.type = "linear";
      options.plugins.tooltip = { callbacks: { label: (item) => { const r = BY_ID[item.raw.run]; return r ? `${runName(r)}: (${fmt(item.raw.x)}, ${fmt(item.raw.y)})` : ""; } } };
      newChart(canvas, { type: "scatter", data: { datasets }, options });
    }
    if (!holder.children.length) holder.append(el("p", { class: "note" }, "No run of this dataset has the metrics of a Pareto view."));
  }

  // -- question table --------------------------------------------------------------------------
  function questionColumns() {
    const qs = questionsOf(state.a);
    return Object.keys(METRICS).filter((n) => qs.some((q) => q.metrics[n] !== null && q.metrics[n] !== undefined));
  }
  function drawQuestionTable() {
    const names = questionColumns();
    const compareName = state.b !== null ? $("change-metric").value : null;
    const columns = [["qid", "qid"], ["corpus_id", "corpus"], ["question", "question"], ...names.map((n) => [n, label(n)])];
    if (compareName) columns.push(["delta", `Δ ${label(compareName)} (B − A)`]);
    const head = el("tr", {}, ...columns.map(([key, text]) => el("th", { "data-key": key, class: key === state.sortKey ? (state.sortDir > 0 ? "sorted-asc" : "sorted-desc") : "", onclick: () => sortBy(key) }, text)));
    $("q-table").replaceChildren(el("thead", {}, head), el("tbody", {}));
    state.columns = columns;
    drawQuestionRows();
  }
  function sortBy(key) {
    state.sortDir = state.sortKey === key ? -state.sortDir : 1;
    state.sortKey = key;
    drawQuestionTable();
  }
  function cellValue(q, key) {
    if (key === "qid" || key === "corpus_id" || key === "question") return q[key];
    if (key === "delta") return state.changed && state.changed[q.qid] ? state.changed[q.qid].delta : 0;
    return q.metrics[key];
  }
  function drawQuestionRows() {
    const needle = $("q-filter").value.trim().toLowerCase();
    const onlyChanged = $("q-changed").checked && state.b !== null;
    let qs = questionsOf(state.a).filter((q) => !needle || [q.qid, q.corpus_id, q.question, q.answer || ""].some((t) => t.toLowerCase().includes(needle)));
    if (onlyChanged) qs = qs.filter((q) => state.changed && state.changed[q.qid]);
    if (state.sortKey) {
      const key = state.sortKey, dir = state.sortDir;
      qs = [...qs].sort((p, q) => { const x = cellValue(p, key), y = cellValue(q, key); return (x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1) * dir; });
    }
    const rows = qs.map((q) => el("tr", { "data-qid": q.qid, class: q.qid === state.openQid ? "open" : "", onclick: () => openQuestion(q.qid) },
      ...state.columns.map(([key]) => {
        const value = cellValue(q, key);
        if (key === "qid" || key === "corpus_id") return el("td", { class: "l" }, value);
        if (key === "question") return el("td", { class: "question", title: value }, value);
        const cls = key === "delta" && value ? (state.changed[q.qid].better ? "better" : "worse") : "";
        return el("td", { class: cls }, fmtMetric(key === "delta" ? $("change-metric").value : key, value));
      })));
    $("q-table").tBodies[0].replaceChildren(...rows);
    $("q-count").textContent = loaded(state.a) ? `${rows.length} of ${questionsOf(state.a).length} questions` : state.note;
  }

  // -- one question ----------------------------------------------------------------------------
  function openQuestion(qid) {
    state.openQid = qid;
    document.querySelectorAll("#q-table tbody tr").forEach((tr) => tr.classList.toggle("open", tr.dataset.qid === qid));
    const q = questionsOf(state.a).find((x) => x.qid === qid);
    const other = state.b !== null ? questionsOf(state.b).find((x) => x.qid === qid) : null;
    const body = $("detail-body");
    body.className = "";
    if (!q) { body.replaceChildren(el("p", { class: "note" }, `question ${qid} is not in run A`)); return; }
    const stageRows = Object.keys(METRICS).filter((n) => q.metrics[n] !== null && q.metrics[n] !== undefined).map((n) =>
      el("tr", { "data-metric": n }, el("td", { class: "l" }, label(n)), el("td", {}, fmtMetric(n, q.metrics[n])), ...(other ? [el("td", {}, fmtMetric(n, other.metrics[n]))] : [])));
    const scores = el("table", { id: "detail-scores" }, el("thead", {}, el("tr", {}, el("th", { class: "l" }, "stage metric"), el("th", {}, `A #${state.a}`), ...(other ? [el("th", {}, `B #${state.b}`)] : []))), el("tbody", {}, ...stageRows));
    const parts = [el("h3", { id: "detail-question" }, `${q.qid} (${q.corpus_id}): ${q.question}`)];
    if (q.answer !== null) parts.push(el("p", {}, "answer (A):"), el("div", { class: "answer", id: "detail-answer" }, q.answer || "(empty)"));
    if (other && other.answer !== null && other.answer !== undefined) parts.push(el("p", {}, "answer (B):"), el("div", { class: "answer" }, other.answer || "(empty)"));
    parts.push(scores);
    const key = el("p", { class: "key" }, el("span", { class: "seg ref" }, "reference"), el("span", { class: "seg ret" }, "retrieved"),
      ...(q.kept ? [el("span", { class: "seg kept" }, "kept by compression")] : []), "overlaps keep every mark (underline and background)");
    const counts = el("p", { id: "detail-counts" });
    parts.push(el("h4", {}, "source around the references (run A)"), key, counts, ...q.excerpts.map((x) => excerptNode(q, x)));
    body.replaceChildren(...parts);
    const count = (cls) => [...body.querySelectorAll(`pre.excerpt .seg.${cls}`)].reduce((s, n) => s + n.textContent.length, 0);
    counts.textContent = `highlighted characters: reference ${count("ref")}, retrieved ${count("ret")}` + (q.kept ? `, kept ${count("kept")}` : "");
    counts.dataset.ref = count("ref"); counts.dataset.ret = count("ret"); counts.dataset.kept = count("kept");
    body.scrollIntoView({ block: "start" });
  }
  function excerptNode(q, x) {
    const start = x.start, end = x.start + x.text.length;
    const within = (spans) => spans.map(([s, e]) => [Math.max(s, start), Math.min(e, end)]).filter(([s, e]) => e > s);
    const refs = within(q.corpus_id === x.corpus_id ? q.references : []);
    const ret = within(q.retrieved.filter((s) => s[0] === x.corpus_id).map((s) => [s[1], s[2]]));
    const kept = within((q.kept || []).filter((s) => s[0] === x.corpus_id).map((s) => [s[1], s[2]]));
    const cuts = [...new Set([start, end, ...[...refs, ...ret, ...kept].flat()])].sort((p, r) => p - r);
    const inside = (spans, s) => spans.some(([a, b]) => a <= s && s < b);
    const pre = el("pre", { class: "excerpt", "data-corpus": x.corpus_id, "data-start": start });
    for (let i = 0; i + 1 < cuts.length; i++) {
      const s = cuts[i], e = cuts[i + 1];
      const cls = ["seg", inside(refs, s) ? "ref" : "", inside(ret, s) ? "ret" : "", inside(kept, s) ? "kept" : ""].filter(Boolean).join(" ");
      pre.append(el("span", { class: cls, title: `${x.corpus_id}[${s}:${e}]` }, x.text.slice(s - start, e - start)));
    }
    return el("div", {}, el("p", { class: "note" }, `${x.corpus_id} [${start}–${end})`), pre);
  }

  function missingQuestions() {
    state.note = "";
    const missing = [state.a, state.b].filter((id) => !loaded(id));
    if (!missing.length) return false;
    if (served) { window.location.search = `?a=${state.a}` + (state.b !== null ? `&b=${state.b}` : ""); return true; }
    const note = `The questions of run(s) ${missing.map((id) => "#" + id).join(", ")} are not in this page: ` +
      `ragpress dashboard --html FILE --compare ${state.a}` + (state.b !== null ? ` --compare ${state.b}` : "") + " (or serve it: ragpress dashboard).";
    state.note = note;
    return false;
  }

  // -- poisoning probes ------------------------------------------------------------------------
  const probeDigits = (column) => (column.startsWith("IoU") ? 2 : 1); // as rounded in the report's JSON
  function probeTable(rows, id) {
    if (!rows.length) return el("p", { class: "note" }, "no rows");
    const columns = Object.keys(rows[0]);
    const text = (column, value) => (typeof value === "number" && !["n", "k"].includes(column) ? fmt(value, probeDigits(column)) : String(value));
    const cls = (column) => (["attack", "mode"].includes(column) ? "l" : "");
    return el("div", { class: "wide" }, el("table", { id, class: "probe" },
      el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { class: cls(c), "data-key": c }, c)))),
      el("tbody", {}, ...rows.map((row) => el("tr", {}, ...columns.map((c) => el("td", { class: cls(c), "data-key": c }, text(c, row[c]))))))));
  }
  function drawPoison() {
    const probes = DATA.probes || [];
    if (!probes.length) { $("poison-body").replaceChildren(el("p", { class: "note" }, "No probe stored yet: run `ragpress eval --poison CONFIG`.")); return; }
    $("poison-body").replaceChildren(...probes.map((p) => {
      const defences = Object.entries(p.defence).map(([name, d]) =>
        `${name}: ${d.clean_flagged} of the ${d.clean_judged ?? p.n_chunks} indexed chunks the top k reached flagged, ${fmt(100 * d.flagged_as_new, 1)}% of genuine new documents' chunks flagged`).join("; ");
      return el("div", { class: "probe", "data-dataset": p.dataset },
        el("h3", {}, `${p.dataset}: probe #${p.probe_id}, ${p.created}`),
        el("p", { class: "note" }, `${p.topics} topics, ${p.targets} held-out target questions, ${p.n_chunks} indexed chunks. ${defences}.`),
        probeTable(p.table, `poison-${p.probe_id}`),
        el("h4", {}, "Clean index, target questions"),
        probeTable(p.clean_table, `poison-clean-${p.probe_id}`));
    }));
  }

  function refresh() {
    if (missingQuestions()) return;
    refreshSelects();
    drawRunsTable();
    drawHistory();
    drawCompare();
    drawPareto();
    drawQuestionTable();
    if (state.openQid) openQuestion(state.openQid);
    else { $("detail-body").className = "note"; $("detail-body").textContent = "Click a question in the table."; }
  }

  $("meta").textContent = `${RUNS.length} run(s) stored; page made ${DATA.created}. Reference scores and F1 are means over questions ×100; times are medians.`;
  drawPoison();
  if (!RUNS.length) { $("meta").textContent = "No runs stored yet: run `ragpress eval` or `ragpress pipeline`."; return; }
  initControls();
  refresh();
  window.ragpressDashboard = { state, openQuestion, delta, changes };
})();

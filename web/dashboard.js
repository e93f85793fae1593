// The dashboard: datasets, models and tasks, refreshing on their own; a task's log and metric curves follow live;
// runs compare side by side. Charts are uPlot's (web/vendor, fetched by `make install`).
import { api, can, explain, follow, showIdentity } from "./api.js";

const REFRESH_MS = 2000;
const CHART = { width: 320, height: 180 };
const COLOURS = ["#2f6fed", "#e0663a", "#1f8a4c", "#9b51e0", "#c0362c", "#0f9bb0", "#b58900", "#6c71c4"];
let selectedTask = null;
let selectedDataset = null;
let selectedPipeline = null;
let taskAbort = null;
const picked = new Set();  // tasks ticked for comparison
let who = { open: true, role: "admin", subject: "" };  // until the gateway says who the page acts as

const $ = (id) => document.getElementById(id);

// A notice: an error stays until its × is clicked (or the same problem is gone, for a service that came back); a
// plain message gives way to the next.
let sticky = "";
function say(text, isError = false) {
  const notice = $("notice");
  if (!text && sticky) return;
  sticky = isError ? text : "";
  notice.hidden = !text;
  notice.textContent = text || "";
  notice.classList.toggle("error", isError);
  if (isError) {
    const close = document.createElement("button");
    close.className = "dismiss";
    close.textContent = "×";
    close.title = "dismiss";
    close.addEventListener("click", () => { sticky = ""; say(""); });
    notice.appendChild(close);
  }
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "";
  row.appendChild(td);
  return td;
}

// Numbers as people read them: integers whole (3, not 3.0000), others to four significant digits.
function fmt(value) {
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString() : String(Number(value.toPrecision(4)));
  if (typeof value === "string") return value;
  return JSON.stringify(value, (k, v) => (typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v));
}

function facts(container, entries) {
  container.innerHTML = "";
  for (const [key, value] of entries) {
    const name = document.createElement("div");
    name.className = "muted";
    name.textContent = key;
    const shown = document.createElement("div");
    shown.textContent = value === null || value === undefined ? "—" : typeof value === "object" && !Array.isArray(value)
      ? Object.entries(value).map(([k, v]) => `${k} ${fmt(v)}`).join(", ") || "—" : fmt(value);
    shown.dataset.fact = key;
    container.append(name, shown);
  }
}

// Steps (epochs, batches) are whole numbers: ticks only at whole steps.
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 1e5, 1e6];

// One line chart; `names` are its series. Returns the box and the uPlot (or a stand-in that says what is missing).
function lineChart(container, title, names) {
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.testid = `chart-${title}`;
  const heading = document.createElement("h4");
  heading.textContent = title;
  box.appendChild(heading);
  container.appendChild(box);
  if (typeof uPlot === "undefined") {
    box.append("charts need web/vendor/ (run make install)");
    return { box, plot: { setData() {} } };
  }
  const series = [{ label: "step" }, ...names.map((name, i) => ({
    label: name, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true, points: { show: false } }))];
  const plot = new uPlot({ ...CHART, scales: { x: { time: false } }, legend: { show: false }, series,
                          axes: [{ label: "step", incrs: STEP_INCREMENTS, values: (u, ticks) => ticks.map(String) }, {}] },
                         [[], ...names.map(() => [])], box);
  return { box, plot };
}

// One legend for a group of charts that share their series (the runs compared): a colour swatch per name.
function legend(container, names) {
  const box = document.createElement("div");
  box.className = "legend";
  box.dataset.testid = "legend";
  names.forEach((name, i) => {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${COLOURS[i % COLOURS.length]}"></i>`;
    item.append(name);
    box.appendChild(item);
  });
  container.appendChild(box);
}

// A task's metric series, drawn as they arrive (points may come out of order: kept sorted by step).
class Curves {
  constructor(container) { this.container = container; this.series = new Map(); this.charts = new Map(); this.queued = false; }

  add(points) {
    for (const [key, step, value] of points) {
      if (!this.series.has(key)) this.series.set(key, new Map());
      this.series.get(key).set(step, value);
    }
    if (!this.queued) { this.queued = true; requestAnimationFrame(() => { this.queued = false; this.draw(); }); }
  }

  draw() {
    for (const [key, points] of [...this.series].sort()) {
      if (!this.charts.has(key)) this.charts.set(key, lineChart(this.container, key, [key]));
      const chart = this.charts.get(key);
      const steps = [...points.keys()].sort((a, b) => a - b);
      chart.plot.setData([steps, steps.map((step) => points.get(step))]);
      chart.box.dataset.points = String(steps.length);
    }
  }
}

// A timestamp as people read it: the time today, the date and time before today.
function when(iso) {
  const at = new Date(iso);
  return at.toDateString() === new Date().toDateString() ? at.toLocaleTimeString() : at.toLocaleString();
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", (event) => { event.stopPropagation(); onClick(b); });
  return b;
}

async function refreshTasks() {
  const tasks = await api("/api/v1/tasks?limit=50");
  const body = $("tasks").querySelector("tbody");
  body.innerHTML = "";
  $("tasks-empty").hidden = tasks.length > 0;
  for (const t of tasks) {
    const row = document.createElement("tr");
    row.className = "selectable" + (t.id === selectedTask ? " selected" : "");
    row.dataset.taskId = t.id;
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.checked = picked.has(t.id);
    tick.title = "compare this run";
    tick.addEventListener("click", (event) => event.stopPropagation());
    tick.addEventListener("change", () => {
      if (tick.checked) picked.add(t.id); else picked.delete(t.id);
      $("compare-button").disabled = picked.size < 2;
    });
    cell(row, tick);
    cell(row, t.name);
    const status = cell(row, t.status);
    status.className = `status ${t.status}`;
    const bar = document.createElement("span");
    bar.className = "progress";
    bar.innerHTML = `<span style="width:${((t.progress?.fraction ?? (t.status === "completed" ? 1 : 0)) * 100).toFixed(0)}%"></span>`;
    const progress = cell(row, bar);
    if (t.progress?.message) progress.append(" ", t.progress.message);
    cell(row, when(t.created_at)).title = new Date(t.created_at).toLocaleString();
    const outcome = t.error || summary(t.result);
    cell(row, outcome).title = t.error || (t.result !== null ? fmt(t.result) : "");
    const actions = cell(row, "");
    if ((t.status === "pending" || t.status === "running") && can(who, "editor")) {
      actions.appendChild(button("Cancel", async (b) => {
        b.disabled = true;
        try { await api(`/api/v1/tasks/${t.id}/cancel`, { method: "POST" }); } catch (err) { say(explain(err), true); }
        refresh();
      }));
    }
    row.addEventListener("click", () => showTask(t));
    body.appendChild(row);
  }
}

// A run's result in a few words: its first numbers and names ("accuracy 0.962 · epochs 3"); the whole in the tooltip.
function summary(result) {
  if (result === null || result === undefined) return "";
  if (typeof result !== "object" || Array.isArray(result)) return fmt(result);
  const simple = Object.entries(result).filter(([, v]) => v === null || typeof v !== "object");
  const first = ["accuracy", "rows", "model", "version"].filter((k) => k in result && typeof result[k] !== "object");
  const keys = [...first, ...simple.map(([k]) => k).filter((k) => !first.includes(k))].slice(0, 3);
  return keys.map((k) => `${k} ${fmt(result[k])}`).join(" · ");
}

function showFacts(task) {
  const result = task.error ? [["error", task.error]] : task.result && typeof task.result === "object"
    && !Array.isArray(task.result) ? Object.entries(task.result).filter(([k]) => k !== "history")
      .map(([k, v]) => [`result · ${k}`, v]) : [["result", task.result]];
  facts($("task-info"), [["status", task.status], ["owner", task.owner || "—"], ["created", when(task.created_at)],
                         ["script", task.script], ["input", task.input || "—"],
                         ["params", task.effective_params || task.params], ...result]);
}

async function showTask(task) {
  selectedTask = task.id;
  $("task-detail").hidden = false;
  $("task-title").textContent = `${task.name} · ${task.id}`;
  showFacts(task);
  const log = $("task-log");
  log.textContent = "";
  $("task-charts").innerHTML = "";
  if (taskAbort) taskAbort.abort();
  taskAbort = new AbortController();
  const { signal } = taskAbort;
  const curves = new Curves($("task-charts"));
  follow(`/api/v1/tasks/${task.id}/metrics?follow=true`, (event, data) => {
    if (event === "message") curves.add(JSON.parse(data).points);
  }, signal).catch((err) => { if (err.name !== "AbortError") say(explain(err), true); });
  try {
    await follow(`/api/v1/tasks/${task.id}/logs?follow=true`, (event, data) => {
      if (event === "message") { log.textContent += data + "\n"; log.scrollTop = log.scrollHeight; }
      if (event === "end") log.textContent += `\n[task ${JSON.parse(data).status}]\n`;
    }, signal);
    if (!signal.aborted) showFacts(await api(`/api/v1/tasks/${task.id}`));
  } catch (err) {
    if (err.name !== "AbortError") log.textContent += `\n[${explain(err)}]\n`;
  }
}

const lowerIsBetter = (key) => /loss|error|seconds/i.test(key);

async function compareRuns() {
  let runs;
  try { runs = await api(`/api/v1/runs?ids=${[...picked].join(",")}`); } catch (err) { say(explain(err), true); return; }
  $("compare").hidden = false;
  const charts = $("compare-charts");
  charts.innerHTML = "";
  const names = runs.map((r) => `${r.name} (${r.id.slice(0, 6)})`);
  legend(charts, names);
  for (const key of [...new Set(runs.flatMap((r) => Object.keys(r.series)))].sort()) {
    const steps = [...new Set(runs.flatMap((r) => (r.series[key] || []).map(([step]) => step)))].sort((a, b) => a - b);
    const lines = runs.map((r) => {
      const byStep = new Map((r.series[key] || []).map(([step, value]) => [step, value]));
      return steps.map((step) => (byStep.has(step) ? byStep.get(step) : null));
    });
    const chart = lineChart(charts, key, names);
    chart.plot.setData([steps, ...lines]);
    chart.box.dataset.points = String(steps.length);
  }
  const params = [...new Set(runs.flatMap((r) => Object.keys(r.params)))].sort();
  const finals = [...new Set(runs.flatMap((r) => Object.keys(r.final)))].sort();
  const table = $("compare-table");
  table.innerHTML = "";
  const head = table.insertRow();
  for (const title of ["run", "status", ...params, ...finals.map((k) => `${k} (final)`)]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  const best = Object.fromEntries(finals.map((key) => {
    const values = runs.map((r) => r.final[key]).filter((v) => v !== undefined);
    return [key, lowerIsBetter(key) ? Math.min(...values) : Math.max(...values)];
  }));
  runs.forEach((r, i) => {
    const row = table.insertRow();
    cell(row, names[i]).style.color = COLOURS[i % COLOURS.length];
    cell(row, r.status);
    params.forEach((p) => cell(row, r.params[p] === undefined ? "" : fmt(r.params[p])));
    finals.forEach((k) => {
      const td = cell(row, r.final[k] === undefined ? "" : fmt(r.final[k]));
      if (runs.length > 1 && r.final[k] === best[k]) td.classList.add("best");
    });
  });
}

$("compare-button").addEventListener("click", compareRuns);

// An image column (fixed-size list of N pixels, N a square, or with an image_shape entry) as a small picture.
function thumbnail(pixels, shape) {
  const [height, width] = shape;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.className = "thumb";
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const top = Math.max(...pixels) > 1 ? 255 : 1;
  pixels.forEach((p, i) => {
    const v = Math.round((p / top) * 255);
    image.data.set([v, v, v, 255], i * 4);
  });
  context.putImageData(image, 0, 0);
  return canvas;
}

// An image column's [height, width]: from the table's image_shape ("28,28", as the platform writes it, or a JSON
// list), else a square side; {error} when image_shape is malformed or does not fit the column.
function imageShape(type, metadata) {
  const match = /^fixed_size_list<.*>\[(\d+)\]$/.exec(type);
  if (!match) return null;
  const size = Number(match[1]);
  const given = metadata?.image_shape;
  if (given) {
    const dims = given.trim().replace(/^\[|\]$/g, "").split(",").map((d) => Number(d.trim()));
    if (dims.length < 2 || dims.some((d) => !Number.isInteger(d) || d < 1)) {
      return { error: `image_shape ${JSON.stringify(given)} is not "height,width"` };
    }
    if (dims.reduce((a, b) => a * b, 1) !== size) {
      return { error: `image_shape ${JSON.stringify(given)} does not fit ${size} values` };
    }
    return dims.slice(0, 2);
  }
  const side = Math.sqrt(size);
  return Number.isInteger(side) && side >= 8 ? [side, side] : null;
}

async function refreshDatasets() {
  const datasets = await api("/api/v1/datasets");
  const body = $("datasets").querySelector("tbody");
  body.innerHTML = "";
  $("datasets-empty").hidden = datasets.length > 0;
  for (const d of datasets) {
    const row = document.createElement("tr");
    row.className = "selectable" + (d.id === selectedDataset ? " selected" : "");
    cell(row, d.id); cell(row, d.num_rows.toLocaleString()); cell(row, d.num_versions); cell(row, bytes(d.size_bytes));
    row.addEventListener("click", () => showDataset(d));
    body.appendChild(row);
  }
}

async function showDataset(dataset) {
  selectedDataset = dataset.id;
  $("dataset-detail").hidden = false;
  $("dataset-title").textContent = `${dataset.id} · version ${dataset.version}`;
  $("dataset-schema").innerHTML = Object.entries(dataset.schema).map(([c, t]) => `<code>${c}: ${t}</code>`).join("<br>");
  try {
    const [versions, preview] = await Promise.all([
      api(`/api/v1/datasets/${dataset.id}/versions`),
      api(`/api/v1/datasets/${dataset.id}/rows?limit=5`),
    ]);
    $("dataset-versions").textContent = `versions: ${versions.map((v) => v.created_by ? `${v.version} (${v.created_by})` : v.version).join(", ")} · ${preview.total_rows} rows`;
    const table = $("dataset-rows");
    table.innerHTML = "";
    const columns = Object.keys(dataset.schema);
    const head = table.insertRow();
    columns.forEach((c) => { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); });
    const shapes = Object.fromEntries(columns.map((c) => [c, imageShape(dataset.schema[c], dataset.metadata)]));
    for (const r of preview.rows) {
      const row = table.insertRow();
      columns.forEach((c) => {
        const value = r[c];
        if (shapes[c]?.error) cell(row, shapes[c].error).className = "muted";
        else if (shapes[c] && Array.isArray(value)) cell(row, thumbnail(value, shapes[c]));
        else cell(row, Array.isArray(value) ? `[${value.length} values]` : fmt(value));
      });
    }
  } catch (err) {
    say(explain(err), true);
  }
}

async function refreshModels() {
  const [models, index] = await Promise.all([api("/api/v1/models"), api("/v2/repository/index").catch(() => [])]);
  const states = Object.fromEntries(index.map((m) => [m.name, m]));
  const body = $("models").querySelector("tbody");
  body.innerHTML = "";
  $("models-empty").hidden = models.length > 0;
  for (const m of models) {
    const row = document.createElement("tr");
    row.className = "selectable";
    cell(row, m.id);
    const aliases = Object.entries(m.aliases || {}).map(([alias, v]) => `${alias}→${v}`).join(" ");
    cell(row, `v${m.version} of ${m.num_versions}${aliases ? ` · ${aliases}` : ""}`);
    cell(row, compactMetrics(m.metrics)).title = Object.entries(m.metrics || {}).map(([k, v]) => `${k} ${fmt(v)}`).join("\n");
    const served = states[m.id];
    const loaded = served?.state === "READY";
    cell(row, serving(served)).className = loaded ? "serving" : "muted";
    if (!can(who, loaded ? "admin" : "editor")) { cell(row, ""); row.addEventListener("click", () => showModel(m)); body.appendChild(row); continue; }
    cell(row, button(loaded ? "Unload" : "Load", async (b) => {
      b.disabled = true;
      try { await api(`/v2/repository/models/${m.id}/${loaded ? "unload" : "load"}`, { method: "POST" }); }
      catch (err) { say(explain(err), true); }
      refresh();
    }));
    row.addEventListener("click", () => showModel(m));
    body.appendChild(row);
  }
}

// The few metrics that say how good a model is, in one short line; the rest in the row's tooltip.
function compactMetrics(metrics) {
  const keys = Object.keys(metrics || {});
  const chosen = ["accuracy", "test_loss", "f1", "auc"].filter((k) => keys.includes(k));
  const shown = (chosen.length ? chosen : keys).slice(0, 2);
  return shown.map((k) => `${k} ${fmt(metrics[k])}`).join(" · ") + (keys.length > shown.length ? " …" : "");
}

// A model's serving state in words: serving v3 (2 replicas), loading, not loaded, or why it failed.
function serving(entry) {
  if (!entry) return "not loaded";
  if (entry.state === "READY") {
    const replicas = /(\d+) RUNNING/.exec(entry.reason || "");
    return `serving v${entry.version}` + (replicas ? ` · ${replicas[1]} replica${replicas[1] === "1" ? "" : "s"}` : "");
  }
  if (entry.state === "LOADING") return `loading v${entry.version}`;
  return entry.reason && !["not loaded", "unloaded"].includes(entry.reason) ? `not serving: ${entry.reason}` : "not loaded";
}

function showModel(m) {
  $("model-detail").hidden = false;
  $("model-title").textContent = `${m.id} · version ${m.version}`;
  showLineage(m);
  const tensors = (list) => (list || []).map((t) => `${t.name} ${t.datatype} [${t.shape.join(", ")}]`).join("; ");
  facts($("model-info"), [["metrics", m.metrics], ["params", m.params], ["inputs", tensors(m.signature?.inputs)],
                          ["outputs", tensors(m.signature?.outputs)], ["labels", (m.labels || []).join(" ") || "—"],
                          ["aliases", Object.entries(m.aliases || {}).map(([a, v]) => `${a} → v${v}`).join(", ") || "—"],
                          ["written by", m.created_by || "—"], ["saved", when(m.updated_at)],
                          ["framework", m.framework || "—"], ["size", bytes(m.size_bytes)]]);
}

// Where a model version came from, as links: dataset@version → task → model@version.
function showLineage(model) {
  const line = $("model-lineage");
  line.innerHTML = "";
  const source = model.lineage?.input;
  if (!model.lineage?.task_id) { line.textContent = "lineage: not recorded (saved outside a platform task)"; return; }
  const link = (text, onClick) => {
    const a = document.createElement("a");
    a.href = "#";
    a.textContent = text;
    a.addEventListener("click", (event) => { event.preventDefault(); onClick(); });
    return a;
  };
  line.append("lineage: ");
  if (source) {
    line.append(link(`${source.name}@${source.version}`, async () => showDataset(await api(`/api/v1/datasets/${source.name}`))), " → ");
  }
  line.append(link(`task ${model.lineage.task_id.slice(0, 8)}`, async () => showTask(await api(`/api/v1/tasks/${model.lineage.task_id}`))));
  line.append(` → ${model.id}@${model.version}`);
}

// -- pipelines: each run a row of its steps, in order, coloured by state; cached steps marked ↺ ----------------------
function triggers(definition) {
  const on = definition.on ? (Array.isArray(definition.on) ? definition.on : [definition.on]) : [];
  return on.map((t) => (t.dataset ? `on ${t.dataset}` : `cron ${t.cron}`)).join(", ") || "manual";
}

async function refreshPipelines() {
  const pipelines = await api("/api/v1/pipelines");
  const body = $("pipelines").querySelector("tbody");
  body.innerHTML = "";
  $("pipelines-empty").hidden = pipelines.length > 0;
  for (const p of pipelines) {
    const row = document.createElement("tr");
    row.className = "selectable" + (p.name === selectedPipeline ? " selected" : "");
    cell(row, p.name);
    cell(row, p.revision);
    cell(row, triggers(p.definition));
    const last = p.last_run;
    const status = cell(row, last ? `${last.status} · ${last.trigger} · ${when(last.created_at)}` : "never run");
    if (last) status.className = `status ${last.status}`;
    const actions = cell(row, "");
    if (can(who, "editor")) {
      actions.appendChild(button("Run", async (b) => {
        b.disabled = true;
        try { await api(`/api/v1/pipelines/${p.name}/runs`, { method: "POST", json: {} }); } catch (err) { say(explain(err), true); }
        selectedPipeline = p.name;
        refresh();
      }));
    }
    row.addEventListener("click", () => { selectedPipeline = p.name; refreshPipelines(); });
    body.appendChild(row);
  }
  if (selectedPipeline) await showPipeline(selectedPipeline);
}

async function showPipeline(name) {
  const runs = await api(`/api/v1/pipelines/${name}/runs?limit=10`);
  $("pipeline-detail").hidden = false;
  $("pipeline-title").textContent = `${name}: last ${runs.length} run(s)`;
  const box = $("pipeline-runs");
  box.innerHTML = "";
  for (const run of runs) {
    const line = document.createElement("div");
    line.className = "run";
    line.dataset.runId = run.id;
    const head = document.createElement("span");
    head.className = `status ${run.status}`;
    head.textContent = `${run.status} · ${run.trigger} · ${when(run.created_at)}`;
    head.title = run.message || run.id;
    line.appendChild(head);
    run.order.forEach((stepName, i) => {
      const step = run.steps[stepName];
      if (i) line.append(" → ");
      const node = document.createElement("span");
      node.className = `step ${step.status}`;
      node.dataset.testid = "step";
      node.dataset.step = stepName;
      node.textContent = `${step.status === "cached" ? "↺ " : ""}${stepName}`;
      const output = step.output_version ? ` ${step.output}@${step.output_version}` : "";
      node.title = `${step.status}${output}${step.cached_from ? ` (cached from task ${step.cached_from})` : ""}` +
        `${step.message ? `: ${step.message}` : ""}`;
      const task = step.task_id || step.cached_from;
      if (task) {
        node.classList.add("link");
        node.addEventListener("click", async () => showTask(await api(`/api/v1/tasks/${task}`)));
      }
      line.appendChild(node);
    });
    box.appendChild(line);
  }
}

async function refreshHealth() {
  const health = await api("/healthz");
  const dots = $("health");
  dots.innerHTML = "";
  for (const s of Object.values(health.services)) {
    const item = document.createElement("span");
    item.className = s.healthy ? "dot up" : "dot down";
    item.title = s.healthy ? `${s.service} at ${s.addr}: healthy` : `${s.service} at ${s.addr}: ${s.error || "down"}`;
    item.textContent = `${s.service}${s.healthy ? "" : " down"}`;
    dots.appendChild(item);
  }
  const down = Object.values(health.services).filter((s) => !s.healthy).map((s) => s.service);
  return down;
}

async function refresh() {
  try {
    const down = await refreshHealth();
    const results = await Promise.allSettled([refreshTasks(), refreshDatasets(), refreshModels(), refreshPipelines()]);
    const failed = results.find((r) => r.status === "rejected");
    if (down.length) say(`${down.join(", ")} unavailable — start it (aip up); this page recovers by itself.`, true);
    else if (failed) say(explain(failed.reason), true);
    else say("");
  } catch (err) {
    say(explain(err), true);
  }
}

showIdentity().then((seen) => { who = seen; }).finally(() => { refresh(); setInterval(refresh, REFRESH_MS); });

// The dashboard: datasets, models and tasks, refreshing on their own; a task's log follows live.
import { api, explain, follow } from "./api.js";

const REFRESH_MS = 2000;
let selectedTask = null;
let selectedDataset = null;
let logAbort = null;

const $ = (id) => document.getElementById(id);

function say(text, isError = false) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
  $("notice").classList.toggle("error", isError);
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "";
  row.appendChild(td);
  return td;
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
    cell(row, t.name);
    const status = cell(row, t.status);
    status.className = `status ${t.status}`;
    const bar = document.createElement("span");
    bar.className = "progress";
    bar.innerHTML = `<span style="width:${((t.progress?.fraction ?? (t.status === "completed" ? 1 : 0)) * 100).toFixed(0)}%"></span>`;
    const progress = cell(row, bar);
    if (t.progress?.message) progress.append(" ", t.progress.message);
    cell(row, new Date(t.created_at).toLocaleTimeString());
    cell(row, t.error || (t.result !== null ? JSON.stringify(t.result).slice(0, 80) : ""));
    const actions = cell(row, "");
    if (t.status === "pending" || t.status === "running") {
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

async function showTask(task) {
  selectedTask = task.id;
  $("task-detail").hidden = false;
  $("task-title").textContent = `${task.name} · ${task.id} · log`;
  const log = $("task-log");
  log.textContent = "";
  if (logAbort) logAbort.abort();
  logAbort = new AbortController();
  try {
    await follow(`/api/v1/tasks/${task.id}/logs?follow=true`, (event, data) => {
      if (event === "message") { log.textContent += data + "\n"; log.scrollTop = log.scrollHeight; }
      if (event === "end") log.textContent += `\n[task ${JSON.parse(data).status}]\n`;
    }, logAbort.signal);
  } catch (err) {
    if (err.name !== "AbortError") log.textContent += `\n[${explain(err)}]\n`;
  }
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
    $("dataset-versions").textContent = `versions: ${versions.map((v) => v.version).join(", ")} · ${preview.total_rows} rows`;
    const table = $("dataset-rows");
    table.innerHTML = "";
    const columns = Object.keys(dataset.schema);
    const head = table.insertRow();
    columns.forEach((c) => { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); });
    for (const r of preview.rows) {
      const row = table.insertRow();
      columns.forEach((c) => {
        const value = r[c];
        cell(row, Array.isArray(value) ? `[${value.length} values]` : JSON.stringify(value));
      });
    }
  } catch (err) {
    say(explain(err), true);
  }
}

async function refreshModels() {
  const [models, index] = await Promise.all([api("/api/v1/models"), api("/v2/repository/index").catch(() => [])]);
  const states = Object.fromEntries(index.map((m) => [m.name, m.state]));
  const body = $("models").querySelector("tbody");
  body.innerHTML = "";
  $("models-empty").hidden = models.length > 0;
  for (const m of models) {
    const row = document.createElement("tr");
    row.className = "selectable";
    cell(row, m.id);
    cell(row, `${m.version} of ${m.num_versions}`);
    cell(row, Object.entries(m.metrics || {}).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(4) : v}`).join(", "));
    const state = states[m.id] || "unknown";
    cell(row, state);
    const loaded = state === "READY";
    cell(row, button(loaded ? "Unload" : "Load", async (b) => {
      b.disabled = true;
      try { await api(`/v2/repository/models/${m.id}/${loaded ? "unload" : "load"}`, { method: "POST" }); }
      catch (err) { say(explain(err), true); }
      refresh();
    }));
    row.addEventListener("click", () => {
      $("model-detail").hidden = false;
      $("model-title").textContent = `${m.id} · version ${m.version}`;
      $("model-params").textContent = JSON.stringify({ metrics: m.metrics, params: m.params, signature: m.signature }, null, 2);
    });
    body.appendChild(row);
  }
}

async function refreshHealth() {
  const health = await api("/healthz");
  $("health").textContent = Object.values(health.services).map((s) => `${s.service} ${s.healthy ? "●" : "○ down"}`).join("  ");
  const down = Object.values(health.services).filter((s) => !s.healthy).map((s) => s.service);
  return down;
}

async function refresh() {
  try {
    const down = await refreshHealth();
    const results = await Promise.allSettled([refreshTasks(), refreshDatasets(), refreshModels()]);
    const failed = results.find((r) => r.status === "rejected");
    if (down.length) say(`${down.join(", ")} unavailable — start it (aip up); this page recovers by itself.`, true);
    else if (failed) say(explain(failed.reason), true);
    else say("");
  } catch (err) {
    say(explain(err), true);
  }
}

refresh();
setInterval(refresh, REFRESH_MS);

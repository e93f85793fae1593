// The digit page: draw, preprocess as MNIST was made, predict through the gateway, show ten bars.
import { api, explain, saveSettings, settings, showIdentity } from "./api.js";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const notice = document.getElementById("notice");
const modelSelect = document.getElementById("model");
let drawing = false;
let last = null;

function say(text, isError = false) {
  notice.hidden = !text;
  notice.textContent = text || "";
  notice.classList.toggle("error", isError);
}

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  document.getElementById("digit").textContent = "–";
  document.getElementById("confidence").textContent = "draw, then predict";
  document.getElementById("feedback").hidden = true;
  document.getElementById("bars").innerHTML = "";
  document.getElementById("preview").getContext("2d").clearRect(0, 0, 84, 84);
}

function point(event) {
  const rect = pad.getBoundingClientRect();
  const source = event.touches ? event.touches[0] : event;
  return { x: (source.clientX - rect.left) * (pad.width / rect.width), y: (source.clientY - rect.top) * (pad.height / rect.height) };
}

function stroke(from, to) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 18;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
}

function start(event) { event.preventDefault(); drawing = true; last = point(event); stroke(last, last); }
function move(event) { if (!drawing) return; event.preventDefault(); const p = point(event); stroke(last, p); last = p; }
function end() { drawing = false; }

for (const [name, fn] of [["mousedown", start], ["mousemove", move], ["mouseup", end], ["mouseleave", end],
                          ["touchstart", start], ["touchmove", move], ["touchend", end]]) {
  pad.addEventListener(name, fn, { passive: false });
}

// MNIST preprocessing: crop to the ink's bounding box, scale the longer side to 20 px,
// paste into 28×28 so that the centre of mass sits at the centre. Values 0..1, white ink on black.
export function preprocess(canvas) {
  const { width, height } = canvas;
  const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  let minX = width, minY = height, maxX = -1, maxY = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (pixels[(y * width + x) * 4] > 20) {
        minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y);
      }
    }
  }
  if (maxX < 0) return null;
  const boxW = maxX - minX + 1, boxH = maxY - minY + 1;
  const scale = 20 / Math.max(boxW, boxH);
  const w = Math.max(1, Math.round(boxW * scale)), h = Math.max(1, Math.round(boxH * scale));
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const sctx = small.getContext("2d");
  sctx.imageSmoothingQuality = "high";
  sctx.drawImage(canvas, minX, minY, boxW, boxH, 0, 0, w, h);
  const smallPixels = sctx.getImageData(0, 0, w, h).data;
  let mass = 0, cx = 0, cy = 0;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const v = smallPixels[(y * w + x) * 4] / 255;
    mass += v; cx += v * x; cy += v * y;
  }
  cx = mass ? cx / mass : w / 2; cy = mass ? cy / mass : h / 2;
  const offX = Math.round(14 - cx), offY = Math.round(14 - cy);
  const image = new Array(784).fill(0);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const tx = x + offX, ty = y + offY;
    if (tx >= 0 && tx < 28 && ty >= 0 && ty < 28) image[ty * 28 + tx] = smallPixels[(y * w + x) * 4] / 255;
  }
  return image;
}

function showPreview(image) {
  const preview = document.getElementById("preview").getContext("2d");
  const data = preview.createImageData(28, 28);
  image.forEach((v, i) => { const c = Math.round(v * 255); data.data.set([c, c, c, 255], i * 4); });
  const tmp = document.createElement("canvas");
  tmp.width = 28; tmp.height = 28;
  tmp.getContext("2d").putImageData(data, 0, 0);
  preview.imageSmoothingEnabled = false;
  preview.drawImage(tmp, 0, 0, 84, 84);
}

function showResult(result) {
  document.getElementById("digit").textContent = result.label ?? result.prediction;
  document.getElementById("confidence").textContent =
    `confidence ${(result.confidence * 100).toFixed(1)}% · model version ${result.model_version}`;
  const bars = document.getElementById("bars");
  bars.innerHTML = "";
  result.probabilities.forEach((p, i) => {
    const label = document.createElement("span");
    label.textContent = i;
    const bar = document.createElement("div");
    bar.className = "bar" + (i === result.prediction ? " best" : "");
    bar.dataset.testid = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "muted";
    value.textContent = `${(p * 100).toFixed(1)}%`;
    bars.append(label, bar, value);
  });
}

// The last prediction's input: a correction sends exactly what the model saw, with the label the person gives.
let predicted = null;

function showFeedback(image, result) {
  predicted = { image, prediction: result.prediction };
  const labels = document.getElementById("labels");
  labels.innerHTML = "";
  for (let digit = 0; digit < 10; digit++) {
    const button = document.createElement("button");
    button.textContent = digit;
    button.dataset.testid = "correct";
    if (digit === result.prediction) button.className = "predicted";  // a click on it confirms: also an example
    button.addEventListener("click", () => correct(digit));
    labels.appendChild(button);
  }
  document.getElementById("thanks").textContent = "";
  document.getElementById("feedback").hidden = false;
}

async function correct(label) {
  if (!predicted) return;
  const buttons = document.querySelectorAll("#labels button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const saved = await api("/api/v1/feedback", {
      method: "POST", json: { image: predicted.image, label, prediction: predicted.prediction } });
    document.getElementById("thanks").textContent =
      `thanks: saved as a ${label} in ${saved.dataset} v${saved.version} (${saved.rows} corrections)`;
    predicted = null;
  } catch (err) {
    say(explain(err), true);
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function predict() {
  const [model, version] = modelSelect.value.split("@");
  if (!model) { say("No model yet: train one (aip demo mnist) and reload this page.", true); return; }
  const image = preprocess(pad);
  if (!image) { say("Draw a digit first.", true); return; }
  showPreview(image);
  const button = document.getElementById("predict");
  button.disabled = true;
  say("Predicting…");
  try {
    const body = version ? { image, version } : { image };
    const result = await api(`/api/v1/models/${encodeURIComponent(model)}/predict`, { method: "POST", json: body });
    showResult(result);
    showFeedback(image, result);
    say("");
  } catch (err) {
    say(explain(err), true);
  } finally {
    button.disabled = false;
  }
}

async function loadModels() {
  try {
    const models = await api("/api/v1/models");
    modelSelect.innerHTML = "";
    if (!models.length) {
      modelSelect.innerHTML = '<option value="">no models</option>';
      say("No model yet: train one (aip demo mnist), then reload this page.");
      return;
    }
    for (const m of models) {
      const option = document.createElement("option");
      option.value = m.id;
      const accuracy = m.metrics && m.metrics.accuracy !== undefined ? ` · acc ${(m.metrics.accuracy * 100).toFixed(1)}%` : "";
      option.textContent = `${m.id} (v${m.version}${accuracy})`;
      modelSelect.appendChild(option);
      for (const [alias, version] of Object.entries(m.aliases || {})) {  // a model by alias: its version follows it
        const aliased = document.createElement("option");
        aliased.value = `${m.id}@${alias}`;
        aliased.textContent = `${m.id}@${alias} (v${version})`;
        modelSelect.appendChild(aliased);
      }
    }
    // the version people are served: production when a model has it (a promotion gate moves it)
    const production = [...modelSelect.options].find((o) => o.value.endsWith("@production"));
    if (production) modelSelect.value = production.value;
    say("");
  } catch (err) {
    modelSelect.innerHTML = '<option value="">unavailable</option>';
    say(explain(err), true);
    setTimeout(loadModels, 3000);
  }
}

document.getElementById("predict").addEventListener("click", predict);
document.getElementById("clear").addEventListener("click", clearPad);
const current = settings();
document.getElementById("apiBase").value = current.apiBase;
document.getElementById("token").value = current.token;
document.getElementById("save").addEventListener("click", () => {
  saveSettings(document.getElementById("apiBase").value, document.getElementById("token").value);
  location.reload();  // the new token may be someone else: ask again who the page acts as
});
clearPad();
loadModels();
showIdentity();

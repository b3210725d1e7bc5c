"""The operator page served at ``/``: plain HTML, CSS and JavaScript, no CDN, no network
beyond this server."""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>defectscope inspection</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
#drop { border: 2px dashed #888; padding: 1.2em; text-align: center; margin: 0.8em 0;
        border-radius: 6px; }
#drop.over { background: #eef6ff; }
#controls { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; }
#results { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.5em; width: 320px; }
.card img { width: 100%; }
.feedback button { font-size: 0.8em; margin: 0.3em 0.3em 0 0; } .note { font-size: 0.8em; }
.verdict { font-weight: bold; padding: 0.1em 0.5em; border-radius: 4px; color: #fff; }
.fail { background: #c8261e; } .pass { background: #1e8a3c; }
#history { font-size: 0.9em; } #error { color: #c8261e; }
#threshold { width: 32em; max-width: 90vw; height: 1.6em; }
.card.failed { border: 3px solid #c8261e; } .card.passed { border: 3px solid #1e8a3c; }
.name { overflow-wrap: anywhere; }
</style></head><body>
<h1>defectscope inspection</h1>
<div id="model">loading model...</div>
<div id="drop">Drop images or folders here, or <input type="file" id="files" multiple
  accept=".png,.jpg,.jpeg,.bmp,.tif,.tiff,.webp"></div>
<div id="controls">
  <label>threshold <input type="range" id="threshold" min="0" max="1" step="any">
  <output id="threshold-value"></output></label>
  <button id="reset">model threshold</button>
  <span id="counts"></span>
</div>
<div id="error" role="alert"></div>
<div id="results"></div>
<h2>Recent scores</h2>
<canvas id="chart" width="640" height="120"
        aria-label="recent scores against the threshold"></canvas>
<h2>Last results</h2><ol id="history"></ol>
<script>
const params = new URLSearchParams(location.search);
const key = params.get("api_key");
const headers = key ? {"X-API-Key": key} : {};
let model = null;
let shown = [];
const slider = document.getElementById("threshold");
const sliderValue = document.getElementById("threshold-value");

function threshold() { return parseFloat(slider.value); }

// the last 100 scores, oldest left, against the threshold line (red: above it)
const recent = [];
function drawChart() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, t = threshold();
  ctx.clearRect(0, 0, w, h);
  if (!recent.length) return;
  const low = Math.min(t, ...recent), high = Math.max(t, ...recent);
  const span = (high - low) || 1;
  const y = v => h - 8 - (h - 16) * (v - low) / span;
  ctx.strokeStyle = "#888"; ctx.setLineDash([4, 4]);
  ctx.beginPath(); ctx.moveTo(0, y(t)); ctx.lineTo(w, y(t)); ctx.stroke(); ctx.setLineDash([]);
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText("threshold " + t.toPrecision(4), w - 120, Math.max(12, y(t) - 4));
  recent.forEach((v, i) => {
    ctx.fillStyle = v > t ? "#c8261e" : "#1e8a3c";
    ctx.beginPath(); ctx.arc(6 + i * (w - 12) / 99, y(v), 3, 0, 2 * Math.PI); ctx.fill();
  });
}

function render() {
  const t = threshold();
  sliderValue.textContent = t.toPrecision(4);
  let failed = 0;
  for (const item of shown) {
    // at the threshold the server judged with, its verdict; elsewhere the same rule as the
    // server's (defectscope.verdict.fails: a part fails when its score is above the threshold)
    const fail = t === item.threshold ? item.failed : item.score > t;
    failed += fail;
    item.badge.textContent = fail ? "FAIL" : "pass";
    item.badge.className = "verdict " + (fail ? "fail" : "pass");
    item.card.className = "card " + (fail ? "failed" : "passed");
  }
  drawChart();
  document.getElementById("counts").textContent =
      shown.length ? failed + " of " + shown.length + " shown failed at " + t.toPrecision(4) : "";
}

async function loadModel() {
  const response = await fetch("/model", {headers});
  model = await response.json();
  if (!response.ok) { document.getElementById("model").textContent = model.error; return; }
  const t = model.threshold;
  const spread = (model.score_scale && model.score_scale.spread) || Math.abs(t) || 1;
  slider.min = t - 4 * spread; slider.max = t + 4 * spread; slider.value = t;
  document.getElementById("model").textContent = model.detector + " model, threshold " +
      t.toPrecision(4) + ", SHA-256 " + (model.model_sha256 || "n/a").slice(0, 12);
  render();
}

async function send(files) {
  document.getElementById("error").textContent = "";
  const form = new FormData();
  // relative names (a dropped folder's cut/000.png and hole/000.png stay apart)
  const sent = new Map();
  for (const file of files) {
    form.append("files", file, file.webkitRelativePath || file.name);
    sent.set(file.webkitRelativePath || file.name, file);
  }
  // the plain heatmap: the verdict, its colours and the counts are drawn here, from the
  // slider, so that nothing on the page disagrees with it
  const response = await fetch("/predict?heatmap=true", {method: "POST", body: form, headers});
  const body = await response.json();
  if (!response.ok) { document.getElementById("error").textContent = body.error; return; }
  for (const r of body.results) {
    const card = document.createElement("div");
    card.className = "card";
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + r.heatmap_png_base64;
    img.alt = "heatmap of " + r.name;
    const line = document.createElement("div");
    const badge = document.createElement("span");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = " " + r.name + "  score " + r.score.toPrecision(4) +
        " (model scale " + r.normalized_score.toFixed(2) + ")";
    line.append(badge, name);
    // the operator's word on this verdict, stored by the service (--feedback-dir)
    const said = document.createElement("div");
    said.className = "feedback";
    for (const [label, text] of [["good", "mark as good (false alarm)"],
                                 ["defective", "mark as defect"]]) {
      const button = document.createElement("button");
      button.textContent = text;
      button.dataset.label = label;
      button.addEventListener("click", async () => {
        const form = new FormData();
        form.append("image", sent.get(r.name), r.name);
        form.append("label", label);
        form.append("score", r.score);
        form.append("model_sha256", body.model_sha256);
        const answer = await fetch("/feedback", {method: "POST", body: form, headers});
        const reply = await answer.json();
        note.textContent = answer.ok ? "saved as " + label : reply.error;
      });
      said.append(button);
    }
    const note = document.createElement("span");
    note.className = "note";
    said.append(note);
    card.append(img, line, said);
    document.getElementById("results").prepend(card);
    recent.push(r.score);
    if (recent.length > 100) recent.shift();
    shown.push({score: r.score, threshold: r.threshold, failed: r.is_anomalous, badge: badge,
                card: card});
    // the slider covers every shown score, so any verdict can be flipped
    const margin = 0.5 * ((model.score_scale && model.score_scale.spread) || 1);
    slider.max = Math.max(parseFloat(slider.max), r.score + margin);
    slider.min = Math.min(parseFloat(slider.min), r.score - margin);
    const entry = document.createElement("li");
    entry.textContent = new Date().toLocaleTimeString() + " " + r.name + ": " + r.verdict +
        " " + r.score.toPrecision(4);
    const history = document.getElementById("history");
    history.prepend(entry);
    while (history.children.length > 50) history.lastChild.remove();
  }
  render();
}

slider.addEventListener("input", render);
document.getElementById("reset").addEventListener("click", () => {
  slider.value = model.threshold; render();
});
document.getElementById("files").addEventListener("change", e => send(e.target.files));
const drop = document.getElementById("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
async function entries(entry, path, out) {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push(new File([file], path + file.name, {type: file.type}));
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    let batch;
    do {
      batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      for (const child of batch) await entries(child, path + entry.name + "/", out);
    } while (batch.length);
  }
}
drop.addEventListener("drop", async e => {
  e.preventDefault(); drop.classList.remove("over");
  const items = [...e.dataTransfer.items].map(i => i.webkitGetAsEntry && i.webkitGetAsEntry());
  if (!items.length || items.some(i => !i)) { send(e.dataTransfer.files); return; }
  const files = [];
  for (const entry of items) await entries(entry, "", files);
  const images = files.filter(f => /\.(png|jpe?g|bmp|tiff?|webp)$/i.test(f.name));
  for (let i = 0; i < images.length; i += 16) await send(images.slice(i, i + 16));
});
loadModel();
</script>
</body></html>
"""

// mmfm's web page: plain JavaScript, no build step, no CDN. Every call goes to the same server's /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("mmfm-key") || "", searchImage: null, seg: null, ask: null };

function setStatus(text, error) {
  const s = $("status");
  s.textContent = text || "";
  s.className = error ? "error" : "";
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function api(path, body) {
  const t0 = performance.now();
  const r = await fetch(path, body === undefined ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  const ms = performance.now() - t0;
  if (r.status === 401) $("key-box").hidden = false;
  const data = await r.json().catch(() => ({ error: { message: "HTTP " + r.status } }));
  if (!r.ok) {
    setStatus((data.error && data.error.message) || "HTTP " + r.status, true);
    throw new Error(data.error ? data.error.message : "HTTP " + r.status);
  }
  setStatus("");
  data.roundtrip_ms = ms;
  return data;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.onerror = reject;
    fr.readAsDataURL(file);
  });
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = reject;
    im.src = src;
  });
}

function latency(el, parts) {
  el.textContent = parts.filter(Boolean).join(" · ");
}

// ---------------------------------------------------------------------------------------------- tabs
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("nav button").forEach((x) => x.classList.toggle("active", x === b));
  document.querySelectorAll("section").forEach((s) => { s.hidden = s.id !== "tab-" + b.dataset.tab; });
}));

$("api-key").addEventListener("change", (e) => {
  state.key = e.target.value;
  localStorage.setItem("mmfm-key", state.key);
  info();
});

async function info() {
  try {
    const i = await api("/v1/info");
    const have = [];
    for (const [k, v] of Object.entries(i.models)) if (v) have.push(k);
    $("search-help").textContent = i.index
      ? `Search ${i.index.files} files in ${i.index.root} by text, by an example image, or both.`
      : "No photo index on this server (start it with --index).";
    document.body.dataset.models = have.join(",");
  } catch (e) { /* shown in the status line */ }
}

// -------------------------------------------------------------------------------------------- search
async function thumb(url, img) {
  const r = await fetch(url, { headers: headers(false) });
  if (r.ok) img.src = URL.createObjectURL(await r.blob());
}

async function setSearchImage(file) {
  state.searchImage = file ? await readFile(file) : null;
  $("search-drop").textContent = file ? "example: " + file.name : "or drop an image here";
}

$("search-image").addEventListener("change", (e) => setSearchImage(e.target.files[0]));
$("search-clear-image").addEventListener("click", () => { $("search-image").value = ""; setSearchImage(null); });
const drop = $("search-drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) setSearchImage(e.dataTransfer.files[0]);
});

$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { k: Number($("search-k").value) || 20 };
  const q = $("search-text").value.trim();
  if (q) body.query = q;
  if (state.searchImage) body.image = state.searchImage;
  const res = await api("/v1/search", body);
  const box = $("search-results");
  box.replaceChildren();
  for (const hit of res.results) {
    const fig = document.createElement("figure");
    fig.dataset.rank = hit.rank;
    fig.dataset.path = hit.path;
    const img = document.createElement("img");
    img.alt = hit.name;
    thumb(hit.thumbnail, img);
    const cap = document.createElement("figcaption");
    cap.textContent = `${hit.rank}. ${hit.name} (${hit.score.toFixed(3)})`;
    fig.append(img, cap);
    box.append(fig);
  }
  latency($("search-latency"), [`${res.results.length} of ${res.files} files`, `search ${res.latency_ms.toFixed(1)} ms`,
    `round trip ${res.roundtrip_ms.toFixed(0)} ms`]);
});

// ------------------------------------------------------------------------------------------ classify
$("classify-go").addEventListener("click", async () => {
  const file = $("classify-image").files[0];
  if (!file) return setStatus("choose an image first", true);
  const labels = $("classify-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  const res = await api("/v1/classify", { image: await readFile(file), labels, top: labels.length });
  const t = $("classify-results");
  t.replaceChildren();
  res.labels.forEach((lab, i) => {
    const tr = t.insertRow();
    tr.insertCell().textContent = lab;
    tr.insertCell().textContent = (100 * res.probs[i]).toFixed(1) + "%";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = Math.round(200 * res.probs[i]) + "px";
    tr.insertCell().append(bar);
  });
  latency($("classify-latency"), [`classify ${res.latency_ms.toFixed(1)} ms`, `round trip ${res.roundtrip_ms.toFixed(0)} ms`]);
});

// ------------------------------------------------------------------------------------------- segment
function fitCanvas(canvas, im) {
  const side = 384;
  const s = side / Math.max(im.width, im.height);
  canvas.width = Math.round(im.width * s);
  canvas.height = Math.round(im.height * s);
  return s;
}

function toImage(canvas, e, seg) {  // canvas pixels -> the image's own pixels
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * seg.img.width / r.width, (e.clientY - r.top) * seg.img.height / r.height];
}

async function drawSegment() {
  const seg = state.seg;
  const c = $("segment-canvas");
  const g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(seg.img, 0, 0, c.width, c.height);
  if (seg.mask) g.drawImage(seg.mask, 0, 0, c.width, c.height);
  const s = c.width / seg.img.width;
  for (const [x, y, label] of seg.points) {
    g.beginPath();
    g.arc(x * s, y * s, 6, 0, 2 * Math.PI);
    g.fillStyle = label ? "#22c55e" : "#ef4444";
    g.fill();
    g.strokeStyle = "#fff";
    g.stroke();
  }
  if (seg.box) {
    const [x0, y0, x1, y1] = seg.box;
    g.strokeStyle = "#facc15";
    g.lineWidth = 2;
    g.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
    g.lineWidth = 1;
  }
}

$("segment-image").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const url = await readFile(file);
  const img = await loadImage(url);
  const res = await api("/v1/segment/image", { image: url });
  state.seg = { img, id: res.image_id, points: [], box: null, mask: null, embed: res };
  fitCanvas($("segment-canvas"), img);
  drawSegment();
  latency($("segment-latency"), [`embed ${res.latency_ms.toFixed(1)} ms${res.cached ? " (cached)" : ""}`,
    `round trip ${res.roundtrip_ms.toFixed(0)} ms`]);
});

async function decode() {
  const seg = state.seg;
  const body = { image_id: seg.id, points: seg.points, multimask: $("segment-multi").checked };
  if (seg.box) body.box = seg.box;
  const res = await api("/v1/segment", body);
  const best = res.masks[0];
  seg.mask = await loadImage(best.png);
  const m = $("segment-mask");
  m.src = best.png;
  m.dataset.score = best.score;
  m.dataset.area = best.area;
  drawSegment();
  latency($("segment-latency"), [`embed ${seg.embed.latency_ms.toFixed(1)} ms (once)`,
    `decode ${res.latency_ms.toFixed(1)} ms`, `round trip ${res.roundtrip_ms.toFixed(0)} ms`,
    `predicted IoU ${best.score.toFixed(3)}`, `area ${best.area} px`]);
}

const segCanvas = $("segment-canvas");
let dragFrom = null;
segCanvas.addEventListener("contextmenu", (e) => e.preventDefault());
segCanvas.addEventListener("mousedown", (e) => {
  if (!state.seg) return;
  dragFrom = toImage(segCanvas, e, state.seg);
});
segCanvas.addEventListener("mouseup", (e) => {
  if (!state.seg || !dragFrom) return;
  const [x, y] = toImage(segCanvas, e, state.seg);
  const mode = document.querySelector("input[name=segment-mode]:checked").value;
  if (mode === "box") {
    const [x0, y0] = dragFrom;
    if (Math.abs(x - x0) > 1 && Math.abs(y - y0) > 1)
      state.seg.box = [Math.min(x, x0), Math.min(y, y0), Math.max(x, x0), Math.max(y, y0)];
  } else {
    const label = e.button === 2 || e.shiftKey || mode === "0" ? 0 : 1;
    state.seg.points.push([x, y, label]);
  }
  dragFrom = null;
  decode();
});
$("segment-clear").addEventListener("click", () => {
  if (!state.seg) return;
  Object.assign(state.seg, { points: [], box: null, mask: null });
  $("segment-mask").removeAttribute("src");
  drawSegment();
});

// ----------------------------------------------------------------------------------------- ask/point
async function askImage() {
  const file = $("ask-image").files[0];
  if (!file) { setStatus("choose an image first", true); return null; }
  if (!state.ask || state.ask.file !== file) {
    const url = await readFile(file);
    state.ask = { file, url, img: await loadImage(url) };
  }
  return state.ask;
}

function drawAsk(points) {
  const a = state.ask;
  const c = $("ask-canvas");
  const s = fitCanvas(c, a.img);
  const g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(a.img, 0, 0, c.width, c.height);
  for (const [x, y] of points || []) {
    g.beginPath();
    g.arc(x * s, y * s, 7, 0, 2 * Math.PI);
    g.fillStyle = "rgba(236, 72, 153, 0.85)";
    g.fill();
    g.strokeStyle = "#fff";
    g.lineWidth = 2;
    g.stroke();
  }
  c.dataset.points = JSON.stringify(points || []);
}

$("ask-image").addEventListener("change", async () => { if (await askImage()) drawAsk([]); });
$("ask-go").addEventListener("click", async () => {
  const a = await askImage();
  if (!a) return;
  const res = await api("/v1/ask", { image: a.url, question: $("ask-question").value });
  $("ask-answer").textContent = res.answer;
  drawAsk([]);
  latency($("ask-latency"), [`answer ${res.latency_ms.toFixed(0)} ms`, `round trip ${res.roundtrip_ms.toFixed(0)} ms`]);
});
$("point-go").addEventListener("click", async () => {
  const a = await askImage();
  if (!a) return;
  const res = await api("/v1/point", { image: a.url, query: $("point-query").value });
  $("ask-answer").textContent = `${res.answer} (${res.points.length} point${res.points.length === 1 ? "" : "s"})`;
  drawAsk(res.points);
  latency($("ask-latency"), [`point ${res.latency_ms.toFixed(0)} ms`, `round trip ${res.roundtrip_ms.toFixed(0)} ms`]);
});

info();

// refusalscope playground page. Plain JS, no build step.
// Rule: every string that came from the server (model output, tokens, contexts, names)
// enters the page through textContent or an attribute, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, latents: [], controls: [], job: null, abort: null, curveJob: null, curveAbort: null,
  timer: null, selected: null };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function message(text, isError = false, where = "message") {
  $(where).textContent = text;
  $(where).className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error + (body.fix ? ` (fix: ${body.fix})` : ""));
  return body;
}

function fmt(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toPrecision(digits); }

// ------------------------------------------------------------------ latents and controls
function renderLatents() {
  const body = $("latent-list").querySelector("tbody");
  body.replaceChildren();
  $("no-latents").hidden = state.latents.length > 0;
  for (const latent of state.latents) {
    const name = `${latent.layer}/${latent.latent}`;
    body.append(el("tr", { "data-latent": name },
      el("td", { class: "name", text: name }),
      el("td", { text: fmt(latent.score) }),
      el("td", {}, el("button", { class: "latent-add", text: "steer", onclick: () => addControl(latent.layer, latent.latent, latent.peak) }),
        el("button", { class: "latent-card", text: "card", onclick: () => showCard(latent.layer, latent.latent) }))));
  }
}

function sliderRange(mode, peak) {
  if (mode === "scale") return [-5, 5, 0.1];
  const top = Math.max(40, 4 * (peak || 0));
  return [-top, top, top / 200];
}

function addControl(layer, latent, peak = null, mode = "set", value = null) {
  if (state.controls.some((c) => c.layer === layer && c.latent === latent)) { showCard(layer, latent); return; }
  const control = { layer, latent, peak, mode, value: value ?? (mode === "scale" ? 1 : 0) };
  state.controls.push(control);
  renderControls();
  showCard(layer, latent);
}

function renderControls() {
  const box = $("controls");
  box.replaceChildren();
  $("no-controls").hidden = state.controls.length > 0;
  for (const control of state.controls) {
    const name = `${control.layer}/${control.latent}`;
    const [lo, hi, step] = sliderRange(control.mode, control.peak);
    const range = el("input", { type: "range", min: lo, max: hi, step, value: control.value, "aria-label": `value of ${name}` });
    const number = el("input", { type: "number", step: "any", value: control.value, "aria-label": `value of ${name} (number)` });
    const mode = el("select", { "aria-label": `mode of ${name}` },
      ...["set", "scale", "add"].map((m) => { const o = el("option", { value: m, text: m }); o.selected = m === control.mode; return o; }));
    const update = (v) => { control.value = Number(v); range.value = v; number.value = v; changed(); };
    range.addEventListener("input", () => update(range.value));
    number.addEventListener("change", () => update(number.value));
    mode.addEventListener("change", () => { control.mode = mode.value; control.value = mode.value === "scale" ? 1 : 0; renderControls(); changed(); });
    box.append(el("div", { class: "control", "data-latent": name },
      el("span", { class: "name", text: name, onclick: () => showCard(control.layer, control.latent) }),
      mode, range, number,
      el("button", { class: "remove", text: "×", title: "remove", onclick: () => {
        state.controls = state.controls.filter((c) => c !== control); renderControls(); changed(); } })));
  }
}

function steeringForm() {
  const intOrNull = (v) => (v === "" ? null : Number.parseInt(v, 10));
  return {
    latents: state.controls.map(({ layer, latent, mode, value }) => ({ layer, latent, mode, value })),
    ablation: $("ablation").checked,
    actadd: Number($("actadd").value),
    gate: { enabled: $("gate-on").checked, kind: $("gate-kind").value, threshold: Number($("gate-threshold").value || 0),
      layer: intOrNull($("gate-layer").value), latent: intOrNull($("gate-latent").value) },
  };
}

function applyForm(form) {
  state.controls = form.latents.map((c) => {
    const known = state.latents.find((l) => l.layer === c.layer && l.latent === c.latent);
    return { ...c, peak: known ? known.peak : null };
  });
  renderControls();
  $("ablation").checked = form.ablation;
  $("actadd").value = form.actadd; $("actadd-value").textContent = form.actadd;
  $("gate-on").checked = form.gate.enabled; $("gate-kind").value = form.gate.kind;
  $("gate-threshold").value = form.gate.threshold;
  $("gate-layer").value = form.gate.layer ?? ""; $("gate-latent").value = form.gate.latent ?? "";
}

function changed() {
  if (!$("live").checked || !$("prompt").value.trim()) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(send, 350);
}

// ------------------------------------------------------------------ server-sent events over fetch
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

async function stopJob(which) {
  const job = which === "curve" ? state.curveJob : state.job;
  const abort = which === "curve" ? state.curveAbort : state.abort;
  if (job) fetch(`/api/cancel/${encodeURIComponent(job)}`, { method: "POST" }).catch(() => {});
  if (abort) abort.abort();
}

async function send() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) { message("type a prompt first", true); return; }
  if (state.abort) { await stopJob(""); }
  const abort = new AbortController();
  state.abort = abort;
  const out = { steered: $("steered"), plain: $("plain") };
  out.steered.textContent = ""; out.plain.textContent = "";
  $("steered-meta").textContent = ""; $("plain-meta").textContent = "";
  $("gate-status").textContent = $("gate-on").checked ? "…" : "off";
  $("stop").disabled = false;
  message("");
  const body = { prompt, steering: steeringForm(), max_new_tokens: Number($("max-tokens").value) || 48 };
  try {
    const response = await fetch("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: abort.signal });
    if (!response.ok) {
      const err = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      throw new Error(err.error + (err.fix ? ` (fix: ${err.fix})` : ""));
    }
    state.job = response.headers.get("X-Job");
    await readEvents(response, (name, data) => {
      if (name === "queued") message(data.ahead > 0 ? `waiting: ${data.ahead} request(s) ahead` : "starting…");
      else if (name === "started") message("generating…");
      else if (name === "gate") $("gate-status").textContent =
        `${data.fired ? "fired" : "did not fire"} (score ${fmt(data.score)} vs threshold ${fmt(data.threshold)})`;
      else if (name === "token") {
        const pane = out[data.side];
        if (data.replace) pane.textContent = data.text; else pane.append(document.createTextNode(data.text));
      } else if (name === "reply") {
        out[data.side].textContent = data.text;
        $(`${data.side}-meta`).textContent = `${data.tokens} tokens, ${data.finish_reason}` +
          (data.cached ? ", cached" : `, ${data.seconds}s`);
      } else if (name === "error") message(data.error + (data.fix ? ` (fix: ${data.fix})` : ""), true);
      else if (name === "cancelled") message("stopped");
      else if (name === "done") {
        message("");
        if ($("gate-status").textContent === "…") $("gate-status").textContent = "not applied (nothing to steer)";
      }
    });
  } catch (err) {
    if (err.name !== "AbortError") message(String(err.message || err), true);
  } finally {
    if (state.abort === abort) { state.abort = null; state.job = null; $("stop").disabled = true; }
  }
}

// ------------------------------------------------------------------ feature cards
function histogram(card) {
  const width = 420, height = 90, bins = 20;
  const all = card.max_harmful.concat(card.max_harmless);
  const top = Math.max(1e-6, ...all);
  const chart = svg("svg", { width, height: height + 16, class: "hist", role: "img", "aria-label": "activation histogram" });
  for (const [values, cls, offset] of [[card.max_harmful, "harmful", 0], [card.max_harmless, "harmless", 0.5]]) {
    const counts = new Array(bins).fill(0);
    for (const v of values) counts[Math.min(bins - 1, Math.floor((v / top) * bins))] += 1;
    const most = Math.max(1, ...counts);
    counts.forEach((n, i) => {
      const h = (n / most) * height;
      chart.append(svg("rect", { class: cls, x: (i + offset * 0.5) * (width / bins), y: height - h, width: width / bins / 2, height: h }));
    });
  }
  const label = svg("text", { x: 0, y: height + 12 });
  label.textContent = `max activation per prompt, 0 to ${fmt(top)} (red: harmful, blue: harmless)`;
  chart.append(label);
  return chart;
}

function tokenLine(tokens, values, peak) {
  const line = el("div", { class: "ctx" });
  const top = values ? Math.max(1e-6, ...values) : 1;
  tokens.forEach((token, i) => {
    const span = el("span", { class: "tok" + (i === peak ? " peak" : ""), text: token });
    if (values) {
      span.title = fmt(values[i]);
      if (values[i] > 0) span.style.backgroundColor = `rgba(246, 195, 67, ${Math.min(1, values[i] / top)})`;
    }
    line.append(span);
  });
  return line;
}

async function showCard(layer, latent) {
  state.selected = { layer, latent };
  $("card-title").textContent = `${layer}/${latent}`;
  const box = $("card");
  box.replaceChildren(el("p", { class: "muted", text: "loading…" }));
  let card;
  try { card = await api(`/api/card/${layer}/${latent}`); } catch (err) { box.replaceChildren(el("p", { text: err.message })); return; }
  const parts = [];
  const scores = Object.entries(card.scores || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
  parts.push(el("p", { text: (card.rank !== null && card.rank !== undefined ? `rank ${card.rank}. ` : "") + (scores || "no discovery scores") }));
  if (card.computed) parts.push(el("p", { class: "muted", text: "No card from `discover` for this latent: its logit effect only." }));
  if (card.max_harmful.length || card.max_harmless.length) parts.push(histogram(card));
  if (card.contexts.length) {
    parts.push(el("h3", { text: "top-activating contexts" }));
    for (const ctx of card.contexts) {
      const line = tokenLine(ctx.tokens, null, ctx.peak);
      line.prepend(el("span", { class: "muted", text: `[${ctx.corpus} ${fmt(ctx.activation)}] ` }));
      parts.push(line);
    }
  }
  const table = el("table", { class: "logit-effect" }, el("tr", {}, el("th", { text: "promotes" }), el("th", {}), el("th", { text: "suppresses" }), el("th", {})));
  card.promoted.forEach(([token, value], i) => {
    const [low, lowValue] = card.suppressed[i] || ["", 0];
    table.append(el("tr", {}, el("td", { class: "tok", text: JSON.stringify(token) }), el("td", { text: fmt(value) }),
      el("td", { class: "tok", text: JSON.stringify(low) }), el("td", { text: fmt(lowValue) })));
  });
  parts.push(el("h3", { text: "logit effect" }), table);
  const here = el("div", { id: "card-activations" });
  parts.push(el("h3", { text: "on this prompt" }),
    el("button", { id: "card-activations-run", text: "show activations", onclick: async () => {
      here.replaceChildren(el("span", { class: "muted", text: "…" }));
      try {
        const acts = await api("/api/activations", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ prompt: $("prompt").value, layer, latent }) });
        here.replaceChildren(tokenLine(acts.tokens, acts.values, -1));
      } catch (err) { here.replaceChildren(el("span", { text: err.message })); }
    } }), here);
  box.replaceChildren(...parts);
}

// ------------------------------------------------------------------ search
async function search(event) {
  event.preventDefault();
  const list = $("search-results");
  list.replaceChildren(el("li", { class: "muted", text: "searching…" }));
  try {
    const { results } = await api(`/api/search?q=${encodeURIComponent($("search").value)}`);
    list.replaceChildren();
    if (!results.length) list.append(el("li", { class: "muted", text: "no match" }));
    for (const r of results) {
      list.append(el("li", {}, el("span", { class: "name", text: `${r.layer}/${r.latent}` }),
        el("span", { class: "muted", text: (r.promotes || []).map((t) => JSON.stringify(t)).join(" ") }),
        el("button", { text: "steer", onclick: () => addControl(r.layer, r.latent) }),
        el("button", { text: "card", onclick: () => showCard(r.layer, r.latent) })));
    }
  } catch (err) { list.replaceChildren(el("li", { text: err.message })); }
}

// ------------------------------------------------------------------ refusal vs strength
function drawCurve(points) {
  const chart = $("curve");
  chart.replaceChildren();
  const w = 460, h = 220, pad = 34;
  if (!points.length) return;
  const xs = points.map((p) => p.strength);
  const lo = Math.min(...xs), hi = Math.max(...xs), span = hi - lo || 1;
  const X = (s) => pad + ((s - lo) / span) * (w - 2 * pad);
  const Y = (r) => h - pad - r * (h - 2 * pad);
  chart.append(svg("line", { class: "axis", x1: pad, y1: Y(0), x2: w - pad, y2: Y(0) }), svg("line", { class: "axis", x1: pad, y1: Y(0), x2: pad, y2: Y(1) }));
  for (const [r, label] of [[0, "0"], [0.5, "0.5"], [1, "1"]]) {
    const t = svg("text", { x: 4, y: Y(r) + 3 }); t.textContent = label; chart.append(t);
  }
  for (const p of points) {
    const t = svg("text", { x: X(p.strength) - 6, y: h - pad + 14 }); t.textContent = String(p.strength); chart.append(t);
    chart.append(svg("line", { class: "ci", x1: X(p.strength), x2: X(p.strength), y1: Y(p.low), y2: Y(p.high) }));
  }
  const path = points.map((p, i) => `${i ? "L" : "M"}${X(p.strength)},${Y(p.rate)}`).join(" ");
  chart.append(svg("path", { class: "line", d: path }));
  const label = svg("text", { x: w / 2 - 30, y: h - 4 }); label.textContent = "strength"; chart.append(label);
}

async function runCurve() {
  const prompts = $("curve-prompts").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const strengths = $("curve-strengths").value.split(",").map((s) => Number(s.trim())).filter((x) => Number.isFinite(x));
  const abort = new AbortController();
  state.curveAbort = abort;
  const points = [];
  const rows = $("curve-table").querySelector("tbody");
  rows.replaceChildren(); drawCurve(points);
  $("curve-run").disabled = true; $("curve-stop").disabled = false;
  const bar = $("curve-progress"); bar.value = 0;
  try {
    const response = await fetch("/api/curve", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompts, strengths, steering: steeringForm() }), signal: abort.signal });
    if (!response.ok) { const err = await response.json(); throw new Error(err.error + (err.fix ? ` (fix: ${err.fix})` : "")); }
    state.curveJob = response.headers.get("X-Job");
    await readEvents(response, (name, data) => {
      if (name === "progress") { bar.max = data.total; bar.value = data.done; }
      else if (name === "queued" && data.ahead > 0) message(`curve waiting: ${data.ahead} request(s) ahead`);
      else if (name === "point") {
        points.push(data); drawCurve(points);
        rows.append(el("tr", {}, el("td", { text: String(data.strength) }), el("td", { text: fmt(data.rate, 2) }),
          el("td", { text: `[${fmt(data.low, 2)}, ${fmt(data.high, 2)}]` }), el("td", { text: String(data.n) })));
      } else if (name === "error") message(data.error + (data.fix ? ` (fix: ${data.fix})` : ""), true);
    });
  } catch (err) {
    if (err.name !== "AbortError") message(String(err.message || err), true);
  } finally {
    state.curveAbort = null; state.curveJob = null;
    $("curve-run").disabled = false; $("curve-stop").disabled = true;
  }
}

// ------------------------------------------------------------------ specs
async function refreshSpecs(select = null) {
  const { folder, specs } = await api("/api/specs");
  $("spec-folder").textContent = folder;
  const list = $("spec-select");
  list.replaceChildren(...specs.map((name) => el("option", { value: name, text: name })));
  if (select) list.value = select;
}

async function saveSpec() {
  try {
    const saved = await api("/api/specs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: $("spec-name").value, steering: steeringForm(), overwrite: $("spec-overwrite").checked }) });
    message(`saved ${saved.name} (${saved.id})`, false, "spec-message");
    await refreshSpecs(saved.name);
  } catch (err) { message(err.message, true, "spec-message"); }
}

async function loadSpec() {
  const name = $("spec-select").value;
  if (!name) return;
  try {
    const spec = await api(`/api/specs/${encodeURIComponent(name)}`);
    applyForm(spec.steering);
    message(`loaded ${spec.name} (${spec.id})`, false, "spec-message");
    changed();
  } catch (err) { message(err.message, true, "spec-message"); }
}

// ------------------------------------------------------------------ start
async function start() {
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", () => stopJob(""));
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
  $("search-form").addEventListener("submit", search);
  $("ablation").addEventListener("change", changed);
  $("actadd").addEventListener("input", () => { $("actadd-value").textContent = $("actadd").value; changed(); });
  for (const id of ["gate-on", "gate-kind", "gate-threshold", "gate-layer", "gate-latent"]) $(id).addEventListener("change", changed);
  $("curve-run").addEventListener("click", runCurve);
  $("curve-stop").addEventListener("click", () => stopJob("curve"));
  $("spec-save").addEventListener("click", saveSpec);
  $("spec-load").addEventListener("click", loadSpec);
  try {
    state.info = await api("/api/info");
    const i = state.info;
    $("model-info").textContent = `${i.model.name} · ${i.model.layers} layers · SAEs at ${i.saes.map((s) => s.layer).join(", ") || "none"}` +
      (i.direction ? ` · refusal direction at layer ${i.direction.layer}` : " · no refusal direction");
    $("dense").hidden = !i.direction;
    state.latents = (await api("/api/latents")).latents;
    renderLatents(); renderControls();
    await refreshSpecs();
    document.body.dataset.ready = "1";
  } catch (err) { message(err.message, true); }
}

document.addEventListener("DOMContentLoaded", start);

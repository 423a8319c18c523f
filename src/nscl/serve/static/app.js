// nscl serve: the page. Plain JS, no build step; it uses only the JSON API of nscl/serve/app.py.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PER_PAGE = 12;
const SELECTED = 0.5; // a set's object counts as selected from this probability
const COLORS = {
  red: "#e5484d", blue: "#3b82f6", green: "#22c55e", yellow: "#eab308", purple: "#a855f7",
  cyan: "#06b6d4", brown: "#92400e", gray: "#9ca3af", grey: "#9ca3af",
};

const state = {
  info: null,
  page: 0,
  pages: 1,
  image: null, // {kind: "dataset"|"upload", index?, id?, url, width, height, boxes: [[x0,y0,x1,y1]], objects?, questions?}
  result: null, // AskResult JSON
  step: -1,
  busy: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status}`);
  }
  return body;
}

// ------------------------------------------------------------------------------------------ messages
function showMessage(kind, title, text) {
  const box = $("message");
  box.className = `message ${kind}`;
  box.replaceChildren(el("strong", {}, title), el("span", { class: "message-text" }, text));
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
}

// ------------------------------------------------------------------------------------------ drawing
// objects: [{index, box, p, role: "set"|"second"|"input"|"plain", selected}]
function drawScene(image, objects, big) {
  const { width: W, height: H } = image;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "image with object boxes" });
  root.append(svg("image", { href: image.url, x: 0, y: 0, width: W, height: H, preserveAspectRatio: "none" }));
  const font = Math.max(5, H / 22);
  const order = [...objects].sort((a, b) => (a.selected - b.selected) || (a.p - b.p));
  for (const o of order) {
    const [x0, y0, x1, y1] = o.box;
    const r = svg("rect", {
      x: x0, y: y0, width: Math.max(1, x1 - x0), height: Math.max(1, y1 - y0), rx: 1.5,
      class: `box ${o.role}${o.selected ? " selected" : ""}`,
      "data-index": o.index,
      "data-p": o.p.toFixed(3),
      "vector-effect": "non-scaling-stroke",
      "stroke-width": o.selected ? (big ? 3 : 2) : 1.2,
      "stroke-opacity": o.role === "plain" ? 0.55 : (0.25 + 0.75 * o.p).toFixed(3),
      "fill-opacity": o.role === "input" || o.role === "plain" ? 0 : (0.28 * o.p).toFixed(3),
    });
    root.append(r);
    if (big && o.role !== "plain" && (o.selected || o.p >= 0.15)) {
      const label = `#${o.index} ${o.p.toFixed(2)}`;
      const w = label.length * font * 0.62 + font * 0.6;
      const ty = y0 - font * 1.25 >= 0 ? y0 - font * 1.25 : y1;
      const tag = svg("g", { class: `tag ${o.role}${o.selected ? " selected" : ""}` });
      tag.append(svg("rect", { x: x0, y: ty, width: w, height: font * 1.25, rx: 1.5 }));
      const t = svg("text", { x: x0 + font * 0.3, y: ty + font * 0.95, "font-size": font });
      t.textContent = label;
      tag.append(t);
      root.append(tag);
    } else if (big && o.role === "plain") {
      const t = svg("text", { x: x0 + 1.5, y: y0 + font, "font-size": font * 0.9, class: "tag" });
      t.textContent = `#${o.index}`;
      const g = svg("g", { class: "tag" });
      g.append(t);
      root.append(g);
    }
  }
  return root;
}

function plainObjects(image) {
  return image.boxes.map((box, index) => ({ index, box, p: 1, role: "plain", selected: false }));
}

function fromSet(objs, role) {
  return objs.map((o) => ({ index: o.index, box: o.box, p: o.prob, role, selected: o.prob >= SELECTED }));
}

function argmax(objs) {
  return objs.reduce((best, o) => (o.prob > best.prob ? o : best), objs[0]);
}

// What a step shows: its own set (filter, relate, intersect, ...), else the sets it reads (count, exist,
// comparisons: the second in another colour); and the distribution of each object input (query, relate, same),
// its argmax emphasised. Returns [{index, box, p, role, selected}].
function stepObjects(steps, step) {
  let shown = [];
  if (step.objects) {
    shown = fromSet(step.objects, "set");
  } else if (step.input_objects.length === 0) {
    step.inputs.forEach((j, k) => {
      const src = steps[j];
      if (src && src.objects) shown = shown.concat(fromSet(src.objects, k === 0 ? "set" : "second"));
    });
  }
  for (const dist of step.input_objects) {
    const chosen = argmax(dist);
    if (step.objects) {
      // a relation's anchor object, drawn over the set it leads to
      shown = shown.filter((o) => o.index !== chosen.index);
      shown.push({ index: chosen.index, box: chosen.box, p: chosen.prob, role: "input", selected: true });
    } else {
      shown = shown.concat(
        dist.map((o) => ({ index: o.index, box: o.box, p: o.prob, role: "input", selected: o === chosen })),
      );
    }
  }
  return shown;
}

function describeStep(step) {
  const args = [];
  if (step.attribute) args.push(step.attribute);
  if (step.concepts.length) args.push(step.concepts.join(", "));
  for (const j of step.inputs) args.push(`[${j}]`);
  return `${step.op}(${args.join(", ")})`;
}

function stepOutput(step) {
  if (step.value !== null) {
    const out = el("div", { class: "out" }, "→ ", el("b", {}, step.value));
    if (step.distribution) {
      const top = Object.entries(step.distribution).sort((a, b) => b[1] - a[1]).slice(0, 3);
      const dist = el("div", { class: "dist" });
      for (const [name, p] of top) {
        const fill = el("i");
        fill.style.width = `${(100 * p).toFixed(1)}%`;
        dist.append(el("span", {}, name), el("div", { class: "bar" }, fill), el("span", {}, p.toFixed(2)));
      }
      out.append(dist);
    }
    return out;
  }
  const parts = [];
  if (step.input_objects.length) {
    const chosen = step.input_objects.map((d) => argmax(d));
    parts.push(`input ${chosen.map((o) => `#${o.index} (${o.prob.toFixed(2)})`).join(", ")}; `);
  }
  const sel = (step.objects || []).filter((o) => o.prob >= SELECTED).map((o) => `#${o.index}`);
  parts.push(sel.length ? `selects ${sel.join(", ")}` : "selects no object");
  return el("div", { class: "out" }, parts.join(""));
}

function stepCaption(step) {
  if (step.value !== null) return `output: ${step.value}`;
  const n = (step.objects || []).filter((o) => o.prob >= SELECTED).length;
  return `${n} object${n === 1 ? "" : "s"} selected`;
}

// ------------------------------------------------------------------------------------------ views
function renderStage() {
  const stage = $("stage");
  const img = state.image;
  if (!img) {
    stage.replaceChildren();
    return;
  }
  const r = state.result;
  if (r && state.step >= 0) {
    const step = r.steps[state.step];
    stage.replaceChildren(drawScene(img, stepObjects(r.steps, step), true));
    $("stage-title").textContent = `step ${step.node}: ${describeStep(step)}`;
    $("stage-caption").textContent = stepCaption(step);
  } else {
    stage.replaceChildren(drawScene(img, plainObjects(img), true));
    $("stage-title").textContent = img.kind === "dataset" ? `image ${img.index}` : "your image";
    $("stage-caption").textContent = `${img.boxes.length} objects`;
  }
}

function renderSteps() {
  const list = $("steps");
  const r = state.result;
  if (!r) {
    list.replaceChildren(el("li", { class: "empty" }, "Ask a question to see its program."));
    $("program-text").textContent = "";
    return;
  }
  $("program-text").textContent = r.program;
  list.replaceChildren(
    ...r.steps.map((step, i) =>
      el(
        "li",
        {
          class: `step${i === state.step ? " active" : ""}`,
          "data-step": i,
          tabindex: 0,
          onclick: () => selectStep(i),
          onkeydown: (e) => (e.key === "Enter" || e.key === " ") && selectStep(i),
        },
        drawScene(state.image, stepObjects(r.steps, step), false),
        el("div", {}, el("div", { class: "op" }, el("span", { class: "n" }, String(i)), describeStep(step)), stepOutput(step)),
      ),
    ),
  );
}

function selectStep(i) {
  state.step = i;
  document.querySelectorAll("#steps .step").forEach((li) => li.classList.toggle("active", Number(li.dataset.step) === i));
  renderStage();
}

function renderAnswer(payload) {
  const box = $("answer");
  const r = payload && payload.result;
  if (!r) {
    box.hidden = true;
    return;
  }
  const fill = el("i");
  fill.style.width = `${(100 * r.confidence).toFixed(1)}%`;
  const notes = el("div", { class: "notes" });
  const add = (...parts) => notes.append(el("div", {}, ...parts));
  if (payload.expected !== null) {
    const ok = payload.expected === r.answer;
    add("Ground truth: ", el("b", {}, payload.expected), " ", el("span", { class: ok ? "ok" : "wrong" }, ok ? "✓ correct" : "✗ differs"));
  }
  add(`Parse confidence ${r.parse_confidence.toFixed(2)}`, r.parse_confidence < 0.5 ? el("span", { class: "warn" }, " (unsure: the phrasing may be new to the parser)") : null);
  if (r.corrections.length) add("Read ", r.corrections.map((c) => `“${c.typed}” as “${c.read_as}”`).join(", "));
  if (r.ignored.length) add("Unknown words read as <unk>: ", r.ignored.join(", "));
  if (r.parse_note) add(`Beam candidate ${r.parse_rank}: ${r.parse_note}`);
  else if (r.parse_rank > 0) add(`Beam candidate ${r.parse_rank}: the greedy parse's references were ambiguous on this image`);
  else if (r.parse_rank < 0) add(el("span", { class: "warn" }, "Every candidate parse refers ambiguously to this image's objects"));
  add(`Answered in ${(1000 * payload.seconds).toFixed(0)} ms`);
  box.replaceChildren(
    el("div", { class: "label" }, "Answer"),
    el("div", { class: "label" }, "Confidence"),
    el("div", { class: "value", id: "answer-value" }, r.answer),
    el("div", { class: "conf" }, el("div", { class: "bar" }, fill), `${(100 * r.confidence).toFixed(1)}%`),
    notes,
  );
  box.hidden = false;
}

function renderTruth() {
  const box = $("truth");
  const img = state.image;
  if (!img) {
    box.replaceChildren(el("p", { class: "none" }, "Pick an image."));
    return;
  }
  if (!img.objects || !img.objects.length || !Object.keys(img.objects[0].attributes).length) {
    box.replaceChildren(el("p", { class: "none" }, `No ground truth for this image; ${img.boxes.length} objects found by the detector.`));
    return;
  }
  const names = Object.keys(img.objects[0].attributes);
  const head = el("tr", {}, el("th", {}, "#"), ...names.map((n) => el("th", {}, n)));
  const rows = img.objects.map((o) => {
    const cells = names.map((n) => {
      const v = o.attributes[n] || "";
      if (n === "color" && COLORS[v]) {
        const sw = el("span", { class: "swatch" });
        sw.style.background = COLORS[v];
        return el("td", {}, sw, v);
      }
      return el("td", {}, v);
    });
    return el(
      "tr",
      { onmouseenter: () => hoverObject(o.index, true), onmouseleave: () => hoverObject(o.index, false) },
      el("td", {}, `#${o.index}`),
      ...cells,
    );
  });
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function hoverObject(index, on) {
  document.querySelectorAll(`#stage rect.box[data-index="${index}"]`).forEach((r) => r.classList.toggle("hover", on));
}

function renderExamples() {
  const img = state.image;
  const questions = img && img.questions && img.questions.length ? img.questions.map((q) => q.question) : (state.info ? state.info.examples : []);
  $("examples").replaceChildren(
    ...questions.slice(0, 4).map((q) =>
      el("button", { type: "button", class: "chip", title: q, onclick: () => { $("question").value = q; ask(); } }, q),
    ),
  );
}

// ------------------------------------------------------------------------------------------ gallery
async function loadPage(page) {
  if (!state.info || state.info.images === 0) {
    $("gallery").replaceChildren(el("p", { class: "hint" }, "No dataset images (start with --data-dir SPLIT)."));
    $("page-label").textContent = "";
    return;
  }
  const data = await api(`/api/images?page=${page}&per_page=${PER_PAGE}`);
  state.page = data.page;
  state.pages = data.pages;
  $("gallery").replaceChildren(
    ...data.items.map((it) =>
      el(
        "button",
        {
          type: "button",
          class: `thumb${state.image && state.image.kind === "dataset" && state.image.index === it.index ? " active" : ""}`,
          "data-index": it.index,
          title: it.filename,
          onclick: () => pickImage(it.index),
        },
        el("img", { src: it.url, alt: `image ${it.index}`, loading: "lazy" }),
        el("span", {}, String(it.index)),
      ),
    ),
  );
  $("page-label").textContent = `${data.page + 1} / ${data.pages}`;
  $("prev").disabled = data.page === 0;
  $("next").disabled = data.page >= data.pages - 1;
}

function setImage(image) {
  state.image = image;
  state.result = null;
  state.step = -1;
  clearMessage();
  renderAnswer(null);
  renderSteps();
  renderStage();
  renderTruth();
  renderExamples();
  document.querySelectorAll(".thumb").forEach((t) =>
    t.classList.toggle("active", image.kind === "dataset" && Number(t.dataset.index) === image.index),
  );
}

async function pickImage(index) {
  try {
    const d = await api(`/api/images/${index}`);
    setImage({ kind: "dataset", index, url: d.url, width: d.width, height: d.height, boxes: d.objects.map((o) => o.box), objects: d.objects, questions: d.questions });
  } catch (e) {
    showMessage("error", "Cannot open this image", e.message);
  }
}

// ------------------------------------------------------------------------------------------ upload
async function upload(file) {
  const limit = state.info.limits.upload_bytes;
  if (file.size > limit) {
    showMessage("error", "Upload refused", `${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ${(limit / 2 ** 20).toFixed(0)} MB`);
    return;
  }
  try {
    const d = await api("/api/uploads", { method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file });
    setImage({ kind: "upload", id: d.id, url: d.url, width: d.width, height: d.height, boxes: d.objects.map((o) => o.box), objects: null, questions: null });
  } catch (e) {
    showMessage("error", "Upload refused", e.message);
  }
}

// ------------------------------------------------------------------------------------------ asking
async function ask() {
  const question = $("question").value.trim();
  if (!question) return;
  if (!state.image) {
    showMessage("error", "No image", "Pick an image first.");
    return;
  }
  if (state.busy) return;
  state.busy = true;
  $("ask").disabled = true;
  $("ask").textContent = "…";
  clearMessage();
  const body = state.image.kind === "dataset" ? { question, image: state.image.index } : { question, upload: state.image.id };
  try {
    const payload = await api("/api/ask", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (payload.refusal) {
      state.result = null;
      state.step = -1;
      showMessage("refusal", "The parser cannot read this question", payload.refusal);
    } else {
      state.result = payload.result;
      state.step = payload.result.steps.length - 1;
    }
    renderAnswer(payload);
    renderSteps();
    renderStage();
  } catch (e) {
    showMessage("error", "Cannot answer", e.message);
  } finally {
    state.busy = false;
    $("ask").disabled = false;
    $("ask").textContent = "Ask";
  }
}

// ------------------------------------------------------------------------------------------ start
async function start() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    showMessage("error", "The server does not answer", e.message);
    return;
  }
  const info = state.info;
  $("meta").replaceChildren(
    el("span", {}, "checkpoint ", el("b", {}, info.checkpoint)),
    el("span", {}, el("b", {}, String(info.images)), " images"),
    el("span", {}, "detector ", el("b", {}, info.detector || "none")),
  );
  const input = $("upload");
  if (info.uploads) {
    $("upload-hint").textContent = `PNG or JPEG up to ${(info.limits.upload_bytes / 2 ** 20).toFixed(0)} MB; the detector finds its objects.`;
  } else {
    input.disabled = true;
    $("upload-label").classList.add("disabled");
    $("upload-hint").textContent = "Uploads need a detector to find their objects (start nscl serve with --detector DET); meanwhile, pick one of the dataset's images.";
  }
  input.addEventListener("change", () => {
    if (input.files.length) upload(input.files[0]);
    input.value = "";
  });
  $("ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    ask();
  });
  $("prev").addEventListener("click", () => loadPage(state.page - 1));
  $("next").addEventListener("click", () => loadPage(state.page + 1));
  renderTruth();
  renderExamples();
  await loadPage(0);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);

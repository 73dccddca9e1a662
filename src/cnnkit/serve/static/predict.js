// Predict & explain: an image and a model -> top classes as bars, Grad-CAM; then other explanations.
"use strict";

const $ = (id) => document.getElementById(id);
let file = null;

function bars(top) {
  const W = Math.max($("top").clientWidth || 320, 240), rowH = 26, L = 110;
  const svg = ck.svg("svg", { width: W, height: top.length * rowH + 4, id: "top-bars" });
  top.forEach((t, i) => {
    const w = (W - L - 60) * t.probability;
    svg.append(ck.svg("text", { x: L - 6, y: i * rowH + 17, "text-anchor": "end" }, `${t.name} (${t.class})`));
    svg.append(ck.svg("rect", { x: L, y: i * rowH + 5, width: Math.max(w, 1), height: rowH - 9,
                                fill: i ? "#9fb8ea" : "#2f6fdf", "data-class": t.name }));
    svg.append(ck.svg("text", { x: L + w + 5, y: i * rowH + 17 }, `${(100 * t.probability).toFixed(1)}%`));
  });
  $("top").replaceChildren(svg);
}

function form() {
  const f = new FormData();
  f.append("model", $("model").value);
  if (file) f.append("file", file, file.name || "image.png");
  return f;
}

function setFile(f) {
  file = f;
  const url = URL.createObjectURL(f);
  $("preview").replaceChildren(ck.el("img", { class: "result", src: url, alt: "your image", id: "preview-img" }));
}

async function predictNow(ev) {
  if (ev) ev.preventDefault();
  $("pr-error").replaceChildren();
  if (!file) { ck.showError($("pr-error"), "choose or drop an image first"); return; }
  $("pr-go").disabled = true;
  try {
    const r = await ck.api("/api/predict", form());
    bars(r.top);
    $("pr-note").textContent = `${r.model} (${r.kind}), input ${r.input_size.join("x")}; Grad-CAM at layer ${r.layer}`;
    $("cam").replaceChildren(ck.el("img", { class: "result", id: "cam-img", alt: "Grad-CAM", src: `data:image/png;base64,${r.gradcam_png}` }));
    $("ex-go").disabled = false;
    fillLayers(r.layers);
    document.body.dataset.predicted = r.top[0].name;
  } catch (e) {
    ck.showError($("pr-error"), e.message);
    document.body.dataset.predicted = "error";
  } finally {
    $("pr-go").disabled = false;
  }
}

function fillLayers(layers) {
  const keep = $("layer").value;
  $("layer").replaceChildren(ck.el("option", { value: "", text: "default" }), ...layers.map((n) => ck.el("option", { value: n, text: n })));
  $("layer").value = layers.includes(keep) ? keep : "";
}

async function explainNow(ev) {
  ev.preventDefault();
  const f = form();
  f.append("method", $("method").value);
  f.append("layer", $("layer").value);
  $("ex-go").disabled = true;
  try {
    const r = await ck.api("/api/explain", f);
    fillLayers(r.layers);
    $("ex-title").textContent = `${$("method").selectedOptions[0].text}${r.layer ? " of " + r.layer : ""}`;
    $("ex-out").replaceChildren(ck.el("img", { class: "result", id: "ex-img", alt: r.method, src: `data:image/png;base64,${r.png}` }));
  } catch (e) {
    ck.showError($("ex-out"), e.message);
  } finally {
    $("ex-go").disabled = false;
    document.body.dataset.explained = String(+(document.body.dataset.explained || 0) + 1);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("pr-form").addEventListener("submit", predictNow);
  $("ex-form").addEventListener("submit", explainNow);
  $("file").addEventListener("change", () => { if ($("file").files[0]) setFile($("file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) { setFile(e.dataTransfer.files[0]); predictNow(); }
  });
  try {
    const [runs, zoo] = await Promise.all([ck.api("/api/runs"), ck.api("/api/zoo")]);
    const withModel = runs.runs.filter((r) => r.has_model && r.task === "classify");  // other tasks: `cnnkit TASK predict`
    const groups = [];
    if (withModel.length) groups.push(ck.el("optgroup", { label: "runs" }, ...withModel.map((r) => ck.el("option", { value: r.name, text: r.name }))));
    const images = zoo.models.filter((m) => m.input_size.length === 3);  // image classifiers: (C, H, W)
    groups.push(ck.el("optgroup", { label: "zoo (random weights)" }, ...images.map((m) => ck.el("option", { value: m.name, text: m.name }))));
    $("model").replaceChildren(...groups);
  } catch (e) {
    ck.showError($("pr-error"), e.message);
  }
  document.body.dataset.ready = "predict";
});

// Analyse: cnnkit summary, the memory timeline of a training step, and cnnkit memory, drawn.
"use strict";

const $ = (id) => document.getElementById(id);
const CATS = ["parameters", "buffers", "input", "optimizer state", "gradients", "activations",
              "outputs in flight", "running op: outputs + workspace"];
const CAT_COLORS = ["#7f8c8d", "#b0b7c3", "#16a2b8", "#9b59b6", "#f39c12", "#2f6fdf", "#21a67a", "#e0452b"];
const PHASE_FILL = { forward: "#eef3ff", loss: "#fff4e0", backward: "#fdeeee", optimizer: "#eaf7f1" };

function body() {
  const spec = $("source").value === "spec";
  return { target: spec ? $("spec").value : $("zoo").value, input: $("input").value.trim() || null,
           batch: ck.num($("batch")), dtype: $("dtype").value, optimizer: $("optimizer").value };
}

function stat(key, label, value) {
  return ck.el("div", { class: "stat", "data-key": key }, ck.el("div", { class: "k", text: label }),
               ck.el("div", { class: "v", text: value }));
}

function renderSummary(s) {
  const t = s.totals, m = s.memory, tb = s.textbook;
  $("an-title").textContent = `${s.model} · input ${s.input_size.join("x")} · batch ${s.batch_size} · ${s.dtype} · optimizer ${s.optimizer}`;
  $("stats").replaceChildren(
    stat("params", "parameters", ck.int(t.params)), stat("trainable_params", "trainable", ck.int(t.trainable_params)),
    stat("macs", "MACs (forward, batch)", ck.int(t.macs)), stat("other_ops", "other ops", ck.int(t.other_ops)),
    stat("param_bytes", "parameter bytes", ck.int(t.param_bytes)),
    stat("inference_peak_bytes", "inference peak (bytes)", ck.int(m.inference_peak_bytes)),
    stat("training_peak_bytes", "training peak (bytes)", ck.int(m.training_peak_bytes)),
    stat("saved_activation_bytes", "saved for backward (bytes)", ck.int(m.saved_activation_bytes)));
  const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}x` : "-");
  const vs = ck.el("table", { id: "versus-table" },
    ck.el("tr", {}, ck.el("th", { text: "" }), ck.el("th", { text: "real peak" }), ck.el("th", { text: "textbook" }),
          ck.el("th", { text: "real / textbook" })),
    ...["inference", "training"].map((k) => ck.el("tr", { "data-kind": k }, ck.el("td", { text: k }),
      ck.el("td", { class: "real", text: ck.int(m[`${k}_peak_bytes`]) }), ck.el("td", { class: "book", text: ck.int(tb[`${k}_bytes`]) }),
      ck.el("td", { text: ratio(m[`${k}_peak_bytes`], tb[`${k}_bytes`]) }))));
  const bd = m.training_breakdown || m.inference_breakdown || {};
  const parts = ck.el("table", {}, ck.el("tr", {}, ck.el("th", { text: `live at the ${m.training_breakdown ? "training" : "inference"} peak` }),
                                             ck.el("th", { text: "bytes" })),
    ...Object.entries(bd).sort((a, b) => b[1] - a[1]).map(([k, v]) => ck.el("tr", {}, ck.el("td", { text: k }),
      ck.el("td", { text: `${ck.int(v)} (${ck.bytes(v)})` }))));
  $("versus").replaceChildren(vs, ck.el("p", {}), parts,
    ck.el("p", { class: "muted", text: "The textbook's hand method:" }),
    ...tb.arithmetic.map((line) => ck.el("div", { class: "formula", text: line })));
  const head = ["layer", "type", "output shape", "params", "MACs", "other ops", "saved (bytes)"];
  $("layers").replaceChildren(ck.el("tr", {}, ...head.map((h, i) => ck.el("th", { class: i < 2 ? "l" : "", text: h }))),
    ...s.layers.map((r) => ck.el("tr", { "data-name": r.name }, ck.el("td", { text: r.name }), ck.el("td", { class: "l", text: r.type }),
      ck.el("td", { text: r.output_shape.join("x") || "-" }), ck.el("td", { class: "params", text: ck.int(r.params) }),
      ck.el("td", { class: "macs", text: ck.int(r.macs) }), ck.el("td", { text: ck.int(r.other_ops) }),
      ck.el("td", { class: "saved", text: ck.int(r.saved_bytes) }))));
  const names = s.layers.map((r) => `${r.name} (${r.type})`);
  ck.barChart($("bar-params"), { labels: names, values: s.layers.map((r) => r.params), color: ck.COLORS[0] });
  ck.barChart($("bar-macs"), { labels: names, values: s.layers.map((r) => r.macs), color: ck.COLORS[2] });
  ck.barChart($("bar-saved"), { labels: names, values: s.layers.map((r) => r.saved_bytes || 0), color: ck.COLORS[1],
                                format: (v) => `${ck.int(v)} B (${ck.bytes(v)})` });
  $("notes").replaceChildren(...s.notes.map((n) => ck.el("p", { text: n })));
}

function renderTimeline(tl) {
  const box = $("timeline");
  box.replaceChildren();
  box.classList.add("chart");
  const pts = tl.points, n = tl.ops;
  $("tl-note").textContent = `${ck.int(n)} ops through forward, loss, backward and the optimizer step; ` +
    `${pts.length < n ? `${ck.int(pts.length)} drawn (each stretch's highest and lowest op, the peak always)` : "every op drawn"}.`;
  const W = Math.max(box.clientWidth || 700, 280), H = 260, L = 68, R = 10, T = 14, B = 24;
  const max = tl.peak.bytes * 1.06 || 1;
  const sx = (i) => L + (W - L - R) * i / Math.max(n - 1, 1), sy = (v) => T + (H - T - B) * (1 - v / max);
  const svg = ck.svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", id: "timeline-svg" });
  const phases = tl.phases.concat([{ phase: null, first_op: n }]);
  for (let k = 0; k + 1 < phases.length; k++) {
    const a = sx(phases[k].first_op), b = sx(Math.max(phases[k + 1].first_op - 1, phases[k].first_op));
    svg.append(ck.svg("rect", { x: a, y: T, width: Math.max(b - a, 1), height: H - T - B, fill: PHASE_FILL[phases[k].phase] || "#f4f4f4" }));
    svg.append(ck.svg("text", { x: a + 3, y: T + 10, fill: "#5d6677" }, phases[k].phase));
  }
  const cats = CATS.filter((c) => pts.some((p) => p.by_category[c]))
    .concat([...new Set(pts.flatMap((p) => Object.keys(p.by_category)))].filter((c) => !CATS.includes(c)));
  const base = pts.map(() => 0);
  cats.forEach((c) => {
    const top = pts.map((p, i) => base[i] + (p.by_category[c] || 0));
    const up = pts.map((p, i) => `${sx(p.index).toFixed(1)},${sy(top[i]).toFixed(1)}`);
    const down = pts.map((p, i) => `${sx(p.index).toFixed(1)},${sy(base[i]).toFixed(1)}`).reverse();
    const color = CAT_COLORS[CATS.indexOf(c)] || "#999";
    svg.append(ck.svg("polygon", { points: up.concat(down).join(" "), fill: color, "fill-opacity": 0.8, stroke: "none", "data-cat": c }));
    top.forEach((v, i) => { base[i] = v; });
  });
  svg.append(ck.svg("polyline", { points: pts.map((p) => `${sx(p.index).toFixed(1)},${sy(p.total).toFixed(1)}`).join(" "),
                                  fill: "none", stroke: "#1d2330", "stroke-width": 1, id: "timeline-total" }));
  for (const t of [0, 0.25, 0.5, 0.75, 1].map((f) => f * max / 1.06)) {
    svg.append(ck.svg("text", { x: L - 4, y: sy(t) + 4, "text-anchor": "end" }, ck.bytes(t)));
  }
  svg.append(ck.svg("text", { x: (L + W) / 2, y: H - 5, "text-anchor": "middle" }, "op (in execution order)"));
  const pk = tl.peak, px = sx(Math.max(pk.index, 0));
  svg.append(ck.svg("line", { x1: px, x2: px, y1: T - 2, y2: H - B, stroke: "#e0452b", "stroke-width": 1.5, id: "peak-line" }));
  svg.append(ck.svg("text", { x: Math.min(px + 4, W - 150), y: T - 3, fill: "#e0452b" }, `peak ${ck.bytes(pk.bytes)}`));
  const cursor = ck.svg("line", { y1: T, y2: H - B, stroke: "#1d2330", "stroke-dasharray": "3 3", visibility: "hidden" });
  svg.append(cursor);
  box.append(svg);
  box.append(ck.el("div", { class: "legend" }, ...cats.map((c) => ck.el("span", { style: `--c:${CAT_COLORS[CATS.indexOf(c)] || "#999"}`, text: c }))));
  const tip = (() => { const t = ck.el("div", { class: "tip" }); box.append(t); return t; })();
  const xs = pts.map((p) => sx(p.index)), boxW = box.clientWidth;
  let last = -1, tipW = 0;
  svg.addEventListener("mousemove", (ev) => {
    const r = svg.getBoundingClientRect(), x = (ev.clientX - r.left) * W / r.width;
    let lo = 0, hi = xs.length - 1;              // binary search: smooth for any number of points
    while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
    if (lo > 0 && x - xs[lo - 1] < xs[lo] - x) lo -= 1;
    if (lo !== last) {
      last = lo;
      const p = pts[lo];
      cursor.setAttribute("x1", xs[lo]); cursor.setAttribute("x2", xs[lo]);
      const rows = Object.entries(p.by_category).filter((e) => e[1]).sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${ck.esc(k)}: ${ck.bytes(v)}`).join("<br>");
      tip.innerHTML = `<b>op ${p.index}: ${ck.esc(p.op)}</b> (${p.phase}${p.layer ? ", " + ck.esc(p.layer) : ""})<br>` +
        `live ${ck.bytes(p.total)}${p.index === pk.index ? " — the peak" : ""}<br>${rows}`;
      tip.style.display = "block";
      tipW = tip.offsetWidth;  // measured once per op shown, not on every move
    }
    cursor.setAttribute("visibility", "visible");
    tip.style.left = `${Math.max(0, Math.min(ev.clientX - r.left + 12, boxW - tipW))}px`;
    tip.style.top = `${ev.clientY - r.top + 12}px`;
  });
  svg.addEventListener("mouseleave", () => { tip.style.display = "none"; last = -1; cursor.setAttribute("visibility", "hidden"); });
  const where = pk.op ? `during ${pk.phase} op ${pk.op}${pk.layer ? " in " + pk.layer : ""} (op ${pk.index})` : "before the step";
  $("peak").replaceChildren(ck.el("p", { id: "peak-text", text: `Peak ${ck.int(pk.bytes)} B (${ck.bytes(pk.bytes)}) ${where}; live then:` }),
    ck.el("table", {}, ...Object.entries(pk.breakdown).sort((a, b) => b[1] - a[1]).map(([k, v]) =>
      ck.el("tr", {}, ck.el("td", { text: k }), ck.el("td", { text: `${ck.int(v)} (${ck.bytes(v)})` })))));
}

function renderFit(r) {
  const rows = ["training", "inference"].filter((k) => r[k]).map((k) => {
    const x = r[k];
    return ck.el("tr", { "data-kind": k }, ck.el("td", { text: k }), ck.el("td", { class: "max-batch", text: ck.int(x.max_batch) }),
      ck.el("td", { text: x.peak_bytes !== undefined ? `${ck.bytes(x.peak_bytes)} ${x.fits ? "fits" : "does NOT fit"}` : "-" }));
  });
  const out = [ck.el("table", {}, ck.el("tr", {}, ck.el("th", { text: "" }), ck.el("th", { text: "largest batch" }),
    ck.el("th", { text: `at batch ${r.batch_size}` })), ...rows)];
  if (r.remedies) {
    out.push(ck.el("p", { class: "muted", text: "What each remedy would save at that batch:" }),
      ck.el("table", {}, ck.el("tr", {}, ck.el("th", { class: "l", text: "remedy" }), ck.el("th", { text: "peak" }), ck.el("th", { text: "saves" })),
        ...r.remedies.map((m) => ck.el("tr", {}, ck.el("td", { class: "l", text: `${m.remedy}${m.estimate ? " (estimate)" : ""}`, title: m.detail }),
          ck.el("td", { text: ck.bytes(m.peak_bytes) }), ck.el("td", { text: ck.bytes(m.saves_bytes) })))));
  }
  $("fit-out").replaceChildren(...out);
}

let last = null;
async function analyse(ev) {
  if (ev) ev.preventDefault();
  const b = body(), t0 = performance.now();
  $("go").disabled = true;
  $("an-error").replaceChildren();
  delete document.body.dataset.rendered;
  try {
    const s = await ck.api("/api/analyse", b);
    $("an-out").hidden = false;
    renderSummary(s);
    last = b;
    const tl = s.memory.training_peak_bytes === null ? null : await ck.api("/api/timeline", b);
    if (tl) renderTimeline(tl); else $("timeline").replaceChildren(ck.el("p", { class: "muted", text: "no training step (no trainable parameters)" }));
    $("fit-out").replaceChildren();
    document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
    document.body.dataset.rendered = "analyse";
  } catch (e) {
    ck.showError($("an-error"), e.message);
    document.body.dataset.rendered = "error";
  } finally {
    $("go").disabled = false;
  }
}

async function fitPanel(ev) {
  ev.preventDefault();
  if (!last) return;
  $("fit-go").disabled = true;
  try {
    renderFit(await ck.api("/api/fit", { ...last, memory: $("budget").value, fit_batch: ck.num($("fit-batch"), null) }));
  } catch (e) {
    ck.showError($("fit-out"), e.message);
  } finally {
    $("fit-go").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("source").addEventListener("change", () => {
    const spec = $("source").value === "spec";
    $("spec").hidden = !spec; $("zoo").disabled = spec;
  });
  $("an-form").addEventListener("submit", analyse);
  $("fit-form").addEventListener("submit", fitPanel);
  try {
    const zoo = await ck.api("/api/zoo");
    $("zoo").replaceChildren(...zoo.models.map((m) => ck.el("option", { value: m.name, text: `${m.name} (${m.input_size.join("x")})` })));
    const want = new URLSearchParams(location.search).get("model");
    $("zoo").value = zoo.models.some((m) => m.name === want) ? want : "resnet50";
    const q = new URLSearchParams(location.search);
    if (q.get("batch")) $("batch").value = q.get("batch");
    document.body.dataset.ready = "analyse";
    if (q.get("run") === "1") analyse();
  } catch (e) {
    ck.showError($("an-error"), e.message);
  }
});

// cnnkit workbench: what every page shares -- the API, small DOM helpers, SVG charts. No libraries.
"use strict";

const ck = {};

ck.api = async function (path, body) {
  const opts = body === undefined ? {} : body instanceof FormData
    ? { method: "POST", body } : { method: "POST", headers: { "Content-Type": "application/json" },
                                   body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  let data;
  try { data = await res.json(); } catch (e) { throw new Error(`${res.status}: the server sent no JSON`); }
  if (!res.ok) throw new Error(data.error || `${res.status}`);
  return data;
};

// A number field's value as the server is sent it: the number, or the text where there is none (an
// empty field, or one whose text the browser cannot read as a number: its value is then ""), so the
// server's refusal names what the field holds rather than the 0 that +"" would make of it.
// `blank`: what an empty field sends instead (null: the server's default for an optional field).
ck.num = function (el, blank = "") {
  const text = el.value.trim();
  if (text === "") return el.validity && el.validity.badInput ? "" : blank;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;
};

ck.el = function (tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;  // CSSOM: allowed by the page's CSP, unlike a style attribute
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};

const SVGNS = "http://www.w3.org/2000/svg";
ck.svg = function (tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};

ck.int = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
// SI units, as cnnkit.analysis.report.human_bytes (1 MB = 1,000,000 bytes)
ck.bytes = function (n) {
  if (n === null || n === undefined) return "-";
  for (const [u, s] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
    if (Math.abs(n) >= s) return `${(n / s).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })} ${u}`;
  }
  return `${ck.int(n)} B`;
};
ck.si = function (n) {
  for (const [u, s] of [["G", 1e9], ["M", 1e6], ["k", 1e3]]) if (Math.abs(n) >= s) return `${+(n / s).toFixed(1)}${u}`;
  return `${+Number(n).toFixed(3)}`;
};

ck.showError = function (where, message) {
  where.replaceChildren(ck.el("div", { class: "error", role: "alert", text: message }));
};

ck.nav = function () {
  const here = location.pathname === "/" ? "/conv" : location.pathname;
  for (const a of document.querySelectorAll("header nav a")) if (a.getAttribute("href") === here) a.classList.add("here");
};

ck.COLORS = ["#2f6fdf", "#e0452b", "#21a67a", "#9b59b6", "#f39c12", "#16a2b8", "#7f8c8d", "#d35400"];

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) hi = lo + 1;
  const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(+v.toPrecision(12));
  return out;
}

// A tooltip that follows the pointer inside a .chart container.
function tooltip(box) {
  const tip = ck.el("div", { class: "tip" });
  box.append(tip);
  return {
    show(html, x, y) {
      tip.innerHTML = html; tip.style.display = "block";
      const w = box.clientWidth, tw = tip.offsetWidth;
      tip.style.left = `${Math.max(0, Math.min(x + 12, w - tw))}px`; tip.style.top = `${y + 12}px`;
    },
    hide() { tip.style.display = "none"; },
  };
}
ck.esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));

// Columns, one per item (e.g. per layer): hover names the item and its value.
ck.barChart = function (box, { labels, values, format = ck.int, height = 170, color = ck.COLORS[0] }) {
  box.replaceChildren();
  box.classList.add("chart");
  const W = Math.max(box.clientWidth || 600, 280), H = height, L = 52, B = 18, T = 6;
  const svg = ck.svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const max = Math.max(1, ...values), n = values.length, bw = (W - L - 4) / Math.max(n, 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (const t of niceTicks(0, max, 4)) {
    svg.append(ck.svg("line", { x1: L, x2: W, y1: y(t), y2: y(t), stroke: "#eceef2" }));
    svg.append(ck.svg("text", { x: L - 4, y: y(t) + 4, "text-anchor": "end" }, ck.si(t)));
  }
  values.forEach((v, i) => {
    svg.append(ck.svg("rect", { x: L + i * bw, y: y(v), width: Math.max(bw - (bw > 3 ? 1 : 0), 0.6),
                                height: Math.max(0, H - B - y(v)), fill: color }));
  });
  svg.append(ck.svg("text", { x: L, y: H - 4 }, `${n} layers, in execution order`));
  box.append(svg);
  const tip = tooltip(box);
  svg.addEventListener("mousemove", (ev) => {
    const r = svg.getBoundingClientRect(), i = Math.floor(((ev.clientX - r.left) * W / r.width - L) / bw);
    if (i < 0 || i >= n) return tip.hide();
    tip.show(`<b>${ck.esc(labels[i])}</b><br>${format(values[i])}`, ev.clientX - r.left, ev.clientY - r.top);
  });
  svg.addEventListener("mouseleave", () => tip.hide());
};

// Lines over a shared numeric x axis; hover shows every series' value at the nearest x.
ck.lineChart = function (box, { series, xlabel = "", format = ck.si, height = 240 }) {
  box.replaceChildren();
  box.classList.add("chart");
  const W = Math.max(box.clientWidth || 600, 280), H = height, L = 52, B = 30, T = 8, R = 10;
  const xs = series.flatMap((s) => s.x), ys = series.flatMap((s) => s.y).filter(Number.isFinite);
  if (!xs.length) { box.append(ck.el("p", { class: "muted", text: "no data yet" })); return; }
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const sx = (v) => L + (W - L - R) * (v - x0) / (x1 - x0), sy = (v) => T + (H - T - B) * (1 - (v - y0) / (y1 - y0));
  const svg = ck.svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const t of niceTicks(y0, y1, 5)) {
    svg.append(ck.svg("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#eceef2" }));
    svg.append(ck.svg("text", { x: L - 4, y: sy(t) + 4, "text-anchor": "end" }, format(t)));
  }
  for (const t of niceTicks(x0, x1, 6)) svg.append(ck.svg("text", { x: sx(t), y: H - B + 14, "text-anchor": "middle" }, ck.si(t)));
  svg.append(ck.svg("text", { x: (L + W) / 2, y: H - 3, "text-anchor": "middle" }, xlabel));
  series.forEach((s, k) => {
    const c = s.color || ck.COLORS[k % ck.COLORS.length];
    const pts = s.x.map((x, i) => [x, s.y[i]]).filter((p) => Number.isFinite(p[1]));
    svg.append(ck.svg("polyline", { points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none",
                                    stroke: c, "stroke-width": 2, class: "series", "data-name": s.name,
                                    "data-points": pts.length }));
    for (const p of pts.length <= 60 ? pts : []) svg.append(ck.svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: c }));
  });
  const cursor = ck.svg("line", { y1: T, y2: H - B, stroke: "#9aa3b2", "stroke-dasharray": "3 3", visibility: "hidden" });
  svg.append(cursor);
  box.append(svg);
  box.append(ck.el("div", { class: "legend" }, ...series.map((s, k) =>
    ck.el("span", { style: `--c:${s.color || ck.COLORS[k % ck.COLORS.length]}`, text: s.name }))));
  const tip = tooltip(box);
  svg.addEventListener("mousemove", (ev) => {
    const r = svg.getBoundingClientRect(), xs0 = (ev.clientX - r.left) * W / r.width;
    const xv = x0 + (xs0 - L) / (W - L - R) * (x1 - x0);
    const rows = series.map((s) => {
      let best = -1, d = Infinity;
      s.x.forEach((x, i) => { if (Math.abs(x - xv) < d) { d = Math.abs(x - xv); best = i; } });
      return best < 0 ? "" : `${ck.esc(s.name)}: ${xlabel} ${s.x[best]} &rarr; ${format(s.y[best])}`;
    });
    cursor.setAttribute("x1", xs0); cursor.setAttribute("x2", xs0);
    cursor.setAttribute("visibility", "visible");
    tip.show(rows.join("<br>"), ev.clientX - r.left, ev.clientY - r.top);
  });
  svg.addEventListener("mouseleave", () => { tip.hide(); cursor.setAttribute("visibility", "hidden"); });
};

document.addEventListener("DOMContentLoaded", ck.nav);

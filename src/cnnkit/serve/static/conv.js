// Convolution arithmetic: the server computes sizes, padding and reads (cnnkit's rule); this draws them.
"use strict";

const $ = (id) => document.getElementById(id);

function request() {
  const dims = +$("dims").value, pad = $("padding").value;
  $("in-w").disabled = dims === 1;
  $("pad-n").disabled = pad !== "n";
  const size = dims === 2 ? [ck.num($("in-h")), ck.num($("in-w"))] : [ck.num($("in-h"))];
  return { input: size, kernel: ck.num($("kernel")), stride: ck.num($("stride")), dilation: ck.num($("dilation")),
           padding: pad === "n" ? ck.num($("pad-n")) : pad };
}

function grid(rows, cols, cell, cls) {
  const svg = ck.svg("svg", { width: cols * cell + 1, height: rows * cell + 1, class: cls });
  const cells = [];
  for (let r = 0; r < rows; r++) {
    const row = [];
    for (let c = 0; c < cols; c++) {
      const rect = ck.svg("rect", { x: c * cell + 0.5, y: r * cell + 0.5, width: cell, height: cell, class: "cell",
                                    "data-r": r, "data-c": c });
      svg.append(rect); row.push(rect);
    }
    cells.push(row);
  }
  return { svg, cells };
}

function draw(res) {
  const box = $("grids");
  box.replaceChildren();
  const d = res.dims, two = d.length === 2;
  if (!d.every((x) => x.reads_padded)) {
    box.append(ck.el("p", { class: "muted", text: "The grid is drawn for inputs up to 64 cells per dimension." }));
    return;
  }
  const rowsD = two ? d[0] : { input: 1, pad_before: 0, pad_after: 0, output: 1, reads_padded: [[0]] };
  const colsD = two ? d[1] : d[0];
  const pr = rowsD.input + rowsD.pad_before + rowsD.pad_after, pc = colsD.input + colsD.pad_before + colsD.pad_after;
  const cell = Math.max(8, Math.min(26, Math.floor(340 / Math.max(pr, pc, rowsD.output, colsD.output))));
  const inp = grid(pr, pc, cell, "input-grid");
  const isPad = (D, k) => k < D.pad_before || k >= D.pad_before + D.input;
  for (let r = 0; r < pr; r++) for (let c = 0; c < pc; c++) {
    if (isPad(rowsD, r) || isPad(colsD, c)) inp.cells[r][c].classList.add("pad");
  }
  const out = grid(rowsD.output, colsD.output, cell, "output-grid");
  let lit = [];
  const light = (i, j) => {
    for (const e of lit) e.classList.remove("read", "on");
    lit = [];
    for (const r of rowsD.reads_padded[i]) for (const c of colsD.reads_padded[j]) {
      const e = inp.cells[r] && inp.cells[r][c];
      if (e) { e.classList.add("read"); lit.push(e); }
    }
    out.cells[i][j].classList.add("on"); lit.push(out.cells[i][j]);
    $("reading").textContent = `output (${two ? i + ", " : ""}${j}) reads padded input ` +
      (two ? `rows ${rowsD.reads_padded[i].join(",")} x ` : "") + `columns ${colsD.reads_padded[j].join(",")}`;
  };
  out.cells.forEach((row, i) => row.forEach((e, j) => {
    e.classList.add("out");
    e.addEventListener("mouseenter", () => light(i, j));
    e.addEventListener("click", () => light(i, j));
  }));
  box.append(ck.el("div", {}, ck.el("div", { class: "muted", text: `input ${two ? rowsD.input + " x " : ""}${colsD.input}` +
    ` + padding (grey)` }), inp.svg),
    ck.el("div", {}, ck.el("div", { class: "muted", text: `output ${res.output.join(" x ")}` }), out.svg),
    ck.el("p", { class: "muted", id: "reading", text: "" }));
}

let pending = 0;
async function update() {
  const ticket = ++pending, req = request();
  delete document.body.dataset.drawn;  // a newer question is out: what is drawn answers an older one
  const settled = () => { document.body.dataset.drawn = JSON.stringify(req); document.body.dataset.done = String(+(document.body.dataset.done || 0) + 1); };
  try {
    const res = await ck.api("/api/conv", req);
    if (ticket !== pending) return;
    $("conv-error").replaceChildren();
    $("out-size").textContent = res.output.join(" x ");
    $("formulas").replaceChildren(...res.dims.map((d, k) => ck.el("div", { class: "formula",
      text: `${res.dims.length === 2 ? ["H", "W"][k] : "L"}: pad ${d.pad_before} before, ${d.pad_after} after; ${d.formula}` })));
    $("rule").textContent = res.rule;
    draw(res);
    settled();
  } catch (e) {
    if (ticket !== pending) return;
    $("out-size").textContent = "-";
    $("grids").replaceChildren();
    ck.showError($("conv-error"), e.message);
    settled();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("conv-form").addEventListener("input", update);
  $("conv-form").addEventListener("submit", (e) => { e.preventDefault(); update(); });
  update();
});

// Runs: every run folder the server lists; curves polled from metrics.csv while a run trains.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { runs: [], rows: {}, checked: new Set() };

const fmt = (v) => (v === "" || !Number.isFinite(+v) ? v : Number.isInteger(+v) ? v : (+v).toPrecision(4));

function drawCurves() {
  const metric = $("metric").value;
  const series = [...state.checked].filter((n) => state.rows[n]).map((n) => {
    const rows = state.rows[n].filter((r) => r[metric] !== "" && r[metric] !== undefined);
    return { name: n, x: rows.map((r) => +r.epoch), y: rows.map((r) => +r[metric]) };
  });
  if (!series.length) { $("curves").replaceChildren(ck.el("p", { class: "muted", text: "tick a run to see its curves" })); return; }
  ck.lineChart($("curves"), { series, xlabel: "epoch", format: (v) => (Math.abs(v) < 10 ? (+v).toFixed(3) : ck.si(v)) });
}

function details() {
  const cards = [...state.checked].map((name) => {
    const run = state.runs.find((r) => r.name === name);
    const rows = state.rows[name] || [];
    const last = rows[rows.length - 1];
    const card = ck.el("div", { class: "card", "data-run": name }, ck.el("h2", { text: name }),
      ck.el("p", { class: "muted", text: `${run.task && run.task !== "classify" ? run.task + " · " : ""}${run.model || "no model yet"}${run.dataset ? " on " + run.dataset : ""} · ${rows.length} epoch(s)` }));
    if (last) {
      const keys = Object.keys(last);
      card.append(ck.el("table", {}, ck.el("tr", {}, ...keys.map((k) => ck.el("th", { text: k }))),
        ck.el("tr", {}, ...keys.map((k) => ck.el("td", { text: fmt(last[k]) })))));
    }
    const figs = ck.el("div", { class: "cols2" }, ...run.figures.map((f) =>
      ck.el("figure", {}, ck.el("img", { class: "result", alt: f, src: `/api/runs/figure?run=${encodeURIComponent(name)}&file=${encodeURIComponent(f)}&t=${rows.length}` }),
        ck.el("figcaption", { class: "muted", text: f }))));
    card.append(figs);
    if (run.has_model && run.task === "classify" && !run.figures.some((f) => f.startsWith("confusion_"))) {
      const b = ck.el("button", { type: "button", text: "Draw the confusion matrix (cnnkit plot)" });
      const note = ck.el("div", { class: "muted" });
      b.addEventListener("click", async () => {
        b.disabled = true; note.textContent = "evaluating on the run's test set...";
        try {
          const r = await ck.api("/api/runs/plot", { run: name });
          note.textContent = r.notes.join("; ");
          await refresh();
        } catch (e) { ck.showError(note, e.message); }
        b.disabled = false;
      });
      card.append(b, note);
    }
    return card;
  });
  $("details").replaceChildren(...cards);
}

async function poll(name) {
  const m = await ck.api(`/api/runs/metrics?run=${encodeURIComponent(name)}`);
  const changed = !state.rows[name] || state.rows[name].length !== m.rows.length;
  state.rows[name] = m.rows;
  return changed;
}

async function refresh() {
  try {
    const data = await ck.api("/api/runs");
    state.runs = data.runs;
    $("root").textContent = data.root ? `under ${data.root}` : "(start with --runs DIR)";
    const list = $("runlist");
    if (!data.runs.length) list.replaceChildren(ck.el("p", { class: "muted", text: "no run folders found" }));
    else {
      list.replaceChildren(...data.runs.map((r) => {
        const box = ck.el("input", { type: "checkbox", value: r.name });
        box.checked = state.checked.has(r.name);
        box.addEventListener("change", async () => {
          if (box.checked) state.checked.add(r.name); else state.checked.delete(r.name);
          if (box.checked) await poll(r.name);
          drawCurves(); details();
        });
        const acc = r.last && r.last.val_acc ? ` · val_acc ${(+r.last.val_acc).toFixed(4)}` : "";
        return ck.el("label", {}, box, ck.el("span", { text: r.name }), ck.el("span", { class: "muted", text: `${r.epochs} ep${acc}` }));
      }));
    }
    if (!state.checked.size && data.runs.length) {
      const first = data.runs.find((r) => r.epochs) || data.runs[0];
      state.checked.add(first.name);
      list.querySelector(`input[value="${CSS.escape(first.name)}"]`).checked = true;
    }
    for (const n of state.checked) if (data.runs.some((r) => r.name === n)) await poll(n);
    drawCurves(); details();
    $("runs-error").replaceChildren();
  } catch (e) {
    ck.showError($("runs-error"), e.message);
  }
  document.body.dataset.ready = "runs";
}

async function tick() {
  let changed = false;
  try {
    for (const n of state.checked) changed = (await poll(n)) || changed;
  } catch (e) { ck.showError($("runs-error"), e.message); }
  if (changed) { drawCurves(); details(); }
  document.body.dataset.polls = String(+(document.body.dataset.polls || 0) + 1);
}

document.addEventListener("DOMContentLoaded", async () => {
  $("metric").addEventListener("change", drawCurves);
  await refresh();
  setInterval(() => { if (!document.hidden) tick(); }, 2000);
});

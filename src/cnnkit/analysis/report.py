"""Formatting a :class:`~cnnkit.analysis.summary.Summary`: rich tables, plain text, CSV (JSON is its ``to_dict()``)."""

from __future__ import annotations

import csv
import io

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text


def human_bytes(n: int | None) -> str:
    """Bytes in SI units as the notes count them (1 MB = 1,000,000 bytes), and the exact figure."""
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,} B"


def _shape(s) -> str:
    return "x".join(str(d) for d in s) if s else "-"


def renderables(s):
    title = (
        f"{s.model}  input {_shape(s.input_size)}  batch {s.batch_size}  {s.dtype}  "
        f"optimizer {s.optimizer}  device {s.device}"
    )
    layers = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    layers.add_column("Layer")
    layers.add_column("Type")
    layers.add_column("Output shape", justify="right")
    layers.add_column("Params", justify="right")
    layers.add_column("Trainable", justify="right")
    layers.add_column("MACs", justify="right")
    layers.add_column("Other ops", justify="right")
    timed = "time" in s.totals
    if timed:
        layers.add_column("Fwd ms", justify="right")
        layers.add_column("Bwd ms", justify="right")
        layers.add_column("Fwd GFLOP/s", justify="right")
    for r in s.layers:
        layers.add_row(
            r["name"],
            r["type"],
            _shape(r["output_shape"]),
            f"{r['params']:,}",
            f"{r['trainable_params']:,}",
            f"{r['macs']:,}",
            f"{r['other_ops']:,}",
            *(_times(r) if timed else ()),
        )
    t = s.totals
    totals = Table(show_header=False, box=None, pad_edge=False)
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    totals.add_row("Total params", f"{t['params']:,}")
    totals.add_row("Trainable params", f"{t['trainable_params']:,}")
    totals.add_row("Non-trainable params", f"{t['non_trainable_params']:,}")
    totals.add_row("MACs (forward, batch)", f"{t['macs']:,}")
    totals.add_row("Other ops (norms, pooling, elementwise)", f"{t['other_ops']:,}")
    totals.add_row("Parameter bytes", f"{t['param_bytes']:,} ({human_bytes(t['param_bytes'])})")

    m = s.memory
    mem = Table(title="Memory (what PyTorch allocates)", title_justify="left", header_style="bold")
    mem.add_column("")
    mem.add_column("Inference", justify="right")
    mem.add_column("Training step", justify="right")
    mem.add_row("Peak", _b(m["inference_peak_bytes"]), _b(m["training_peak_bytes"]))
    cats = list(dict.fromkeys([*(m["inference_breakdown"] or {}), *(m["training_breakdown"] or {})]))
    for c in cats:
        mem.add_row(f"  {c}", _b((m["inference_breakdown"] or {}).get(c)), _b((m["training_breakdown"] or {}).get(c)))
    tb = s.textbook
    mem.add_row("Textbook (the notes' hand method)", _b(tb["inference_bytes"]), _b(tb["training_bytes"]))
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
    mem.add_row(
        "Real / textbook",
        ratio(m["inference_peak_bytes"], tb["inference_bytes"]),
        ratio(m["training_peak_bytes"], tb["training_bytes"]),
    )
    parts = [layers, totals, mem]
    if timed:
        parts.append(_time_table(s.totals["time"]))
    if m.get("dominant_layers"):
        dom = Table(
            title="Layers that dominate the training peak (activations saved for backward)",
            title_justify="left",
            header_style="bold",
        )
        dom.add_column("Layer")
        dom.add_column("Type")
        dom.add_column("Saved", justify="right")
        for d in m["dominant_layers"]:
            dom.add_row(d["name"], d["type"], _b(d["saved_bytes"]))
        parts.append(dom)
    parts.append(Text("Textbook arithmetic:", style="bold"))
    parts += [Text(f"  {line}") for line in tb["arithmetic"]]
    parts += [Text(n) for n in s.notes]
    return parts


def _ms(v) -> str:
    return "-" if v is None else f"{v:,.3f}"


def _times(r: dict) -> tuple[str, str, str]:
    """A layer's forward and backward milliseconds and its forward GFLOP/s (where it has MACs)."""
    fwd = r.get("forward_ms")
    rate = f"{2 * r['macs'] / fwd / 1e6:,.1f}" if fwd and r["macs"] else "-"
    return _ms(fwd), _ms(r.get("backward_ms")), rate


def _time_table(t: dict) -> Table:
    table = Table(
        title=f"Time of one {'training step' if t['training'] else 'inference pass'} (milliseconds, median of {t['steps']})",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("")
    table.add_column("In layers", justify="right")
    table.add_column("Outside layers", justify="right")
    table.add_column("Total", justify="right")
    for part in ("forward", "backward"):
        total, outside = t[f"{part}_ms"], t[f"outside_{part}_ms"]
        table.add_row(part.capitalize(), _ms(max(0.0, total - outside)), _ms(outside), _ms(total))
    table.add_row("Optimizer step", "", "", _ms(t["optimizer_ms"]))
    table.add_row("Whole step", "", "", _ms(t["total_ms"]))
    return table


def _b(n) -> str:
    return "-" if n is None else f"{n:,} ({human_bytes(n)})"


def render_text(s, width: int = 140) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    console.print(Group(*renderables(s)))
    return console.file.getvalue()


def render_csv(s) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    cols = ["name", "type", "output_shape", "params", "trainable_params", "macs", "other_ops", "saved_bytes"]
    if "time" in s.totals:
        cols += ["forward_ms", "backward_ms"]
    w.writerow(cols)
    for r in s.layers:
        w.writerow([_shape(r["output_shape"]) if c == "output_shape" else r.get(c, "") for c in cols])
    return out.getvalue()

"""The memory timeline of a training step: live bytes op by op, by category, as the trace recorded them.

:func:`~cnnkit.analysis.trace.trace` already holds everything: each op's live bytes before it ran and
what it returned, and the allocation history that says, at any op, which storages are parameters,
gradients, optimizer state or saved activations. This module only reads it out, op by op, with the
same backend model (oneDNN's buffers inside convolutions) and the same peak as ``cnnkit summary``.
"""

from __future__ import annotations

from cnnkit.analysis import backend
from cnnkit.analysis.summary import DTYPES, OPTIMIZERS
from cnnkit.analysis.trace import trace
from cnnkit.models.network import resolve_target
from cnnkit.models.spec import parse_input_size

RUNNING = "running op: outputs + workspace"  # the breakdown's own name for what the op adds
PHASES = ("forward", "loss", "backward", "optimizer")


def _categories_by_op(tr) -> list[dict[str, int]]:
    """Live bytes by category before each op (the replay of :meth:`_Storages.live_by_category`, once)."""
    st = tr.storages
    before: dict[int, list] = {}
    outputs: dict[int, list] = {}
    for i, sub, sign, uid in st.events:
        (outputs if sub else before).setdefault(i, []).append((sign, uid))
    live: set[int] = set()
    sums: dict[str, int] = {}

    def apply(events):
        for sign, uid in events:
            if sign > 0 and uid not in live:
                live.add(uid)
                sums[st.category[uid]] = sums.get(st.category[uid], 0) + st.size[uid]
            elif sign < 0 and uid in live:
                live.discard(uid)
                sums[st.category[uid]] -= st.size[uid]

    out = []
    for j in range(len(tr.ops)):
        apply(before.get(j, ()))
        out.append(dict(sums))
        apply(outputs.get(j, ()))
    return out


def _keep(totals: list[int], max_points: int, must: set[int]) -> list[int]:
    """Indices to draw: the lowest and the highest op of each of ``max_points // 2`` equal buckets, plus
    ``must`` (the peak, the first op of each phase). A bucket's maximum is never dropped."""
    n = len(totals)
    if n <= max_points:
        return list(range(n))
    buckets = max(1, max_points // 2)
    keep = set(must)
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        seg = range(lo, hi)
        keep.add(max(seg, key=totals.__getitem__))
        keep.add(min(seg, key=totals.__getitem__))
    return sorted(keep)


def memory_timeline(
    target,
    input_size=None,
    batch_size: int = 1,
    dtype: str = "float32",
    optimizer: str = "sgd",
    backend_model: bool = True,
    max_points: int = 1200,
) -> dict:
    """Live bytes op by op through forward, loss, backward and the optimizer step of one training step.

    Args: as :func:`~cnnkit.analysis.summary.summary` (CPU allocator); ``max_points``: at most about
    this many ops are returned (per bucket its lowest and highest op), the peak always among them.

    Returns a JSON-ready dict: ``ops`` (how many the step ran), ``points`` (one per kept op: ``index``,
    ``phase``, ``op``, ``layer``, ``total`` bytes and ``by_category``), ``phases`` (first op of each),
    ``baseline`` (bytes live before the step), and ``peak`` (``index``, ``bytes``, ``op``, ``phase``,
    ``layer``, ``breakdown``: exactly ``training_peak_bytes`` / ``training_breakdown`` of the summary).
    """
    from cnnkit.errors import CnnkitError

    if dtype not in DTYPES:
        raise CnnkitError(f"--dtype must be one of {', '.join(DTYPES)}; received: {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise CnnkitError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; received: {optimizer!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnnkitError(f"--batch must be a positive integer; received: {batch_size!r}")
    model, default_size, name = resolve_target(target)
    if input_size is None and default_size is None:
        raise CnnkitError(f"{name} has no default input size: pass --input CxHxW (e.g. 3x224x224)")
    input_size = parse_input_size(input_size if input_size is not None else default_size)
    if not any(p.requires_grad for p in model.parameters()):
        raise CnnkitError(f"{name} has no trainable parameters: there is no training step to draw")
    ops = backend.CPU_BACKEND_OPS if backend_model else set()
    tr = trace(model, (batch_size, *input_size), DTYPES[dtype], True, optimizer, ops)
    op_bytes = {}
    if backend_model:
        with backend.quiet_stderr():
            op_bytes = backend.op_peaks(tr.ops)

    def during(op):
        return op_bytes.get(op.backend_key, op.out_bytes) if op.backend_key else op.out_bytes

    totals = [op.live_before + during(op) for op in tr.ops]
    peak_bytes, peak_i = tr.peak(op_bytes)
    phases = {}
    for i, op in enumerate(tr.ops):
        phases.setdefault(op.phase, i)
    cats = _categories_by_op(tr)
    points = []
    for i in _keep(totals, max_points, {peak_i, *phases.values()} - {-1}):
        op = tr.ops[i]
        points.append(
            {
                "index": i,
                "phase": op.phase,
                "op": op.name,
                "layer": op.module or None,
                "total": totals[i],
                "by_category": {**cats[i], RUNNING: during(op)},
            }
        )
    peak_op = tr.ops[peak_i] if peak_i >= 0 else None
    return {
        "model": name,
        "input_size": list(input_size),
        "batch_size": batch_size,
        "dtype": dtype,
        "optimizer": optimizer,
        "ops": len(tr.ops),
        "baseline": dict(tr.baseline),
        "phases": [{"phase": p, "first_op": i} for p, i in phases.items()],
        "points": points,
        "peak": {
            "index": peak_i,
            "bytes": peak_bytes,
            "op": peak_op.name if peak_op else None,
            "phase": peak_op.phase if peak_op else None,
            "layer": (peak_op.module or None) if peak_op else None,
            "breakdown": tr.breakdown(peak_i, op_bytes),
        },
    }

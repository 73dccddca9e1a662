"""Where a training run's seconds go: data, forward, backward, optimiser, validation, checkpointing.

:class:`StepProfiler` measures a run of the one engine without changing it: it wraps the task (its
``batches()`` iterator times each ``next()``, its ``loss()`` times the forward pass, its
``evaluate()`` the validation) and the plan (each phase's ``begin`` hooks the optimizer's step, so
that the optimiser step is the time between its pre- and post-hook and the backward pass the time
from the end of ``loss()`` to the pre-hook). Whatever lies between those events (progress bar, EMA,
loss bookkeeping) is ``other``; the time from an epoch's last step to the next epoch's first batch,
less validation, is ``checkpoint`` (the engine saves the run there). The first ``warmup`` steps
(allocation, first-call dispatch) are kept apart. The floating-point operations of a step's
forward and backward pass are counted with :class:`torch.utils.flop_counter.FlopCounterMode`
(convolutions and matrix products, on the actual batch) on the first step and again on the first
step after the set of trained parameters changes (a frozen layer's backward pass is not run, nor
counted); each of those steps is kept apart as the warm-up is. The achieved GFLOP/s of the compute
part can then be set against the machine's fp32 or bf16 ceiling (:func:`compute_ceiling`, measured at
the same thread count)::

    prof = StepProfiler()
    result = fit(prof.task(task), model, data, prof.plan(plan), out)
    prof.stop()
    print(prof.table(compute_ceiling()["conv"]))
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

STEP_PARTS = ("data", "forward", "backward", "optimizer")
PARTS = ("setup", *STEP_PARTS, "other", "validation", "checkpoint", "warm-up")


class StepProfiler:
    """Seconds of a training run by part (:data:`PARTS`), the steps and samples, and one step's FLOPs.

    Args:
        warmup: the first steps whose time goes to ``warm-up`` instead of their parts.
        layers: also split the steps after warm-up by layer (:class:`~cnnkit.analysis.measure.LayerTimer`
            on the model the task's ``loss`` gets): :meth:`layer_rows`.

    Attributes:
        seconds: part -> seconds.
        steps: optimizer steps taken.
        timed: those whose parts were timed (not a warm-up step, nor one whose FLOPs were counted
            after the first).
        samples: training samples of the steps (the loss's ``n``).
        flops: ``{"forward", "backward"}``: floating-point operations of the first step.
        batch: samples of that first step.
        work: ``{"forward", "backward"}``: floating-point operations of the timed steps (each
            step's count scaled by its samples).

    Example:
        >>> prof = StepProfiler()
        >>> prof.seconds["forward"]
        0.0
    """

    def __init__(self, warmup: int = 1, layers: bool = False):
        self.warmup = warmup
        self.layers = layers
        self._timer = None
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.steps = 0
        self.samples = 0
        self.flops = {"forward": 0, "backward": 0}
        self.batch = 0
        self.timed = 0
        self.work = {"forward": 0.0, "backward": 0.0}
        self._trained: tuple[bool, ...] | None = None  # the trained parameters when FLOPs were counted
        self._step = {"forward": 0, "backward": 0, "batch": 1, "n": 0}  # that count, this step's samples
        self._untimed = warmup > 0
        self._mark: float | None = None
        self._epoch_end = False
        self._counter: FlopCounterMode | None = None
        self._handles: list = []

    # ------------------------------------------------------------------ wrapping

    def task(self, task):
        """A proxy of ``task`` whose ``batches``, ``loss`` and ``evaluate`` are timed (the rest forwarded)."""
        return _ProfiledTask(task, self)

    def plan(self, plan):
        """A copy of ``plan`` whose phases' ``begin`` hook the optimizer's step (timed as ``setup``)."""
        phases = [dataclasses.replace(p, begin=self._begin(p.begin)) for p in plan.phases]
        return dataclasses.replace(plan, phases=phases)

    def start(self) -> None:
        """Start the clock (called by the first wrapped call if not before)."""
        self._mark = time.perf_counter()

    def stop(self) -> None:
        """Charge the time since the last epoch's end to ``checkpoint`` (call when ``fit`` returns)."""
        self._charge("checkpoint" if self._epoch_end else "other")
        self._epoch_end = False  # until the next fit: setup
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._timer is not None:
            self._timer.remove()  # its sums stay for layer_rows

    # ------------------------------------------------------------------ results

    def layer_rows(self, top: int | None = None) -> list[dict]:
        """The slowest layers of a step after warm-up (with ``layers``): ``{"layer", "forward_ms",
        "backward_ms", "share"}`` (share: of the step's forward and backward time), slowest first."""
        if self._timer is None:
            return []
        timed = max(1, self.timed)
        fwd, bwd = self._timer.forward_seconds, self._timer.backward_seconds
        compute = (self.seconds["forward"] + self.seconds["backward"]) or 1.0
        rows = [
            {
                "layer": name,
                "forward_ms": 1000 * fwd.get(name, 0.0) / timed,
                "backward_ms": 1000 * bwd.get(name, 0.0) / timed,
                "share": (fwd.get(name, 0.0) + bwd.get(name, 0.0)) / compute,
            }
            for name in dict.fromkeys([*fwd, *bwd])
        ]
        rows.sort(key=lambda r: -(r["forward_ms"] + r["backward_ms"]))
        return rows[:top]

    def layer_table(self, top: int = 15) -> str:
        """:meth:`layer_rows` as a text table."""
        lines = [f"{'layer':<48} {'fwd ms':>8} {'bwd ms':>8} {'share':>7}"]
        for r in self.layer_rows(top):
            lines.append(f"{r['layer'][:48]:<48} {r['forward_ms']:8.2f} {r['backward_ms']:8.2f} {r['share']:7.1%}")
        return "\n".join(lines)

    def rows(self) -> list[dict]:
        """One row per part with time: ``{"part", "seconds", "share", "ms_per_step"}``."""
        total = sum(self.seconds.values()) or 1.0
        timed = max(1, self.timed)
        return [
            {
                "part": k,
                "seconds": v,
                "share": v / total,
                "ms_per_step": 1000 * v / timed if k in STEP_PARTS or k == "other" else None,
            }
            for k, v in self.seconds.items()
            if v > 0
        ]

    def gflops(self) -> dict[str, float]:
        """Achieved GFLOP/s of the timed steps: ``compute`` (forward + backward time), ``forward``
        alone and ``step`` (data and optimiser included); 0 where nothing was timed."""
        fwd, bwd = self.work["forward"], self.work["backward"]
        s = self.seconds

        def rate(flops: float, secs: float) -> float:
            return flops / secs / 1e9 if secs > 0 and self.timed > 0 else 0.0

        step_secs = sum(s[k] for k in (*STEP_PARTS, "other"))
        return {
            "compute": rate(fwd + bwd, s["forward"] + s["backward"]),
            "forward": rate(fwd, s["forward"]),
            "step": rate(fwd + bwd, step_secs),
        }

    def table(self, ceiling: float | None = None) -> str:
        """The rows as a text table, then the step count, the FLOPs and the achieved rate (against
        ``ceiling`` GFLOP/s when given)."""
        lines = [f"{'part':<11} {'seconds':>9} {'share':>7} {'ms/step':>9}"]
        for r in self.rows():
            per = f"{r['ms_per_step']:9.1f}" if r["ms_per_step"] is not None else f"{'':>9}"
            lines.append(f"{r['part']:<11} {r['seconds']:9.2f} {r['share']:7.1%} {per}")
        lines.append(f"{'total':<11} {sum(self.seconds.values()):9.2f}")
        g = self.gflops()
        per_sample = (self.flops["forward"] + self.flops["backward"]) / max(1, self.batch)
        lines.append(
            f"{self.steps} steps ({self.timed} timed), {self.samples} samples; "
            f"{per_sample / 1e9:.3f} GFLOP per sample (forward + backward); "
            f"compute {g['compute']:.1f} GFLOP/s, forward {g['forward']:.1f}, whole step {g['step']:.1f}"
            + (f"; ceiling {ceiling:.1f} GFLOP/s: compute at {g['compute'] / ceiling:.0%}" if ceiling else "")
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ events

    def _charge(self, part: str) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            if part in STEP_PARTS and self._untimed:
                part = "warm-up"
            self.seconds[part] += now - self._mark
        self._mark = now

    def _layer_timer(self, model):
        """The layer timer, enabled for this step's forward and backward once warm-up is over."""
        if not self.layers:
            return None
        if self._timer is None:
            from cnnkit.analysis.measure import LayerTimer

            self._timer = LayerTimer(model)
        self._timer.enabled = not self._untimed
        return self._timer

    def _begin(self, begin):
        def wrapped(model):
            self._charge("checkpoint" if self._epoch_end else "setup")
            self._epoch_end = False
            setup = begin(model)
            for h in self._handles:
                h.remove()
            self._handles = [
                setup.optimizer.register_step_pre_hook(self._pre_step),
                setup.optimizer.register_step_post_hook(self._post_step),
            ]
            self._charge("setup")
            return setup

        return wrapped

    def _pre_step(self, optimizer, args, kwargs) -> None:
        self._charge("backward")  # zero_grad + backward
        if self._timer is not None and self._timer.enabled:
            self._timer.end_backward()
            self._timer.enabled = False
        if self._counter is not None:
            self._step["backward"] = self._counter.get_total_flops() - self._step["forward"]
            self._counter.__exit__(None, None, None)
            self._counter = None
            if not self.batch:  # the first step's count
                self.flops = {k: self._step[k] for k in ("forward", "backward")}
                self.batch = self._step["batch"]

    def _post_step(self, optimizer, args, kwargs) -> None:
        self._charge("optimizer")
        if not self._untimed:
            self.timed += 1
            for k in self.work:
                self.work[k] += self._step[k] * self._step["n"] / self._step["batch"]
        self.steps += 1
        self._untimed = self.steps < self.warmup


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _op,
    _groups,
    output_mask,
    *a,
    **k,
) -> int:
    """FLOPs of a convolution's backward pass: a forward's worth for the input's gradient and another
    for the weights', each only when asked for (``output_mask``). The weight shape carries the groups
    (``(C_out, C_in / groups, k, k)``), so a depthwise convolution costs what its forward does."""
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """:class:`~torch.utils.flop_counter.FlopCounterMode` with a convolution backward that counts
    grouped (depthwise) convolutions right: torch 2.13's own formula counts their input gradient as
    if every group saw every channel (a 64-group 3x3 convolution's backward: 65 forwards' worth
    instead of 2), which makes EfficientNet's backward look 30 times its forward."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


class _ProfiledTask:
    """The task with timed ``batches`` / ``loss`` / ``evaluate``; every other attribute is the task's."""

    def __init__(self, task, prof: StepProfiler):
        self._task, self._prof = task, prof

    def __getattr__(self, name):
        return getattr(self._task, name)

    def batches(self, data, generator, train: bool = True):
        p = self._prof
        if p._mark is None:
            p.start()
        p._charge("checkpoint" if p._epoch_end else "setup")
        p._epoch_end = False
        inner = self._task.batches(data, generator, train)
        p._charge("data")
        return _TimedBatches(inner, p)

    def loss(self, model, batch):
        p = self._prof
        p._charge("other")
        trained = tuple(q.requires_grad for q in model.parameters())
        count = trained != p._trained  # the first step, or the first since a freeze
        if count:
            p._trained, p._untimed = trained, True
            p._counter = flop_counter()
            p._counter.__enter__()
        timer = p._layer_timer(model)
        loss, stats = self._task.loss(model, batch)
        if timer is not None and timer.enabled:
            timer.begin_backward()
        n = int(stats["n"])
        if count and p._counter is not None:
            p._step.update(forward=p._counter.get_total_flops(), batch=n)
        p._step["n"] = n
        p.samples += n
        p._charge("forward")
        return loss, stats

    def evaluate(self, model, data):
        p = self._prof
        p._charge("other")
        out = self._task.evaluate(model, data)
        p._charge("validation")
        return out


class _TimedBatches:
    def __init__(self, inner, prof: StepProfiler):
        self._inner, self._prof = inner, prof

    def __len__(self) -> int:
        return len(self._inner)

    def __iter__(self) -> Iterator:
        p, it = self._prof, iter(self._inner)
        while True:
            p._charge("other")
            try:
                batch = next(it)
            except StopIteration:
                p._epoch_end = True
                return
            p._charge("data")
            yield batch


def compute_ceiling(repeats: int = 5, batch: int = 8, n: int = 2048, precision: str = "fp32") -> dict[str, float]:
    """This CPU's fp32 (or bf16) rate at the current thread count: the best of ``repeats`` timings of a large
    3x3 convolution (batch x 128 x 56 x 56, 128 filters: 7.4 GFLOP at batch 8) and of an n x n matrix product.

    Args:
        repeats: timed calls of each (after one untimed).
        batch: the convolution's batch.
        n: the matrices' side.
        precision: ``"bf16"`` times both under CPU bf16 autocast instead (the ceiling of a bf16 run).

    Returns:
        ``{"conv": GFLOP/s, "gemm": GFLOP/s, "threads": torch threads}``.
    """
    x, w = torch.randn(batch, 128, 56, 56), torch.randn(128, 128, 3, 3)
    a, b = torch.randn(n, n), torch.randn(n, n)
    conv_flops = 2 * batch * 128 * 56 * 56 * 128 * 9
    gemm_flops = 2 * n**3

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        conv = conv_flops / best(lambda: F.conv2d(x, w, padding=1)) / 1e9
        gemm = gemm_flops / best(lambda: a @ b) / 1e9
    return {"conv": conv, "gemm": gemm, "threads": torch.get_num_threads()}

"""Ground truth: what PyTorch really allocates for an inference pass or a training step, and how long
each layer of it takes.

On CUDA this is ``torch.cuda.max_memory_allocated``; on CPU it is the allocator as the profiler reports
it: the running sum of the sizes of its allocation and free events during the step. Both count the model's parameters and buffers, the input, the optimizer state and
everything allocated during the step, exactly as :func:`cnnkit.analysis.trace.trace` predicts them.
Used by the tests and ``benchmarks/memory_accuracy.py``; it runs the model for real, so it is slow.

:func:`measure_times` runs real training steps and splits them by layer (:class:`LayerTimer`):
``cnnkit summary --time``.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
import torch.nn as nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from cnnkit.analysis.backend import quiet_stderr
from cnnkit.analysis.trace import make_optimizer, step_loss, tensor_leaves, training_step
from cnnkit.layers.layout import nhwc_breaker
from cnnkit.models.scripted import add_hooks, hook_points

OUTSIDE = "(outside layers)"


def _resident_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


def _cpu_peak(fn) -> int:
    """Peak bytes the CPU allocator held during ``fn()`` above what it held before: the running sum of
    the events' sizes. (An event's ``total_allocated`` is no measure of it: it also counts what any
    earlier profiler saw allocated and the process still holds.)"""
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []

    def walk(nodes):
        for n in nodes:
            if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu":
                events.append((n.start_time_ns, n.extra_fields.alloc_size))
            walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    live = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):  # frees are negative sizes
        live += size
        peak = max(peak, live)
    return peak


def _real_run(model, input_shape, dtype, device, optimizer, training, channels_last=False):
    """Move ``model`` to ``device``/``dtype`` (and NHWC for a 4-D input with ``channels_last``), set its
    mode, and make a random input and the optimizer of its trainable parameters (None without any,
    or not ``training``): ``(x, optimizer, the mode it had)``."""
    model.to(device=device, dtype=dtype)
    x = torch.randn(input_shape, dtype=dtype, device=device)
    if channels_last and x.dim() == 4:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.train(training)
    params = [p for p in model.parameters() if p.requires_grad]
    return x, make_optimizer(optimizer, params) if training and params else None, was_training


def measure_peak(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    training: bool = False,
    optimizer: str = "sgd",
    device: str = "cpu",
) -> int:
    """Run one real inference pass (eval, no_grad) or one real training step (after a warm-up step)
    and return the peak bytes allocated, parameters, buffers, input and optimizer state included.

    The model is moved to ``device``/``dtype`` in place.
    """
    x, opt, was_training = _real_run(model, input_shape, dtype, device, optimizer, training)
    forward = lambda: model(x)  # noqa: E731
    try:
        if training:
            training_step(forward, opt)  # warm-up: the optimizer state exists from here on
            run = lambda: training_step(forward, opt)  # noqa: E731
        else:

            def run():
                with torch.no_grad():
                    forward()

        resident = [*model.parameters(), *model.buffers(), x]
        if opt is not None:
            resident += [
                v
                for s in opt.state.values()
                for v in s.values()
                if isinstance(v, torch.Tensor) and v.device.type == torch.device(device).type
            ]
        base = _resident_bytes(resident)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            return base + torch.cuda.max_memory_allocated() - start
        return base + _cpu_peak(run)
    finally:
        model.train(was_training)


class LayerTimer:
    """Seconds of each layer's forward and backward pass in real steps, timed by module hooks.

    Forward: a leaf module's time from its pre-hook to its hook. Backward: autograd runs the layers'
    backward passes in reverse order, and each layer's output gradient arriving is an event; the time
    from one event to the next is charged to the layer whose gradient arrived. A layer's backward
    time so includes that of the functional operations (additions, concatenations, interpolations)
    between it and the layer before it. The time from the start of :meth:`backward` to the first event
    (the loss and the head's functional operations) is charged to :data:`OUTSIDE`.

    Args:
        model: its leaf modules (a TorchScript module is one) are hooked until :meth:`remove`.
        sync: called before each clock reading (``torch.cuda.synchronize`` on a GPU).

    Attributes:
        enabled: while False the hooks record nothing (a validation pass between training steps).
        forward_seconds: layer name -> forward seconds since the last :meth:`reset`.
        backward_seconds: layer name -> backward seconds (:data:`OUTSIDE` included) since the last
            :meth:`reset`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> timer = LayerTimer(net)
        >>> timer.backward(net(torch.randn(2, 4)).sum())
        >>> sorted(timer.backward_seconds) == ["(outside layers)", "0", "1"]
        True
        >>> timer.remove()
    """

    def __init__(self, model: nn.Module, sync=lambda: None):
        self.sync = sync
        self.forward_seconds: dict[str, float] = defaultdict(float)
        self.backward_seconds: dict[str, float] = defaultdict(float)
        self.enabled = True
        self._events: list[tuple[float, str]] = []
        self._backward_start = 0.0
        self._started: dict[str, float] = {}
        self._handles = []
        # the leaves whose hooks run (a TorchScript module is one: :func:`hook_points`); a network
        # without sub-modules is its own leaf
        leaves = [(n, m) for n, m, leaf in hook_points(model) if leaf] or [(type(model).__name__, model)]
        for label, module in leaves:
            self._handles += add_hooks(module, self._pre(label), self._post(label))

    def now(self) -> float:
        """The clock (seconds), read after ``sync``."""
        self.sync()
        return time.perf_counter()

    def _pre(self, name: str):
        def hook(module, inputs):
            if self.enabled:
                self._started[name] = self.now()

        return hook

    def _post(self, name: str):
        def arrived(grad):
            self._events.append((self.now(), name))

        def hook(module, inputs, output):
            if not self.enabled or name not in self._started:
                return
            self.forward_seconds[name] += self.now() - self._started.pop(name)
            if torch.is_grad_enabled():
                out = next((t for t in tensor_leaves(output) if t.requires_grad), None)
                if out is not None:
                    out.register_hook(arrived)

        return hook

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, its time charged to the layers (see the class)."""
        self.begin_backward()
        loss.backward()
        self.end_backward()

    def begin_backward(self) -> None:
        """Mark the start of a backward pass that another caller runs (then :meth:`end_backward`)."""
        self._events = []
        self._backward_start = self.now()

    def end_backward(self) -> None:
        """Mark its end: charge the time since :meth:`begin_backward` to the layers."""
        marks = [(self._backward_start, OUTSIDE), *sorted(self._events), (self.now(), "")]
        for (t, name), (t_next, _) in zip(marks, marks[1:]):
            self.backward_seconds[name] += t_next - t
        self._events = []

    def reset(self) -> None:
        """Zero the per-layer sums (the hooks stay)."""
        self.forward_seconds.clear()
        self.backward_seconds.clear()

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []


def measure_times(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    optimizer: str = "sgd",
    device: str = "cpu",
    steps: int = 5,
    warmup: int = 2,
    channels_last: bool | None = None,
    training: bool | None = None,
) -> dict:
    """Time real training steps (inference passes where nothing trains) of ``model`` on a random
    batch of ``input_shape``, in total and per layer (:class:`LayerTimer`); medians of ``steps``
    steps after ``warmup`` untimed ones.

    The model is moved to ``device``/``dtype`` (and ``channels_last``) in place. ``channels_last``
    (default: on a CPU, for 4-D inputs, as cnnkit trains: not for a network that
    :func:`cnnkit.layers.nhwc_breaker` rules out) lays the input and the weights out as NHWC.
    ``training`` False times inference passes (default: training steps where a parameter trains).

    Returns:
        ``{"steps", "threads", "device", "layout", "training", "step": {"forward", "backward",
        "optimizer", "total"}, "layers": {name: {"forward", "backward"}}, "outside": {"forward",
        "backward"}}``, in seconds.
    """
    if channels_last is None:
        channels_last = device == "cpu" and len(input_shape) == 4 and nhwc_breaker(model) is None
    trains = training is not False and any(p.requires_grad for p in model.parameters())
    x, opt, was_training = _real_run(model, input_shape, dtype, device, optimizer, trains, channels_last)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timer = LayerTimer(model, sync)
    parts: list[dict[str, float]] = []
    layer_fwd: list[dict[str, float]] = []
    layer_bwd: list[dict[str, float]] = []
    try:
        for i in range(warmup + steps):
            timer.reset()
            t0 = timer.now()
            if trains:
                loss = step_loss(model(x))
                t1 = timer.now()
                timer.backward(loss)
                del loss
                t2 = timer.now()
                if opt is not None:
                    opt.step()
                model.zero_grad(set_to_none=True)
                t3 = timer.now()
            else:
                with torch.no_grad():
                    model(x)
                t1 = t2 = t3 = timer.now()
            if i >= warmup:
                parts.append({"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "total": t3 - t0})
                layer_fwd.append(dict(timer.forward_seconds))
                layer_bwd.append(dict(timer.backward_seconds))
    finally:
        timer.remove()
        model.train(was_training)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in rows)

    names = list(dict.fromkeys(n for r in layer_fwd + layer_bwd for n in r if n != OUTSIDE))
    outside_fwd = [p["forward"] - sum(f.values()) for p, f in zip(parts, layer_fwd)]
    return {
        "steps": steps,
        "threads": torch.get_num_threads(),
        "device": device,
        "layout": "channels_last" if channels_last and x.dim() == 4 else "contiguous",
        "training": trains,
        "step": {k: median(parts, k) for k in ("forward", "backward", "optimizer", "total")},
        "layers": {n: {"forward": median(layer_fwd, n), "backward": median(layer_bwd, n)} for n in names},
        "outside": {"forward": max(0.0, statistics.median(outside_fwd)), "backward": median(layer_bwd, OUTSIDE)},
    }

"""Ground truth: what PyTorch really allocates for an inference pass or a training step.

On CUDA this is ``torch.cuda.max_memory_allocated``; on CPU it is the allocator as the profiler reports
it (every allocation event carries the running total of bytes the CPU allocator has handed out since
profiling began). Both count the model's parameters and buffers, the input, the optimizer state and
everything allocated during the step, exactly as :func:`cnnkit.analysis.trace.trace` predicts them.
Used by the tests and ``benchmarks/memory_accuracy.py``; it runs the model for real, so it is slow.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from cnnkit.analysis.backend import quiet_stderr
from cnnkit.analysis.trace import make_optimizer, training_step


def _resident_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


def _cpu_peak(fn) -> int:
    """Peak bytes the CPU allocator held during ``fn()`` above what it held before."""
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = 0

    def walk(nodes):
        nonlocal peak
        for n in nodes:
            if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu":
                peak = max(peak, n.extra_fields.total_allocated)
            walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return peak


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
    model.to(device=device, dtype=dtype)
    x = torch.randn(input_shape, dtype=dtype, device=device)
    was_training = model.training
    model.train(training)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params) if training and params else None
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

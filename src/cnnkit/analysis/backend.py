"""What the backend allocates *inside* an op, measured on small copies of the op and extrapolated.

On CPU, PyTorch runs float convolutions through oneDNN, which reorders the input, the weights and the
output into blocked layouts (channels padded to a multiple of 8 or 16) and back: the 3-conv network of
the notes' exercise 2 peaks at about 1.43 GB for a training step at batch 50, not the 0.79 GB that its
tensors alone add up to. Those buffers live only while the op runs, but they decide the peak.

The meta trace cannot see them, so each distinct convolution (forward and backward) is run for real
under the profiler's memory events -- never at the model's full size, so the analyser's own cost stays
bounded whatever the input (``cnnkit summary resnet18 --input 3x8000x8000``: seconds, well under 1 GB):
- an op small enough (its tensors at its own batch within :data:`DIRECT_BYTES`) is run at its own
  batch and size: oneDNN picks its algorithm from the shapes, batch included, and a 3x3 convolution
  on 7x7 maps allocates 2x at batch 64 what the line through batches 2 and 3 gives;
- an op whose tensors fit :data:`DIRECT_BYTES` at batch 3 only is run at batches 2 and 3 at its real
  spatial size, and what it allocates is taken as affine in the batch (``a + b * batch``: reordered
  weights are fixed, reordered activations scale). The batch is the op's own (its input's leading
  size: SimVP folds the frames into it), and an op whose kernel changes at a batch of 16 (a 1x1
  convolution on one thread) is run at 16 and 17 instead;
- a larger op is run on copies whose spatial sizes are scaled down (same channels, kernel, stride,
  padding, memory layout). Reordered activations are proportional to the pixels of the input and of
  the output, so its peak is ``a + batch * (alpha * input_pixels + beta * output_pixels)``; the three
  numbers are fitted on four small runs and the relation is checked on a fifth, larger one before
  it is trusted (:data:`FIT_TOLERANCE`); where it does not hold, it is fitted again with larger
  copies (up to :data:`MAX_CAL_BYTES`) weighing most.
  Limitation: oneDNN may switch algorithms between a small copy and the real size (measured: the
  backward of exercise2's strided 200->400 convolution at 25x38 allocates 2.9x what copies up to
  16x16 predict), which no check on small copies can see; that is why every op that is affordable
  (:data:`DIRECT_BYTES`) is measured at its own size, and only the rest is extrapolated.
Distinct shapes are few even in deep networks (ResNet-152 has a few dozen), and results are cached on
disk per torch version and CPU capability.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function

from cnnkit.analysis.trace import schema_call

aten = torch.ops.aten

# ops whose internal allocations are measured (the backend-specific ones that matter for the peak),
# each with the dtypes of its operands it is measured for (None: every dtype)
# (bilinear upsampling: on small maps the CPU kernel allocates about its input and output again;
# the flash attention kernel: per-thread blocks of scores, and in backward a copy of the output's gradient;
# a matrix product in 16 bits: oneDNN's packed copies and 32-bit accumulators, per thread (in 32 bits
# PyTorch's own kernels allocate nothing inside))
HALF_DTYPES = frozenset({torch.bfloat16, torch.float16})
_PRODUCTS = (aten.mm, aten.addmm, aten._addmm_activation, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv)
CPU_BACKEND_OPS = {
    aten.convolution: None,
    aten.convolution_backward: None,
    aten.upsample_bilinear2d: None,
    aten._scaled_dot_product_flash_attention_for_cpu: None,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: None,
    **{op: HALF_DTYPES for op in _PRODUCTS},
}

# which arguments (in the schema's order, keyword-only ones included) carry the batch in dimension 0
# (an attention mask is left as it is: it may be (L, S), broadcast over the batch; a matrix product has
# none: it is measured at its own size)
_BATCH_ARGS = {
    "convolution": (0,),
    "convolution_backward": (0, 1),
    "upsample_bilinear2d": (0,),
    "_scaled_dot_product_flash_attention_for_cpu": (0, 1, 2),
    "_scaled_dot_product_flash_attention_for_cpu_backward": (0, 1, 2, 3, 4, 5),
}
# oneDNN picks other kernels for a batch of one, so the line is fitted through batches 2 and 3 (exact
# from 2 on); a batch of 3 or less is measured as it is
_CAL_BATCHES = (2, 3)
# PyTorch's own kernel or oneDNN (ConvParams::use_mkldnn): on one thread, a float32 convolution whose
# kernel is 1 high and 1 wide (a 1x1, or a 3-D 3x1x1 temporal one), neither strided nor dilated, runs
# PyTorch's kernel below a batch of 16 (which allocates otherwise) and oneDNN from 16 on; such
# an op's line is fitted through batches 16 and 17 when the batch is 16 or more
_ONEDNN_FROM = 16
DIRECT_BYTES = 64 << 20  # an op whose tensors at batch 3 stay within this is measured at its own size
MAX_RUN_BYTES = 512 << 20  # no measuring run's tensors exceed this (huge channels, padding): left unmeasured
MAX_RUN_MACS = 10**10  # nor does an attention run's or a matrix product's work
MAX_CAL_BYTES = 8 << 20  # the largest scaled-down copy measured when the fit needs checking again
FIT_TOLERANCE = 0.02  # the fit must predict the check run within 2%
# (tensor bytes, multiply-adds) at batch 2 of the four fitting runs: the smaller limit decides
_FIT_RUNS = ((1 << 18, 12_500_000), (1 << 19, 25_000_000), (1 << 20, 50_000_000), (2 << 20, 100_000_000))
_REFIT_RUNS = ((MAX_CAL_BYTES // 2, 200_000_000), (MAX_CAL_BYTES, 400_000_000))
_MIN_SIDE = 6  # output pixels per side at the least: smaller images run other kernels


@contextmanager
def quiet_stderr():
    """Silence what C++ writes on file descriptor 2 (the profiler announces every start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cache_path() -> Path:
    root = Path(os.environ.get("CNNKIT_HOME", Path.home() / ".cache" / "cnnkit"))
    cap = torch.backends.cpu.get_cpu_capability()
    return root / f"backend-{torch.__version__}-{cap}-{torch.get_num_threads()}t.json"


def _load_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".backend.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the re-measurement next time


def _is_tensor(a) -> bool:
    return isinstance(a, tuple) and len(a) == 3 and isinstance(a[2], torch.dtype)


def _kernel_switches(name: str, args: tuple) -> bool:
    """True for a convolution whose CPU kernel changes at a batch of :data:`_ONEDNN_FROM`."""
    if name not in _SPATIAL_ARGS or torch.get_num_threads() > 1:
        return False
    inp = args[0] if name == "convolution" else args[1]
    _, kernel, stride, _, dilation, _, _ = _conv_geometry(name, args)
    # a 1-D convolution runs as a 2-D one of height 1: its kernel's last two sizes are (1, k)
    return (
        inp[2] == torch.float32
        and all(k == 1 for k in kernel[-2:])
        and all(s_ == 1 for s_ in stride)
        and all(d == 1 for d in dilation)
    )


def cal_batches(name: str, args: tuple, batch: int) -> tuple[int, int]:
    """The two batches an op's peak is measured at and extended from to ``batch``: (2, 3), or
    (16, 17) for an op that runs another kernel from a batch of 16 on (:data:`_ONEDNN_FROM`), or
    for a grouped convolution the two batches up to ``batch`` (at most 17): oneDNN changes its
    kernels at batches 4 (forward) and 9 to 16 (backward) there, and its line holds from 16 on.

    Args:
        name: the ATen op's name (``convolution``, ``convolution_backward`` ...).
        args: its arguments as recorded by the trace (tensors as ``(shape, stride, dtype)``).
        batch: the batch of the analysed step.

    Returns:
        The two calibration batches, smaller first.
    """
    if batch >= _ONEDNN_FROM and _kernel_switches(name, args):
        return (_ONEDNN_FROM, _ONEDNN_FROM + 1)
    groups = args[8] if name == "convolution" else args[9] if name == "convolution_backward" else 1
    if groups > 1 and batch > _CAL_BATCHES[-1]:
        top = min(batch, _ONEDNN_FROM + 1)
        return (top - 1, top)
    return _CAL_BATCHES


def _own_batch(name: str, args: tuple, batch: int) -> bool:
    """True for an op measured at its own batch (its tensors there within :data:`DIRECT_BYTES`), not
    on a line through two smaller batches."""
    return _tensor_bytes(args, _BATCH_ARGS.get(name, ()), batch, batch, name) <= DIRECT_BYTES


def _is_direct(name: str, args: tuple, batch: int) -> bool:
    """True for an op measured at its own size (at its calibration batches), not extrapolated."""
    if name not in _SPATIAL_ARGS:
        return True
    top = cal_batches(name, args, batch)[-1]
    return _tensor_bytes(args, _BATCH_ARGS.get(name, ()), batch, min(batch, top), name) <= DIRECT_BYTES


def _cache_key(key: tuple, batch_args: tuple, batch: int, scaled: bool = False) -> str:
    """The op's signature with the batch dimension replaced by 'B' (so every batch shares it); for an
    extrapolated op the spatial sizes are replaced by 'S' too and strides by the layout order."""
    name, args = key
    cal = cal_batches(name, args, batch)
    tag = "" if cal == _CAL_BATCHES else str(cal[0])  # the kernel from batch 16 on: a line of its own
    norm = []
    for i, a in enumerate(args):
        if _is_tensor(a):
            shape, stride, dtype = a
            if i in batch_args and shape and shape[0] == batch:
                shape = ("B",) + tuple(shape[1:])
            if scaled and i in _SPATIAL_ARGS.get(name, ()):
                shape = tuple(shape[:2]) + ("S",) * (len(shape) - 2)
                stride = tuple(sorted(range(len(stride)), key=lambda d: (stride[d], -d)))
            norm.append((shape, stride, str(dtype)))
        else:
            norm.append(a)
    if scaled:
        mode = f"fit{tag}"
    else:
        mode = batch if batch <= cal[-1] or _own_batch(name, args, batch) else f"scaled{tag}"
    return repr((name, tuple(norm), mode))


def _make_args(args: tuple, batch_args: tuple, full_batch: int, batch: int) -> list:
    real = []
    for i, a in enumerate(args):
        if isinstance(a, tuple) and len(a) == 3 and isinstance(a[2], torch.dtype):
            shape, stride, dtype = a
            if i in batch_args and shape and shape[0] == full_batch:
                shape = (batch,) + tuple(shape[1:])
            # the same strides as in the model (a gradient may be a non-contiguous slice: the op then
            # copies it, and that copy is part of what it allocates)
            t = torch.empty_strided(shape, stride, dtype=dtype)
            if not dtype.is_floating_point:  # float values do not change what is allocated: left as they are
                t.zero_()
            real.append(t)
        else:
            real.append(a)
    return real


def _peaks_by_label(prof) -> dict[str, int]:
    """Peak bytes allocated inside each record_function range named 'cnnkit-cal:<label>'."""
    out: dict[str, int] = {}

    def allocations(node, acc):
        if node.tag == _EventType.Allocation:
            acc.append((node.start_time_ns, node.extra_fields.alloc_size))
        for c in node.children:
            allocations(c, acc)

    def walk(nodes):
        for n in nodes:
            if n.name.startswith("cnnkit-cal:"):
                acc: list = []
                allocations(n, acc)
                acc.sort()
                cur = peak = 0
                for _, size in acc:
                    cur += size
                    peak = max(peak, cur)
                out[n.name[len("cnnkit-cal:") :]] = peak
            else:
                walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return out


# which tensor arguments carry the op's spatial sizes: input-side and output-side
_SPATIAL_ARGS = {"convolution": (0,), "convolution_backward": (0, 1)}


def _conv_geometry(name: str, args: tuple):
    """(input spatial sizes, kernel, stride, padding, dilation, transposed, output_padding) of a conv."""
    if name == "convolution":
        inp, weight, _, stride, padding, dilation, transposed, output_padding, _ = args[:9]
    else:
        _, inp, weight, _, stride, padding, dilation, transposed, output_padding = args[:9]
    sizes = tuple(inp[0][2:])
    kernel = tuple(weight[0][2:])
    return sizes, kernel, tuple(stride), tuple(padding), tuple(dilation), bool(transposed), tuple(output_padding)


def _out_size(h: int, k: int, s: int, p: int, d: int, transposed: bool, op: int) -> int:
    if transposed:
        return (h - 1) * s - 2 * p + d * (k - 1) + op + 1
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def _restride(shape: tuple, stride: tuple, new: tuple) -> tuple:
    """Strides for ``new`` with the layout of (``shape``, ``stride``): the same dimension order, and a
    slice of a larger tensor (a gradient of a concatenation) stays a slice with the same margin."""
    n = len(shape)
    order = sorted(range(n), key=lambda d: (stride[d], -d))  # innermost first
    out = [0] * n
    acc = 1
    for j, d in enumerate(order):
        if stride[d] == 0:  # broadcast: stays broadcast
            continue
        out[d] = acc
        if j + 1 < n and stride[d] > 0:
            extent = stride[order[j + 1]] // stride[d]
            acc *= new[d] + max(0, extent - shape[d])
        else:
            acc *= new[d]
    return tuple(out)


def _scaled_args(name: str, args: tuple, sizes: tuple) -> tuple:
    """The op's arguments with the input's spatial sizes set to ``sizes`` (the output's follow)."""
    _, kernel, stride, padding, dilation, transposed, opad = _conv_geometry(name, args)
    outs = tuple(
        _out_size(h, k, s_, p, d, transposed, o)
        for h, k, s_, p, d, o in zip(sizes, kernel, stride, padding, dilation, opad)
    )
    new = list(args)
    roles = {"convolution": {0: sizes}, "convolution_backward": {0: outs, 1: sizes}}[name]
    for i, spatial in roles.items():
        shape, st, dtype = args[i]
        shape2 = tuple(shape[:2]) + spatial
        new[i] = (shape2, _restride(shape, st, shape2), dtype)
    return tuple(new)


def _pixels(name: str, args: tuple) -> tuple[int, int]:
    """(input pixels, output pixels) per sample of a conv's arguments."""
    sizes, kernel, stride, padding, dilation, transposed, opad = _conv_geometry(name, args)
    outs = [
        _out_size(h, k, s_, p, d, transposed, o)
        for h, k, s_, p, d, o in zip(sizes, kernel, stride, padding, dilation, opad)
    ]
    return math.prod(sizes), math.prod(outs)


def _tensor_bytes(args: tuple, batch_args: tuple, full_batch: int, batch: int, name: str = "") -> int:
    """Bytes of the op's tensor arguments and results at ``batch``."""
    total = 0
    for i, a in enumerate(args):
        if _is_tensor(a):
            shape, _, dtype = a
            n = math.prod(shape)
            if i in batch_args and shape and shape[0] == full_batch:
                n = n // max(full_batch, 1) * batch
            total += n * torch.empty((), dtype=dtype).element_size()
    if name == "convolution":  # + the output; a backward's results match its inputs
        shape, _, dtype = args[0]
        weight = args[1][0]
        channels = weight[1] * args[8] if args[6] else weight[0]
        total += batch * channels * _pixels(name, args)[1] * torch.empty((), dtype=dtype).element_size()
    else:
        total *= 2
    return total


def _run_macs(name: str, args: tuple, full_batch: int, batch: int) -> int:
    """Multiply-adds of a flash attention op (forward: ``Q K^T`` and ``A V``; backward: five such
    products) or of a matrix product at ``batch``; 0 for other ops."""
    packet = name.partition(".")[0]
    if packet in _PRODUCT_OPERANDS:
        a, b = (args[i][0] for i in _PRODUCT_OPERANDS[packet])
        return math.prod(a) * (b[-1] if len(b) > 1 else 1)
    if not name.startswith("_scaled_dot_product_flash_attention"):
        return 0
    q, k, v = args[1:4] if name.endswith("_backward") else args[:3]
    b, h, lq, d = q[0]
    per = h * lq * k[0][2] * (d + v[0][3]) * (5 if name.endswith("_backward") else 2) // 2
    return per * (batch if b == full_batch else b)


# the two factors of each matrix product, by position in its arguments
_PRODUCT_OPERANDS = {
    "mm": (0, 1),
    "bmm": (0, 1),
    "mv": (0, 1),
    "addmm": (1, 2),
    "_addmm_activation": (1, 2),
    "baddbmm": (1, 2),
    "addbmm": (1, 2),
    "addmv": (1, 2),
}


def _macs(name: str, args: tuple, batch: int) -> int:
    """Multiply-adds of the conv (forward; a backward does about twice as many) at ``batch``."""
    weight = args[1][0] if name == "convolution" else args[2][0]
    x, y = _pixels(name, args)
    return batch * math.prod(weight) * (x if args[6 if name == "convolution" else 7] else y)


def _fit_sizes(
    name: str,
    args: tuple,
    batch_args: tuple,
    batch: int,
    targets: tuple[tuple[int, int], ...] = (),
    at: int = 2,
) -> list[tuple[int, ...]]:
    """Scaled-down input sizes whose runs (at batch ``at``) hold about the target tensor bytes and
    multiply-adds (:data:`_FIT_RUNS`), each keeping the remainder of the real size modulo the stride
    (the same borders), smallest first."""
    sizes, kernel, stride, padding, dilation, transposed, opad = _conv_geometry(name, args)
    full_bytes = _tensor_bytes(args, batch_args, batch, at, name)
    full_macs = max(_macs(name, args, at), 1)
    minimum = [max(1, d * (k - 1) + 1 - 2 * p) for k, p, d in zip(kernel, padding, dilation)]
    out, seen = [], set()
    for nbytes, macs in targets or _FIT_RUNS:
        f = min(nbytes / full_bytes, macs / full_macs) ** (1 / len(sizes))
        cand = []
        for h, s_, lo in zip(sizes, stride, minimum):
            g = max(lo + s_, _MIN_SIDE * s_, int(h * f))
            g -= (g - h) % s_  # same remainder modulo the stride
            cand.append(max(lo, min(h, g)))
        cand = tuple(cand)
        if cand not in seen and min(_pixels(name, _scaled_args(name, args, cand))) >= 1:
            seen.add(cand)
            out.append(cand)
    return out


class _Runner:
    """Runs ops on real tensors under one profiler session; peaks are read when it closes."""

    def __init__(self):
        self.jobs: list[tuple] = []

    def add(self, label: str, name: str, args: tuple, batch_args: tuple, full_batch: int, batch: int):
        self.jobs.append((label, name, args, batch_args, full_batch, batch))

    def run(self) -> dict[str, int]:
        """Peak bytes per label; a job left out (too large to run cheaply, or refused by the op) has
        no entry, and its op keeps the trace's ATen-level figure."""
        if not self.jobs:
            return {}
        failed = set()
        denormal = torch.set_flush_denormal(True)  # uninitialised floats must not slow the runs
        try:
            with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                for label, name, args, batch_args, full_batch, b in self.jobs:
                    if (
                        _tensor_bytes(args, batch_args, full_batch, b, name) > MAX_RUN_BYTES
                        or _run_macs(name, args, full_batch, b) > MAX_RUN_MACS
                    ):
                        failed.add(label)
                        continue
                    packet, _, overload = name.partition(".")  # "bmm.out": an overload other than the default
                    op = getattr(getattr(aten, packet), overload or "default")
                    try:
                        real = _make_args(args, batch_args, full_batch, b)
                        with record_function(f"cnnkit-cal:{label}"):
                            result = schema_call(op, real)
                        del result, real
                    except (RuntimeError, ValueError, TypeError, IndexError, MemoryError):
                        failed.add(label)  # e.g. sizes the meta kernels accept and the CPU ones do not
        finally:
            if denormal:
                torch.set_flush_denormal(False)
        self.jobs = []
        return {k: v for k, v in _peaks_by_label(prof).items() if k not in failed}


def _fit(points: list[tuple[int, int, int, int]]):
    """Least squares of peak = a + batch * (alpha * X + beta * Y) over (batch, X, Y, peak) points."""
    import numpy as np

    A = np.array([[1.0, b * x, b * y] for b, x, y, _ in points])
    p = np.array([float(v) for *_, v in points])
    coef, *_ = np.linalg.lstsq(A, p, rcond=None)
    return [float(c) for c in coef]


def _predict(coef, batch: int, x: int, y: int) -> float:
    a, alpha, beta = coef
    return a + batch * (alpha * x + beta * y)


def _lead(name: str, args: tuple) -> int:
    """The op's batch: the leading size of its input (a network may fold frames or groups into it,
    so it need not be the step's batch)."""
    for i in _BATCH_ARGS.get(name, ()):
        if i < len(args) and _is_tensor(args[i]) and args[i][0]:
            return int(args[i][0][0])
    return 1


def _extrapolate(ops: dict[str, tuple]) -> dict[str, list[float]]:
    """For each op (cache key -> backend key): the fit of its peak on scaled-down copies, checked on a
    larger one (see the module docstring). All runs share one profiler session (two with re-fits)."""
    runner, plans = _Runner(), {}
    for ck, (name, args) in ops.items():
        batch_args, lead = _BATCH_ARGS.get(name, ()), _lead(name, args)
        b1, b2 = cal_batches(name, args, lead)
        sizes = _fit_sizes(name, args, batch_args, lead, at=b1)
        if not sizes:
            continue  # no smaller copy has an output: the op keeps its ATen-level figure
        plan = [(b1, sz) for sz in sizes] + [(b2, sizes[-2] if len(sizes) > 1 else sizes[-1])]
        plans[ck] = (name, args, batch_args, lead, plan, len(sizes) - 1)
        for n, (b, sz) in enumerate(plan):
            runner.add(f"{ck}#{n}", name, _scaled_args(name, args, sz), batch_args, lead, b)
    peaks = runner.run()
    out, refit = {}, {}
    for ck, (name, args, batch_args, lead, plan, held) in plans.items():
        if any(f"{ck}#{n}" not in peaks for n in range(len(plan))):
            continue  # not measurable: the op keeps its ATen-level figure
        points = [
            (b, *_pixels(name, _scaled_args(name, args, sz)), peaks.get(f"{ck}#{n}", 0))
            for n, (b, sz) in enumerate(plan)
        ]
        check = points.pop(held)  # the largest run, held out
        coef = _fit(points)
        if abs(_predict(coef, *check[:3]) - check[3]) <= FIT_TOLERANCE * max(check[3], 1):
            out[ck] = _fit(points + [check])
            continue
        # the relation does not hold at these sizes (the backend picks other kernels for small
        # images): fit it again with larger copies, where the real size's kernels run
        b1, b2 = cal_batches(name, args, lead)
        big = _fit_sizes(name, args, batch_args, lead, _REFIT_RUNS, at=b1)
        if not big:
            continue
        more = [(b1, big[0]), (b1, big[-1]), (b2, big[0])]
        refit[ck] = (name, args, points + [check], more)
        for n, (b, sz) in enumerate(more):
            runner.add(f"{ck}#big{n}", name, _scaled_args(name, args, sz), batch_args, lead, b)
    peaks = runner.run()
    for ck, (name, args, points, more) in refit.items():
        if any(f"{ck}#big{n}" not in peaks for n in range(len(more))):
            continue
        large = [
            (b, *_pixels(name, _scaled_args(name, args, sz)), peaks.get(f"{ck}#big{n}", 0))
            for n, (b, sz) in enumerate(more)
        ]
        out[ck] = _fit(points + large * 4)  # the large runs weigh most
    return out


def op_peaks(records, use_cache: bool = True) -> dict[tuple, int]:
    """For each distinct ``backend_key`` among ``records``: the bytes the op really allocates at its peak.

    Each op is measured (or extrapolated) at its own batch, the leading size of its input.

    Args:
        records: the trace's :class:`~cnnkit.analysis.trace.OpRecord` s (those without a backend key
            are skipped).
        use_cache: read and extend the on-disk cache of earlier measurements.

    Returns:
        Backend key -> peak bytes: the value replaces the op's meta output bytes in the memory
        timeline (it includes the outputs).
    """
    keys = {r.backend_key for r in records if r.backend_key is not None}
    if not keys:
        return {}
    cache = _load_cache() if use_cache else {}
    direct, fitted = {}, {}
    for key in keys:
        name, args = key
        batch_args, lead = _BATCH_ARGS.get(name, ()), _lead(name, args)
        if _is_direct(name, args, lead):
            ck = _cache_key(key, batch_args, lead)
            if ck not in cache:
                direct[ck] = key
        else:
            ck = _cache_key(key, batch_args, lead, scaled=True)
            if ck not in cache:
                fitted[ck] = key
    if direct:
        runner, runs = _Runner(), []
        for n, (ck, key) in enumerate(direct.items()):
            name, args = key
            batch_args, lead = _BATCH_ARGS.get(name, ()), _lead(name, args)
            cal = cal_batches(name, args, lead)
            scalable = lead > cal[-1] and not _own_batch(name, args, lead)
            for b in cal if scalable else (lead,):
                runner.add(f"{n}:{b}", name, args, batch_args, lead, b)
            runs.append((n, ck, scalable, cal, lead))
        peaks = runner.run()
        for n, ck, scalable, (b1, b2), lead in runs:
            if any(f"{n}:{b}" not in peaks for b in ((b1, b2) if scalable else (lead,))):
                continue  # not measurable: the op keeps its ATen-level figure
            if scalable:
                p1, p2 = peaks.get(f"{n}:{b1}", 0), peaks.get(f"{n}:{b2}", 0)
                slope = (p2 - p1) // (b2 - b1)
                cache[ck] = [p1 - slope * b1, slope]  # a, b of a + b * batch
            else:
                cache[ck] = [peaks.get(f"{n}:{lead}", 0), 0]
    if fitted:
        cache.update(_extrapolate(fitted))
    if use_cache and (direct or fitted):
        _save_cache(cache)
    out = {}
    for key in keys:
        name, args = key
        batch_args, lead = _BATCH_ARGS.get(name, ()), _lead(name, args)
        if _is_direct(name, args, lead):
            ab = cache.get(_cache_key(key, batch_args, lead))
            if ab is not None:
                out[key] = int(ab[0] + ab[1] * lead)
        else:
            coef = cache.get(_cache_key(key, batch_args, lead, scaled=True))
            if coef is not None:
                out[key] = int(_predict(coef, lead, *_pixels(name, args)))
    return out

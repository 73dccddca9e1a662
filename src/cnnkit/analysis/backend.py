"""What the backend allocates *inside* an op, measured once per op shape and scaled to the batch.

On CPU, PyTorch runs float convolutions through oneDNN, which reorders the input, the weights and the
output into blocked layouts (channels padded to a multiple of 8 or 16) and back: the 3-conv network of
the notes' exercise 2 peaks at about 1.43 GB for a training step at batch 50, not the 0.79 GB that its
tensors alone add up to. Those buffers live only while the op runs, but they decide the peak.

The meta trace cannot see them, so each distinct convolution (forward and backward) is run for real,
once at batch 2 and once at batch 3, under the profiler's memory events; everything an op allocates is
affine in the batch (``a + b * batch``: reordered weights are fixed, reordered activations scale), so
two points give the value at any batch (batches of 3 or less are measured as they are). Distinct shapes are few even in deep networks (ResNet-152 has
a few dozen), and results are cached on disk per torch version and CPU capability.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function

aten = torch.ops.aten

# ops whose internal allocations are measured (the backend-specific ones that matter for the peak)
# (bilinear upsampling: on small maps the CPU kernel allocates about its input and output again)
CPU_BACKEND_OPS = {aten.convolution, aten.convolution_backward, aten.upsample_bilinear2d}

# which positional arguments carry the batch in dimension 0
_BATCH_ARGS = {"convolution": (0,), "convolution_backward": (0, 1), "upsample_bilinear2d": (0,)}
# oneDNN picks other kernels for a batch of one, so the line is fitted through batches 2 and 3 (exact
# from 2 on); a batch of 3 or less is measured as it is
_CAL_BATCHES = (2, 3)


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


def _cache_key(key: tuple, batch_args: tuple, batch: int) -> str:
    """The op's signature with the batch dimension replaced by 'B' (so every batch shares it)."""
    name, args = key
    norm = []
    for i, a in enumerate(args):
        if isinstance(a, tuple) and len(a) == 3 and isinstance(a[2], torch.dtype):
            shape, stride, dtype = a
            if i in batch_args and shape and shape[0] == batch:
                shape = ("B",) + tuple(shape[1:])
            norm.append((shape, stride, str(dtype)))
        else:
            norm.append(a)
    return repr((name, tuple(norm), "scaled" if batch > _CAL_BATCHES[-1] else batch))


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
            t.normal_() if dtype.is_floating_point else t.zero_()
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
                out[n.name[len("cnnkit-cal:"):]] = peak
            else:
                walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return out


def op_peaks(records, batch: int, use_cache: bool = True) -> dict[tuple, int]:
    """For each distinct ``backend_key`` among ``records``: the bytes the op really allocates at its peak.

    The value replaces the op's meta output bytes in the memory timeline (it includes the outputs).
    """
    keys = {r.backend_key for r in records if r.backend_key is not None}
    if not keys:
        return {}
    cache = _load_cache() if use_cache else {}
    todo = {}
    for key in keys:
        ck = _cache_key(key, _BATCH_ARGS.get(key[0], ()), batch)
        if ck not in cache:
            todo[ck] = key
    if todo:
        runs = []
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for n, (ck, key) in enumerate(todo.items()):
                name, args = key
                batch_args = _BATCH_ARGS.get(name, ())
                scalable = batch > _CAL_BATCHES[-1] and any(
                    i < len(args) and isinstance(args[i], tuple) and args[i][0] and args[i][0][0] == batch
                    for i in batch_args)
                for b in (_CAL_BATCHES if scalable else (batch,)):
                    real = _make_args(args, batch_args, batch, b)
                    op = getattr(aten, name).default
                    with record_function(f"cnnkit-cal:{n}:{b}"):
                        result = op(*real)
                    del result, real
                runs.append((n, ck, scalable))
        peaks = _peaks_by_label(prof)
        for n, ck, scalable in runs:
            if scalable:
                (b1, b2) = _CAL_BATCHES
                p1, p2 = peaks.get(f"{n}:{b1}", 0), peaks.get(f"{n}:{b2}", 0)
                slope = (p2 - p1) // (b2 - b1)
                cache[ck] = [p1 - slope * b1, slope]      # a, b of a + b * batch
            else:
                cache[ck] = [peaks.get(f"{n}:{batch}", 0), 0]
        if use_cache:
            _save_cache(cache)
    out = {}
    for key in keys:
        a, b = cache[_cache_key(key, _BATCH_ARGS.get(key[0], ()), batch)]
        out[key] = int(a + b * batch)
    return out

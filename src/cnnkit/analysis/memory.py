"""``cnnkit memory``: will it fit in memory, the largest batch that does, and what each remedy would save.

A CNN's peak memory is close to affine in the batch size (``fixed + per_sample * batch``: parameters,
gradients and optimizer state do not grow with the batch, activations and workspaces do), so two exact
analyses draw it as a line: batches 16 and 17 from 16 on, batches 4 and 5 from 4 to 15 (PyTorch picks
other convolution kernels for a batch of one, and on one thread for 1x1 convolutions below 16); smaller
batches are analysed as they are. Close, not exact: oneDNN changes a convolution's algorithm at
batches that depend on its shapes (a 3x3 convolution on 7x7 maps, between 17 and 24), so the lines
only guide the search: the largest batch that fits, and the peak at the batch asked, are exact
analyses at those batches. The remedies are the notes' five (Géron, ch. 14, exercise 3) plus
activation checkpointing, each as a number.
"""

from __future__ import annotations

import math
import re

from cnnkit.analysis.summary import MAX_BATCH, check_options, summary
from cnnkit.errors import CnnkitError, brief

MAX_BYTES = 2**63 - 1  # a budget beyond int64, the most bytes PyTorch counts, is a typo
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text) -> int:
    """``"8GiB"``, ``"16 GB"``, ``"500MB"``, ``"1e9"`` or a number -> bytes, from 1 to :data:`MAX_BYTES`."""
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise CnnkitError(f"--memory must look like 8GiB, 16GB or 500MB; received: {brief(repr(text))}")
    if isinstance(text, int):
        n = text  # exact: an int of any size, where float() would overflow
    elif isinstance(text, float):
        if not math.isfinite(text):
            raise CnnkitError(f"--memory must be a finite size such as 8GiB; received: {text!r}")
        n = int(text)
    else:
        m = re.fullmatch(r"\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        if not m or m[2].lower() not in _UNITS:
            raise CnnkitError(f"--memory must look like 8GiB, 16GB or 500MB; received: {text[:40]!r}")
        value = float(m[1]) * _UNITS[m[2].lower()]
        if not math.isfinite(value):
            raise CnnkitError(f"--memory must be a finite size such as 8GiB; received: {text[:40]!r}")
        n = int(value)
    if n <= 0:
        raise CnnkitError(f"--memory must be positive; received: {brief(repr(text))}")
    if n > MAX_BYTES:
        raise CnnkitError(
            f"--memory must be at most {MAX_BYTES:,} bytes (8 EiB, the most PyTorch counts); received: "
            f"{brief(repr(text))}"
        )
    return n


_B1, _B2 = 4, 5  # the two batches the line of batches 4 to 15 is fitted through
_B3, _B4 = 16, 17  # and the line from 16 on (backend.cal_batches: a kernel may change at 16)


def _affine(p1: int, p2: int, at: int) -> tuple[int, int]:
    """(fixed, per sample) of the line through the peaks ``p1`` at batch ``at`` and ``p2`` at ``at + 1``."""
    per = p2 - p1
    return p1 - at * per, per


def _max_batch(fixed: int, per: int, memory: int) -> int:
    if per <= 0:
        return 0 if fixed > memory else 1 << 30
    return max(0, (memory - fixed) // per)


def _exact_max_batch(peak, budget: int, guess: int, fits: int) -> int:
    """The largest batch whose exact peak (``peak(batch)``) fits ``budget``, searched from the lines'
    ``guess`` outwards (oneDNN's allocations are not affine in the batch everywhere: a convolution on
    small maps changes its algorithm between batches 17 and 24). ``fits``: a batch known to fit (0: none)."""
    step = 1
    if peak(guess) <= budget:  # gallop up from the guess to a batch that does not fit
        lo = guess
        while lo + step <= MAX_BATCH and peak(lo + step) <= budget:
            lo, step = lo + step, step * 2
        hi = lo + step
    else:  # gallop down to one that does
        hi = guess
        while hi - step > fits and peak(hi - step) > budget:
            hi, step = hi - step, step * 2
        lo = max(fits, hi - step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _small_batch_max(target, s1, memory, key, dtype, optimizer, device, limit: int) -> int:
    """Below the fitted range, check batches 1..3 one by one."""
    best = 0
    for b in range(1, min(limit, _B1)):
        peak = s1.memory[key] if b == 1 else summary(target, s1.input_size, b, dtype, optimizer, device).memory[key]
        if peak <= memory:
            best = b
        else:
            break
    return best


def memory_plan(
    target,
    input_size=None,
    memory="8GiB",
    batch_size: int | None = None,
    dtype: str = "float32",
    optimizer: str = "sgd",
    device: str = "cpu",
    devices: int = 2,
) -> dict:
    """The largest batch that fits ``memory`` for training and inference, and the remedies' savings.

    Two exact analyses (:func:`~cnnkit.summary` at batches 16 and 17) draw the peak as a line from 16
    on, two more (4 and 5) from 4 to 15; batches below 4 are analysed one by one. The largest batch
    the line gives, and the batch asked, are then analysed exactly (see the module docstring).

    Args:
        target: an ``nn.Module``, a zoo name, a ``.yaml``/``.json`` spec, a Keras ``.keras``/``.h5``
            file or ``file.py:factory``.
        input_size: ``(C, H, W)`` or ``"3x224x224"``; defaults to the model's own where it has one.
        memory: the budget: ``"8GiB"``, ``"16GB"``, ``"500MB"`` or a number of bytes.
        batch_size: a batch to check against the budget; when it does not fit, the remedies are
            listed with what each saves.
        dtype: ``float32``, ``float16`` or ``bfloat16`` for parameters and activations.
        optimizer: the optimizer of the training step (``none`` = forward and backward only).
        device: ``cpu`` or ``cuda``: which allocator's behaviour to predict.
        devices: the number of devices the data-parallel remedy spreads the batch over.

    Returns:
        A JSON-able dict: ``model``, ``input_size``, ``memory_bytes``, and for ``inference`` and
        ``training`` each ``{"fixed_bytes", "per_sample_bytes", "max_batch"}`` (the line from batch 16
        on; ``"below_16": {"fixed_bytes", "per_sample_bytes"}`` too where batches 4 to 15 lie on
        another; with ``peak_bytes`` and ``fits`` when ``batch_size`` is given); ``remedies`` (a list of ``{"remedy", "detail",
        "peak_bytes", "saves_bytes"}``) when that batch does not fit.

    Raises:
        CnnkitError: a budget that is not a size, bad arguments, or a model that fails on the input.

    Example:
        >>> plan = memory_plan("resnet50", memory="8GiB", batch_size=256)    # doctest: +SKIP
        >>> plan["training"].get("max_batch")                               # doctest: +SKIP
        97
    """
    budget = parse_bytes(memory)
    if batch_size is not None:
        check_options(batch_size, dtype, optimizer, device)
    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= 1_000_000:
        raise CnnkitError(f"--devices must be an integer from 1 to 1,000,000; received: {str(devices)[:40]}")
    s1 = summary(target, input_size, _B1, dtype, optimizer, device)
    s2 = summary(target, s1.input_size, _B2, dtype, optimizer, device)
    s3 = summary(target, s1.input_size, _B3, dtype, optimizer, device)
    s4 = summary(target, s1.input_size, _B4, dtype, optimizer, device)
    out = {
        "model": s1.model,
        "input_size": list(s1.input_size),
        "memory_bytes": budget,
        "dtype": dtype,
        "optimizer": optimizer,
        "device": device,
    }
    kinds = [("inference", "inference_peak_bytes")]
    if s1.memory["training_peak_bytes"] is not None:
        kinds.append(("training", "training_peak_bytes"))
    lines = {}
    peaks: dict[tuple[str, int], int] = {}

    def peak(key: str, batch: int) -> int:
        if (key, batch) not in peaks:
            peaks[key, batch] = summary(target, s1.input_size, batch, dtype, optimizer, device).memory[key]
        return peaks[key, batch]

    for kind, key in kinds:
        small = _affine(s1.memory[key], s2.memory[key], _B1)
        fixed, per = _affine(s3.memory[key], s4.memory[key], _B3)
        lines[kind] = (small, (fixed, per))
        best = _max_batch(fixed, per, budget)
        if best < _B3:
            best = min(_max_batch(*small, budget), _B3 - 1)
        if best < _B1:
            best = _small_batch_max(
                target,
                summary(target, s1.input_size, 1, dtype, optimizer, device),
                budget,
                key,
                dtype,
                optimizer,
                device,
                _B1,
            )
        if _B3 <= best < 1 << 30:  # the lines extrapolate: the batch is checked by exact analyses
            known = _B4 if s4.memory[key] <= budget else _B3 if s3.memory[key] <= budget else 0
            best = _exact_max_batch(lambda b, key=key: peak(key, b), budget, best, known)
        out[kind] = {"fixed_bytes": fixed, "per_sample_bytes": per, "max_batch": best}
        if small != (fixed, per):
            out[kind]["below_16"] = {"fixed_bytes": small[0], "per_sample_bytes": small[1]}
    if batch_size is not None:
        out["batch_size"] = batch_size
        for kind in lines:
            need = peak(f"{kind}_peak_bytes", batch_size)  # analysed at the batch, not read off a line
            out[kind].update(peak_bytes=need, fits=need <= budget)
        kind = "training" if "training" in lines else "inference"
        if out[kind]["peak_bytes"] > budget:
            out["remedies"] = _remedies(
                target,
                s1,
                batch_size,
                lambda b: peak(f"{kind}_peak_bytes", b),
                out[kind]["max_batch"],
                budget,
                dtype,
                optimizer,
                device,
                devices,
            )
    return out


def _remedies(target, s1, batch, peak, fits_batch, budget, dtype, optimizer, device, devices) -> list[dict]:
    """``peak(b)``: the exact peak at batch ``b``; ``fits_batch``: the largest batch that fits."""
    need = peak(batch)
    rem = []
    rem.append(
        {
            "remedy": "reduce the mini-batch",
            "detail": f"batch {fits_batch} fits",
            "peak_bytes": peak(fits_batch) if fits_batch else 0,
            "saves_bytes": need - (peak(fits_batch) if fits_batch else 0),
        }
    )
    h = None
    if dtype == "float32":
        try:
            h = summary(target, s1.input_size, batch, "bfloat16", optimizer, device)
        except CnnkitError:  # it runs in float32 only (it computes in float32 whatever its input): no remedy
            h = None
    if h is not None:
        p = h.memory["training_peak_bytes"]
        if p is None:  # nothing trains: the remedies are for the inference pass
            p = h.memory["inference_peak_bytes"]
        rem.append(
            {
                "remedy": "use 16-bit floats (bfloat16)",
                "detail": "parameters and activations in 16 bits",
                "peak_bytes": p,
                "saves_bytes": need - p,
            }
        )
    saved = (s1.memory.get("saved_activation_bytes") or 0) // s1.batch_size  # per sample
    # checkpointing every layer boundary keeps ~sqrt(n) segments' activations; a conservative half
    ck = need - batch * saved // 2
    rem.append(
        {
            "remedy": "activation checkpointing (torch.utils.checkpoint)",
            "detail": "recompute half of the saved activations in backward (about 1/3 more compute)",
            "peak_bytes": ck,
            "saves_bytes": need - ck,
            "estimate": True,
        }
    )
    per_dev = peak(-(-batch // devices))
    rem.append(
        {
            "remedy": f"spread over {devices} devices (DistributedDataParallel)",
            "detail": f"each device holds the model and batch {-(-batch // devices)}",
            "peak_bytes": per_dev,
            "saves_bytes": need - per_dev,
        }
    )
    dom = s1.memory.get("dominant_layers") or []
    if dom:
        d = dict(dom[0], saved_bytes=dom[0]["saved_bytes"] // s1.batch_size)  # per sample
        rem.append(
            {
                "remedy": f"a larger stride (or pooling) before {d['name']}",
                "detail": "stride 2 there quarters the maps after it; its saved activations alone are "
                f"{d['saved_bytes'] * batch:,} bytes at this batch",
                "peak_bytes": need - d["saved_bytes"] * batch * 3 // 4,
                "estimate": True,
                "saves_bytes": d["saved_bytes"] * batch * 3 // 4,
            }
        )
        rem.append(
            {
                "remedy": f"remove layer {d['name']}",
                "detail": "the layer saving the most for backward",
                "estimate": True,
                "peak_bytes": need - d["saved_bytes"] * batch,
                "saves_bytes": d["saved_bytes"] * batch,
            }
        )
    return rem

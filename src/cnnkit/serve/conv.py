"""Convolution arithmetic for the page: output sizes with the floor formula worked out, where the
padding goes, and which input cells each output cell reads.

The padding rule is :func:`cnnkit.layers.padding.same_pad` (TensorFlow's "same": the odd extra
pixel at the end, bottom/right; Caffe's: at the start, top/left), the rule cnnkit's layers use.
"""

from __future__ import annotations

from cnnkit.errors import brief, plain_int
from cnnkit.layers.padding import PAD_MODES, same_pad
from cnnkit.serve.limits import Refused

MAX_SIZE = 100_000  # input length per dimension
MAX_DRAWN = 64  # up to this size per dimension, the cells each output reads are listed


def _positive(body: dict, key: str, dims: int, low: int = 1) -> list[int]:
    value = body.get(key, 1)
    values = value if isinstance(value, list) else [value] * dims
    if len(values) != dims:
        raise Refused(f"{key} needs {dims} value(s), one per dimension; received: {brief(repr(value))}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_SIZE:
            raise Refused(f"{key} must be an integer from {low} to {MAX_SIZE:,}; received: {brief(repr(v))}")
        out.append(v)
    return out


def conv_arithmetic(body: dict) -> dict:
    """``{"input": [H, W] or [L], "kernel", "stride", "dilation": int or one per dim, "padding":
    "valid" | "same" | "caffe" | N}`` -> per dimension: padding (before, after), output size, the
    formula with its numbers, and (for small inputs) the input cells each output reads (-1 = padding,
    counted in the padded frame as ``reads_padded``)."""
    size = body.get("input")
    size = size if isinstance(size, list) else [size]
    if len(size) not in (1, 2):
        raise Refused(f"input is one size (1-D) or two (2-D, [H, W]); received: {brief(repr(body.get('input')))}")
    dims = len(size)
    size = _positive({"input": size}, "input", dims)
    kernel = _positive(body, "kernel", dims)
    stride = _positive(body, "stride", dims)
    dilation = _positive(body, "dilation", dims)
    padding = body.get("padding", "valid")
    if isinstance(padding, str) and plain_int(padding, 7) is not None:
        padding = plain_int(padding, 7)
    if not (
        padding in PAD_MODES
        or (isinstance(padding, int) and not isinstance(padding, bool) and 0 <= padding <= MAX_SIZE)
    ):
        raise Refused(
            f"padding must be valid, same, caffe or a number of cells from 0 to {MAX_SIZE:,}; received: "
            f"{brief(repr(padding))}"
        )
    out = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        before, after = (padding, padding) if isinstance(padding, int) else same_pad(n, k, s, d, padding)
        span = d * (k - 1) + 1  # cells one kernel covers, dilation included
        room = n + before + after - span
        if room < 0:
            raise Refused(
                f"the kernel spans {span} cells (dilation {d} x (kernel {k} - 1) + 1) but the "
                f"padded input has {n + before + after}: make the kernel smaller or pad more"
            )
        o = room // s + 1  # floor((n + p_before + p_after - d(k-1) - 1) / s) + 1
        dim = {
            "input": n,
            "kernel": k,
            "stride": s,
            "dilation": d,
            "pad_before": before,
            "pad_after": after,
            "output": o,
            "formula": f"floor(({n} + {before} + {after} - {d}*({k}-1) - 1) / {s}) + 1 = floor({room} / {s}) + 1 = {o}",
        }
        if n + before + after <= MAX_DRAWN * 2 and n <= MAX_DRAWN:
            # output i reads padded cells i*s + j*d, j < k; padded cell c is input cell c - before
            dim["reads_padded"] = [[i * s + j * d for j in range(k)] for i in range(o)]
        out.append(dim)
    return {
        "dims": out,
        "output": [d["output"] for d in out],
        "padding": padding,
        "rule": "TensorFlow 'same': the odd extra padding cell goes at the end (bottom/right)"
        if padding == "same"
        else "Caffe: the odd extra padding cell goes at the start (top/left)"
        if padding == "caffe"
        else "no padding"
        if padding == "valid"
        else f"{padding} cell(s) on every side",
    }

"""TensorFlow-style "same" padding for any stride, as a pure function of the input size.

PyTorch's ``padding="same"`` only works for stride 1; TensorFlow/Keras pads so that
``output = ceil(size / stride)`` for any stride, putting the odd extra pixel at the end
(bottom/right). Caffe-converted weights expect it at the start (top/left) instead.

>>> same_pad(224, kernel=3, stride=2)   # 224 -> 112: total 1, the extra one at the end
(0, 1)
>>> same_pad(224, kernel=3, stride=2, mode="caffe")
(1, 0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnkit.errors import CnnkitError

PAD_MODES = ("same", "caffe", "valid")


def _check_mode(mode: str) -> None:
    if mode not in PAD_MODES:
        raise CnnkitError(f"unknown padding mode {mode!r}; use one of {', '.join(PAD_MODES)}. Received: mode={mode!r}")


def same_pad(size: int, kernel: int, stride: int = 1, dilation: int = 1, mode: str = "same") -> tuple[int, int]:
    """Padding ``(before, after)`` of one dimension so that ``output = ceil(size / stride)``.

    ``total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``, which is
    ``max((kernel - 1) * dilation - (size - 1) % stride, 0)``; ``mode="same"`` puts ``total // 2``
    before and the odd extra after (TensorFlow), ``mode="caffe"`` puts the odd extra before,
    ``mode="valid"`` pads nothing. Only integer operators touch ``size``, so an exporter that
    traces it symbolically (``torch.export``, the TorchScript tracer) keeps the padding a function
    of the input size instead of baking the example's value into the graph.

    Args:
        size: the input's length along the dimension (an int, or a symbolic size while exporting).
        kernel: the kernel's length.
        stride: the stride.
        dilation: the dilation.
        mode: "same", "caffe" or "valid".

    Returns:
        ``(before, after)``.

    Raises:
        CnnkitError: an unknown ``mode``.
    """
    _check_mode(mode)
    span = (kernel - 1) * dilation
    if mode == "valid" or span == 0:
        return 0, 0
    total = span - (size - 1) % stride
    if span < stride - 1:  # only then can it be negative
        total = _max0(total)
    small = total // 2
    large = total - small
    return (small, large) if mode == "same" else (large, small)


def _max0(value):
    """``max(value, 0)`` for an int, a symbolic int or a traced size."""
    if isinstance(value, torch.Tensor):
        return value.clamp(min=0)
    if isinstance(value, int):
        return max(value, 0)
    return torch.sym_max(value, 0)


def _ntuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, Sequence):
        if len(value) != n:
            raise CnnkitError(f"expected {n} values, one per spatial dimension. Received: {tuple(value)}")
        return tuple(int(v) for v in value)
    return (int(value),) * n


def pad_for(x_spatial_sizes: Sequence[int], kernel, stride=1, dilation=1, mode: str = "same") -> list[int]:
    """The ``pad`` list for :func:`torch.nn.functional.pad`: last dimension first.

    For a 2-D input of height H and width W: ``[left, right, top, bottom]``.
    ``kernel``, ``stride`` and ``dilation`` are ints or one value per spatial dimension.
    """
    n = len(x_spatial_sizes)
    ks, ss, ds = _ntuple(kernel, n), _ntuple(stride, n), _ntuple(dilation, n)
    pad: list[int] = []
    for size, k, s, d in reversed(list(zip(x_spatial_sizes, ks, ss, ds))):
        pad.extend(same_pad(size, k, s, d, mode))
    return pad


def is_static_pad(kernel, stride=1, dilation=1, n: int = 2) -> bool:
    """True when "same" padding is symmetric whatever the input size (stride 1, odd span).

    Then an ordinary ``padding=(kernel - 1) * dilation // 2`` does the job and no
    ``F.pad`` is needed in ``forward``.
    """
    ks, ss, ds = _ntuple(kernel, n), _ntuple(stride, n), _ntuple(dilation, n)
    return all(s == 1 and ((k - 1) * d) % 2 == 0 for k, s, d in zip(ks, ss, ds))

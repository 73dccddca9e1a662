"""Convolutions with TensorFlow/Keras ``padding="same"`` (or Caffe's) for any stride.

They are ordinary ``nn.Conv1d/2d/3d`` (state dict ``weight``, ``bias``) that pad in
``forward`` when the padding depends on the input size (stride > 1, or an even kernel).
When it does not (stride 1, odd kernel) they use a fixed symmetric ``padding`` and
behave exactly like the plain convolution.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.layers.bf16 import conv_forward
from cnnkit.layers.padding import PAD_MODES, _ntuple, is_static_pad, pad_for


def resolve_padding(padding, kernel, stride, dilation, n: int):
    """Split ``padding`` into a fixed part for ``nn.ConvNd`` and a dynamic mode (or None).

    ``padding`` is an int, a tuple, or one of ``"same"``, ``"caffe"``, ``"valid"``.
    """
    if isinstance(padding, str):
        if padding not in PAD_MODES:
            raise CnnkitError(
                f"unknown padding {padding!r}; use an int, a tuple, or one of {', '.join(PAD_MODES)}. "
                f"Received: padding={padding!r}"
            )
        if padding == "valid":
            return 0, None
        if is_static_pad(kernel, stride, dilation, n):
            ks, ds = _ntuple(kernel, n), _ntuple(dilation, n)
            return tuple((k - 1) * d // 2 for k, d in zip(ks, ds)), None
        return 0, padding
    return padding, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same state dict) that follows cnnkit's CPU bf16 rule for depthwise convolutions
    (:func:`cnnkit.layers.bf16.conv_forward`): fp32 where its backward pass is faster so, bf16 with the
    weight gradient in 3x3 pieces for a wide kernel whose filters train."""

    bf16_rule_in_forward = True  # conv_forward: cnnkit.layers.bf16.guard_bf16 leaves it as it is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_forward(self, x)


class _DynamicPad:
    """Mixin for ``nn.ConvNd``: pad the input in ``forward`` when ``pad_mode`` is set."""

    pad_mode: str | None
    bf16_rule_in_forward = True  # conv_forward on the padded input: guard_bf16 leaves it as it is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode is not None:
            x = F.pad(x, pad_for(x.shape[2:], self.kernel_size, self.stride, self.dilation, self.pad_mode))
        return conv_forward(self, x)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", pad_mode={self.pad_mode}" if self.pad_mode else "")


def _init_same(conv, base, n, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, mode):
    if mode not in ("same", "caffe"):
        raise CnnkitError(f"{type(conv).__name__} pads 'same' or 'caffe'. Received: mode={mode!r}")
    fixed, pad_mode = resolve_padding(mode, kernel_size, stride, dilation, n)
    base.__init__(
        conv,
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=fixed,
        dilation=dilation,
        groups=groups,
        bias=bias,
    )
    conv.pad_mode = pad_mode


class Conv1dSame(_DynamicPad, nn.Conv1d):
    """``nn.Conv1d`` with TF "same" padding: ``L_out = ceil(L / stride)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        mode: str = "same",
    ):
        _init_same(self, nn.Conv1d, 1, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, mode)


class Conv2dSame(_DynamicPad, nn.Conv2d):
    """``nn.Conv2d`` with TF "same" padding: ``(H, W) -> (ceil(H / s), ceil(W / s))``.

    >>> Conv2dSame(3, 8, 3, stride=2)(torch.zeros(1, 3, 200, 300)).shape
    torch.Size([1, 8, 100, 150])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        mode: str = "same",
    ):
        _init_same(self, nn.Conv2d, 2, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, mode)


class Conv3dSame(_DynamicPad, nn.Conv3d):
    """``nn.Conv3d`` with TF "same" padding: each of (D, H, W) becomes ``ceil(size / stride)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        mode: str = "same",
    ):
        _init_same(self, nn.Conv3d, 3, in_channels, out_channels, kernel_size, stride, dilation, groups, bias, mode)


def conv_transpose_same_args(kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """``(padding, output_padding)`` that make ``nn.ConvTranspose`` give ``output = input * stride``.

    PyTorch: ``out = (in - 1) * s - 2 * padding + d * (k - 1) + output_padding + 1``.
    With ``total = d * (k - 1) + 1 - s`` this needs ``2 * padding - output_padding = total``.
    When ``total`` is odd PyTorch crops the extra pixel at the start, TensorFlow at the end:
    the sizes agree but the output is shifted by one pixel; :class:`ConvTranspose2dSame`
    matches TensorFlow exactly.
    """
    total = dilation * (kernel - 1) + 1 - stride
    if total <= 0:
        return 0, -total
    padding = (total + 1) // 2
    return padding, 2 * padding - total


def transpose_crops(
    kernel: int, stride: int, dilation: int, padding: str, output_padding: int | None
) -> tuple[int, int]:
    """What Keras' transposed convolution takes off PyTorch's full output on one axis: (start, end).

    PyTorch's ``nn.ConvTranspose`` without padding gives ``(L - 1) s + K`` positions (``K = d (k - 1) + 1``).
    Keras gives ``(L - 1) s + K + op`` for "valid" (``op`` is ``output_padding``, by default
    ``max(K, s) - K``) and for "same" ``L s``, or ``(L - 1) s + K % 2 + op`` with ``output_padding``.
    The positions cut are TensorFlow's (the gradient of a "same" convolution): ``floor(total / 2)``
    at the start, the rest at the end; a negative end appends that many zeros (the bias only).

    >>> transpose_crops(3, 2, 1, "same", None), transpose_crops(3, 2, 1, "same", 0), transpose_crops(2, 3, 1, "valid", None)
    ((0, 1), (1, 1), (0, -1))
    """
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        return 0, -(max(span, stride) - span if output_padding is None else output_padding)
    total = span - stride if output_padding is None else span - span % 2 - output_padding
    start = max(total, 0) // 2
    return start, total - start


def transpose_geometry(
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: str = "same",
    output_padding: tuple[int | None, ...] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Per axis, PyTorch's ``padding`` and ``output_padding`` and :class:`KerasTransposed`'s ``trim``
    that give Keras' transposed convolution (:func:`transpose_crops`).

    An axis whose end grows (by less than its stride: Keras keeps ``output_padding`` below it, and
    ``max(K, s) - K < s``) takes PyTorch's ``output_padding``; one that is cut loses the smaller cut at
    each side to PyTorch's ``padding`` and the rest in ``forward``.

    >>> transpose_geometry((3, 2), (2, 3), (1, 1), "same")
    ((0, 0), (0, 1), ((0, 1), (0, 0)))
    """
    ops = output_padding if output_padding is not None else (None,) * len(kernel)
    crops = [transpose_crops(k, s, d, padding, o) for k, s, d, o in zip(kernel, stride, dilation, ops)]
    pad = tuple(max(min(start, end), 0) for start, end in crops)
    grow = tuple(max(-end, 0) for _, end in crops)
    trim = tuple((start - p, max(end, 0) - p) for (start, end), p in zip(crops, pad))
    return pad, grow, trim


class KerasTransposed:
    """Mixin for ``nn.ConvTranspose1d/2d/3d``: Keras' window of PyTorch's output. ``trim`` holds, per
    spatial axis, the positions cut at the start and at the end beyond PyTorch's symmetric ``padding``
    (:func:`transpose_geometry`)."""

    trim: tuple[tuple[int, int], ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        for axis, (start, end) in enumerate(self.trim, start=2):
            if start or end:
                y = y.narrow(axis, start, y.shape[axis] - start - end)
        return y


class ConvTranspose2dSame(KerasTransposed, nn.ConvTranspose2d):
    """Keras ``Conv2DTranspose(padding="same")``: ``(H, W) -> (H * s, W * s)``, TF-aligned.

    State dict ``weight`` (in, out // groups, kH, kW) and ``bias``, as ``nn.ConvTranspose2d``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1, groups: int = 1, bias: bool = True
    ):
        ks, ss, ds = _ntuple(kernel_size, 2), _ntuple(stride, 2), _ntuple(dilation, 2)
        padding, output_padding, trim = transpose_geometry(ks, ss, ds, "same")
        super().__init__(
            in_channels,
            out_channels,
            ks,
            stride=ss,
            padding=padding,
            output_padding=output_padding,
            groups=groups,
            bias=bias,
            dilation=ds,
        )
        self.trim = trim

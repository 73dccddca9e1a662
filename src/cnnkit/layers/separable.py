"""Depthwise and depthwise-separable convolutions, as Keras ``DepthwiseConv2D`` / ``SeparableConv2D``.

A separable convolution filters each input channel on its own (``depthwise``, k x k x 1 per
channel and multiplier) and then mixes channels with a 1x1 convolution (``pointwise``):
``C_in * k * k * m + C_in * m * C_out`` weights instead of ``C_in * k * k * C_out``
(Chollet 2017, Xception, https://arxiv.org/abs/1610.02357).

>>> sum(p.numel() for p in SeparableConv2d(3, 256, 5, bias=False).parameters())
843
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.layers.bf16 import is_depthwise
from cnnkit.layers.conv_same import _DynamicPad, resolve_padding


class DepthwiseConv2d(_DynamicPad, nn.Conv2d):
    """One k x k filter per input channel (``depth_multiplier`` of them): ``groups = in_channels``.

    Args:
        padding: an int or tuple, or ``"valid"``, ``"same"`` (TensorFlow) or ``"caffe"``.
    Shape: (B, C, H, W) -> (B, C * depth_multiplier, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        depth_multiplier: int = 1,
        bias: bool = True,
    ):
        fixed, pad_mode = resolve_padding(padding, kernel_size, stride, dilation, 2)
        super().__init__(
            in_channels,
            in_channels * depth_multiplier,
            kernel_size,
            stride=stride,
            padding=fixed,
            dilation=dilation,
            groups=in_channels,
            bias=bias,
        )
        self.pad_mode = pad_mode


class SeparableConv2d(nn.Module):
    """Depthwise k x k (no bias) then pointwise 1x1 (with ``bias``), as Keras ``SeparableConv2D``.

    Shape: (B, C_in, H, W) -> (B, C_out, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        depth_multiplier: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.depthwise = DepthwiseConv2d(
            in_channels, kernel_size, stride, padding, dilation, depth_multiplier, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels * depth_multiplier, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def keep_depthwise(module: nn.Module) -> int:
    """Leave every depthwise filter of ``module`` as it is (``requires_grad=False`` on its weight).

    Fine-tuning a pretrained backbone this way skips the depthwise weight gradients: on a CPU,
    oneDNN has no depthwise kernel for a channels-last weight gradient and computes it many times
    slower than the forward pass (a 5x5 over 8 x 672 x 20 x 20: 6 ms against under 1 ms for the
    input gradient). The gradient still flows through them to the layers before. Returns how many
    filters were kept.

    >>> keep_depthwise(SeparableConv2d(8, 16, 3))
    1
    """
    kept = 0
    for m in module.modules():
        if is_depthwise(m) and m.weight.requires_grad:
            m.weight.requires_grad_(False)
            kept += 1
    return kept

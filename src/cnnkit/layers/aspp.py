"""Atrous (dilated) convolution and Atrous Spatial Pyramid Pooling, as DeepLab-v3 has them
(Chen et al. 2017, https://arxiv.org/abs/1706.05587, section 3.3).

ASPP runs five branches on the backbone's last map and concatenates them: a 1x1 conv, three 3x3
convs with dilation rates (6, 12, 18) at output stride 16 (twice that at output stride 8), and image
pooling (global average, 1x1 conv, bilinear back to the map's size); a 1x1 conv then fuses them.
Every conv is followed by batch norm and ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.layers.conv_bn_act import ConvNormAct
from cnnkit.layers.upsample import resize


class AtrousConv2d(ConvNormAct):
    """A 3x3 (or k x k) conv with dilation ``rate`` and padding ``rate * (k - 1) / 2``, then BN, ReLU.

    The receptive field grows to ``rate * (k - 1) + 1`` px without more weights or lost resolution.
    Shape: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, rate: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, dilation=rate)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: (B, C, H, W) -> mean over H, W -> 1x1 conv, BN, ReLU -> (B, C', H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvNormAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(self.conv(self.pool(x)), x.shape[-2:], "bilinear")  # (B, C', 1, 1) -> (B, C', H, W)


class ASPP(nn.Module):
    """DeepLab-v3's Atrous Spatial Pyramid Pooling.

    Args:
        in_channels: channels of the backbone map.
        out_channels: channels of each branch and of the output (256 in the paper).
        rates: the three dilation rates; (6, 12, 18) at output stride 16, (12, 24, 36) at 8.
        dropout: after the fusing conv (0.1 in the paper's released code).
    Shape: (B, C_in, H, W) -> (B, out_channels, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.1
    ):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvNormAct(in_channels, out_channels, 1)]
            + [AtrousConv2d(in_channels, out_channels, r) for r in rates]
            + [ImagePooling(in_channels, out_channels)]
        )
        self.project = ConvNormAct(out_channels * len(self.branches), out_channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.rates = tuple(rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], 1)  # (B, 5 * C', H, W)
        return self.dropout(self.project(y))  # (B, C', H, W)


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLab-v3's rates for an output stride: (6, 12, 18) at 16, doubled at 8, halved at 32."""
    rates = {32: (3, 6, 9), 16: (6, 12, 18), 8: (12, 24, 36)}
    if output_stride not in rates:
        raise CnnkitError(f"output_stride must be 8, 16 or 32. Received: output_stride={output_stride!r}")
    return rates[output_stride]

"""Squeeze-and-excitation: channel attention from a global average (Hu et al. 2018,
https://arxiv.org/abs/1709.01507).

``y = x * gate(fc2(act(fc1(mean_hw(x)))))`` with ``fc1``/``fc2`` 1x1 convolutions, the
layout (and state-dict keys ``fc1.weight``, ``fc1.bias``, ``fc2.*``) of timm's ``SEModule``
and torchvision's ``SqueezeExcitation``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SqueezeExcite(nn.Module):
    """Rescale each channel by a gate computed from all channels' means.

    Args:
        channels: C, channels in and out.
        rd_channels: width of the bottleneck; ``max(1, channels // reduction)`` when None.
        reduction: r of the paper (16).
        act: activation class between the two 1x1 convolutions.
        gate: gate class (``nn.Sigmoid``; MobileNetV3 uses ``nn.Hardsigmoid``).
    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int | None = None,
        reduction: int = 16,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd_channels = rd_channels or max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, H, W) -> (B, C, 1, 1)
        s = self.fc2(self.act(self.fc1(s)))  # (B, C, 1, 1) -> (B, rd, 1, 1) -> (B, C, 1, 1)
        return x * self.gate(s)

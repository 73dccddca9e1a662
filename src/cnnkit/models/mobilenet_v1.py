"""MobileNetV1: a stack of depthwise-separable convolutions, with timm's ``mobilenetv1_100`` layout.

Paper: Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", https://arxiv.org/abs/1704.04861. State-dict keys (``conv_stem``, ``bn1``,
``blocks.3.2.conv_dw``, ``classifier``) equal timm's ``mobilenetv1_100``, whose weights load with
``strict=True``. As timm builds it: ReLU6, BatchNorm eps=1e-5, no head convolution, no dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cnnkit.layers import make_divisible
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model

# one row per stage: (output channels, repeats, stride of the first repeat) -- paper Table 1
_STAGES = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise -> BN -> ReLU6 -> 1x1 pointwise -> BN -> ReLU6 (no shortcut).

    Shape: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))  # (B, C_in, H, W) -> (B, C_in, H/s, W/s)
        return self.act2(self.bn2(self.conv_pw(x)))  # -> (B, C_out, H/s, W/s)


class MobileNetV1(Classifier):
    """3x3 stride-2 stem, 13 depthwise-separable blocks in 5 stages, global pooling, Linear.

    Args:
        num_classes: classifier outputs; 0 replaces the Linear by ``nn.Identity``.
        in_channels: image channels; changes only ``conv_stem``.
        width_mult: the paper's width multiplier alpha (channels rounded to multiples of 8).
    Input shape: (B, in_channels, H, W). Output shape: (B, num_classes).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        check_args(num_classes, in_channels)
        channels = make_divisible(32 * width_mult)
        self.conv_stem = nn.Conv2d(in_channels, channels, 3, 2, 1, bias=False)  # -> (B, 32, H/2, W/2)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU6(inplace=True)
        stages = []
        for out, repeats, stride in _STAGES:
            out = make_divisible(out * width_mult)
            blocks = []
            for i in range(repeats):
                blocks.append(DepthwiseSeparable(channels, out, stride if i == 0 else 1))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)  # (B, 32, H/2, W/2) -> (B, 1024, H/32, W/32)
        self.num_features = channels
        self.num_classes = num_classes
        self.classifier = _linear(channels, num_classes)
        for m in self.modules():
            _init_goog(m)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, 1024, h, w) -> (B, 1024)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Linear with ``num_classes`` outputs (0: Identity)."""
        check_args(num_classes, 1)
        w = self.conv_stem.weight
        self.classifier = _linear(self.num_features, num_classes).to(w.device, w.dtype)
        self.num_classes = num_classes


def _linear(in_features: int, num_classes: int) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    fc = nn.Linear(in_features, num_classes)
    _init_goog(fc)
    return fc


def _init_goog(m: nn.Module) -> None:
    """timm's EfficientNet init (after the TF reference).

    Conv: N(0, sqrt(2 / fan_out)) with ``fan_out = k*k*out / groups``; BN: 1, 0;
    Linear: U(-1/sqrt(out), 1/sqrt(out)); biases 0.
    """
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        bound = 1.0 / math.sqrt(m.weight.shape[0])
        nn.init.uniform_(m.weight, -bound, bound)
        nn.init.zeros_(m.bias)


@register_model(input_size=(3, 224, 224), paper="Howard et al. 2017", family="mobilenet")
def mobilenet_v1(num_classes: int = 1000, in_channels: int = 3, **kw) -> MobileNetV1:
    """timm's ``mobilenetv1_100``."""
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels, **kw)

"""SE-ResNet: ResNet bottlenecks with squeeze-and-excitation, with timm's ``seresnet50`` layout.

Paper: Hu et al. 2018, "Squeeze-and-Excitation Networks", https://arxiv.org/abs/1709.01507.
The SE module rescales the channels of each block's residual branch after ``bn3``, before the
shortcut is added. Keys (``layer1.0.se.fc1.weight``, ``layer1.0.downsample.0``, ``fc``) equal timm's
``seresnet50``, so its weights load with ``strict=True``. As timm does, each block's ``bn3``
starts at weight 0 (every block begins as the identity).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.layers import SqueezeExcite, make_divisible
from cnnkit.models._registry import register_model
from cnnkit.models.resnet import Bottleneck, ResNet


class SEBottleneck(Bottleneck):
    """torchvision's Bottleneck plus ``se``: ``relu(se(bn3(conv3(...))) + shortcut(x))``.

    The SE bottleneck is ``C / 16`` channels (timm rounds to a multiple of 8, never up: ``round_limit=0``).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer=None,
        reduction: int = 16,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, norm_layer)
        channels = planes * self.expansion
        self.se = SqueezeExcite(channels, make_divisible(channels / reduction, 8, round_limit=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, inplanes, H, W) -> (B, width, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # -> (B, width, H/s, W/s)
        out = self.se(self.bn3(self.conv3(out)))  # -> (B, 4 * planes, H/s, W/s), channels rescaled
        return self.relu(out + identity)


@register_model(input_size=(3, 224, 224), paper="Hu et al. 2018", family="senet")
def seresnet50(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    """timm's ``seresnet50``: ResNet-50 (v1.5, stride on the 3x3) with SE in every bottleneck."""
    kw.setdefault("zero_init_residual", True)  # timm's zero_init_last
    return ResNet(SEBottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, **kw)

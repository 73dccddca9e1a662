"""MobileNetV2: inverted residuals and linear bottlenecks, with torchvision's layout and state-dict names.

Paper: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
https://arxiv.org/abs/1801.04381. State-dict keys (``features.1.conv.0.0.weight``,
``classifier.1.weight``) equal torchvision's ``mobilenet_v2``, so its weights load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.layers import ConvNormAct, make_divisible
from cnnkit.models._common import PooledClassifier, check_args
from cnnkit.models._registry import register_model

# t: expansion factor, c: output channels, n: repeats, s: stride of the first repeat (paper Table 2)
_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear project, plus ``x`` when shapes agree.

    Shape: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, act_layer=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act_layer=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(PooledClassifier):
    """A 3x3 stem, 17 inverted residuals, a 1x1 conv to 1280 channels, pooling, dropout, Linear.

    Args:
        num_classes: classifier outputs; 0 replaces the Linear by ``nn.Identity``.
        in_channels: image channels; changes only the stem convolution.
        width_mult: multiplies every width (rounded to a multiple of 8); the last 1280 never shrinks.
        dropout: dropout before the Linear (0.2).
    Input shape: (B, in_channels, H, W). Output shape: (B, num_classes).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        check_args(num_classes, in_channels)
        channels = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, 2, act_layer=nn.ReLU6)]
        for t, c, n, s in _SETTING:
            out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        features.append(ConvNormAct(channels, self.num_features, 1, act_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)  # (B, C, H, W) -> (B, 1280, H/32, W/32)
        self.num_classes = num_classes
        self.classifier = nn.Sequential(nn.Dropout(dropout), _linear(self.num_features, num_classes))

        init_weights(self)

    def new_linear(self, in_features: int, num_classes: int) -> nn.Module:
        return _linear(in_features, num_classes)


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet v2/v3 init: convs Kaiming-normal (fan_out), BN 1 and 0, Linear N(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _linear(in_features: int, num_classes: int) -> nn.Module:
    """torchvision's MobileNet classifier init: N(0, 0.01) weights, zero bias."""
    if num_classes == 0:
        return nn.Identity()
    fc = nn.Linear(in_features, num_classes)
    nn.init.normal_(fc.weight, 0, 0.01)
    nn.init.zeros_(fc.bias)
    return fc


@register_model(input_size=(3, 224, 224), paper="Sandler et al. 2018", family="mobilenet")
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, **kw) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, **kw)

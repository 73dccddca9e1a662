"""VGG-11/13/16/19, with and without batch norm, with torchvision's layout and state-dict names.

Paper: "Very Deep Convolutional Networks for Large-Scale Image Recognition" https://arxiv.org/abs/1409.1556

A variant is a row of data in :data:`CFGS`: an int is a 3x3 convolution (padding 1) with that many
output channels, followed by ReLU (and BatchNorm before it in the ``_bn`` variants); ``"M"`` is a
2x2 max pool with stride 2. State-dict keys are ``features.<i>`` and ``classifier.{0,3,6}``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.models._common import Classifier
from cnnkit.models._common import check_args as _check_args
from cnnkit.models._registry import register_model

# variant -> layers; the letters are the paper's Table 1 columns
CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # A
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # B
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # D
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],  # E
}


def make_layers(cfg: list[int | str], batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    """The convolutional trunk of one row of :data:`CFGS`.

    Input shape: (B, in_channels, H, W). Output shape: (B, last width, H / 2^k, W / 2^k) for k pools.
    """
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))  # (B, C, H, W) -> (B, C, H/2, W/2)
            continue
        if not isinstance(v, int):
            raise CnnkitError(f"a VGG layer is an int (conv width) or 'M' (max pool); received: {v!r}")
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))  # the conv keeps its bias with BN too
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(Classifier):
    """A trunk of 3x3 convolutions and max pools, a 7x7 adaptive average pool, a 3-layer MLP.

    Args:
        cfg: one row of :data:`CFGS` (or your own list of widths and ``"M"``).
        batch_norm: BatchNorm2d after each convolution.
        num_classes: classifier outputs; 0 replaces the last Linear by ``nn.Identity``.
        in_channels: image channels; changes only the first convolution.
        dropout: dropout probability after each of the two hidden Linear + ReLU layers.

    ``num_features`` is 4096, the input width of the last Linear; ``forward_head(x, pre_logits=True)``
    returns that 4096-wide vector. The trunk's own width (512) is ``forward_features(x).shape[1]``.

    Input shape: (B, in_channels, H, W) with H, W >= 32 (224 is the ImageNet size).
    Output shape: (B, num_classes).
    """

    def __init__(
        self,
        cfg: list[int | str],
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_args(num_classes, in_channels)
        widths = [v for v in cfg if v != "M"]
        if not widths:
            raise CnnkitError(f"a VGG cfg needs at least one convolution; received: cfg={cfg!r}")
        self.features = make_layers(cfg, batch_norm, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.num_features = 4096
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Linear(widths[-1] * 7 * 7, 4096),  # (B, 512 * 7 * 7) -> (B, 4096)
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            _classifier(self.num_features, num_classes),  # (B, 4096) -> (B, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) -> (B, 512, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512, h, w) -> (B, 512 * 7 * 7)
        x = self.classifier[:-1](x)  # -> (B, 4096)
        return x if pre_logits else self.classifier[-1](x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear by a freshly initialised one with ``num_classes`` outputs (0: Identity)."""
        _check_args(num_classes, 1)
        ref = self.classifier[0].weight
        self.classifier[-1] = _classifier(self.num_features, num_classes).to(ref.device, ref.dtype)
        self.num_classes = num_classes


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    fc = nn.Linear(num_features, num_classes)
    nn.init.normal_(fc.weight, 0, 0.01)  # as torchvision initialises every VGG Linear
    nn.init.constant_(fc.bias, 0)
    return fc


_PAPER = "Simonyan & Zisserman 2014"


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg11(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg11"], False, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg13(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg13"], False, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg16(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg16"], False, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg19(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg19"], False, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg11"], True, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg13_bn(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg13"], True, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg16"], True, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="vgg")
def vgg19_bn(num_classes: int = 1000, in_channels: int = 3, **kw) -> VGG:
    return VGG(CFGS["vgg19"], True, num_classes=num_classes, in_channels=in_channels, **kw)

"""Xception: depthwise-separable convolutions with residual connections, with timm's
``legacy_xception`` layout (the Keras/Cadene port) and state-dict names.

Paper: Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions",
https://arxiv.org/abs/1610.02357. Keys (``block1.rep.0.conv1.weight``, ``block1.skipbn``,
``conv3.pointwise``, ``fc``) equal timm's ``legacy_xception``, whose weights load with ``strict=True``.
The default input is 299x299; the two stem convolutions are unpadded (299 -> 149 -> 147).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model


class SeparableConv(nn.Module):
    """3x3 depthwise (``conv1``) then 1x1 pointwise, no biases -- the Keras ``SeparableConv2D`` with
    timm's legacy names (``cnnkit.layers.SeparableConv2d`` is the same with ``depthwise``/``pointwise``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """``reps`` x (ReLU -> separable conv -> BN), an optional 3x3 stride-2 max pool, plus a shortcut.

    The shortcut is ``x`` or, when the shape changes, a strided 1x1 conv + BN (``skip``, ``skipbn``).
    ``grow_first`` widens in the first separable conv (else in the last); ``start_with_relu=False``
    drops the leading ReLU (block 1, right after the stem's ReLU).
    Shape: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ):
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
        rep: list[nn.Module] = []
        for i in range(reps):
            if grow_first:
                inc, outc = (in_channels if i == 0 else out_channels), out_channels
            else:
                inc, outc = in_channels, (in_channels if i < reps - 1 else out_channels)
            # the first ReLU must not overwrite the block input: the shortcut still needs it
            rep += [nn.ReLU(inplace=i > 0), SeparableConv(inc, outc), nn.BatchNorm2d(outc)]
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + shortcut


class Xception(Classifier):
    """Entry flow (stem, blocks 1-3), middle flow (blocks 4-11, 728 channels), exit flow, pooling, Linear.

    Args:
        num_classes: classifier outputs; 0 replaces ``fc`` by ``nn.Identity``.
        in_channels: image channels; changes only ``conv1``.
        drop_rate: dropout before ``fc`` (0 in timm).
    Input shape: (B, in_channels, H, W), H and W >= 7. Output shape: (B, num_classes).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__()
        check_args(num_classes, in_channels)
        self.drop_rate = drop_rate
        self.num_features = 2048
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 2, 0, bias=False)  # 299 -> 149
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)  # 149 -> 147
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)  # 147 -> 74
        self.block2 = Block(128, 256, 2, 2)  # -> 37
        self.block3 = Block(256, 728, 2, 2)  # -> 19
        for i in range(4, 12):  # middle flow, 19x19x728
            self.add_module(f"block{i}", Block(728, 728, 3, 1))
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)  # -> 10
        self.conv3 = SeparableConv(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv(1536, self.num_features)
        self.bn4 = nn.BatchNorm2d(self.num_features)
        self.act4 = nn.ReLU(inplace=True)
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))  # (B, C, 299, 299) -> (B, 64, 147, 147)
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)  # -> (B, 1024, 10, 10)
        x = self.act3(self.bn3(self.conv3(x)))
        return self.act4(self.bn4(self.conv4(x)))  # -> (B, 2048, 10, 10)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, 2048, h, w) -> (B, 2048)
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``fc`` with ``num_classes`` outputs (0: Identity)."""
        check_args(num_classes, 1)
        w = self.conv1.weight
        self.fc = _classifier(self.num_features, num_classes).to(w.device, w.dtype)
        self.num_classes = num_classes


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()  # PyTorch default init


@register_model(input_size=(3, 299, 299), paper="Chollet 2017", family="xception")
def xception(num_classes: int = 1000, in_channels: int = 3, **kw) -> Xception:
    """timm's ``legacy_xception``."""
    return Xception(num_classes=num_classes, in_channels=in_channels, **kw)

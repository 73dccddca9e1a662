"""Inception v3, with torchvision's layout and state-dict names, without the auxiliary head.

Paper: "Rethinking the Inception Architecture for Computer Vision" https://arxiv.org/abs/1512.00567

Five module types (A-E, the paper's figures 5, 6 and 7 plus the two grid reductions) over a
stem of plain convolutions; every convolution is conv (no bias) + BatchNorm(eps=0.001) + ReLU.
State-dict keys (``Conv2d_1a_3x3.conv``, ``Mixed_5b.branch5x5_1.bn``, ``fc``) equal torchvision's
for ``aux_logits=False``, so its weights load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.models._common import Classifier
from cnnkit.models._common import check_args as _check_args
from cnnkit.models._registry import register_model
from cnnkit.models.googlenet import (
    BasicConv2d,
    _classifier,
    _trunc_normal,
    inception_input_transform,
)

# torchvision: normal(0, 0.1) truncated to [-2, 2] for every conv and Linear (the aux head's
# 0.01 / 0.001 exceptions do not apply here)
_STD = 0.1


class InceptionA(nn.Module):
    """35x35 module (figure 5): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1.

    Input shape: (B, in_channels, H, W). Output shape: (B, 224 + pool_features, H, W).
    """

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)  # (B, C, H, W) -> (B, 64 + 64 + 96 + pool_features, H, W)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2.

    Input shape: (B, in_channels, H, W).
    Output shape: (B, 480 + in_channels, (H - 3) // 2 + 1, (W - 3) // 2 + 1).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)  # (B, C, H, W) -> (B, 384 + 96 + C, H', W')


class InceptionC(nn.Module):
    """17x17 module (figure 6): 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool -> 1x1.

    Args:
        in_channels: input channels (768 in the network).
        channels_7x7: inner width of the factorised 7x7 branches.

    Input shape: (B, in_channels, H, W). Output shape: (B, 768, H, W).
    """

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)  # (B, C, H, W) -> (B, 4 * 192, H, W)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2.

    Input shape: (B, in_channels, H, W).
    Output shape: (B, 512 + in_channels, (H - 3) // 2 + 1, (W - 3) // 2 + 1).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(b7)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)  # (B, C, H, W) -> (B, 320 + 192 + C, H', W')


class InceptionE(nn.Module):
    """8x8 module (figure 7), with split 1x3 / 3x1 outputs:
    1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | avg pool -> 1x1.

    Input shape: (B, in_channels, H, W). Output shape: (B, 2048, H, W).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)  # -> (B, 768, H, W)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)  # -> (B, 768, H, W)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)  # (B, C, H, W) -> (B, 320 + 768 + 768 + 192, H, W)


class Inception3(Classifier):
    """Stem, 3 x InceptionA, InceptionB, 4 x InceptionC, InceptionD, 2 x InceptionE, pool, dropout, Linear.

    Args:
        num_classes: classifier outputs; 0 replaces ``fc`` by ``nn.Identity``.
        in_channels: image channels; changes only ``Conv2d_1a_3x3.conv``.
        transform_input: re-scale an ImageNet-normalised input to the [-1, 1] range of the
            TensorFlow-ported weights (torchvision turns this on for its pretrained weights).
            Needs ``in_channels=3``.
        dropout: dropout probability before ``fc``.

    Input shape: (B, in_channels, H, W) with H, W >= 75 (299 is the ImageNet size).
    Output shape: (B, num_classes).
    """

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, transform_input: bool = False, dropout: float = 0.5
    ) -> None:
        super().__init__()
        _check_args(num_classes, in_channels, transform_input)
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.num_features = 2048
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes, _STD)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _trunc_normal(m.weight, _STD)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            x = inception_input_transform(x)
        x = self.Conv2d_1a_3x3(x)  # (B, C, 299, 299) -> (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # -> (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # -> (B, 64, 147, 147)
        x = self.maxpool1(x)  # -> (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # -> (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # -> (B, 192, 71, 71)
        x = self.maxpool2(x)  # -> (B, 192, 35, 35)
        x = self.Mixed_5b(x)  # -> (B, 256, 35, 35)
        x = self.Mixed_5c(x)  # -> (B, 288, 35, 35)
        x = self.Mixed_5d(x)  # -> (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # -> (B, 768, 17, 17)
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)  # -> (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # -> (B, 1280, 8, 8)
        x = self.Mixed_7b(x)  # -> (B, 2048, 8, 8)
        return self.Mixed_7c(x)  # -> (B, 2048, 8, 8)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.dropout(self.avgpool(x)), 1)  # (B, 2048, h, w) -> (B, 2048)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised Linear with ``num_classes`` outputs (0: Identity)."""
        _check_args(num_classes, 1)
        ref = self.Conv2d_1a_3x3.conv.weight
        self.fc = _classifier(self.num_features, num_classes, _STD).to(ref.device, ref.dtype)
        self.num_classes = num_classes


@register_model(input_size=(3, 299, 299), paper="Szegedy et al. 2015", family="inception")
def inception_v3(num_classes: int = 1000, in_channels: int = 3, **kw) -> Inception3:
    return Inception3(num_classes=num_classes, in_channels=in_channels, **kw)

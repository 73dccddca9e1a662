"""GoogLeNet (Inception v1), in torchvision's batch-normalised layout, without auxiliary heads.

Paper: "Going Deeper with Convolutions" https://arxiv.org/abs/1409.4842

As in torchvision: every convolution is conv (no bias) + BatchNorm(eps=0.001) + ReLU; the stem and
stage pools use ``ceil_mode=True``; and the "5x5" branch uses a 3x3 kernel (torchvision issue #906),
which its pretrained weights depend on. State-dict keys (``conv1.conv``, ``inception3a.branch2.1.bn``,
``fc``) equal torchvision's for ``aux_logits=False``, so those weights load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.constants import IMAGENET_MEAN, IMAGENET_STD
from cnnkit.models._common import Classifier
from cnnkit.models._common import check_args as _check_args
from cnnkit.models._registry import register_model


def inception_input_transform(x: torch.Tensor) -> torch.Tensor:
    """Re-scale an ImageNet-normalised RGB batch to the [-1, 1] range of the TensorFlow-ported weights.

    ``x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5``: undo ``(x - mean) / std``, then map [0, 1] to [-1, 1].
    Input and output shape: (B, 3, H, W).
    """
    scale = torch.tensor([s / 0.5 for s in IMAGENET_STD], dtype=x.dtype, device=x.device)
    shift = torch.tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], dtype=x.dtype, device=x.device)
    return x * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)


class BasicConv2d(nn.Module):
    """Convolution (no bias) + BatchNorm2d(eps=0.001) + ReLU; shared with Inception v3.

    Args:
        in_channels, out_channels: channels in and out.
        kernel_size, stride, padding: as ``nn.Conv2d`` (ints or (h, w) pairs).

    Input shape: (B, in_channels, H, W). Output shape: (B, out_channels, H', W') as ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """The Inception v1 module: four parallel branches concatenated along channels.

    Branches: 1x1; 1x1 reduce -> 3x3; 1x1 reduce -> "5x5" (a 3x3 kernel, as torchvision);
    3x3 max pool (stride 1, ceil mode) -> 1x1 projection. Every branch keeps H and W.

    Args:
        in_channels: input channels.
        ch1x1: outputs of the 1x1 branch.
        ch3x3red, ch3x3: reduction and outputs of the 3x3 branch.
        ch5x5red, ch5x5: reduction and outputs of the "5x5" branch.
        pool_proj: outputs of the pooling branch's 1x1 projection.

    Input shape: (B, in_channels, H, W).
    Output shape: (B, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W).
    """

    def __init__(
        self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int
    ) -> None:
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),  # 3x3, not the paper's 5x5: see above
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)  # (B, C, H, W) -> (B, out_channels, H, W)


class GoogLeNet(Classifier):
    """Stem, nine Inception modules in three stages, global average pooling, dropout, one Linear.

    Args:
        num_classes: classifier outputs; 0 replaces ``fc`` by ``nn.Identity``.
        in_channels: image channels; changes only ``conv1.conv``.
        transform_input: re-normalise an input made with ImageNet's mean/std into the [-1, 1]
            scaling the ported TensorFlow weights expect (torchvision turns this on for its
            pretrained weights). Needs ``in_channels=3``.
        dropout: dropout probability before ``fc``.

    Input shape: (B, in_channels, H, W) with H, W >= 15 (224 is the ImageNet size).
    Output shape: (B, num_classes).
    """

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, transform_input: bool = False, dropout: float = 0.2
    ) -> None:
        super().__init__()
        _check_args(num_classes, in_channels, transform_input)
        self.transform_input = transform_input

        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.num_features = 1024
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _trunc_normal(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            x = inception_input_transform(x)
        x = self.maxpool1(self.conv1(x))  # (B, C, 224, 224) -> (B, 64, 56, 56)
        x = self.conv3(self.conv2(x))  # -> (B, 192, 56, 56)
        x = self.maxpool2(x)  # -> (B, 192, 28, 28)
        x = self.inception3b(self.inception3a(x))  # -> (B, 480, 28, 28)
        x = self.maxpool3(x)  # -> (B, 480, 14, 14)
        x = self.inception4a(x)
        x = self.inception4b(x)
        x = self.inception4c(x)
        x = self.inception4d(x)
        x = self.inception4e(x)  # -> (B, 832, 14, 14)
        x = self.maxpool4(x)  # -> (B, 832, 7, 7)
        x = self.inception5a(x)
        return self.inception5b(x)  # -> (B, 1024, 7, 7)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))  # (B, 1024, h, w) -> (B, 1024)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised Linear with ``num_classes`` outputs (0: Identity)."""
        _check_args(num_classes, 1)
        ref = self.conv1.conv.weight
        self.fc = _classifier(self.num_features, num_classes).to(ref.device, ref.dtype)
        self.num_classes = num_classes


def _trunc_normal(weight: torch.Tensor, std: float = 0.01) -> None:
    # torchvision: normal(0, std) truncated to [-2, 2] (absolute bounds, so in effect untruncated)
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2, b=2)


def _classifier(num_features: int, num_classes: int, std: float = 0.01) -> nn.Module:
    """The last Linear (``Identity`` for 0 classes), initialised as torchvision's Inception family."""
    if num_classes == 0:
        return nn.Identity()
    fc = nn.Linear(num_features, num_classes)
    _trunc_normal(fc.weight, std)  # the bias keeps PyTorch's default, as in torchvision
    return fc


@register_model(input_size=(3, 224, 224), paper="Szegedy et al. 2014", family="googlenet")
def googlenet(num_classes: int = 1000, in_channels: int = 3, **kw) -> GoogLeNet:
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels, **kw)

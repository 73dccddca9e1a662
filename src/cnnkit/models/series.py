"""1-D CNNs that classify time series: FCN and ResNet (Wang, Yan & Oates 2017, "Time series
classification from scratch with deep neural networks: a strong baseline",
https://arxiv.org/abs/1611.06455) and InceptionTime's network (Ismail Fawaz et al. 2020,
"InceptionTime: Finding AlexNet for time series classification", https://arxiv.org/abs/1909.04939).

Layer sizes are those of the papers and of the reference Keras code (``hfawaz/dl-4-tsc``,
``hfawaz/InceptionTime``): convolutions with "same" padding keep the length L, so the last feature
map is aligned with the input and a class activation map (Zhou et al. 2016) reads off it directly
(:func:`cnnkit.explain.class_activation_map`). Every network ends in global average pooling and one
linear layer ``fc``; ``forward_features`` returns the last (B, C, L) feature map. As in the
reference code, FCN's and ResNet's convolutions keep their bias before batch norm (redundant, but it
makes the parameter counts the papers'), InceptionTime's have none. InceptionTime's kernels are
39/19/9 rather than the paper's 40/20/10: odd kernels pad symmetrically (Keras pads an even kernel
one more on the right), as the PyTorch ports (tsai, aeon) do. The paper's InceptionTime is an
ensemble of five such networks, trained from different initialisations.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.layers import Conv1dSame
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model

INPUT_SIZE = (1, 128)  # (C, L): the networks take any length; 128 is a typical UCR length


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, relu: bool = True) -> nn.Sequential:
    """Conv1d (Keras "same" padding, with bias) -> BatchNorm1d [-> ReLU]: (B, in, L) -> (B, out, L)."""
    layers = OrderedDict(conv=Conv1dSame(in_channels, out_channels, kernel_size), bn=nn.BatchNorm1d(out_channels))
    if relu:
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class SeriesClassifier(Classifier):
    """A ``features`` trunk (B, C_in, L) -> (B, num_features, L), global average pooling over time
    and one linear layer ``fc`` (the class activation map's weights)."""

    num_features: int

    def _init_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C_in, L) -> (B, num_features, L)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=2)  # (B, num_features, L) -> (B, num_features)
        return x if pre_logits else self.fc(x)  # -> (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear layer with ``num_classes`` outputs (0: Identity)."""
        check_args(num_classes, 1)
        ref = next(self.parameters())
        self._init_head(num_classes)
        self.fc.to(ref.device, ref.dtype)


class FCN1d(SeriesClassifier):
    """Fully convolutional network: three conv-BN-ReLU blocks of 128, 256, 128 filters (kernels 8, 5, 3).

    Input shape: (B, in_channels, L). Output shape: (B, num_classes). The class activation map's
    layer is ``features.block3`` (its ReLU output is ``forward_features``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        widths: tuple[int, ...] = (128, 256, 128),
        kernels: tuple[int, ...] = (8, 5, 3),
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        if len(widths) != len(kernels):
            raise CnnkitError(f"FCN needs one kernel size per block; received: widths={widths}, kernels={kernels}")
        blocks, c = OrderedDict(), in_channels
        for i, (w, k) in enumerate(zip(widths, kernels), 1):
            blocks[f"block{i}"] = conv_bn(c, w, k)  # (B, c, L) -> (B, w, L)
            c = w
        self.features = nn.Sequential(blocks)
        self.num_features = c
        self._init_head(num_classes)


class ResidualBlock1d(nn.Module):
    """Three conv-BN(-ReLU) layers (kernels 8, 5, 3) plus a shortcut, then ReLU.

    The shortcut is a 1x1 convolution and batch norm when the channel count changes, batch norm
    alone otherwise (as in the reference code).

    Input shape: (B, in_channels, L). Output shape: (B, out_channels, L).
    """

    def __init__(self, in_channels: int, out_channels: int, kernels: tuple[int, ...] = (8, 5, 3)):
        super().__init__()
        layers, c = OrderedDict(), in_channels
        for i, k in enumerate(kernels, 1):
            layers[f"conv{i}"] = conv_bn(c, out_channels, k, relu=i < len(kernels))
            c = out_channels
        self.body = nn.Sequential(layers)
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(conv=nn.Conv1d(in_channels, out_channels, 1), bn=nn.BatchNorm1d(out_channels))
            )
        else:
            self.shortcut = nn.Sequential(OrderedDict(bn=nn.BatchNorm1d(out_channels)))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))  # (B, in, L) -> (B, out, L)


class ResNet1d(SeriesClassifier):
    """Three residual blocks of 64, 128, 128 filters, global average pooling, a linear layer.

    Input shape: (B, in_channels, L). Output shape: (B, num_classes).
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 1, widths: tuple[int, ...] = (64, 128, 128)):
        super().__init__()
        check_args(num_classes, in_channels)
        blocks, c = OrderedDict(), in_channels
        for i, w in enumerate(widths, 1):
            blocks[f"block{i}"] = ResidualBlock1d(c, w)  # (B, c, L) -> (B, w, L)
            c = w
        self.features = nn.Sequential(blocks)
        self.num_features = c
        self._init_head(num_classes)


class InceptionModule1d(nn.Module):
    """A bottleneck (1x1 to 32 channels, skipped for a one-channel input), three parallel
    convolutions (kernels 39, 19, 9) and a max-pool + 1x1 branch, 32 filters each, concatenated
    to 128 channels, then batch norm and ReLU.

    Input shape: (B, in_channels, L). Output shape: (B, 4 * filters, L).
    """

    def __init__(
        self, in_channels: int, filters: int = 32, bottleneck: int = 32, kernels: tuple[int, ...] = (39, 19, 9)
    ):
        super().__init__()
        use_bottleneck = bottleneck > 0 and in_channels > 1
        self.bottleneck = nn.Conv1d(in_channels, bottleneck, 1, bias=False) if use_bottleneck else nn.Identity()
        c = bottleneck if use_bottleneck else in_channels
        self.convs = nn.ModuleList(Conv1dSame(c, filters, k, bias=False) for k in kernels)
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)
        self.pool_conv = nn.Conv1d(in_channels, filters, 1, bias=False)
        self.bn = nn.BatchNorm1d(filters * (len(kernels) + 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bottleneck(x)  # (B, in, L) -> (B, 32, L)
        branches = [conv(z) for conv in self.convs]  # 3 x (B, 32, L)
        branches.append(self.pool_conv(self.pool(x)))  # (B, 32, L)
        return self.relu(self.bn(torch.cat(branches, dim=1)))  # (B, 128, L)


class InceptionBlock1d(nn.Module):
    """Three Inception modules with a residual connection around them (1x1 conv + BN shortcut), then ReLU.

    Input shape: (B, in_channels, L). Output shape: (B, 4 * filters, L).
    """

    def __init__(self, in_channels: int, filters: int = 32, bottleneck: int = 32, modules: int = 3):
        super().__init__()
        out = 4 * filters
        self.inception = nn.Sequential(
            *(InceptionModule1d(in_channels if i == 0 else out, filters, bottleneck) for i in range(modules))
        )
        self.shortcut = nn.Sequential(
            OrderedDict(conv=nn.Conv1d(in_channels, out, 1, bias=False), bn=nn.BatchNorm1d(out))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)  # (B, in, L) -> (B, 128, L)
        return self.relu(self.inception(x) + residual)


class InceptionTime(SeriesClassifier):
    """``depth`` Inception modules (a residual connection every 3), global average pooling, a linear layer.

    Input shape: (B, in_channels, L). Output shape: (B, num_classes).
    """

    def __init__(
        self, num_classes: int = 2, in_channels: int = 1, depth: int = 6, filters: int = 32, bottleneck: int = 32
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        if depth < 3 or depth % 3:
            raise CnnkitError(
                f"InceptionTime's depth must be a positive multiple of 3 (a residual connection "
                f"every 3 modules); received: depth={depth}"
            )
        blocks, c = OrderedDict(), in_channels
        for i in range(depth // 3):
            blocks[f"block{i + 1}"] = InceptionBlock1d(c, filters, bottleneck)  # (B, c, L) -> (B, 4 * filters, L)
            c = 4 * filters
        self.features = nn.Sequential(blocks)
        self.num_features = c
        self._init_head(num_classes)


@register_model(input_size=INPUT_SIZE, paper="Wang et al. 2017", family="series", task="classify")
def fcn1d(num_classes: int = 2, in_channels: int = 1) -> FCN1d:
    """FCN: conv 128 k8 -> 256 k5 -> 128 k3 (BN, ReLU each), GAP, linear."""
    return FCN1d(num_classes, in_channels)


@register_model(input_size=INPUT_SIZE, paper="Wang et al. 2017", family="series", task="classify")
def resnet1d(num_classes: int = 2, in_channels: int = 1) -> ResNet1d:
    """ResNet: three residual blocks of 64, 128, 128 filters (kernels 8/5/3 in each), GAP, linear."""
    return ResNet1d(num_classes, in_channels)


@register_model(input_size=INPUT_SIZE, paper="Ismail Fawaz et al. 2020", family="series", task="classify")
def inception_time(num_classes: int = 2, in_channels: int = 1, depth: int = 6) -> InceptionTime:
    """One InceptionTime network: 6 Inception modules (bottleneck 32, kernels 39/19/9, 4 x 32 filters),
    a residual connection every 3, GAP, linear."""
    return InceptionTime(num_classes, in_channels, depth)

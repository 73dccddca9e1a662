"""DenseNet-121/169/201 (DenseNet-BC), with torchvision's layout and state-dict names.

Paper: "Densely Connected Convolutional Networks" https://arxiv.org/abs/1608.06993

Each dense layer sees the concatenation of every earlier feature map in its block and adds
``growth_rate`` new channels; a 1x1 "bottleneck" (``bn_size * growth_rate`` wide) comes first. Between
blocks a transition halves the channels (compression 0.5) and the resolution. State-dict keys
(``features.conv0``, ``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv``,
``features.norm5``, ``classifier``) equal torchvision's, so its weights load with ``strict=True``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.models._common import Classifier
from cnnkit.models._common import check_args as _check_args
from cnnkit.models._registry import register_model


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (to ``bn_size * growth_rate``) then BN-ReLU-Conv3x3 (to ``growth_rate``).

    Args:
        num_input_features: channels of the concatenated input.
        growth_rate: channels this layer adds (k in the paper).
        bn_size: the bottleneck is ``bn_size * growth_rate`` wide (4 in the paper).
        drop_rate: dropout on the new features (0: none).

    Input: a tensor (B, num_input_features, H, W), or a list of tensors whose channels sum to it
    (they are concatenated first, as the block passes them).
    Output shape: (B, growth_rate, H, W) -- only the new features.
    """

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.cat(x, 1)  # [(B, c_i, H, W)] -> (B, sum c_i, H, W)
        out = self.conv1(self.relu1(self.norm1(x)))  # -> (B, bn_size * growth_rate, H, W)
        out = self.conv2(self.relu2(self.norm2(out)))  # -> (B, growth_rate, H, W)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers (``denselayer1`` ...), each fed every earlier output.

    Input shape: (B, num_input_features, H, W).
    Output shape: (B, num_input_features + num_layers * growth_rate, H, W).
    """

    def __init__(
        self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))  # each adds (B, growth_rate, H, W)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 to ``num_output_features``, then 2x2 average pooling, stride 2.

    Input shape: (B, num_input_features, H, W). Output shape: (B, num_output_features, H/2, W/2).
    """

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(Classifier):
    """A 7x7 stem, dense blocks joined by compressing transitions, BN-ReLU, global pool, one Linear.

    Args:
        growth_rate: channels each dense layer adds (k).
        block_config: dense layers per block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
        num_init_features: channels out of the stem convolution.
        bn_size: bottleneck width factor (the 1x1 outputs ``bn_size * growth_rate``).
        drop_rate: dropout after each dense layer (0 in the paper's ImageNet models).
        num_classes: classifier outputs; 0 replaces ``classifier`` by ``nn.Identity``.
        in_channels: image channels; changes only ``features.conv0``.

    Input shape: (B, in_channels, H, W) with H, W >= 29 (224 is the ImageNet size).
    Output shape: (B, num_classes).
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_args(num_classes, in_channels)
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv0",
                        nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
                    ),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),  # (B, C, H, W) -> (B, init, H/4, W/4)
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate  # (B, c, h, w) -> (B, c + L * k, h, w)
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2  # (B, c, h, w) -> (B, c / 2, h / 2, w / 2)
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        # torchvision applies this ReLU in forward(); as a module it holds no state, so the
        # state dict is unchanged, and `features` ends on the map that Grad-CAM wants
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.num_features = num_features
        self.num_classes = num_classes
        self.classifier = _classifier(num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) -> (B, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)  # (B, num_features, h, w) -> (B, num_features)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``classifier`` by a freshly initialised Linear with ``num_classes`` outputs (0: Identity)."""
        _check_args(num_classes, 1)
        ref = self.features.conv0.weight
        self.classifier = _classifier(self.num_features, num_classes).to(ref.device, ref.dtype)
        self.num_classes = num_classes


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    fc = nn.Linear(num_features, num_classes)  # default weight init, zero bias, as torchvision
    nn.init.constant_(fc.bias, 0)
    return fc


_PAPER = "Huang et al. 2016"


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="densenet")
def densenet121(num_classes: int = 1000, in_channels: int = 3, **kw) -> DenseNet:
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="densenet")
def densenet169(num_classes: int = 1000, in_channels: int = 3, **kw) -> DenseNet:
    return DenseNet(32, (6, 12, 32, 32), 64, num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="densenet")
def densenet201(num_classes: int = 1000, in_channels: int = 3, **kw) -> DenseNet:
    return DenseNet(32, (6, 12, 48, 32), 64, num_classes=num_classes, in_channels=in_channels, **kw)

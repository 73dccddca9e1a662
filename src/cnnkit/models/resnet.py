"""ResNet, ResNeXt and Wide ResNet, with torchvision's layout and state-dict names.

Papers: "Deep Residual Learning for Image Recognition" https://arxiv.org/abs/1512.03385,
"Aggregated Residual Transformations for Deep Neural Networks" https://arxiv.org/abs/1611.05431,
"Wide Residual Networks" https://arxiv.org/abs/1605.07146.

This is "ResNet v1.5" as torchvision builds it: a Bottleneck downsamples with the stride on its
3x3 convolution, not on the first 1x1. State-dict keys (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``) equal torchvision's, so its weights load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.models._common import Classifier
from cnnkit.models._common import check_args as _check_args
from cnnkit.models._registry import register_model

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias: (B, in, H, W) -> (B, out, H/stride, W/stride)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias: (B, in, H, W) -> (B, out, H/stride, W/stride)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut (ResNet-18/34).

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, where the shortcut is ``x``
    itself or ``downsample(x)`` when the shape changes.

    Args:
        inplanes: input channels.
        planes: output channels (``planes * expansion``, and ``expansion`` is 1).
        stride: stride of the first 3x3 convolution (2 halves H and W).
        downsample: the shortcut when stride != 1 or inplanes != planes; typically
            ``conv1x1(inplanes, planes, stride)`` followed by a norm layer.
        norm_layer: a class taking the channel count; ``nn.BatchNorm2d`` by default.

    Input shape: (B, inplanes, H, W). Output shape: (B, planes, ceil(H/stride), ceil(W/stride)).
    """

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise CnnkitError(
                f"BasicBlock supports only groups=1 and base_width=64; received: "
                f"groups={groups}, base_width={base_width}; use Bottleneck for ResNeXt/Wide ResNet"
            )
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, inplanes, H, W) -> (B, planes, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped, strided), 1x1 expand, plus a shortcut (ResNet-50 and deeper).

    The inner width is ``int(planes * base_width / 64) * groups``: 64-wide and 1 group is plain
    ResNet; ``groups=32, base_width=4`` is ResNeXt-50 32x4d; ``base_width=128`` is Wide ResNet-50-2.

    Args:
        inplanes: input channels.
        planes: the block's base width; output channels are ``planes * expansion`` (expansion 4).
        stride: stride of the 3x3 convolution (torchvision's "v1.5" placement).
        downsample: the shortcut when stride != 1 or inplanes != planes * 4.
        groups: groups of the 3x3 convolution (ResNeXt cardinality).
        base_width: width per group, in units where 64 means "as ResNet".
        norm_layer: a class taking the channel count; ``nn.BatchNorm2d`` by default.

    Input shape: (B, inplanes, H, W). Output shape: (B, 4 * planes, ceil(H/stride), ceil(W/stride)).
    """

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, inplanes, H, W) -> (B, width, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # -> (B, width, H/s, W/s)
        out = self.bn3(self.conv3(out))  # -> (B, 4 * planes, H/s, W/s)
        return self.relu(out + identity)


class ResNet(Classifier):
    """A 7x7 stem, four stages of residual blocks, global average pooling and one Linear.

    Args:
        block: ``BasicBlock`` or ``Bottleneck`` (any class with the same constructor and ``expansion``).
        layers: number of blocks in each of the four stages, e.g. ``[3, 4, 6, 3]`` for ResNet-50.
        num_classes: classifier outputs; 0 replaces the classifier by ``nn.Identity``.
        in_channels: image channels; changes only ``conv1``.
        groups, width_per_group: the Bottleneck's 3x3 groups and width per group (ResNeXt, WRN).
        zero_init_residual: start each block's last BN at weight 0, so every block begins as
            the identity (https://arxiv.org/abs/1706.02677); off in torchvision by default.
        norm_layer: the norm class, ``nn.BatchNorm2d`` by default.

    Input shape: (B, in_channels, H, W), H and W >= 1 (224 is the ImageNet size).
    Output shape: (B, num_classes).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        _check_args(num_classes, in_channels)
        if len(layers) != 4:
            raise CnnkitError(f"layers must give the block count of 4 stages; received: layers={layers!r}")
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes = 64  # channels entering the next block; _make_layer advances it
        self.groups = groups
        self.base_width = width_per_group

        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        """One stage: the first block may downsample (stride) and widen; the others keep the shape."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, self._norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes, planes, groups=self.groups, base_width=self.base_width, norm_layer=self._norm_layer
                )
            )
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, C, H, W) -> (B, 64, H/4, W/4)
        x = self.layer1(x)  # -> (B, 64 * e, H/4, W/4)
        x = self.layer2(x)  # -> (B, 128 * e, H/8, W/8)
        x = self.layer3(x)  # -> (B, 256 * e, H/16, W/16)
        return self.layer4(x)  # -> (B, 512 * e, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, num_features, h, w) -> (B, num_features)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised Linear with ``num_classes`` outputs (0: Identity)."""
        _check_args(num_classes, 1)
        self.fc = _classifier(self.num_features, num_classes).to(self.conv1.weight.device, self.conv1.weight.dtype)
        self.num_classes = num_classes


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    # torchvision leaves the Linear at PyTorch's default initialisation
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


_PAPER = "He et al. 2015"


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="resnet")
def resnet18(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="resnet")
def resnet34(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="resnet")
def resnet50(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="resnet")
def resnet101(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="resnet")
def resnet152(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, in_channels=in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper="Xie et al. 2016", family="resnet")
def resnext50_32x4d(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(
        Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, groups=32, width_per_group=4, **kw
    )


@register_model(input_size=(3, 224, 224), paper="Zagoruyko & Komodakis 2016", family="resnet")
def wide_resnet50_2(num_classes: int = 1000, in_channels: int = 3, **kw) -> ResNet:
    # twice the Bottleneck's inner width; the block outputs (planes * 4) stay as in ResNet-50
    return ResNet(
        Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, width_per_group=64 * 2, **kw
    )

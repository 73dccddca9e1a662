"""EfficientNet-B0..B3 (torchvision's layout) and EfficientNet-Lite0..4 (timm's ``tf_efficientnet_lite``).

Paper: Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
https://arxiv.org/abs/1905.11946. Lite: the TensorFlow "lite" variants
(https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite): no squeeze-excite,
ReLU6 instead of swish, stem and head not scaled, TensorFlow's "same" padding.

Both families scale one table of MBConv stages (B0's) by a width and a depth multiplier. State-dict
keys equal torchvision's ``efficientnet_b*`` (``features.1.0.block.0.0.weight``, ``classifier.1``)
and timm's ``tf_efficientnet_lite*`` (``conv_stem``, ``blocks.1.0.conv_pw``, ``conv_head``,
``classifier``), so their weights load with ``strict=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnkit.layers import Conv2dSame, ConvNormAct, SqueezeExcite, make_divisible
from cnnkit.models._common import Classifier, PooledClassifier, check_args
from cnnkit.models._registry import register_model
from cnnkit.models.mobilenet_v2 import init_weights


@dataclass(frozen=True)
class Stage:
    expand: int  # expansion ratio of the inverted bottleneck (1: no expand conv)
    kernel: int  # depthwise kernel size
    stride: int  # stride of the stage's first block
    channels: int  # output channels (B0's; scaled by the width multiplier)
    repeats: int  # number of blocks (B0's; scaled by the depth multiplier)


# EfficientNet-B0, paper Table 1 (stages 2-8; stage 1 is the 3x3 stem, stage 9 the 1x1 head)
B0_STAGES = [
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (https://arxiv.org/abs/1603.09382): zero a residual branch per sample with
    probability ``p``, scale the kept ones by ``1 / (1 - p)``; the identity when not training."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


def _depth(repeats: int, mult: float) -> int:
    return int(math.ceil(repeats * mult))


# ---------------------------------------------------------------------------------------------
# EfficientNet-B, torchvision's layout
# ---------------------------------------------------------------------------------------------


class MBConv(nn.Module):
    """1x1 expand (SiLU) -> k x k depthwise (SiLU) -> squeeze-excite -> 1x1 linear project, + ``x``.

    The SE bottleneck is a quarter of the block's *input* channels (torchvision's choice).
    Shape: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, drop_prob: float):
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, act_layer=nn.SiLU))
        layers += [
            ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, act_layer=nn.SiLU),
            SqueezeExcite(hidden, max(1, in_channels // 4), act=nn.SiLU),
            ConvNormAct(hidden, out_channels, 1, act_layer=None),
        ]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + drop_path(y, self.drop_prob, self.training) if self.use_res_connect else y


def _remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's keys (``_blocks.1._expand_conv``) as this network's; others as they are."""
    if "_conv_stem.weight" in state and "_conv_stem.weight" not in self.state_dict():
        return from_efficientnet_pytorch(state, self)
    return state


class EfficientNet(PooledClassifier):
    """A 3x3 stem, seven MBConv stages, a 1x1 conv to 4x the last width, pooling, dropout, Linear.

    Args:
        width_mult, depth_mult: the compound-scaling multipliers (B0: 1.0, 1.0).
        num_classes: classifier outputs; 0 replaces the Linear by ``nn.Identity``.
        in_channels: image channels; changes only the stem convolution.
        dropout: dropout before the Linear.
        stochastic_depth: drop probability of the last block, rising linearly from 0 (torchvision: 0.2).
    Input shape: (B, in_channels, H, W). Output shape: (B, num_classes).
    """

    def __init__(
        self,
        width_mult: float,
        depth_mult: float,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        stochastic_depth: float = 0.2,
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        width = lambda c: make_divisible(c * width_mult)  # noqa: E731
        channels = width(32)
        layers: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, 2, act_layer=nn.SiLU)]  # -> H/2
        total = sum(_depth(s.repeats, depth_mult) for s in B0_STAGES)
        block_id = 0
        for s in B0_STAGES:
            blocks = []
            for i in range(_depth(s.repeats, depth_mult)):
                blocks.append(
                    MBConv(
                        channels,
                        width(s.channels),
                        s.kernel,
                        s.stride if i == 0 else 1,
                        s.expand,
                        stochastic_depth * block_id / total,
                    )
                )
                channels = width(s.channels)
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        self.num_features = 4 * channels
        layers.append(ConvNormAct(channels, self.num_features, 1, act_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)  # (B, C, H, W) -> (B, num_features, H/32, W/32)
        init_weights(self)  # torchvision's, before the classifier exists (its Linear init differs)
        self.num_classes = num_classes
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), _linear(self.num_features, num_classes))

    remap_state_dict = _remap_state_dict  # EfficientNet-PyTorch's keys read as this network's

    def new_linear(self, in_features: int, num_classes: int) -> nn.Module:
        return _linear(in_features, num_classes)


def _linear(in_features: int, num_classes: int) -> nn.Module:
    """torchvision's EfficientNet classifier init: U(-1/sqrt(out), 1/sqrt(out)) weights, zero bias."""
    if num_classes == 0:
        return nn.Identity()
    fc = nn.Linear(in_features, num_classes)
    bound = 1.0 / math.sqrt(num_classes)
    nn.init.uniform_(fc.weight, -bound, bound)
    nn.init.zeros_(fc.bias)
    return fc


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite, timm's tf_efficientnet_lite layout (TensorFlow padding and BN epsilon)
# ---------------------------------------------------------------------------------------------

_TF_EPS = 1e-3  # TensorFlow's BatchNormalization epsilon, which the converted weights expect


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_TF_EPS)


class DepthwiseSeparable(nn.Module):
    """k x k depthwise (ReLU6) -> 1x1 linear project (the first stage, expansion 1), + ``x`` when shapes agree.

    Shape: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, drop_prob: float = 0.0):
        super().__init__()
        self.conv_dw = Conv2dSame(in_channels, in_channels, kernel, stride, groups=in_channels, bias=False)
        self.bn1 = _bn(in_channels)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_pw = Conv2dSame(in_channels, out_channels, 1, bias=False)
        self.bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_dw(x)))  # (B, C_in, H, W) -> (B, C_in, H/s, W/s)
        y = self.bn2(self.conv_pw(y))  # -> (B, C_out, H/s, W/s)
        return x + drop_path(y, self.drop_prob, self.training) if self.has_skip else y


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> k x k depthwise (ReLU6) -> 1x1 linear project, + ``x`` when shapes agree.

    Shape: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, drop_prob: float = 0.0
    ):
        super().__init__()
        hidden = in_channels * expand
        self.conv_pw = Conv2dSame(in_channels, hidden, 1, bias=False)
        self.bn1 = _bn(hidden)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self.bn2 = _bn(hidden)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = Conv2dSame(hidden, out_channels, 1, bias=False)
        self.bn3 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))  # (B, C_in, H, W) -> (B, hidden, H, W)
        y = self.act2(self.bn2(self.conv_dw(y)))  # -> (B, hidden, H/s, W/s)
        y = self.bn3(self.conv_pwl(y))  # -> (B, C_out, H/s, W/s)
        return x + drop_path(y, self.drop_prob, self.training) if self.has_skip else y


class EfficientNetLite(Classifier):
    """EfficientNet-Lite: a fixed 32-channel stem, seven stages, a fixed 1280-channel head, Linear.

    The depth multiplier scales every stage but the first and the last (TF's lite rule), the width
    multiplier every stage's channels.

    Args:
        width_mult, depth_mult: the compound-scaling multipliers (Lite0: 1.0, 1.0).
        num_classes: classifier outputs; 0 replaces the Linear by ``nn.Identity``.
        in_channels: image channels; changes only the stem convolution.
        dropout: dropout before the Linear (0.2, as TF's lite0-4).
        drop_path_rate: stochastic depth of the last block (timm's default 0).
    Input shape: (B, in_channels, H, W). Output shape: (B, num_classes).
    """

    def __init__(
        self,
        width_mult: float,
        depth_mult: float,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        self.conv_stem = Conv2dSame(in_channels, 32, 3, 2, bias=False)  # (B, C, H, W) -> (B, 32, H/2, W/2)
        self.bn1 = _bn(32)
        self.act1 = nn.ReLU6(inplace=True)
        last = len(B0_STAGES) - 1
        repeats = [s.repeats if i in (0, last) else _depth(s.repeats, depth_mult) for i, s in enumerate(B0_STAGES)]
        total, block_id, channels = sum(repeats), 0, 32
        stages = []
        for s, n in zip(B0_STAGES, repeats):
            out, blocks = make_divisible(s.channels * width_mult), []
            for i in range(n):
                stride, p = s.stride if i == 0 else 1, drop_path_rate * block_id / total
                blocks.append(
                    DepthwiseSeparable(channels, out, s.kernel, stride, p)
                    if s.expand == 1
                    else InvertedResidual(channels, out, s.kernel, stride, s.expand, p)
                )
                channels, block_id = out, block_id + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)  # -> (B, 320 * width, H/32, W/32)
        self.num_features = 1280
        self.conv_head = Conv2dSame(channels, self.num_features, 1, bias=False)  # -> (B, 1280, H/32, W/32)
        self.bn2 = _bn(self.num_features)
        self.act2 = nn.ReLU6(inplace=True)
        self.dropout = dropout
        self.num_classes = num_classes
        self.classifier = self._linear(num_classes)
        for m in self.modules():  # timm's EfficientNet init (Google's): fan-out normal convs
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _linear(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes)
        bound = 1.0 / math.sqrt(num_classes)  # timm: U(-1/sqrt(out), 1/sqrt(out)), zero bias
        nn.init.uniform_(fc.weight, -bound, bound)
        nn.init.zeros_(fc.bias)
        return fc

    remap_state_dict = _remap_state_dict  # EfficientNet-PyTorch's keys read as this network's

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))  # (B, C, H, W) -> (B, 32, H/2, W/2)
        x = self.blocks(x)  # -> (B, 320 * width, H/32, W/32)
        return self.act2(self.bn2(self.conv_head(x)))  # -> (B, 1280, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, 1280, h, w) -> (B, 1280)
        if pre_logits:
            return x
        return self.classifier(nn.functional.dropout(x, self.dropout, self.training))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Linear with ``num_classes`` outputs (0: Identity)."""
        check_args(num_classes, 1)
        w = self.conv_stem.weight
        self.classifier = self._linear(num_classes).to(w.device, w.dtype)
        self.num_classes = num_classes


# (width, depth, resolution, dropout): torchvision's efficientnet_b0..b3 and TF's lite0..4
_B = {"b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3), "b3": (1.2, 1.4, 300, 0.3)}
_LITE = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
_PAPER = "Tan & Le 2019"


def _register_b(variant: str) -> None:
    width, depth, size, dropout = _B[variant]

    def build(num_classes: int = 1000, in_channels: int = 3, **kw) -> EfficientNet:
        kw.setdefault("dropout", dropout)
        return EfficientNet(width, depth, num_classes=num_classes, in_channels=in_channels, **kw)

    build.__name__ = f"efficientnet_{variant}"
    register_model(input_size=(3, size, size), paper=_PAPER, family="efficientnet")(build)


def _register_lite(variant: str) -> None:
    width, depth, size, dropout = _LITE[variant]

    def build(num_classes: int = 1000, in_channels: int = 3, **kw) -> EfficientNetLite:
        kw.setdefault("dropout", dropout)
        return EfficientNetLite(width, depth, num_classes=num_classes, in_channels=in_channels, **kw)

    build.__name__ = f"efficientnet_{variant}"
    register_model(input_size=(3, size, size), paper=_PAPER, family="efficientnet")(build)


for _v in _B:
    _register_b(_v)
for _v in _LITE:
    _register_lite(_v)


# EfficientNet-PyTorch (lukemelas' layout, used by the converted TF Lite weights) -> timm's names
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EP_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EP_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def from_efficientnet_pytorch(state: dict[str, torch.Tensor], model: EfficientNetLite) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (``_blocks.5._expand_conv.weight``) to the zoo's keys
    (``blocks.2.1.conv_pw.weight``), by name: the flat block index becomes (stage, block) from
    ``model``'s stage lengths. Keys that do not follow the layout are kept as they are, so a strict
    load names them."""
    if not isinstance(model, EfficientNetLite):
        return state
    where = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4 and int(parts[1]) < len(where):
            block = int(parts[1])
            names = _EP_IR if f"_blocks.{block}._expand_conv.weight" in state else _EP_DS
            if parts[2] in names:
                key = f"{where[block]}.{names[parts[2]]}.{parts[3]}"
        elif len(parts) == 2 and parts[0] in _EP_TOP:
            key = f"{_EP_TOP[parts[0]]}.{parts[1]}"
        out[key] = value
    return out

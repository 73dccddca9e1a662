"""MobileNetV3 small and large, with torchvision's layout and state-dict names.

Paper: Howard et al. 2019, "Searching for MobileNetV3", https://arxiv.org/abs/1905.02244.
Hard-swish activations, squeeze-excite with a hard-sigmoid gate, BatchNorm with eps=0.001 and
momentum=0.01 (TensorFlow's 0.99 decay), and a two-Linear head. Keys such as
``features.1.block.1.fc1.weight`` equal torchvision's, so its weights load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from cnnkit.layers import ConvNormAct, SqueezeExcite, make_divisible
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model
from cnnkit.models.mobilenet_v2 import _linear, init_weights

_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block of paper Tables 1-2 (a row of data, not a subclass)."""

    in_channels: int  # input channels
    kernel: int  # depthwise kernel size (3 or 5)
    expanded: int  # channels after the 1x1 expansion ("exp size")
    out_channels: int  # output channels
    use_se: bool  # squeeze-excite after the depthwise conv
    hard_swish: bool  # hard-swish ("HS") instead of ReLU ("RE")
    stride: int  # stride of the depthwise conv


def _rows(table, width_mult: float) -> list[BlockConfig]:
    r = partial(lambda c: make_divisible(c * width_mult))
    return [BlockConfig(r(i), k, r(e), r(o), se, act == "HS", s) for i, k, e, o, se, act, s in table]


#            in  k  exp  out  SE     act  s
_LARGE = [
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
]
_SMALL = [
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
]


class InvertedResidual(nn.Module):
    """[1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project, plus ``x`` when shapes agree."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        act = nn.Hardswish if cfg.hard_swish else nn.ReLU
        self.use_res_connect = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(ConvNormAct(cfg.in_channels, cfg.expanded, 1, norm_layer=_NORM, act_layer=act))
        layers.append(
            ConvNormAct(
                cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, groups=cfg.expanded, norm_layer=_NORM, act_layer=act
            )
        )
        if cfg.use_se:  # the SE bottleneck is expanded // 4, rounded to a multiple of 8
            layers.append(
                SqueezeExcite(cfg.expanded, make_divisible(cfg.expanded // 4), act=nn.ReLU, gate=nn.Hardsigmoid)
            )
        layers.append(ConvNormAct(cfg.expanded, cfg.out_channels, 1, norm_layer=_NORM, act_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MobileNetV3(Classifier):
    """Stem (3x3 s2, hard-swish), the block table, a 1x1 conv to 6x channels, pooling, two Linears.

    Args:
        blocks: the rows of the table (``_LARGE`` or ``_SMALL`` through :func:`_rows`).
        last_channel: width of the hidden Linear (1280 large, 1024 small).
        num_classes: classifier outputs; 0 replaces the last Linear by ``nn.Identity``.
        in_channels: image channels; changes only the stem convolution.
        dropout: dropout between the two Linears (0.2).
    ``num_features`` is the input width of the last Linear (``last_channel``), the width of
    ``forward_head(x, pre_logits=True)``; ``forward_features`` returns 6x the last block's channels
    (960 large, 576 small).
    """

    def __init__(
        self,
        blocks: list[BlockConfig],
        last_channel: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        first = blocks[0].in_channels
        channels = 6 * blocks[-1].out_channels
        self.num_features = last_channel
        self.features = nn.Sequential(  # (B, C, H, W) -> (B, 6 * C_last, H/32, W/32)
            ConvNormAct(in_channels, first, 3, 2, norm_layer=_NORM, act_layer=nn.Hardswish),
            *[InvertedResidual(cfg) for cfg in blocks],
            ConvNormAct(blocks[-1].out_channels, channels, 1, norm_layer=_NORM, act_layer=nn.Hardswish),
        )
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Linear(channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout, inplace=True),
            _linear(last_channel, num_classes),
        )
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, C, h, w) -> (B, C)
        x = self.classifier[:-1](x)  # -> (B, last_channel)
        return x if pre_logits else self.classifier[-1](x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last Linear with ``num_classes`` outputs (0: Identity); the hidden Linear is kept."""
        check_args(num_classes, 1)
        w = self.features[0][0].weight
        self.classifier[-1] = _linear(self.num_features, num_classes).to(w.device, w.dtype)
        self.num_classes = num_classes


_PAPER = "Howard et al. 2019"


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="mobilenet")
def mobilenet_v3_large(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, **kw) -> MobileNetV3:
    return MobileNetV3(_rows(_LARGE, width_mult), make_divisible(1280 * width_mult), num_classes, in_channels, **kw)


@register_model(input_size=(3, 224, 224), paper=_PAPER, family="mobilenet")
def mobilenet_v3_small(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, **kw) -> MobileNetV3:
    return MobileNetV3(_rows(_SMALL, width_mult), make_divisible(1024 * width_mult), num_classes, in_channels, **kw)

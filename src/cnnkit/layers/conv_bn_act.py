"""Convolution, normalisation, activation as one ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``).

Children are numbered ``0`` (conv), ``1`` (norm), ``2`` (activation), so state-dict keys read
``features.0.0.weight`` / ``features.0.1.running_mean`` exactly as in torchvision's MobileNets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from cnnkit.layers.conv_same import DepthwiseConv2d


class ConvNormAct(nn.Sequential):
    """``Conv2d(padding=(k - 1) // 2 * dilation)`` -> norm -> activation; the conv has a bias only without a norm.

    Args:
        norm_layer: a class taking the channel count, or None for no norm.
        act_layer: an activation class, or None for no activation (a "linear bottleneck").
    Shape: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)) for odd kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[..., nn.Module] | None = nn.ReLU,
    ):
        padding = (kernel_size - 1) // 2 * dilation
        wide_depthwise = groups > 1 and groups == in_channels and kernel_size > 3
        layers: list[nn.Module] = [
            (DepthwiseConv2d if wide_depthwise else nn.Conv2d)(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=norm_layer is None,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if _takes_inplace(act_layer) else act_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


def _takes_inplace(act_layer) -> bool:
    return isinstance(act_layer, type) and act_layer in (
        nn.ReLU,
        nn.ReLU6,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.SiLU,
        nn.ELU,
        nn.LeakyReLU,
    )

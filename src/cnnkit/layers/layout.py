"""Which layers keep a network out of channels-last (NHWC) training on the CPU.

oneDNN's channels-last kernels for a strided 1x1 convolution over fewer than 8 input channels
(one group) write past their buffers in the backward pass: with PyTorch 2.13 on an AMD EPYC Zen 3
(AVX2, oneDNN's brgconv/jit 1x1 AVX2 kernels) a segmentation fault, a heap-corruption abort or a
hang, on one thread or two. The same layers train correctly in PyTorch's default NCHW layout, so
the decision does not depend on the CPU. A transposed convolution runs those kernels with its
input and output channels swapped, so either side under 8 counts.
"""

from __future__ import annotations

import torch.nn as nn

NHWC_MIN_CHANNELS = 8  # a strided 1x1 convolution needs at least this many channels in NHWC


def nhwc_breaker(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first layer of ``model`` (name, module) that must not train in channels-last layout on
    the CPU (see the module's note), or None when every layer may.

    >>> nhwc_breaker(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 1, stride=2))) is None
    True
    >>> nhwc_breaker(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 1, stride=2)))[0]
    '1'
    """
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or m.groups != 1:
            continue
        if tuple(m.kernel_size) != (1, 1) or max(m.stride) == 1:
            continue
        if isinstance(m, nn.ConvTranspose2d):
            channels = min(m.in_channels, m.out_channels)
        else:
            channels = m.in_channels
        if channels < NHWC_MIN_CHANNELS:
            return name, m
    return None

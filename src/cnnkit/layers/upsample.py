"""Upsampling that restores resolution: a transposed convolution initialised as bilinear upsampling
(FCN, Long et al. 2015, https://arxiv.org/abs/1411.4038) and fixed nearest / bilinear resizing.

``BilinearConvTranspose2d(C, f)`` maps (B, C, H, W) -> (B, C, f*H, f*W). Its initial weights equal
``F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)`` (the half-pixel convention)
on every output pixel at least ``f // 2`` px from the border; on that border strip the transposed
convolution sees zeros beyond the image where ``interpolate`` repeats the edge pixel, so it is darker
there (FCN crops its outputs and never sees this). Padding the input by one pixel with the edge values
and cropping ``f`` px from each side of the output gives ``interpolate`` everywhere (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError

MODES = ("nearest", "bilinear")


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The (k, k) bilinear kernel of an f-fold upsampling, k = 2f - f % 2 (FCN's ``upsample_filt``).

    ``w[i, j] = (1 - |i - c| / f) (1 - |j - c| / f)`` with centre ``c = f - 1`` (k odd) or ``f - 0.5``.

    >>> bilinear_kernel(2)[0]
    tensor([0.0625, 0.1875, 0.1875, 0.0625])
    """
    if not isinstance(factor, int) or factor < 1:
        raise CnnkitError(f"an upsampling factor is an integer >= 1. Received: factor={factor!r}")
    k = 2 * factor - factor % 2
    centre = factor - 1 if k % 2 else factor - 0.5
    w = 1 - (torch.arange(k, dtype=torch.float64) - centre).abs() / factor  # (k,)
    return (w[:, None] * w[None, :]).float()  # (k, k)


class BilinearConvTranspose2d(nn.ConvTranspose2d):
    """A learnable ``ConvTranspose2d(C, C, 2f - f % 2, stride=f, padding=f // 2)`` that starts as bilinear.

    Channel c is upsampled into channel c (other weights zero, no bias), as FCN initialises its
    ``upscore`` layers; training may then mix channels.

    Args:
        channels: input = output channels.
        factor: integer upsampling factor f.
    Shape: (B, C, H, W) -> (B, C, f*H, f*W).

    >>> BilinearConvTranspose2d(3, 4)(torch.zeros(1, 3, 5, 7)).shape
    torch.Size([1, 3, 20, 28])
    """

    def __init__(self, channels: int, factor: int):
        kernel = bilinear_kernel(factor)  # checks the factor
        # out = (H - 1) f - 2p + k = f H  <=>  2p = k - f = f - f % 2
        super().__init__(channels, channels, kernel.shape[-1], stride=factor, padding=factor // 2, bias=False)
        self.factor = factor
        init_bilinear_(self)


def init_bilinear_(conv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Set a transposed conv's weights to bilinear upsampling by its stride: channel c into channel c.

    The kernel must be FCN's size for that stride (2s - s % 2) and the in/out channels equal.
    """
    (s, s2), k, c_in = conv.stride, conv.kernel_size, conv.in_channels
    if s != s2 or k != (2 * s - s % 2,) * 2 or c_in != conv.out_channels or conv.groups != 1:
        raise CnnkitError(
            f"a bilinear initialisation needs equal strides, kernel_size = 2 * strides - strides % 2 "
            f"({2 * s - s % 2} for strides {s}) and filters = input channels ({c_in}). "
            f"Received: kernel_size={k}, strides={conv.stride}, filters={conv.out_channels}"
        )
    with torch.no_grad():
        conv.weight.zero_()
        idx = torch.arange(c_in)
        conv.weight[idx, idx] = bilinear_kernel(s).to(conv.weight.dtype)  # weight: (C_in, C_out, k, k)
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


class Upsample(nn.Module):
    """Fixed nearest / bilinear resizing (no weights): by an integer ``scale`` or to the ``size`` given.

    Bilinear uses ``align_corners=False`` (half-pixel centres, as Keras' ``UpSampling2D`` and
    TensorFlow's ``resize``). Shape: (B, C, H, W) -> (B, C, s*H, s*W).
    """

    def __init__(self, scale: int = 2, mode: str = "bilinear"):
        super().__init__()
        self.scale, self.mode = scale, check_mode(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, (x.shape[-2] * self.scale, x.shape[-1] * self.scale), self.mode)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, mode={self.mode}"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise CnnkitError(f"interpolation must be one of {', '.join(MODES)}. Received: interpolation={mode!r}")
    return mode


def resize(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size) by nearest or bilinear (half-pixel) interpolation.

    Sizes an exporter traces (symbolic, or tensors under the TorchScript tracer) are kept as they
    are, so the exported graph resizes to the input's size, not the example's.
    """
    size = tuple(int(s) if isinstance(s, (int, float)) else s for s in size)
    known = all(isinstance(s, int) for s in (*x.shape[-2:], *size))
    if known and tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

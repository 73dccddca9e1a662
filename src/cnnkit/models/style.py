"""The image transformation network of fast style transfer: one forward pass stylises a photo.

Paper: Johnson, Alahi & Fei-Fei 2016, "Perceptual Losses for Real-Time Style Transfer and
Super-Resolution", https://arxiv.org/abs/1603.08155 (supplementary Table 1), with instance norm
instead of batch norm (Ulyanov, Vedaldi & Lempitsky 2016, https://arxiv.org/abs/1607.08022) and
nearest upsampling + convolution instead of fractionally strided convolutions (Odena, Dumoulin &
Olah 2016, https://distill.pub/2016/deconv-checkerboard/): no checkerboard artefacts.

A variant is a row of data in :data:`STYLE_CFGS`: the widths of the three resolutions and the
number of residual blocks. Any H, W divisible by 4 give an image of the same size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.models._registry import register_model

# variant -> (widths at full, half and quarter resolution, residual blocks at quarter resolution, norm)
STYLE_CFGS: dict[str, tuple[tuple[int, int, int], int, str]] = {
    "johnson_style": ((32, 64, 128), 5, "instance"),  # the paper's network: 1.68 M parameters
    "johnson_style_slim": ((16, 32, 64), 5, "instance"),  # a quarter of the MACs: < 1 s for 512 px on 2 CPU cores
    "johnson_style_slim_bn": ((16, 32, 64), 5, "batch"),  # the same with the paper's batch norms
}
NORMS = {"instance": lambda c: nn.InstanceNorm2d(c, affine=True), "batch": nn.BatchNorm2d}


class ConvLayer(nn.Module):
    """Reflection pad, k x k convolution, norm (instance, affine, or batch), ReLU (``relu=False``: linear).

    Shape: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        relu: bool = True,
        norm: str = "instance",
    ):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride)
        self.norm = NORMS[norm](out_channels)
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pad(x))))


class ResidualBlock(nn.Module):
    """Two 3x3 ConvLayers, the second linear, added to the input. Shape: (B, C, H, W) -> same."""

    def __init__(self, channels: int, norm: str = "instance"):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, norm=norm)
        self.conv2 = ConvLayer(channels, channels, 3, relu=False, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class UpsampleConv(nn.Module):
    """Nearest 2x upsampling, then a 3x3 ConvLayer. Shape: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance"):
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TransformNet(nn.Module):
    """Encoder (9x9, two stride-2 3x3), residual blocks, decoder (two upsamplings, 9x9) -> RGB in (0, 1).

    Args:
        widths: channels at full, half and quarter resolution (the paper: 32, 64, 128).
        blocks: residual blocks at quarter resolution (the paper: 5).
        in_channels: image channels in and out.
        norm: ``instance`` (affine instance norm, Ulyanov et al.) or ``batch`` (the paper's batch norm).

    The decoder's output is added to the input's logit before the sigmoid, and its last convolution
    starts at zero: an untrained network returns its input, so training starts from the photo's
    content and learns only the change the style asks for (the paper's network starts from noise
    and must first learn to reproduce the photo).

    Input shape: (B, in_channels, H, W) on [0, 1], H and W divisible by 4 (others are padded by
    reflection and cropped back). Output shape: the same, on (0, 1) (a sigmoid).
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (32, 64, 128),
        blocks: int = 5,
        in_channels: int = 3,
        norm: str = "instance",
    ):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1 or blocks < 0 or in_channels < 1 or norm not in NORMS:
            raise CnnkitError(
                "a transformation network takes three positive widths, blocks >= 0, in_channels >= 1 and norm "
                f"{' or '.join(NORMS)}. Received: widths={widths}, blocks={blocks}, in_channels={in_channels}, "
                f"norm={norm!r}"
            )
        a, b, c = widths
        self.in_channels = in_channels
        self.encoder = nn.Sequential(
            ConvLayer(in_channels, a, 9, norm=norm),  # (B, 3, H, W) -> (B, a, H, W)
            ConvLayer(a, b, 3, stride=2, norm=norm),  # -> (B, b, H/2, W/2)
            ConvLayer(b, c, 3, stride=2, norm=norm),  # -> (B, c, H/4, W/4)
        )
        self.residual = nn.Sequential(*[ResidualBlock(c, norm) for _ in range(blocks)])
        self.decoder = nn.Sequential(
            UpsampleConv(c, b, norm),  # -> (B, b, H/2, W/2)
            UpsampleConv(b, a, norm),  # -> (B, a, H, W)
            nn.ReflectionPad2d(4),
            nn.Conv2d(a, in_channels, 9),  # -> (B, 3, H, W)
        )
        nn.init.zeros_(self.decoder[-1].weight)  # the untrained network is the identity
        nn.init.zeros_(self.decoder[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # reflection up to a multiple of 4, cropped back at the end; always (a pad of 0 at a multiple of 4),
        # so that an exported graph computes the pad from the input's size instead of keeping or dropping it
        x = F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")
        y = self.decoder(self.residual(self.encoder(x))) + torch.logit(x, eps=1e-3)  # a change to the input
        return torch.sigmoid(y[..., :h, :w])


def _build(variant: str, num_classes, in_channels: int) -> TransformNet:
    if num_classes is not None:
        raise CnnkitError(
            f"{variant} is an image transformation network: it returns an image, not class scores; "
            f"build it without num_classes. Received: num_classes={num_classes}"
        )
    widths, blocks, norm = STYLE_CFGS[variant]
    return TransformNet(widths, blocks, in_channels, norm)


_PAPER = "Johnson et al. 2016"


@register_model(input_size=(3, 256, 256), paper=_PAPER, family="style", task="style")
def johnson_style(num_classes=None, in_channels: int = 3) -> TransformNet:
    """The paper's transformation network (widths 32-64-128, 5 residual blocks)."""
    return _build("johnson_style", num_classes, in_channels)


@register_model(input_size=(3, 256, 256), paper=_PAPER, family="style", task="style")
def johnson_style_slim(num_classes=None, in_channels: int = 3) -> TransformNet:
    """Half the paper's widths (16-32-64), 5 residual blocks: what ``cnnkit style train`` trains."""
    return _build("johnson_style_slim", num_classes, in_channels)


@register_model(input_size=(3, 256, 256), paper=_PAPER, family="style", task="style")
def johnson_style_slim_bn(num_classes=None, in_channels: int = 3) -> TransformNet:
    """``johnson_style_slim`` with batch norms in place of its instance norms, as the paper has them."""
    return _build("johnson_style_slim_bn", num_classes, in_channels)

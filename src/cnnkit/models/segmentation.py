"""Semantic-segmentation networks on any zoo backbone's feature maps: FCN-32s/16s/8s, U-Net, DeepLab-v3.

- FCN: Long, Shelhamer & Darrell 2015, https://arxiv.org/abs/1411.4038
- U-Net: Ronneberger, Fischer & Brox 2015, https://arxiv.org/abs/1505.04597
- DeepLab-v3: Chen, Papandreou, Schroff & Adam 2017, https://arxiv.org/abs/1706.05587

Each is an *encoder* (:func:`cnnkit.models.features.create_features`, or :class:`UNetEncoder`, the
paper's own encoder for training from scratch) plus a *decoder* that restores what striding lost;
every model maps (B, C, H, W) -> (B, num_classes, H, W) logits for any H, W. A map at stride s has
``ceil(H / s)`` rows, its pixel i covering input rows ``[s i, s i + s)``; upsampling by f then cropping
to the finer map keeps that geometry (top-left aligned), and the last upsampling crops to (H, W).

That geometry holds exactly when H and W are multiples of the model's ``size_multiple`` (its deepest
stride). Otherwise some level has an odd size, and backbones that pad the TensorFlow way
(``Conv2dSame``, as EfficientNet-Lite does) pad an odd input of a stride-2 layer by one more pixel at
the top-left than an even one: the grid of every deeper map moves by one pixel of the odd map. A
network trained on crops of such a multiple then answers worse on other sizes; the task's
:class:`~cnnkit.tasks.segment.predict.Segmenter` pads every input to a multiple and crops the answer.

>>> net = create_segmenter("fcn8s", "resnet18", num_classes=3)
>>> net(torch.zeros(1, 3, 67, 45)).shape
torch.Size([1, 3, 67, 45])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.layers import ASPP, BilinearConvTranspose2d, ConvNormAct, aspp_rates, resize

ARCHS = ("fcn32s", "fcn16s", "fcn8s", "unet", "deeplabv3")
FCN_ARCHS = ARCHS[:3]
UNET_ENCODER = "unet"  # the backbone name of U-Net's own encoder


@dataclass
class SegmenterConfig:
    arch: str  # one of ARCHS
    backbone: str = "resnet18"  # a zoo name for create_features, or "unet" (U-Net's own encoder)
    num_classes: int = 2  # output channels, background included
    in_channels: int | None = None  # image channels (the backbone's default when None)
    output_stride: int = 16  # DeepLab only: 16 or 8 (the backbone dilates its later stages)
    weights: str | None = None  # backbone weights: None | "imagenet" | a path (as create_model)
    width: int = 32  # U-Net's own encoder: channels of its first level (doubling per level)
    finest: int = 2  # U-Net on a zoo backbone: the finest stride its decoder reaches (2 or 4;
    # 4 skips the costly stride-2 level, bilinear x4 to the input after)
    fcn_paper: bool = False  # FCN on VGG as Long et al. built it: conv7 scored, skips on pool4 and pool3


def _crop(x: torch.Tensor, size) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size): crop at the bottom/right, or repeat the last rows/columns where the
    map is short (a backbone that pools with floor, as VGG does, gives floor(H / s) rows, not ceil)."""
    x = x[..., : size[0], : size[1]]
    short_h, short_w = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return F.pad(x, (0, short_w, 0, short_h), mode="replicate") if short_h or short_w else x


def upsample_crop(x: torch.Tensor, factor: int, size) -> torch.Tensor:
    """Fixed bilinear upsampling by ``factor`` (half-pixel, = a bilinear transposed conv with edge
    padding), cropped to ``size``: (B, K, h, w) -> (B, K, *size) with size <= (f h, f w)."""
    return _crop(resize(x, (x.shape[-2] * factor, x.shape[-1] * factor), "bilinear"), size)


class UNetEncoder(nn.Module):
    """U-Net's contracting path: levels of two 3x3 conv-BN-ReLU, 2x2 max-pool between levels.

    "Same" padding and batch norm (the paper's convs are unpadded, its output smaller than its input).
    Attributes as :class:`~cnnkit.models.features.FeatureExtractor`: ``strides`` (1, 2, 4, 8, 16) and
    ``channels`` (w, 2w, 4w, 8w, 16w). Shape: (B, C, H, W) -> [(B, w 2^i, ceil(H / 2^i), ...)].
    """

    def __init__(self, in_channels: int = 3, width: int = 32, levels: int = 5):
        super().__init__()
        chans = [width * 2**i for i in range(levels)]
        self.levels = nn.ModuleList()
        for i, c in enumerate(chans):
            self.levels.append(
                nn.Sequential(ConvNormAct(in_channels if i == 0 else chans[i - 1], c), ConvNormAct(c, c))
            )
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.strides = [2**i for i in range(levels)]
        self.channels = chans
        self.feature_info = [
            {"stride": s, "channels": c, "module": f"levels.{i}"} for i, (s, c) in enumerate(zip(self.strides, chans))
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))  # (B, C_i, ceil(H / 2^i), ceil(W / 2^i))
            maps.append(x)
        return maps


def check_fcn_paper(arch: str, backbone: str) -> None:
    """Refuse ``fcn_paper`` (``--fcn-paper``) anywhere but on an FCN with a VGG encoder, in one line."""
    from cnnkit.models._registry import list_models, model_info

    vggs = [n for n in list_models() if model_info(n).family == "vgg"]
    if arch not in FCN_ARCHS or backbone not in vggs:
        raise CnnkitError(
            f"--fcn-paper builds Long et al.'s FCN on VGG: it takes --arch {', '.join(FCN_ARCHS)} with --model "
            f"{', '.join(vggs)}; received --arch {arch} --model {backbone}"
        )


def _encoder(cfg: SegmenterConfig, out_strides, output_stride: int = 32, **paper) -> nn.Module:
    if cfg.backbone == UNET_ENCODER:
        if cfg.arch != "unet":
            raise CnnkitError(
                f"backbone 'unet' (U-Net's own encoder) is for arch unet; {cfg.arch} needs a "
                "zoo backbone such as resnet18 or mobilenet_v2"
            )
        if cfg.weights:  # as detection's 'tiny': weights it cannot load are refused, never ignored
            raise CnnkitError(
                f"U-Net's own encoder (--model unet) has no pretrained weights; received --weights {cfg.weights}: "
                "leave --weights out, or choose a zoo encoder (e.g. --model resnet18)"
            )
        return UNetEncoder(cfg.in_channels or 3, cfg.width)
    from cnnkit.models.features import create_features

    return create_features(
        cfg.backbone,
        weights=cfg.weights,
        out_strides=out_strides,
        output_stride=output_stride,
        in_channels=cfg.in_channels,
        **paper,
    )


class FCN(nn.Module):
    """FCN-32s / 16s / 8s: class scores at stride 32, refined by scores from the stride-16 and stride-8
    maps ("skips"), each 2x step a learnable transposed conv initialised as bilinear, the skip scores
    zero-initialised (so FCN-16s starts as FCN-32s, as the paper trains them), the last upsampling
    fixed bilinear.

    Each level is scored on the backbone's last map at its stride (on VGG16: pool5, relu5_3, relu4_3).
    With ``fcn_paper`` (VGG only) it is Long et al.'s network: fc6 and fc7 are convolutions (7x7 with
    "same" padding, where the paper pads the input by 100 px and crops, and 1x1, to 4096, with their
    ReLU and dropout, ImageNet's fc6 and fc7 weights carried over), conv7 is scored at stride 32 and the
    skips are pool4 and pool3 (see :func:`~cnnkit.models.features.create_features`' ``fc_convs`` and
    ``taps``): 134 M parameters on VGG16.
    """

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        skips = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}[cfg.arch]
        paper = {"taps": "pool", "fc_convs": True} if cfg.fcn_paper else {}
        self.encoder = _encoder(cfg, (8, 16, 32)[2 - skips :], **paper)
        k = cfg.num_classes
        chans = self.encoder.channels
        self.score = nn.Conv2d(chans[-1], k, 1)  # on the stride-32 map
        self.score_skips = nn.ModuleList(nn.Conv2d(c, k, 1) for c in reversed(chans[:-1]))  # 16, then 8
        for conv in self.score_skips:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.up2 = nn.ModuleList(BilinearConvTranspose2d(k, 2) for _ in range(skips))
        self.final_stride = self.encoder.strides[0]
        self.size_multiple = self.encoder.strides[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encoder(x)  # strides (8,) 16, 32
        y = self.score(maps[-1])  # (B, K, H/32, W/32)
        for up, score, skip in zip(self.up2, self.score_skips, reversed(maps[:-1])):
            s = score(skip)  # (B, K, H/16, W/16), then H/8
            y = _crop(up(y), s.shape[-2:]) + s
        return upsample_crop(y, self.final_stride, x.shape[-2:])  # (B, K, H, W)


class UNetDecoderBlock(nn.Module):
    """2x2 up-convolution to the skip's channels, concatenation with the skip, two 3x3 conv-BN-ReLU.
    Shape: (B, C_deep, h, w), (B, C_skip, H, W) with H <= 2h -> (B, C_skip, H, W)."""

    def __init__(self, deep: int, skip: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(deep, skip, 2, stride=2)
        self.convs = nn.Sequential(ConvNormAct(2 * skip, skip), ConvNormAct(skip, skip))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = _crop(self.up(x), skip.shape[-2:])  # (B, C_skip, H, W)
        return self.convs(torch.cat([x, skip], 1))  # (B, 2 C_skip, H, W) -> (B, C_skip, H, W)


class UNet(nn.Module):
    """U-Net: the encoder's maps from the deepest up, each merged with the next finer one by a decoder
    block; a 1x1 conv scores the finest, then fixed bilinear upsampling to the input when it is strided
    (zoo backbones: stride 2)."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        if cfg.finest not in (2, 4):
            raise CnnkitError(
                f"U-Net's decoder reaches stride 2 or 4 of a zoo backbone. Received: finest={cfg.finest!r}"
            )
        self.encoder = _encoder(cfg, (2, 4, 8, 16, 32)[cfg.finest // 4 :])
        chans = self.encoder.channels
        self.blocks = nn.ModuleList(UNetDecoderBlock(chans[i + 1], chans[i]) for i in reversed(range(len(chans) - 1)))
        self.score = nn.Conv2d(chans[0], cfg.num_classes, 1)
        self.final_stride = self.encoder.strides[0]
        self.size_multiple = self.encoder.strides[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encoder(x)
        y = maps[-1]
        for block, skip in zip(self.blocks, reversed(maps[:-1])):
            y = block(y, skip)  # one level finer
        return upsample_crop(self.score(y), self.final_stride, x.shape[-2:])  # (B, K, H, W)


class DeepLabV3(nn.Module):
    """DeepLab-v3: an atrous backbone (output stride 16 or 8), ASPP, a 3x3 conv-BN-ReLU, a 1x1 scoring
    conv, fixed bilinear upsampling to the input (the head of torchvision's ``DeepLabHead``)."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        if cfg.output_stride not in (8, 16):
            raise CnnkitError(
                f"DeepLab-v3 runs at output_stride 16 or 8. Received: output_stride={cfg.output_stride!r}"
            )
        self.encoder = _encoder(cfg, (32,), cfg.output_stride)
        self.aspp = ASPP(self.encoder.channels[-1], 256, aspp_rates(cfg.output_stride))
        self.head = nn.Sequential(ConvNormAct(256, 256), nn.Conv2d(256, cfg.num_classes, 1))
        self.final_stride = self.encoder.strides[-1]
        self.size_multiple = self.final_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.encoder(x)[-1]  # (B, C, H/os, W/os)
        y = self.head(self.aspp(y))  # (B, K, H/os, W/os)
        return upsample_crop(y, self.final_stride, x.shape[-2:])


_ARCH_CLASSES = {"fcn32s": FCN, "fcn16s": FCN, "fcn8s": FCN, "unet": UNet, "deeplabv3": DeepLabV3}


def create_segmenter(arch: str, backbone: str = "resnet18", num_classes: int = 2, **kwargs) -> nn.Module:
    """Build a segmentation network; ``kwargs`` are :class:`SegmenterConfig`'s other fields.

    The module's ``config`` attribute (a dict) rebuilds it: ``create_segmenter(**model.config)``.
    """
    if arch not in _ARCH_CLASSES:
        raise CnnkitError(f"unknown segmentation architecture {arch!r}; use one of {', '.join(ARCHS)}")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise CnnkitError(f"num_classes must be a positive integer. Received: num_classes={num_classes!r}")
    try:
        cfg = SegmenterConfig(arch, backbone, num_classes, **kwargs)
    except TypeError as exc:
        raise CnnkitError(
            f"create_segmenter: {exc}; its options are {', '.join(SegmenterConfig.__dataclass_fields__)}"
        ) from None
    if cfg.fcn_paper not in (False, True):
        raise CnnkitError(f"fcn_paper must be True or False. Received: fcn_paper={cfg.fcn_paper!r}")
    if cfg.fcn_paper:
        check_fcn_paper(arch, backbone)
    model = _ARCH_CLASSES[arch](cfg)
    model.config = asdict(cfg)
    return model

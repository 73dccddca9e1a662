"""Networks over space and time: 3-D CNN clip classifiers (C3D, Tran et al. 2015,
https://arxiv.org/abs/1412.0767; R(2+1)D, Tran et al. 2018, https://arxiv.org/abs/1711.11248) and the
SimVP frame predictor (Gao et al. 2022, https://arxiv.org/abs/2206.05099), sized for 64x64 Moving
MNIST clips on a CPU.

Layouts: the classifiers take clips as ``(B, C, T, H, W)`` (``nn.Conv3d``'s layout), the predictor
takes and returns frames as ``(B, T, C, H, W)`` (SimVP's own layout, where frames fold into the batch
or into the channels).

- ``c3d_small``: stages of a 3x3x3 conv-BN-ReLU and a 3-D max pool (the first pools space only, as
  C3D's pool1, so early motion is kept), global average pooling, a linear layer.
- ``c3d_deep``: C3D's own layout at the same widths: two convolutions in each of the two deeper
  stages, where they run on small maps (1.77x the MACs of ``c3d_small``, about 1.4x its step time).
- ``r2plus1d_small``: the same stages with each 3x3x3 convolution factorised into a 1x3x3 spatial
  and a 3x1x1 temporal convolution with BN-ReLU between; the intermediate width
  ``M = floor(27 N_in N_out / (9 N_in + 3 N_out))`` makes the pair's weights as many as the 3-D
  convolution's (Tran et al. 2018, section 3.5).
- ``simvp`` / ``simvp_tiny``: a spatial encoder of 3x3 convs applied to every frame (every second one
  strided), a temporal translator of Inception blocks over the frames stacked as channels (a U-Net
  of them, as SimVP's ``Mid_Xnet``), a decoder of upsampling convs with a skip from the first encoder
  layer, and a 1x1 readout. 10 frames in, as many out. As in OpenSTL's SimVP (Tan et al. 2023,
  https://arxiv.org/abs/2306.11249, by the same group), the decoder upsamples with a conv and a pixel
  shuffle and adds the skip (the 2022 code concatenates it and uses transposed convs). Norms and
  activations are SimVP's (GroupNorm, LeakyReLU 0.2). The registered widths are far smaller than the
  paper's Moving MNIST model (``SIMVP_CFGS["simvp_paper"]``: hid_S 64, hid_T 512, N_T 8), and their
  first encoder layer already halves the frame (no 3x3 conv runs at 64x64 except the last
  upsampling one), so they train on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.layers.norm import GroupNorm
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model

# --- the clip classifiers -----------------------------------------------------------------------

# a variant is a row: (width, 3-D max-pool size (T, H, W)[, convolutions]) per stage; one
# convolution unless a third number says more
CLIP_CFGS: dict[str, list[tuple]] = {
    "small": [(16, (1, 2, 2)), (32, (2, 2, 2)), (64, (2, 2, 2)), (128, (2, 2, 2))],
    # C3D's own layout (conv3a/3b, conv4a/4b): two convolutions in the two deeper stages
    "deep": [(16, (1, 2, 2)), (32, (2, 2, 2)), (64, (2, 2, 2), 2), (128, (2, 2, 2), 2)],
}


class Conv3dBlock(nn.Sequential):
    """3x3x3 conv (no bias) -> BatchNorm3d -> ReLU, "same" padding: (B, C, T, H, W) -> (B, C', T, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)


def r2plus1d_width(in_channels: int, out_channels: int) -> int:
    """Intermediate width M of a (2+1)-D pair with as many weights as a 3x3x3 conv:
    M (9 N_in + 3 N_out) <= 27 N_in N_out (Tran et al. 2018, eq. 1 with t = d = 3)."""
    return (27 * in_channels * out_channels) // (9 * in_channels + 3 * out_channels)


class Conv2Plus1dBlock(nn.Sequential):
    """1x3x3 conv -> BN -> ReLU -> 3x1x1 conv -> BN -> ReLU: (B, C, T, H, W) -> (B, C', T, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = r2plus1d_width(in_channels, out_channels)
        self.conv_s = nn.Conv3d(in_channels, mid, (1, 3, 3), padding=(0, 1, 1), bias=False)  # space
        self.bn_s = nn.BatchNorm3d(mid)
        self.relu_s = nn.ReLU(inplace=True)
        self.conv_t = nn.Conv3d(mid, out_channels, (3, 1, 1), padding=(1, 0, 0), bias=False)  # time
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class ClipClassifier(Classifier):
    """Stages of ``block`` + 3-D max pool, global average pooling, dropout and a linear classifier.

    Args:
        cfg: a row of :data:`CLIP_CFGS`: (width, pool size[, convolutions]) per stage.
        block: the conv block class, ``Conv3dBlock`` or ``Conv2Plus1dBlock``.
        num_classes: outputs (10: the multi-label "which digits appear"; 0 removes the classifier).
        in_channels: channels of a frame.
        dropout: before the classifier.

    Input shape: (B, C, T, H, W); output shape: (B, num_classes).
    """

    def __init__(
        self,
        cfg: list,
        block: type[nn.Module] = Conv3dBlock,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        stages, c = [], in_channels
        for width, pool, *convs in cfg:  # (B, c, T, H, W) -> (B, width, T/pt, H/ph, W/pw)
            blocks = [block(c if i == 0 else width, width) for i in range(convs[0] if convs else 1)]
            stages.append(nn.Sequential(*blocks, nn.MaxPool3d(pool)))
            c = width
        self.features = nn.Sequential(*stages)
        self.num_classes, self.num_features = num_classes, c
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise CnnkitError(f"a clip classifier takes (B, C, T, H, W) clips; received shape {tuple(x.shape)}")
        return self.features(x)  # (B, 1, 20, 64, 64) -> (B, 128, 2, 4, 4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(x.mean((2, 3, 4)))  # (B, C, t, h, w) -> (B, C)
        return x if pre_logits else self.fc(x)  # (B, C) -> (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        check_args(num_classes, 1)
        ref = next(self.parameters())
        self.fc = (nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()).to(
            ref.device, ref.dtype
        )
        self.num_classes = num_classes


@register_model(input_size=(1, 20, 64, 64), paper="Tran et al. 2015 (C3D)", family="video", task="video")
def c3d_small(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> ClipClassifier:
    """C3D-style: four 3x3x3 conv stages (16-32-64-128), 0.53 G MACs for a 20x64x64 clip."""
    return ClipClassifier(CLIP_CFGS["small"], Conv3dBlock, num_classes, in_channels, dropout)


@register_model(input_size=(1, 20, 64, 64), paper="Tran et al. 2015 (C3D)", family="video", task="video")
def c3d_deep(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> ClipClassifier:
    """c3d_small with C3D's two 3x3x3 convolutions in each of the two deeper stages: 1.77x the MACs."""
    return ClipClassifier(CLIP_CFGS["deep"], Conv3dBlock, num_classes, in_channels, dropout)


@register_model(input_size=(1, 20, 64, 64), paper="Tran et al. 2018 (R(2+1)D)", family="video", task="video")
def r2plus1d_small(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> ClipClassifier:
    """c3d_small with every 3x3x3 conv factorised into 1x3x3 + 3x1x1 of about the same weights."""
    return ClipClassifier(CLIP_CFGS["small"], Conv2Plus1dBlock, num_classes, in_channels, dropout)


class FrameStack2d(Classifier):
    """The 2-D baseline: a clip's frames stacked as the channels of one image, then 2-D conv stages.

    Time is mixed entirely by the first convolution (each of its filters sees every frame at once);
    the rest is an ordinary image CNN. Stages are 3x3 conv-BN-ReLU and a 2x2 max pool, then global
    average pooling and a linear layer.

    Args:
        widths: channels of each stage.
        frames: frames of the clip (T): the first convolution takes C x T channels.
        num_classes: outputs (0 removes the classifier).
        in_channels: channels of a frame (C).
        dropout: before the classifier.

    Input shape: (B, C, T, H, W), as the 3-D classifiers; output shape: (B, num_classes).
    """

    def __init__(
        self, widths: list[int], frames: int = 10, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        self.frames, self.in_channels = frames, in_channels
        stages, c = [], in_channels * frames
        for width in widths:  # (B, c, H, W) -> (B, width, H/2, W/2)
            conv = nn.Conv2d(c, width, 3, padding=1, bias=False)
            stages.append(nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            c = width
        self.features = nn.Sequential(*stages)
        self.num_classes, self.num_features = num_classes, c
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1:3] != (self.in_channels, self.frames):
            raise CnnkitError(
                f"this frame stacker takes (B, C={self.in_channels}, T={self.frames}, H, W) clips; "
                f"received shape {tuple(x.shape)}"
            )
        return self.features(x.flatten(1, 2))  # frames into the channels: (B, C T, H, W) -> (B, c, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(x.mean((2, 3)))  # (B, c, h, w) -> (B, c)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        check_args(num_classes, 1)
        ref = next(self.parameters())
        self.fc = (nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()).to(
            ref.device, ref.dtype
        )
        self.num_classes = num_classes


@register_model(input_size=(1, 10, 32, 32), paper="Karpathy et al. 2014 (early fusion)", family="video", task="video")
def frames2d_small(num_classes: int = 10, in_channels: int = 1, frames: int = 10, dropout: float = 0.0) -> FrameStack2d:
    """2-D CNN on the frames stacked as channels (64-160-256-256): about c3d_small's MACs on 10x32x32 clips."""
    return FrameStack2d([64, 160, 256, 256], frames, num_classes, in_channels, dropout)


# --- the frame predictor ------------------------------------------------------------------------


@dataclass(frozen=True)
class SimVPConfig:
    """SimVP's sizes (the paper's names in brackets); the defaults are its Moving MNIST model."""

    frames: int = 10  # frames in, and out (T)
    channels: int = 1  # channels of a frame (C)
    hid_s: int = 64  # width of the spatial encoder and decoder (hid_S)
    hid_t: int = 512  # width of the temporal translator (hid_T)
    n_s: int = 4  # encoder (and decoder) layers; every second halves H, W (N_S)
    n_t: int = 8  # Inception blocks in each half of the translator (N_T)
    kernels: tuple[int, ...] = (3, 5, 7, 11)  # kernel sizes of an Inception block's branches
    groups: int = 8  # groups of the branches' convolutions
    stride_first: bool = False  # halve H, W in the first encoder layer (SimVP: the second)


SIMVP_CFGS = {
    # the Moving MNIST model of the paper and of OpenSTL (57.9 M weights, OpenSTL lists 58.0 M):
    # a reference row, far too slow to train on a CPU
    "simvp_paper": SimVPConfig(),
    "simvp": SimVPConfig(hid_s=16, hid_t=64, n_t=2, stride_first=True),
    "simvp_tiny": SimVPConfig(hid_s=8, hid_t=48, n_t=2, stride_first=True),
}


class ConvNormAct(nn.Sequential):
    """kxk conv -> GroupNorm -> LeakyReLU(0.2), "same" padding.

    ``sample`` = -1 halves H and W (stride 2), +1 doubles them (a conv to 4x the channels, then
    ``PixelShuffle(2)``, as OpenSTL's SimVP: on a CPU several times faster than a transposed conv),
    0 keeps them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        sample: int = 0,
        groups: int = 1,
        norm_groups: int = 2,
    ):
        super().__init__()
        pad = kernel_size // 2
        if sample > 0:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, 4 * out_channels, kernel_size, 1, pad), nn.PixelShuffle(2)
            )  # (B, 4C', H, W) -> (B, C', 2H, 2W)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, 2 if sample < 0 else 1, pad, groups=groups)
        self.norm = GroupNorm(norm_groups, out_channels)
        self.act = nn.LeakyReLU(0.2, inplace=True)


class Inception(nn.Module):
    """SimVP's translator block: a 1x1 conv to ``hidden``, then the sum of grouped kxk conv-norm-act
    branches, one per kernel size: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernels: tuple[int, ...], groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        g = groups if hidden % groups == 0 and out_channels % groups == 0 else 1
        self.branches = nn.ModuleList(ConvNormAct(hidden, out_channels, k, groups=g, norm_groups=g) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return sum(branch(x) for branch in self.branches)


class Translator(nn.Module):
    """A U-Net of Inception blocks over the frames stacked as channels (SimVP's ``Mid_Xnet``):
    ``n_t`` blocks down, ``n_t`` up, each up block taking the matching down block's output too."""

    def __init__(self, channels: int, hidden: int, n_t: int, kernels: tuple[int, ...], groups: int):
        super().__init__()
        if n_t < 2:
            raise CnnkitError(f"SimVP's translator needs n_t >= 2 Inception blocks per half; received n_t={n_t}")

        def inc(in_channels: int, out_channels: int) -> Inception:
            return Inception(in_channels, hidden // 2, out_channels, kernels, groups)

        self.down = nn.ModuleList([inc(channels, hidden)] + [inc(hidden, hidden) for _ in range(n_t - 1)])
        self.up = nn.ModuleList(
            [inc(hidden, hidden)] + [inc(2 * hidden, hidden) for _ in range(n_t - 2)] + [inc(2 * hidden, channels)]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            z = block(z)
            if i < len(self.down) - 1:
                skips.append(z)
        z = self.up[0](z)
        for block in self.up[1:]:
            z = block(torch.cat([z, skips.pop()], 1))  # (B, hid_T, h, w) + skip -> (B, 2 hid_T, h, w)
        return z


class SimVP(nn.Module):
    """SimVP: encode every frame, translate the stacked frame codes, decode every frame.

    Args:
        cfg: the sizes (:class:`SimVPConfig`).

    Input shape: (B, T, C, H, W) frames in [0, 1], H and W divisible by 2^(n_s // 2).
    Output shape: (B, T, C, H, W), the next T frames (unbounded; clamp to [0, 1] to show them).
    """

    def __init__(self, cfg: SimVPConfig = SimVPConfig()):
        super().__init__()
        if cfg.n_s < 2:
            raise CnnkitError(f"SimVP's encoder needs n_s >= 2 layers; received n_s={cfg.n_s}")
        self.cfg = cfg
        first = 1 if cfg.stride_first else 0
        down = [-((i + first) % 2) for i in range(cfg.n_s)]  # 0, -1, 0, -1: every second halves
        s = cfg.hid_s
        self.encoder = nn.ModuleList(
            ConvNormAct(cfg.channels if i == 0 else s, s, sample=k) for i, k in enumerate(down)
        )
        self.translator = Translator(cfg.frames * s, cfg.hid_t, cfg.n_t, cfg.kernels, cfg.groups)
        self.decoder = nn.ModuleList(ConvNormAct(s, s, sample=-k) for k in reversed(down))  # 1, 0, 1, 0
        self.readout = nn.Conv2d(s, cfg.channels, 1)
        self.factor = 2 ** -sum(down)  # H and W are halved this many times over: they must divide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1:3] != (self.cfg.frames, self.cfg.channels):
            raise CnnkitError(
                f"SimVP takes (B, T={self.cfg.frames}, C={self.cfg.channels}, H, W) frames; "
                f"received shape {tuple(x.shape)}"
            )
        b, t, c, h, w = x.shape
        if h % self.factor or w % self.factor:
            raise CnnkitError(
                f"SimVP takes frames whose sides are multiples of {self.factor} (it halves them "
                f"{self.factor.bit_length() - 1} times and doubles them back); received {h}x{w}"
            )
        # shapes for the registered rows (n_s = 4, stride_first): H, W halve in layers 1 and 3
        z = x.reshape(b * t, c, h, w)  # frames into the batch
        z = skip = self.encoder[0](z)  # (BT, C, H, W) -> (BT, hid_S, H/2, W/2)
        for layer in self.encoder[1:]:
            z = layer(z)  # -> (BT, hid_S, H/4, W/4)
        _, s, h2, w2 = z.shape
        z = self.translator(z.reshape(b, t * s, h2, w2))  # frames into the channels: (B, T hid_S, h, w)
        z = z.reshape(b * t, s, h2, w2)  # -> (BT, hid_S, H/4, W/4)
        for layer in self.decoder[:-1]:
            z = layer(z)  # -> (BT, hid_S, H/2, W/2)
        z = self.decoder[-1](z + skip)  # skip from encoder[0]; -> (BT, hid_S, H, W)
        return self.readout(z).reshape(b, t, c, h, w)  # -> (B, T, C, H, W)


def _simvp(name: str, frames: int, in_channels: int, num_classes) -> SimVP:
    if num_classes is not None:
        raise CnnkitError(
            f"{name} predicts frames and has no classifier; received: num_classes={num_classes}; "
            "use frames= and in_channels= instead"
        )
    check_args(0, in_channels)
    cfg = SIMVP_CFGS[name]
    return SimVP(SimVPConfig(**{**cfg.__dict__, "frames": frames, "channels": in_channels}))


@register_model(input_size=(10, 1, 64, 64), paper="Gao et al. 2022 (SimVP)", family="simvp", task="video_predict")
def simvp(frames: int = 10, in_channels: int = 1, num_classes=None) -> SimVP:
    """SimVP with hid_S 16, hid_T 64, N_S 4, N_T 2, first layer strided: 0.26 G MACs a clip.

    (B, 10, 1, 64, 64) -> the next 10 frames.
    """
    return _simvp("simvp", frames, in_channels, num_classes)


@register_model(input_size=(10, 1, 64, 64), paper="Gao et al. 2022 (SimVP)", family="simvp", task="video_predict")
def simvp_tiny(frames: int = 10, in_channels: int = 1, num_classes=None) -> SimVP:
    """SimVP with hid_S 8, hid_T 48, N_S 4, N_T 2, first layer strided: 0.08 G MACs a clip."""
    return _simvp("simvp_tiny", frames, in_channels, num_classes)

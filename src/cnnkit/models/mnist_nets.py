"""Small VGG-style CNNs with batch norm, sized for MNIST on a laptop CPU (cf. Simonyan & Zisserman
2014, https://arxiv.org/abs/1409.1556; Ioffe & Szegedy 2015, https://arxiv.org/abs/1502.03167).

A variant is a row of data: ints are 3x3 conv-BN-ReLU layers of that width (the first layer is 5x5
when ``stem5`` is set), ``"M"`` is a 2x2 max pool. A conv followed by a pool is built conv -> pool ->
BN -> ReLU (as in Keller Jordan's airbench): BN and ReLU, memory-bound on a CPU, then run on a
quarter of the pixels -- 1.46x the training throughput of conv -> BN -> ReLU -> pool for mnist_fast
on 2 cores (the fast preset then still validates at 99.56%, mean of 3 seeds). The head is a global max+avg pool and one linear
layer whose logits are scaled by 1/8 (without it, one-cycle SGD at lr 0.2 blows the logits up in the
first steps: the pooled ReLU features are large and all positive). The nets take any input size;
the MACs sit in the 14x14 and 7x7 stages, where oneDNN runs fastest (channels_last).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model

# name -> (layer row, 5x5 stem, dropout before the classifier)
CFGS: dict[str, tuple[list, bool, float]] = {
    "mnist_fast": ([32, "M", 48, "M", 96], True, 0.0),
    "mnist_best": ([32, "M", 64, 64, "M", 128, 128], True, 0.1),
}


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, pool: bool = False) -> nn.Sequential:
    """Conv (no bias) -> [2x2 max pool] -> BatchNorm -> ReLU, "same" padding."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    return nn.Sequential(
        conv,
        *([nn.MaxPool2d(2)] if pool else []),  # (B, C, H, W) -> (B, C, H/2, W/2)
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MnistNet(Classifier):
    """Conv-BN-ReLU stages from a row of data, then global max+avg pooling and a linear classifier."""

    def __init__(
        self, cfg: list, num_classes: int = 10, in_channels: int = 1, stem5: bool = False, dropout: float = 0.0
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        layers: list[nn.Module] = []
        c = in_channels
        for i, v in enumerate(cfg):
            pooled = i > 0 and cfg[i - 1] != "M" and v == "M"  # already inside the conv block
            if v == "M" and not pooled:
                layers.append(nn.MaxPool2d(2))  # (B, C, H, W) -> (B, C, H/2, W/2)
            elif v != "M":
                pool = i + 1 < len(cfg) and cfg[i + 1] == "M"
                layers.append(conv_bn(c, v, 5 if (i == 0 and stem5) else 3, pool))
                c = v
        self.features = nn.Sequential(*layers)
        self.num_classes = num_classes
        self.num_features = 2 * c  # the classifier sees max- and average-pooled features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.logit_scale = 0.125

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1, 28, 28) -> (B, C, 7, 7)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # pooled over the pixels of a (B, H*W, C) view when the map is channels_last (NCHW: (B, C, H*W)):
        # the gradient then comes back in the map's own layout, which the ReLU's backward needs to run fast
        pixels, dim = (x.flatten(2), 2) if x.is_contiguous() else (x.permute(0, 2, 3, 1).flatten(1, 2), 1)
        x = torch.cat([pixels.amax(dim), pixels.mean(dim)], 1)  # (B, C, 7, 7) -> (B, 2C)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x) * self.logit_scale  # (B, 2C) -> (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        check_args(num_classes, 1)
        ref = self.fc.weight if isinstance(self.fc, nn.Linear) else next(self.parameters())
        self.fc = (nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()).to(
            ref.device, ref.dtype
        )
        self.num_classes = num_classes


def _build(name: str, num_classes: int, in_channels: int) -> MnistNet:
    cfg, stem5, dropout = CFGS[name]
    return MnistNet(cfg, num_classes, in_channels, stem5, dropout)


@register_model(input_size=(1, 28, 28), paper="cnnkit 2024 (VGG-style, BN)", family="mnist_nets")
def mnist_fast(num_classes: int = 10, in_channels: int = 1) -> MnistNet:
    """~5.4 M MACs: the `fast` preset's net (>= 99.5% on MNIST in about a minute of laptop CPU)."""
    return _build("mnist_fast", num_classes, in_channels)


@register_model(input_size=(1, 28, 28), paper="cnnkit 2024 (VGG-style, BN)", family="mnist_nets")
def mnist_best(num_classes: int = 10, in_channels: int = 1) -> MnistNet:
    """~22 M MACs: the `best` preset's net."""
    return _build("mnist_best", num_classes, in_channels)

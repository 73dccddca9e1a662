"""What every zoo model shares: argument checks and the classifier interface's ``forward``."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError

MAX_CHANNELS = 65_536  # input channels a network may take: more is a typo or a damaged file
MAX_CLASSES = 1_000_000  # classes a classifier may have: more is a typo (a 2048-wide head alone is 8 GB)


def check_args(num_classes: int, in_channels: int, transform_input: bool = False) -> None:
    """Raise a one-line :class:`CnnkitError` for a bad ``num_classes`` (>= 0) or ``in_channels`` (1 to
    :data:`MAX_CHANNELS`), or for ``transform_input`` (the Inception nets' ImageNet -> [-1, 1] re-scaling)
    without 3 channels."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 0 <= num_classes <= MAX_CLASSES:
        raise CnnkitError(
            f"num_classes must be an integer from 0 to {MAX_CLASSES:,} (0 removes the classifier); "
            f"received: num_classes={str(num_classes)[:40]}"
        )
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or not 1 <= in_channels <= MAX_CHANNELS:
        raise CnnkitError(
            f"in_channels must be an integer from 1 to {MAX_CHANNELS:,} (3 for RGB, 1 for grayscale); "
            f"received: in_channels={str(in_channels)[:40]}"
        )
    if transform_input and in_channels != 3:
        raise CnnkitError(
            f"transform_input re-scales 3 RGB channels; received: in_channels={in_channels}; use transform_input=False"
        )


class Classifier(nn.Module):
    """Base of the zoo's image classifiers (timm's interface): subclasses define
    ``forward_features(x)`` (the conv trunk: (B, C, H, W) -> the last feature map), ``forward_head(x,
    pre_logits=False)`` (pooling and classifier) and ``reset_classifier(num_classes)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PooledClassifier(Classifier):
    """A ``features`` trunk, global average pooling and ``classifier = Sequential(Dropout, Linear)``
    (torchvision's MobileNet v2 and EfficientNet); a subclass gives ``new_linear(in, out)``, its init."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, C, h, w) -> (B, C)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Linear with ``num_classes`` outputs after the dropout (0: Identity)."""
        check_args(num_classes, 1)
        w = self.features[0][0].weight
        self.classifier[-1] = self.new_linear(self.num_features, num_classes).to(w.device, w.dtype)
        self.num_classes = num_classes

    def new_linear(self, in_features: int, num_classes: int) -> nn.Module:
        raise NotImplementedError

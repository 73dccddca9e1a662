"""AlexNet, in torchvision's single-tower layout (the "one weird trick" variant).

Paper: "ImageNet Classification with Deep Convolutional Neural Networks" (Krizhevsky, Sutskever &
Hinton, 2012) https://papers.nips.cc/paper/4824; this layout (64-192-384-256-256 filters, no local
response normalisation) follows "One weird trick for parallelizing CNNs" https://arxiv.org/abs/1404.5997.
State-dict keys are ``features.{0,3,6,8,10}`` and ``classifier.{1,4,6}`` as in torchvision.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.models._common import Classifier
from cnnkit.models._common import check_args as _check_args
from cnnkit.models._registry import register_model


class AlexNet(Classifier):
    """Five convolutions and three max pools, a 6x6 adaptive average pool, a 3-layer MLP.

    Args:
        num_classes: classifier outputs; 0 replaces the last Linear by ``nn.Identity``.
        in_channels: image channels; changes only the first convolution.
        dropout: dropout probability before each of the two hidden Linear layers.

    ``num_features`` is 4096, the input width of the last Linear; ``forward_head(x, pre_logits=True)``
    returns that 4096-wide vector. The trunk's own width (256) is ``forward_features(x).shape[1]``.
    All layers keep PyTorch's default initialisation, as torchvision does.

    Input shape: (B, in_channels, H, W) with H, W >= 63 (224 is the ImageNet size).
    Output shape: (B, num_classes).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        _check_args(num_classes, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # (B, C, 224, 224) -> (B, 64, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> (B, 64, 27, 27)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # -> (B, 192, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> (B, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # -> (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # -> (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # -> (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.num_features = 4096
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),  # (B, 9216) -> (B, 4096)
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            _classifier(self.num_features, num_classes),  # (B, 4096) -> (B, num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) -> (B, 256, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, 256, h, w) -> (B, 256 * 6 * 6)
        x = self.classifier[:-1](x)  # -> (B, 4096)
        return x if pre_logits else self.classifier[-1](x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear by a freshly initialised one with ``num_classes`` outputs (0: Identity)."""
        _check_args(num_classes, 1)
        ref = self.classifier[1].weight
        self.classifier[-1] = _classifier(self.num_features, num_classes).to(ref.device, ref.dtype)
        self.num_classes = num_classes


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    # PyTorch's default Linear initialisation, as in torchvision's AlexNet
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model(input_size=(3, 224, 224), paper="Krizhevsky et al. 2012", family="alexnet")
def alexnet(num_classes: int = 1000, in_channels: int = 3, **kw) -> AlexNet:
    return AlexNet(num_classes=num_classes, in_channels=in_channels, **kw)

"""The dense-prediction networks in the registry, with their task tags (``cnnkit zoo --task detect``).

Each builder takes the registry's one signature, ``fn(num_classes=..., in_channels=..., **options)``;
``backbone`` names the zoo network the model is built on and ``backbone_weights`` its weights
(``create_model``'s own ``weights`` load the whole model's).
"""

from __future__ import annotations

import torch.nn as nn

from cnnkit.models._registry import register_model
from cnnkit.models.detection import create_detector
from cnnkit.models.instance import MaskDetector
from cnnkit.models.segmentation import ARCHS, create_segmenter


@register_model(
    "fcos",
    input_size=(3, 320, 320),
    paper="Tian et al. 2019 (FCOS), on an FPN-lite neck",
    family="detection",
    task="detect",
)
def fcos(
    num_classes: int = 1,
    in_channels: int = 3,
    backbone: str = "efficientnet_lite0",
    backbone_weights: str | None = None,
    **options,
) -> nn.Module:
    """The anchor-free detector of ``cnnkit detect train`` (raw maps out; decode with ``models.detection.decode``)."""
    return create_detector(backbone, num_classes, weights=backbone_weights, in_channels=in_channels, **options)


@register_model(
    "mask_fcos",
    input_size=(3, 320, 320),
    paper="He et al. 2017 (Mask R-CNN's mask head) on FCOS",
    family="detection",
    task="instance",
)
def mask_fcos(
    num_classes: int = 1,
    in_channels: int = 3,
    backbone: str = "efficientnet_lite0",
    backbone_weights: str | None = None,
    mask_width: int = 64,
    mask_convs: int = 4,
    **options,
) -> nn.Module:
    """The detector with a mask head on its RoIs: what ``cnnkit instance train`` trains."""
    detector = fcos(num_classes, in_channels, backbone, backbone_weights, **options)
    return MaskDetector(detector, mask_width, mask_convs)


def _register_segmenter(arch: str) -> None:
    papers = {"unet": "Ronneberger et al. 2015 (U-Net)", "deeplabv3": "Chen et al. 2017 (DeepLab v3)"}

    @register_model(
        arch,
        input_size=(3, 256, 256),
        paper=papers.get(arch, "Long et al. 2015 (FCN)"),
        family="segmentation",
        task="segment",
    )
    def build(
        num_classes: int = 2,
        in_channels: int = 3,
        backbone: str = "resnet18",
        backbone_weights: str | None = None,
        **options,
    ) -> nn.Module:
        return create_segmenter(
            arch, backbone, num_classes, in_channels=in_channels, weights=backbone_weights, **options
        )


for _arch in ARCHS:
    _register_segmenter(_arch)

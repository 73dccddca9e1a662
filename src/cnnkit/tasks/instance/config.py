"""The instance-segmentation run's settings: :class:`InstanceConfig` on top of detection's."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cnnkit.engine.config import option
from cnnkit.tasks.detect.config import MAX_WIDTH, DetectConfig, stored_settings

MASK_SIZE = 28


# ----------------------------------------------------------------------------- the training recipe
@dataclass
class InstanceConfig(DetectConfig):
    """The settings of ``cnnkit instance train``: detection's, with other defaults, plus the mask head's.

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit instance train --help`` show that text; the detector's fields are
    :class:`~cnnkit.tasks.detect.DetectConfig`'s.

    Example:
        >>> InstanceConfig(data="digits").resolved().model
        'resnet18'
    """

    data: str = option(
        "pennfudan",
        help="pennfudan | digits | PATH of a COCO JSON file (each object's segmentation: polygons or RLE) or a "
        "Pascal VOC folder (SegmentationObject/ instance PNGs beside SegmentationClass/)",
    )
    voc_names: bool = option(
        False,
        help="a VOC folder's classes 1..20 named by VOC's 20 names (aeroplane ... tvmonitor); without it they "
        "are named 1..K, as segment names a mask folder's classes",
    )
    image_size: int | None = None
    model: str = ""
    epochs: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    scenes: tuple[int, int] = (600, 200)
    mask_convs: int = option(
        4, help="3x3 convolutions of the mask head (Mask R-CNN: 4; at most 16)", minimum=0, maximum=16
    )
    mask_width: int = option(
        64, help=f"channels of the mask head (Mask R-CNN: 256; at most {MAX_WIDTH})", minimum=1, maximum=MAX_WIDTH
    )
    roi_jitter: int = option(
        2, help="jittered copies of each ground-truth box the mask head trains on (at most 16)", minimum=0, maximum=16
    )
    mask_weight: float = option(1.0, help="weight of the mask loss beside the detector's", minimum=0)
    freeze_to: int | None = 4
    val_every: int | None = None
    tta: str | None = option(
        None,
        help="test-time augmentation of validation, eval and predict: flip (the boxes from the image's and "
        "its mirror image's outputs averaged, the masks from the image's) | none",
        choices=("flip", "none"),
    )

    def resolved(self) -> InstanceConfig:
        """A copy with the data-dependent defaults filled in (instance's own, then detection's).

        Returns:
            The resolved :class:`InstanceConfig`.
        """
        photos = self.data != "digits"
        cfg = replace(
            self,
            image_size=self.image_size if self.image_size is not None else (320 if photos else 96),
            epochs=self.epochs if self.epochs is not None else (40 if photos else 10),
            model=self.model or ("efficientnet_lite0" if photos else "resnet18"),
            val_every=self.val_every if self.val_every is not None else (8 if photos else 0),
            tta=self.tta or "none",  # flip TTA of the boxes did not raise the validation mask AP
            keep_depthwise=bool(self.keep_depthwise),  # off unless asked: the mask head's recipe trains them
            train_digits=self.train_digits or (1, 4),  # whatever the backbone (detection gives tiny 4 to 8)
        )
        return DetectConfig.resolved(cfg)


def config_from_dict(d: dict) -> InstanceConfig:
    d = dict(d)
    validate = d.pop("validate", False)  # runs from before val_every: validate (bool) = every epoch
    return InstanceConfig.from_dict(
        {**stored_settings(d), "val_every": d.get("val_every", 1 if validate else 0)}, strict=False
    )

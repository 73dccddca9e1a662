"""The instance-segmentation run's settings: :class:`InstanceConfig` on top of detection's."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cnnkit.tasks.detect.config import DetectConfig

MASK_SIZE = 28


# ----------------------------------------------------------------------------- the training recipe
@dataclass
class InstanceConfig(DetectConfig):
    # what differs from `cnnkit detect train` (every other field is DetectConfig's, same meaning)
    image_size: int | None = None       # None: 320 photos (a 20-minute CPU budget), 96 digits
    epochs: int | None = None           # None: 40 photos (mask AP 0.406 / 0.459 / 0.521 at 14 / 24 / 40;
                                        # channels-last made 40 fit in 18.5 min), 10 digits
    batch_size: int = 8                 # global batch (pinned here, with lr: the measured recipe)
    lr: float = 1e-3                    # peak learning rate
    scenes: tuple[int, int] = (600, 200)   # digits: train and test scenes
    mask_convs: int = 4                 # 3x3 convs of the mask head (the paper: 4)
    mask_width: int = 64                # their channels (the paper: 256)
    roi_jitter: int = 2                 # jittered copies of each ground-truth box the mask head trains on
    mask_weight: float = 1.0            # weight of the mask loss beside the detector's
    freeze_stride: int = 4              # pretrained backbone modules up to this stride stay frozen (BN in eval
                                        # mode too), as detectron2 freezes the stem and res2; 0: train all
    val_every: int | None = None        # mask AP on the test split after every k-th epoch (None: 0, none
                                        # until the end; on a 2-core CPU each pass costs ~30 s of the budget)

    def resolved(self) -> "InstanceConfig":
        photos = self.data != "digits"
        cfg = replace(self, image_size=self.image_size if self.image_size is not None else (320 if photos else 96),
                      epochs=self.epochs if self.epochs is not None else (40 if photos else 10),
                      backbone=self.backbone or ("efficientnet_lite0" if photos else "resnet18"),
                      val_every=self.val_every if self.val_every is not None else 0)
        return DetectConfig.resolved(cfg)


def config_from_dict(d: dict) -> InstanceConfig:
    d = dict(d)
    validate = d.pop("validate", False)      # runs from before val_every: validate (bool) = every epoch
    return InstanceConfig(**{**d, "scenes": tuple(d["scenes"]),
                             "separate_towers": d.get("separate_towers", False),   # runs from before the option
                             "val_every": d.get("val_every", 1 if validate else 0)})

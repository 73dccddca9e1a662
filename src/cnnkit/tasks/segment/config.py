"""The segmentation run's settings: :class:`SegmentConfig` and the defaults per data set."""

from __future__ import annotations

from dataclasses import dataclass

DATA_DEFAULTS = {   # what `cnnkit segment train --data X` uses without flags (the recipe the README reports)
    "pennfudan": dict(arch="unet", backbone="efficientnet_lite0", weights="imagenet", finest=4, freeze_bn=True,
                      freeze_to=4, channels_last=True, encoder_lr=0.1, max_side=384, crop=320, batch_size=8,
                      epochs=40, lr=3e-3, jitter=0.3, lovasz=1.0, tta="flip", test_scale=1.5, val_every=4,
                      threads=1),      # one thread, as detection: the measured run (a busy second core stalls every op)
    "digits": dict(arch="unet", backbone="unet", width=8, channels_last=True, canvas=64, scenes=6000,
                   batch_size=8, epochs=10, lr=3e-3, dice=1.0),
    "folder": dict(arch="unet", backbone="efficientnet_lite0", weights="imagenet", finest=4, freeze_bn=True,
                   freeze_to=4, channels_last=True, encoder_lr=0.1, max_side=256, crop=224, batch_size=8,
                   epochs=40, lr=3e-3, jitter=0.3),
}


_SCRATCH = dict(weights=None, freeze_bn=False, freeze_to=0, encoder_lr=1.0)   # what a from-scratch encoder changes


@dataclass
class SegmentConfig:
    data: str = "pennfudan"            # "pennfudan" | "digits" | a folder of images/ + masks/
    data_dir: str | None = None        # holds pennfudan/ and mnist/ (else $CNNKIT_DATA)
    arch: str | None = None            # fcn32s | fcn16s | fcn8s | unet | deeplabv3 (None: the data's default)
    backbone: str | None = None        # zoo name for create_features, or "unet" (U-Net's own encoder)
    weights: str | None = None         # backbone weights: None | "imagenet" | path (the data's default; "none": none)
    output_stride: int = 16            # DeepLab: 16 or 8
    width: int | None = None           # U-Net's own encoder: first-level channels
    finest: int | None = None          # U-Net on a zoo backbone: finest decoder stride, 2 or 4
    freeze_bn: bool | None = None      # keep the encoder's batch norms in eval mode (pretrained statistics)
    encoder_lr: float | None = None    # the encoder's learning rate as a fraction of --lr
    freeze_to: int | None = None       # zoo encoder: its layers up to the map of this stride not trained (0: none)
    channels_last: bool | None = None  # NHWC weights and batches (faster depthwise convolutions on CPUs)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None            # peak learning rate (AdamW, one-cycle)
    weight_decay: float = 1e-4         # on conv weights only
    optimizer: str = "adamw"           # as cnnkit train: sgd | adamw | nadam
    momentum: float = 0.9              # sgd only
    schedule: str = "onecycle"         # onecycle | cosine | constant
    warmup: float = 0.1                # fraction of the steps warming up (onecycle)
    crop: int | None = None            # training crop side of photos (px)
    max_side: int | None = None        # photos shrunk so the longer side is at most this (px)
    jitter: float | None = None        # brightness / contrast / saturation jitter of training photos
    dice: float | None = None          # weight of the soft Dice loss beside cross-entropy
    lovasz: float | None = None        # weight of the Lovasz-softmax loss beside cross-entropy
    canvas: int | None = None          # digit scenes: side (px)
    scenes: int | None = None          # digit scenes: training scenes (validation and test: a quarter)
    tta: str | None = None             # test-time augmentation: "flip" (image and mirror averaged) | "none"
    test_scale: float | None = None    # the network answers on the image resized by this (1: as it is)
    boundary_d: int = 3                # boundary IoU band (px)
    val_every: int | None = None       # validate after every k-th epoch and the last (photos: 4, else 1; 0: never)
    seed: int = 0
    threads: int | None = None         # torch threads (None: 1 on Penn-Fudan, else all cores; 0: all cores)

    def resolved(self) -> "SegmentConfig":
        """Every None filled in from DATA_DEFAULTS for this data."""
        from dataclasses import replace

        kind = self.data if self.data in ("pennfudan", "digits") else "folder"
        defaults = {"width": 32, "finest": 2, "val_every": 1, "jitter": 0.0, "dice": 0.0, "lovasz": 0.0, "tta": "none", "test_scale": 1.0,
                    "channels_last": False, **_SCRATCH,
                    **DATA_DEFAULTS[kind]}
        if self.arch is not None and self.arch != "unet" and self.backbone is None:
            defaults["backbone"] = "resnet18" if defaults["backbone"] == "unet" else defaults["backbone"]
        backbone = self.backbone or defaults["backbone"]
        if backbone == "unet" or self.weights == "none" or (self.backbone is not None and
                                                             self.backbone != defaults["backbone"]):
            defaults.update(_SCRATCH)          # another encoder than the recipe's: from scratch unless told
        out = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        return replace(out, weights=None) if out.weights == "none" else out

"""The detection run's settings: :class:`DetectConfig` and its checks."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.errors import CnnkitError


# ----------------------------------------------------------------------------- the training recipe
@dataclass
class DetectConfig:
    # data
    data: str = "pennfudan"             # "pennfudan" | "digits" | PATH of a COCO JSON file or a YOLO folder
    data_dir: str | None = None         # folder holding pennfudan/ and mnist/ (else $CNNKIT_DATA)
    image_size: int | None = None       # square side images are letterboxed to (None: 320 photos, 128 digits)
    scenes: tuple[int, int] = (12000, 500)  # digits: train and test scenes
    train_digits: tuple[int, int] | None = None   # digits: least and most digits per training scene (None:
                                        # 4-8 on tiny, 1-4 otherwise; test scenes always hold 1-4). Denser
                                        # scenes = more digits learnt per step: AP50 0.58 -> 0.77 (2-6 -> 4-8)
    subset: int = 0                     # train on the first N training images only (0 = all; smoke tests)
    # model
    backbone: str = ""                  # zoo name or "tiny" ("": efficientnet_lite0 for photos, tiny for digits)
    weights: str | None = "imagenet"    # backbone weights: "imagenet" | None | a path (digits: None)
    strides: tuple[int, ...] = ()       # pyramid strides the head runs on (): 8/16/32 photos, 8 on tiny
                                        # (digit boxes are <= 41 px: FCOS's ranges give stride 16 none)
    freeze: int | None = None           # backbone modules up to this stride not trained, and its BatchNorm
                                        # statistics kept (None: 4 with pretrained weights, -1 = none)
    width: int = 64                     # channels of the FPN-lite neck and the head
    head_convs: int = 2                 # 3x3 convs per head tower
    separate_towers: bool | None = None  # one head tower for the classes, another for boxes + centre-ness
                                        # (None: on for photos -- Penn-Fudan validation AP 0.511 vs 0.504 at
                                        # 20 epochs, ahead at 12 of epochs 5-20 -- off on tiny, tuned without)
    box_weight: float = 1.0             # GIoU loss weight
    # optimisation (the field names cnnkit.train's optimizer and schedule read)
    epochs: int | None = None           # passes over the training split (None: 40 photos -- Penn-Fudan test
                                        # AP 0.534 / 0.552 / 0.569 at 24 / 32 / 40, 15-18 min -- 5 digits)
    batch_size: int | None = None       # global batch (None: 4 photos, 8 digits)
    lr: float | None = None             # peak learning rate (None: 1e-3 photos, 4e-3 digits)
    optimizer: str = "adamw"            # "adamw" | "sgd" | "nadam"
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 1e-4          # on conv/linear weights only
    schedule: str = "onecycle"          # linear warm-up then cosine to 0 | "cosine" | "constant"
    warmup: float = 0.1                 # fraction of the steps spent warming up
    ema: float = 0.0                    # EMA decay of the weights per step (0 = off)
    val_every: int | None = None        # validate after every k-th epoch and the last (None: 4 photos --
                                        # 50 test photos take 7-9 s against 20-25 s of training -- 1 digits)
    cls_loss: str | None = None         # class loss: "focal" | "varifocal" (IoU-aware targets; None:
                                        # varifocal: it ranks the better-placed boxes first, Penn-Fudan
                                        # validation AP75 0.52 vs 0.42 with focal, AP 0.515 vs 0.511)
    channels_last: bool | None = None   # NHWC weights and batches (None: on -- oneDNN's convs: tiny ~15%
                                        # faster; efficientnet_lite0 at 320 px, one thread, a training step
                                        # 1.26x (batch 4) and with the mask head 1.67x (batch 8) faster: in
                                        # NCHW PyTorch sends a 1x1 conv of a batch under 16 to its slow im2col
                                        # path when single-threaded, and lite0 is mostly 1x1 convs)
    seed: int = 0                       # model init, data order and augmentation
    # runtime
    device: str | None = None           # "cpu" | "cuda" | None (cuda when available)
    threads: int | None = None          # torch threads per process (0: all cores; None: 1: on this shared
                                        # 2-core CPU a busy second core stalls every op -- tiny's convs and
                                        # efficientnet_lite0 at 320 px alike, 0.31 vs 0.89 s per image)

    def resolved(self) -> "DetectConfig":
        """Fill the data-dependent defaults (what the run stores, so eval/resume see the same)."""
        from dataclasses import replace

        photos = self.data != "digits"
        backbone = self.backbone or ("efficientnet_lite0" if photos else "tiny")
        tiny = backbone == "tiny"
        weights = self.weights if photos and not tiny else (None if self.weights == "imagenet" else self.weights)
        return replace(self, image_size=self.image_size if self.image_size is not None else (320 if photos else 128),
                       backbone=backbone, weights=weights,
                       strides=tuple(self.strides) or ((8,) if tiny else (8, 16, 32)),
                       freeze=self.freeze if self.freeze is not None else (4 if weights else -1),
                       epochs=self.epochs if self.epochs is not None else (40 if photos else 5),
                       separate_towers=self.separate_towers if self.separate_towers is not None else not tiny,
                       batch_size=self.batch_size if self.batch_size is not None else (4 if photos else 8),
                       lr=self.lr if self.lr is not None else (1e-3 if photos else 4e-3),
                       cls_loss=self.cls_loss or "varifocal",
                       channels_last=self.channels_last if self.channels_last is not None else True,
                       threads=self.threads if self.threads is not None else 1,
                       val_every=self.val_every if self.val_every is not None else (4 if photos else 1),
                       scenes=tuple(self.scenes),
                       train_digits=tuple(self.train_digits or ((4, 8) if tiny else (1, 4))))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def validate(cfg: DetectConfig) -> DetectConfig:
    """Raise CnnkitError naming the first bad value."""
    checks = [("epochs", cfg.epochs >= 1, "a positive integer"),
              ("batch_size", cfg.batch_size >= 2, "an integer >= 2"),
              ("lr", cfg.lr > 0, "a positive number"),
              ("image_size", cfg.image_size >= 32, "at least 32"),
              ("optimizer", cfg.optimizer in ("sgd", "adamw", "nadam"), "sgd, adamw or nadam"),
              ("schedule", cfg.schedule in ("onecycle", "cosine", "constant"), "onecycle, cosine or constant"),
              ("width", cfg.width >= 8, "at least 8"),
              ("head_convs", cfg.head_convs >= 0, "an integer >= 0"),
              ("box_weight", cfg.box_weight >= 0, "a number >= 0"),
              ("val_every", cfg.val_every >= 0, "an integer >= 0 (0: no validation while training)"),
              ("device", cfg.device in (None, "cpu", "cuda"), "cpu or cuda")]
    for name, ok, want in checks:
        if not ok:
            raise CnnkitError(f"--{name.replace('_', '-')} must be {want}; received {getattr(cfg, name)!r}")
    return cfg


def replace_subset(cfg: DetectConfig) -> DetectConfig:
    from dataclasses import replace

    return replace(cfg, subset=0)


def config_from_dict(d: dict) -> DetectConfig:
    return DetectConfig(**{**d, "scenes": tuple(d["scenes"]), "strides": tuple(d.get("strides", ())),
                           "train_digits": tuple(d.get("train_digits") or (1, 4)),
                           "separate_towers": d.get("separate_towers", False)})   # runs from before the option

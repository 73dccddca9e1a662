"""The detection run's settings: :class:`DetectConfig` and its checks."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.engine.config import RunConfig, option
from cnnkit.errors import CnnkitError

# Letterboxed sides are multiples of this, the backbones' deepest stride: EfficientNet-Lite pads its
# stride-2 convolutions the TensorFlow way, one pixel more on an odd-sized map, which moves the deeper
# maps off the grid the head's points assume (docs/experiments/2026-12-06-segmenter-alignment.md).
SIDE_MULTIPLE = 32
# The most scenes of a split: 80 times the default 12,000 training scenes, each drawn one by one
MAX_SCENES = 1_000_000
# The most channels of the neck and heads: four times Mask R-CNN's 256 (70 M parameters on a photo
# detector's three levels)
MAX_WIDTH = 1024


# ----------------------------------------------------------------------------- the training recipe
@dataclass
class DetectConfig(RunConfig):
    """The settings of ``cnnkit detect train``: the shared run settings plus the detector's own.

    ``None`` (and ``""``) fields take the data's default when :meth:`resolved` fills them in: photos
    (Penn-Fudan, a COCO file, a YOLO or VOC folder) train a pretrained backbone, digit scenes a tiny one.

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit detect train --help`` show that text.

    Example:
        >>> DetectConfig(data="digits").resolved().model
        'tiny'
    """

    data: str = option(
        "pennfudan", help="pennfudan | digits | PATH of a COCO JSON file, a YOLO folder or a Pascal VOC folder"
    )
    image_size: int | None = option(
        None,
        help="square side images are letterboxed to, a multiple of 32 (default: 320 for photos, 128 for digits)",
        minimum=32,
    )
    test_scale: float | None = option(
        None,
        help="validation, eval and predict letterbox images to --image-size times this, rounded to a multiple of "
        "32 (default: 1.1 for photos, 352 px after training at 320; 1 for digit scenes)",
    )
    scenes: tuple[int, int] = option(
        (12000, 500),
        help=f"digits: numbers of training and test scenes (each at most {MAX_SCENES:,})",
        minimum=1,
        below=MAX_SCENES + 1,
    )
    train_digits: tuple[int, int] | None = option(
        None,
        help="digits: least and most digits per training scene, 1 to 16 (default: 4-8 on tiny, else 1-4; test "
        "scenes hold 1-4)",
        minimum=1,
        maximum=16,
    )
    model: str = option(
        "", help="the backbone: a zoo name or tiny (default: efficientnet_lite0 for photos, tiny for digits)"
    )
    weights: str | None = "imagenet"
    strides: tuple[int, ...] = option(
        (), help="pyramid strides the head runs on (default: 8 16 32 for photos, 8 on tiny)"
    )
    freeze_to: int | None = option(
        None,
        help="pretrained backbone modules up to this output stride are not "
        "trained and keep their batch-norm statistics, as detectron2 freezes "
        "the stem and res2 (default: 4 with pretrained weights; 0: none)",
        choices=(0, 2, 4, 8, 16, 32),
    )
    keep_depthwise: bool | None = option(
        None,
        help="the pretrained backbone's depthwise filters are not trained (their weight gradients are the "
        "slowest part of a CPU step) (default: on for the Penn-Fudan detector; off for instance masks, "
        "other data and backbones without weights)",
    )
    width: int = option(
        64, help=f"channels of the FPN-lite neck and the head (from 8 to {MAX_WIDTH})", minimum=8, maximum=MAX_WIDTH
    )
    head_convs: int = option(2, help="3x3 convolutions per head tower (at most 16)", minimum=0, maximum=16)
    separate_towers: bool | None = option(
        None, help="one head tower for the classes, another for boxes and centre-ness (default: on, off on tiny)"
    )
    box_weight: float = option(1.0, help="weight of the GIoU box loss")
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    cls_loss: str | None = option(
        None,
        help="class loss: focal | varifocal (IoU-aware targets; the default: it ranks the better-placed boxes first)",
        choices=("focal", "varifocal"),
    )
    channels_last: bool | None = option(
        None, help="NHWC weights and batches (default: on; oneDNN's 1x1 convolutions run faster channels-last)"
    )
    tta: str | None = option(
        None,
        help="test-time augmentation of validation, eval and predict: flip (the outputs on the image and on "
        "its mirror image averaged) | none (default: flip for photos, none for digit scenes)",
        choices=("flip", "none"),
    )

    def test_side(self) -> int:
        """The square side validation, eval and predict letterbox images to: ``image_size`` times
        ``test_scale``, rounded to a multiple of :data:`SIDE_MULTIPLE`."""
        return SIDE_MULTIPLE * round(self.image_size * (self.test_scale or 1.0) / SIDE_MULTIPLE)

    def resolved(self) -> DetectConfig:
        """A copy with the data-dependent defaults filled in: what the run stores, so eval and resume
        see the same settings.

        Returns:
            The resolved :class:`DetectConfig`: no field left None but ``threads``, which stays as
            given (unset: the free cores when the run starts; the model records the number used).
        """
        from dataclasses import replace

        photos = self.data != "digits"
        backbone = self.model or ("efficientnet_lite0" if photos else "tiny")
        tiny = backbone == "tiny"
        weights = self.weights if photos and not tiny else (None if self.weights == "imagenet" else self.weights)
        return replace(
            self,
            image_size=self.image_size if self.image_size is not None else (320 if photos else 128),
            test_scale=self.test_scale if self.test_scale is not None else (1.1 if photos else 1.0),
            model=backbone,
            weights=weights,
            strides=tuple(self.strides) or ((8,) if tiny else (8, 16, 32)),
            freeze_to=self.freeze_to if self.freeze_to is not None else (4 if weights else 0),
            keep_depthwise=(
                self.keep_depthwise if self.keep_depthwise is not None else bool(weights) and self.data == "pennfudan"
            ),
            epochs=self.epochs if self.epochs is not None else (40 if photos else 5),
            separate_towers=self.separate_towers if self.separate_towers is not None else not tiny,
            batch_size=self.batch_size if self.batch_size is not None else (4 if photos else 8),
            lr=self.lr if self.lr is not None else (1e-3 if photos else 4e-3),
            cls_loss=self.cls_loss or "varifocal",
            channels_last=self.channels_last if self.channels_last is not None else True,
            tta=self.tta or ("flip" if photos else "none"),
            val_every=self.val_every if self.val_every is not None else (4 if photos else 1),
            scenes=tuple(self.scenes),
            train_digits=tuple(self.train_digits or ((4, 8) if tiny else (1, 4))),
        )


def validate(cfg: DetectConfig) -> DetectConfig:
    """Raise CnnkitError naming the first bad value."""
    below = max(1, cfg.image_size // SIDE_MULTIPLE) * SIDE_MULTIPLE  # the allowed side at or below --image-size
    checks = [
        ("epochs", cfg.epochs >= 1, "a positive integer"),
        ("batch_size", cfg.batch_size >= 2, "an integer >= 2"),
        ("lr", cfg.lr > 0, "a positive number"),
        (
            "image_size",
            cfg.image_size >= SIDE_MULTIPLE and cfg.image_size % SIDE_MULTIPLE == 0,
            f"a multiple of {SIDE_MULTIPLE}, the backbones' deepest stride (such as {below} or "
            f"{below + SIDE_MULTIPLE})",
        ),
        (
            "test_scale",
            0 < cfg.test_scale <= 4 and cfg.test_side() >= SIDE_MULTIPLE,  # NaN and inf fail the first test
            f"a factor above 0 and at most 4, with --image-size times it >= {SIDE_MULTIPLE}",
        ),
        ("test_scale", cfg.data != "digits" or cfg.test_scale == 1, "1 on digit scenes (they are drawn at one size)"),
        (
            "train_digits",
            cfg.data != "digits" or cfg.train_digits[0] <= cfg.train_digits[1],
            "the least digits per scene, then the most (such as 1 4)",
        ),
        ("optimizer", cfg.optimizer in ("sgd", "adamw", "nadam"), "sgd, adamw or nadam"),
        ("schedule", cfg.schedule in ("onecycle", "cosine", "constant"), "onecycle, cosine or constant"),
        ("width", cfg.width >= 8, "at least 8"),
        ("head_convs", cfg.head_convs >= 0, "an integer >= 0"),
        ("box_weight", cfg.box_weight >= 0, "a number >= 0"),
        ("val_every", cfg.val_every >= 0, "an integer >= 0 (0: no validation while training)"),
        ("device", cfg.device in (None, "cpu", "cuda"), "cpu or cuda"),
        (
            "keep_depthwise",
            not cfg.keep_depthwise or bool(cfg.weights),
            "off without pretrained weights (it keeps the backbone's depthwise filters as --weights gives them)",
        ),
    ]
    for name, ok, want in checks:
        if not ok:
            raise CnnkitError(f"--{name.replace('_', '-')} must be {want}; received {getattr(cfg, name)!r}")
    return cfg


def stored_settings(d: dict) -> dict:
    """A run's stored settings with what earlier versions did not store filled in as those runs
    trained and answered. Shared by the detection and instance runs."""
    return {
        **d,
        "train_digits": d.get("train_digits") or (1, 4),
        "separate_towers": d.get("separate_towers", False),
        "test_scale": d.get("test_scale", 1.0),  # runs from before the option answered at their training size
        "keep_depthwise": d.get("keep_depthwise", False),  # runs from before the option trained every filter
    }


def config_from_dict(d: dict) -> DetectConfig:
    """The settings a detection run stored (runs of earlier versions included)."""
    return DetectConfig.from_dict(stored_settings(d), strict=False)

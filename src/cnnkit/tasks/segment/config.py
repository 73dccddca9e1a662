"""The segmentation run's settings: :class:`SegmentConfig` and the defaults per data set."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.engine.config import RunConfig, option
from cnnkit.tasks.detect.config import MAX_SCENES

# The most first-level channels of U-Net's own encoder: twice U-Net's 64 (its deepest level has 16
# times as many: 124 M parameters, four times U-Net's 31 M)
MAX_UNET_WIDTH = 128
# digit scenes: the largest digit they draw (twice MNIST's 28 px) and the largest canvas
LARGEST_DIGIT, MAX_CANVAS = 56, 4096

DATA_DEFAULTS = {  # what `cnnkit segment train --data X` uses without flags (the recipe the README reports)
    "pennfudan": dict(
        arch="unet",
        model="efficientnet_lite1",
        weights="imagenet",
        finest=4,
        freeze_bn=True,
        freeze_to=4,
        keep_depthwise=True,
        channels_last=True,
        encoder_lr=0.1,
        max_side=384,
        crop=320,
        batch_size=8,
        epochs=37,
        lr=3e-3,
        jitter=0.3,
        lovasz=1.0,
        tta="flip",
        test_scale=(1.75, 2.0),
        val_every=4,
    ),
    "digits": dict(
        arch="unet",
        model="unet",
        width=8,
        channels_last=True,
        canvas=64,
        scenes=6000,
        batch_size=8,
        epochs=10,
        lr=3e-3,
        dice=1.0,
    ),
    "folder": dict(
        arch="unet",
        model="efficientnet_lite0",
        weights="imagenet",
        finest=4,
        freeze_bn=True,
        freeze_to=4,
        channels_last=True,
        encoder_lr=0.1,
        max_side=256,
        crop=224,
        batch_size=8,
        epochs=40,
        lr=3e-3,
        jitter=0.3,
    ),
}


NO_WEIGHTS = "none"  # a resolved config's weights for an encoder from scratch (None reads as the recipe's)

_SCRATCH = dict(
    weights=NO_WEIGHTS, freeze_bn=False, freeze_to=0, keep_depthwise=False, encoder_lr=1.0
)  # what a from-scratch encoder changes


@dataclass
class SegmentConfig(RunConfig):
    """The settings of ``cnnkit segment train``. ``None``: the default of the data (``DATA_DEFAULTS``).

    :meth:`resolved` fills the defaults in: Penn-Fudan and image folders train a U-Net decoder on a
    pretrained encoder, digit scenes U-Net's own small encoder from scratch.

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit segment train --help`` show that text.

    Example:
        >>> SegmentConfig(data="digits").resolved().arch
        'unet'
    """

    data: str = option(
        "pennfudan",
        help="pennfudan | digits | a folder of images/ + masks/ (or VOC's JPEGImages/ + SegmentationClass/) | "
        "a COCO JSON file (its objects' masks painted as classes)",
    )
    voc_names: bool = option(
        False,
        help="a VOC folder's classes 1..20 named by VOC's 20 names (aeroplane ... tvmonitor); without it they "
        "are named 1..K",
    )
    arch: str | None = option(None, help="the decoder: fcn32s | fcn16s | fcn8s | unet | deeplabv3")
    model: str | None = option(None, help="the encoder: a zoo name, or unet (U-Net's own encoder)")
    weights: str | None = None
    output_stride: int = option(16, help="DeepLab's output stride: 16 | 8 (--arch deeplabv3 only)", choices=(16, 8))
    width: int | None = option(
        None,
        help=f"U-Net's own encoder: first-level channels (at most {MAX_UNET_WIDTH})",
        minimum=1,
        maximum=MAX_UNET_WIDTH,
    )
    finest: int | None = option(None, help="U-Net on a zoo backbone: finest decoder stride, 2 or 4")
    fcn_paper: bool = option(
        False,
        help="FCN on VGG as Long et al. built it (--arch fcn32s|fcn16s|fcn8s, --model vgg*): fc6 and fc7 as "
        "convolutions to 4096 (with --weights, ImageNet's), conv7 scored at stride 32, skips on pool4 and pool3",
    )
    freeze_bn: bool | None = option(None, help="keep the encoder's batch norms in eval mode (pretrained statistics)")
    encoder_lr: float | None = option(None, help="the encoder's learning rate as a fraction of --lr")
    freeze_to: int | None = option(
        None,
        help="zoo encoder: its layers up to the map of this stride not trained (0: none)",
        choices=(0, 2, 4, 8, 16, 32),
    )
    keep_depthwise: bool | None = option(
        None,
        help="zoo encoder with weights: its depthwise filters are not trained (their weight gradients are the "
        "slowest part of a CPU step) (default: on for Penn-Fudan, off elsewhere)",
    )
    channels_last: bool | None = option(None, help="NHWC weights and batches (faster depthwise convolutions on CPUs)")
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    crop: int | None = option(None, help="training crop side of photos (px)", minimum=16)
    train_scale: tuple[float, float] = option(
        (0.5, 1.5), help="least and most factor training photos are resized by before the crop", metavar="F"
    )
    max_side: int | None = option(None, help="photos shrunk so the longer side is at most this (px)", minimum=16)
    jitter: float | None = option(None, help="brightness / contrast / saturation jitter of training photos")
    dice: float | None = option(None, help="weight of the soft Dice loss beside cross-entropy")
    lovasz: float | None = option(None, help="weight of the Lovasz-softmax loss beside cross-entropy")
    canvas: int | None = option(
        None,
        help=f"digit scenes: side (px, from {LARGEST_DIGIT} to {MAX_CANVAS})",
        minimum=LARGEST_DIGIT,
        maximum=MAX_CANVAS,
    )
    scenes: int | None = option(
        None,
        help=f"digit scenes: training scenes, at most {MAX_SCENES:,} (validation and test: a quarter)",
        minimum=1,
        below=MAX_SCENES + 1,
    )
    tta: str | None = option(
        None, help="test-time augmentation: flip (image and mirror averaged) | none", choices=("flip", "none")
    )
    test_scale: tuple[float, ...] | None = option(
        None,
        help="the network answers on the image resized by each of these factors, the answers averaged (1: as it is)",
    )
    boundary_d: int = option(3, help="boundary IoU band (px, at most 1024)", minimum=1, maximum=1024)
    val_every: int | None = None

    def resolved(self) -> SegmentConfig:
        """A copy with every None filled in from ``DATA_DEFAULTS`` for this data.

        An encoder other than the recipe's trains from scratch (no weights, nothing frozen) unless
        told otherwise. The resolved ``weights`` is never None, which reads as the recipe's weights:
        an encoder from scratch has ``"none"`` (:data:`NO_WEIGHTS`), so a resolved config (a run's
        ``config.yaml``) resolves to itself again. :func:`encoder_weights` turns it into what the
        encoder loads.

        Returns:
            The resolved :class:`SegmentConfig`.
        """
        from dataclasses import replace

        kind = self.data if self.data in ("pennfudan", "digits") else "folder"
        defaults = {
            "width": 32,
            "finest": 2,
            "val_every": 1,
            "jitter": 0.0,
            "dice": 0.0,
            "lovasz": 0.0,
            "tta": "none",
            "test_scale": (1.0,),
            "channels_last": False,
            **_SCRATCH,
            **DATA_DEFAULTS[kind],
        }
        if self.arch is not None and self.arch != "unet" and self.model is None:
            defaults["model"] = "resnet18" if defaults["model"] == "unet" else defaults["model"]
        backbone = self.model or defaults["model"]
        if backbone == "unet" or self.weights == "none" or (self.model is not None and self.model != defaults["model"]):
            defaults.update(_SCRATCH)  # another encoder than the recipe's: from scratch unless told
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def encoder_weights(weights: str | None) -> str | None:
    """The weights a resolved config's encoder starts from, as the model builders take them: None (from
    scratch) for ``"none"``, and for the None that runs of earlier versions stored in their resolved
    config for it; else ``weights`` (``imagenet``, a file).

    Example:
        >>> encoder_weights(SegmentConfig(data="pennfudan", weights="none").resolved().weights) is None
        True
    """
    return None if weights is None or weights == NO_WEIGHTS else weights


def stored_settings(d: dict) -> dict:
    """A segmentation run's stored (resolved) settings as this version reads them, runs of earlier
    versions included: the None they stored for no weights as ``"none"`` (None would read as the
    recipe's weights), and ``keep_depthwise`` off where they lack it (they trained every filter).
    What ``--resume`` checks the typed settings against and trains on."""
    return {
        **d,
        **({"weights": NO_WEIGHTS} if "weights" in d and d["weights"] is None else {}),
        "keep_depthwise": d.get("keep_depthwise", False),
    }

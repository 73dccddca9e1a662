"""The settings of classification: training (:class:`TrainConfig` and its named presets) and
fine-tuning (:class:`FinetuneConfig`), one dataclass each with the help text at every field.

``fast`` is the README's first command (MNIST in about a minute on a laptop CPU); ``best`` trains
longer for the last tenths of a percent. Their current figures are in the docs' benchmarks page.
Any field can be overridden on top of a preset.

Like every task's ``config`` module this one imports no torch: ``cnnkit --help`` builds its parsers
from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.data.augment_config import AugmentConfig
from cnnkit.engine.config import MAX_ENSEMBLE, MAX_EPOCHS, RunConfig, option
from cnnkit.errors import CnnkitError


@dataclass
class TrainConfig(RunConfig):
    """The settings of ``cnnkit classify train`` (``cnnkit train``); :func:`preset` gives the tuned ones.

    Every field is a command-line flag (``batch_size`` -> ``--batch-size``) and a key of a
    ``--config`` file; the shared ones come from :class:`~cnnkit.engine.config.RunConfig`.

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit train --help`` show that text.

    Example:
        >>> cfg = TrainConfig(epochs=2, batch_size=128)
        >>> cfg.model
        'mnist_fast'
    """

    unsupported = ("weights",)

    data: str = option(
        "mnist", help="mnist | fashion_mnist | kmnist | emnist_digits | cifar10 | folder | PATH of an image folder"
    )
    image_size: tuple[int, int] | None = option(
        None, help="H W that image folders are resized to (default: 224 224)", metavar="N"
    )
    trainval: bool = option(
        False,
        help="the final refit: train on train + val once the settings are chosen "
        "on val (MNIST: all 60,000 images); validation then scores seen images",
    )
    model: str = option(
        "mnist_fast", help="the network: a zoo name (`cnnkit zoo`), a spec .yaml/.json or FILE.py:FUNCTION"
    )
    epochs: int = 6
    batch_size: int = 256
    lr: float = 0.2
    weight_decay: float = 5e-4
    warmup: float = 0.2
    label_smoothing: float = option(0.1, help="cross-entropy label smoothing")
    prune: float = option(
        0.0,
        help="InfoBatch pruning: each epoch after the first leaves out this share of the images whose "
        "last loss was below the mean, the loss of the others below it weighted up to match (0: off)",
    )
    freeze_after: int = option(
        0,
        help="epochs after which the layers before --freeze-until stop training: the rest of the run skips "
        "their backward pass (progressive freezing; 0: every layer trains throughout)",
    )
    freeze_until: str | None = option(
        None,
        help="with --freeze-after: the first layer that trains throughout, a module name such as features.1 "
        "(`cnnkit summary` lists them) or a Keras name like block2_conv1 (default: fast features.1, best none)",
    )
    tta: bool = option(
        False, help="test-time augmentation in the saved model (the image and its 1-pixel shifts averaged)"
    )
    augment: AugmentConfig = option(
        factory=AugmentConfig,
        help="batched augmentation of the training images (cnnkit.data.augment.AugmentConfig)",
        cli=False,
    )
    channels_last: bool = option(True, help="NHWC memory format (oneDNN's convolutions run faster on CPUs)")
    eval_batch_size: int = option(1000, help="batch size of validation")
    ensemble: int = option(
        1,
        help=f"members to train, with seeds seed .. seed+K-1, at most {MAX_ENSEMBLE}; the saved model averages them",
        minimum=1,
        below=MAX_ENSEMBLE + 1,
    )
    recipe: str = option(
        "",
        help="the recipe :func:`preset` chose: the preset's name for its own network, "
        "'<preset>+user-network' (AdamW at 5e-3, batch 32, no pruning) for any other",
        cli=False,
    )

    @classmethod
    def from_dict(cls, values: dict, strict: bool = True) -> TrainConfig:
        """As :meth:`RunConfig.from_dict`, with the nested augmentation settings."""
        values = dict(values)
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return super().from_dict(values, strict)

    def unused(self) -> tuple[str, ...]:
        """As :meth:`RunConfig.unused`, and ``freeze_until`` when nothing is frozen."""
        return (*super().unused(), *(() if self.freeze_after else ("freeze_until",)))


PRESETS: dict[str, dict] = {
    # ~5.4 M MAC net, 5 epochs, one-cycle SGD, EMA, shift TTA; batch 128 runs faster than 256 on
    # CPU (the activations stay in cache) and gives twice the steps per epoch. It trains on random
    # 24x24 windows of the 28x28 digits: a +-2 px shift whose border MNIST's centred digits rarely
    # use, at 24^2/28^2 = 73% of the MACs (evaluation sees whole images; 22x22 validates lower).
    # After the first epoch InfoBatch leaves out 65% of the well-learned digits (about half of each
    # epoch). After the first epoch the first block (the 5x5 stem, its pool and batch norm) stops
    # training: the rest of the run skips its backward pass and the second block's input gradient
    # (a step in 0.8 of the time at 0.78 of the FLOPs). Validated once, after the last epoch
    "fast": dict(
        model="mnist_fast",
        epochs=5,
        batch_size=128,
        lr=0.3,
        ema=0.99,
        tta=True,
        augment=AugmentConfig(crop=24),
        prune=0.65,
        freeze_after=1,
        freeze_until="features.1",
        val_every=5,
    ),
    # ~22 M MAC net, 30 epochs of affine + elastic distortion and 24x24 windows (16.4 M MACs a
    # training image; 3 seeds validate at 99.77% vs 99.74% on whole images, in 75% of the time), EMA, TTA
    "best": dict(
        model="mnist_best",
        epochs=30,
        batch_size=256,
        lr=0.2,
        ema=0.999,
        tta=True,
        augment=AugmentConfig(degrees=10, scale=0.1, shear=10, translate=0.1, elastic=30.0, elastic_p=0.3, crop=24),
        val_every=1,
    ),
}


# the recipe for a network other than the preset's own: AdamW at a peak of 5e-3 under the preset's
# one-cycle schedule, batches of 32 (Keras' fit trains such networks with Adam and batches of 32).
# The presets' SGD at lr 0.2-0.3 is tuned for their batch-normalised networks and diverges on a
# plain convnet without batch norm. Measured: docs/experiments/2026-12-03-user-networks.md.
# Pruning, the frozen stem and validating only after the last epoch were chosen for the preset's own
# network (whose layer names the freeze uses): another network trains every layer on every image of
# every epoch and is validated after each.
USER_NETWORK = dict(
    optimizer="adamw", lr=5e-3, batch_size=32, prune=0.0, freeze_after=0, freeze_until=None, val_every=None
)


def preset(name: str = "fast", **overrides) -> TrainConfig:
    """A named, tuned configuration with ``overrides`` on top.

    When ``model`` names a network other than the preset's own (a zoo name, a spec, FILE.py:FUNCTION),
    the optimizer, learning rate and batch size are :data:`USER_NETWORK`'s, without pruning and with
    validation after every epoch (the rest is the preset's), unless ``overrides`` set them;
    ``recipe`` records which was used.

    Args:
        name: ``fast`` (the quick-start network: a few epochs, EMA and test-time augmentation) or
            ``best`` (a larger network, 30 epochs of affine and elastic augmentation).
        **overrides: any :class:`TrainConfig` field; None values are ignored, so unset CLI flags
            can be passed straight through.

    Returns:
        The :class:`TrainConfig`.

    Raises:
        CnnkitError: an unknown preset name.

    Example:
        >>> preset("fast", epochs=1).epochs
        1
    """
    if name not in PRESETS:
        raise CnnkitError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    own = given.get("model", PRESETS[name]["model"]) == PRESETS[name]["model"]
    recipe = {"recipe": name} if own else {**USER_NETWORK, "recipe": f"{name}+user-network"}
    cfg = TrainConfig.from_dict({**PRESETS[name], **recipe, **given})
    if "freeze_until" in given and not cfg.freeze_after:
        raise CnnkitError(
            f"--freeze-until {str(given['freeze_until'])[:60]!r} needs --freeze-after N: the epochs before the layers "
            "ahead of it stop training"
        )
    return cfg


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise CnnkitError naming the first bad value."""
    checks = [
        ("epochs", cfg.epochs >= 1, "a positive integer"),
        ("batch_size", cfg.batch_size >= 1, "a positive integer"),
        ("lr", cfg.lr > 0, "a positive number"),
        ("optimizer", cfg.optimizer in ("sgd", "adamw", "nadam"), "sgd, adamw or nadam"),
        ("schedule", cfg.schedule in ("onecycle", "cosine", "constant"), "onecycle, cosine or constant"),
        ("ema", 0 <= cfg.ema < 1, "0 (off) or a decay in (0, 1)"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        ("prune", 0 <= cfg.prune < 1, "in [0, 1): 0 is off"),
        ("ensemble", cfg.ensemble >= 1, "a positive integer"),
        ("freeze_after", cfg.freeze_after >= 0, "a non-negative integer (0: nothing is frozen)"),
        ("weight_decay", cfg.weight_decay >= 0, "non-negative"),
        ("device", cfg.device in (None, "cpu", "cuda"), "cpu or cuda"),
        ("precision", cfg.precision in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
    ]
    for name, ok, want in checks:
        if not ok:
            flag = "--" + name.replace("_", "-")
            raise CnnkitError(f"{flag} must be {want}; received {getattr(cfg, name)!r}")
    if cfg.freeze_after and not cfg.freeze_until:
        raise CnnkitError(
            f"--freeze-after {cfg.freeze_after} needs --freeze-until LAYER: the first layer that keeps training"
        )
    return cfg


@dataclass
class FinetuneConfig(RunConfig):
    """The settings of ``cnnkit classify finetune``: a pretrained network on the classes of a folder.

    :func:`~cnnkit.tasks.classify.finetune.run_finetune` runs them. Every field is a command-line
    flag (``freeze_until`` -> ``--freeze-until``) and a key of a ``--config`` file; the shared ones
    come from :class:`~cnnkit.engine.config.RunConfig`.

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit finetune --help`` show that text.

    Example:
        >>> cfg = FinetuneConfig(data="hymenoptera", model="resnet18", weights="imagenet")
        >>> cfg.stages
        'auto'
    """

    data: str | None = option(
        None, help="DIR/<class>/* or DIR/{train,val[,test]}/<class>/* (default: none; required unless --resume)"
    )
    model: str | None = option(
        None, help="a zoo name (`cnnkit zoo`) (default: none; required unless --weights is a cnnkit checkpoint)"
    )
    weights: str | None = option(
        None,
        help="reference-format .pth/.safetensors file or URL, imagenet for the "
        "published weights (downloaded once), or a cnnkit checkpoint (default: none: random initial weights)",
    )
    freeze_until: str | None = option(
        None,
        help="first layer trained in stage 'top': layer4, features.24, block5_conv1 (default: the last "
        "convolution, e.g. EfficientNet's conv_head)",
    )
    stages: str = option(
        "auto",
        help="comma-separated subset of head,top,all, or auto: head (the new classifier alone) and top "
        "(it and the last convolution) each tried on the cached activations, the lower validation loss kept",
    )
    epochs: int | None = option(
        None,
        help=f"epochs of every stage, at most {MAX_EPOCHS:,} (default: head 40, top 8, all 2; head and top "
        "train on what the frozen layers give for each image and its mirror image, computed once)",
        minimum=0,
        below=MAX_EPOCHS + 1,
    )
    batch_size: int = 32
    lr: float = option(
        3e-3, help="peak learning rate of stage head (cosine to 0); stage top uses a third of it, all a thirtieth"
    )
    image_size: int | None = option(
        None, help="square input size (default: the model's, e.g. 224; with pretrained --weights 9/7 of it, e.g. 288)"
    )
    head: str = option(
        "auto",
        help="the new classifier: a Linear on the pooled features, one on the "
        "pretrained classifier's log-probabilities, or auto: both tried on the "
        "cached features, the lower validation loss kept",
        choices=("auto", "features", "class_scores"),
    )
    augment: bool = option(
        False, help="the notes' ImageDataGenerator augmentation (rotation 40, shifts 0.2, zoom 0.2, flips)"
    )
    train_bn: bool = option(False, help="let unfrozen batch-norm layers update their statistics")
    val_fraction: float = option(0.15, help="held out for validation when DIR has no val/ folder")
    test_fraction: float = option(
        0.15, help="held out for a final test when DIR has no split folders at all (evaluated once, after training)"
    )
    device: str = "cpu"
    optimizer: str = "adamw"  # what every stage trains with (not a choice: the stages set their own)

    unsupported = (
        "optimizer",
        "momentum",
        "schedule",
        "warmup",
        "weight_decay",
        "ema",
        "val_every",
        "subset",
    )

"""The settings of style transfer: :class:`TransferConfig` (one image optimised) and
:class:`StyleTrainConfig` (a transformation network trained for one style)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cnnkit.engine.config import RunConfig, option

# the loss network -> its recipe: layers, loss weights, Gram kind. The style and content losses of a
# layer are relative (divided by the target's squared norm), so one weight fits every layer and size.
NETWORKS: dict[str, dict] = {
    "efficientnet_lite0": dict(
        style_layers=("stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3"),
        content_layers=("blocks.3",),
        robust_layers=("blocks.2", "blocks.3"),  # Wang et al. 2021: softmax before the Gram matrix
        content_weight=1.0,
        style_weight=100.0,
        tv_weight=10.0,
    ),
    "vgg19": dict(
        style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        content_layers=("relu4_2",),
        robust_layers=(),  # Gatys et al. 2016: plain Gram matrices
        content_weight=1.0,
        style_weight=100.0,
        tv_weight=10.0,
    ),
}

# the longest --size / --style-size of the optimisation: the loss network's activations, kept for the
# backward pass, take about 1.6 kB per pixel (EfficientNet-Lite0), so 2048 x 2048 needs some 7 GB
MAX_SIDE = 2048
# The most optimisation steps of one transfer: a hundred times Gatys et al.'s few hundred L-BFGS
# iterations; the transfer has no checkpoint and no time budget, so more is a typo that never ends
MAX_STEPS = 100_000

# what the transformation network trains on, where it differs from the optimisation's recipe: plain
# Gram matrices at a lower style weight (with the robust Gram matrix at weight 100 the small network
# paints saturated blots over the photo; docs/experiments/2026-12-05-fast-style-blots.md)
TRAIN_LOSS: dict[str, dict] = {"efficientnet_lite0": dict(robust_layers=(), style_weight=20.0)}


@dataclass
class TransferConfig:
    """The settings of ``cnnkit style transfer``: Gatys et al.'s optimisation of one image.

    ``None``: the loss network's recipe (:data:`NETWORKS`). Each field is documented once, at the
    field (``option(help=...)``): the configuration reference and ``cnnkit style transfer --help``
    show that text.

    Example:
        >>> TransferConfig().resolved().style_layers[0]
        'stem'
    """

    network: str = option("efficientnet_lite0", help="loss network: efficientnet_lite0 | vgg19 (vgg19 needs --weights)")
    weights: str | None = option(
        None,
        help="the loss network's weights: imagenet (efficientnet_lite0's default) | PATH (vgg19: "
        "torchvision's vgg19 state dict, e.g. vgg19-dcbb9e9d.pth) | none (random; tests only)",
    )
    size: int = option(
        512,
        help=f"the output's longer side (px, at most {MAX_SIDE}); the content photo is resized to it",
        minimum=16,
        below=MAX_SIDE + 1,
    )
    style_size: int | None = option(
        None,
        help=f"the style image's longer side (px, at most {MAX_SIDE}); unset: --size",
        minimum=16,
        below=MAX_SIDE + 1,
    )
    steps: int = option(
        300,
        help=f"optimisation steps (each one forward and backward pass; at most {MAX_STEPS:,})",
        minimum=1,
        below=MAX_STEPS + 1,
    )
    optimizer: str = option(
        "lbfgs",
        help="lbfgs (one iteration a step) | adam; L-BFGS reaches the lower loss in equal time",
        choices=("lbfgs", "adam"),
    )
    lr: float | None = option(
        None, help="step size; unset: 1 for lbfgs, 0.02 for adam (pixels on [0, 1])", minimum=1e-12
    )
    content_weight: float | None = option(None, help="weight of the content loss", minimum=0)
    style_weight: float | None = option(None, help="weight of the style loss", minimum=0)
    tv_weight: float | None = option(None, help="weight of the total variation loss (smoothness)", minimum=0)
    style_layers: tuple[str, ...] | None = option(None, help="layers whose Gram matrices are matched")
    content_layers: tuple[str, ...] | None = option(None, help="layers whose features are matched")
    robust_layers: tuple[str, ...] | None = option(
        None, help="style layers whose Gram matrix follows a softmax over positions (Wang et al.'s robust loss)"
    )
    init: str = option("content", help="the starting image: content | noise", choices=("content", "noise"))
    seed: int = option(0, help="seeds the noise start", minimum=0, below=2**63)
    threads: int | None = option(
        None, help="torch threads (0: the free cores); unset: torch's own default, one per core", minimum=0
    )

    def resolved(self) -> TransferConfig:
        """A copy with every None filled in from the loss network's recipe.

        Returns:
            The resolved :class:`TransferConfig`.
        """
        from cnnkit.errors import CnnkitError

        if self.network not in NETWORKS:
            raise CnnkitError(f"--network is {' or '.join(NETWORKS)}. Received: --network {self.network}")
        defaults = {
            **NETWORKS[self.network],
            "style_size": self.size,
            "lr": 1.0 if self.optimizer == "lbfgs" else 0.02,
            "weights": "imagenet",  # vgg19: refused by the loss network, which names --weights PATH
        }
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


@dataclass
class StyleTrainConfig(RunConfig):
    """The settings of ``cnnkit style train``: Johnson et al.'s transformation network for one style.

    The loss is :class:`TransferConfig`'s (content + style + total variation through the loss
    network) with :data:`TRAIN_LOSS`'s changes (plain Gram matrices, style weight 20 for
    EfficientNet-Lite0), on random crops of the photos in ``data``. Each field is documented once, at the field
    (``option(help=...)``): the configuration reference and ``cnnkit style train --help`` show that text.

    Example:
        >>> StyleTrainConfig(style="udnie.jpg", data="photos").resolved().model
        'johnson_style_slim_bn'
    """

    unsupported = ("subset", "ema", "val_every", "momentum", "warmup", "schedule", "data_dir")

    style: str = option("", help="the style image (PNG or JPEG) (required)")
    data: str = option("", help="a folder of photos, searched recursively for .jpg, .jpeg, .png (required)")
    model: str | None = option(
        None, help="the transformation network: johnson_style_slim | johnson_style_slim_bn | johnson_style"
    )
    network: str = option("efficientnet_lite0", help="loss network: efficientnet_lite0 | vgg19 (needs --weights)")
    weights: str | None = option(None, help="the loss network's weights (as cnnkit style transfer --weights)")
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    crop: int = option(128, help=f"training crop side (px, at most {MAX_SIDE})", minimum=16, maximum=MAX_SIDE)
    style_size: int = option(
        256, help=f"the style image's longer side (px, at most {MAX_SIDE})", minimum=16, maximum=MAX_SIDE
    )
    photos: int = option(0, help="train on the first N photos only (0: all)", minimum=0)
    content_weight: float | None = option(None, help="weight of the content loss", minimum=0)
    style_weight: float | None = option(None, help="weight of the style loss", minimum=0)
    tv_weight: float | None = option(None, help="weight of the total variation loss", minimum=0)
    style_layers: tuple[str, ...] | None = option(None, help="layers whose Gram matrices are matched")
    content_layers: tuple[str, ...] | None = option(None, help="layers whose features are matched")
    robust_layers: tuple[str, ...] | None = option(None, help="style layers with the robust (softmax) Gram matrix")

    def resolved(self) -> StyleTrainConfig:
        """A copy with every None filled in: the loss network's recipe and the training defaults.

        Returns:
            The resolved :class:`StyleTrainConfig`.
        """
        loss = TransferConfig(network=self.network, **TRAIN_LOSS.get(self.network, {})).resolved()
        defaults = {
            "model": "johnson_style_slim_bn",
            "epochs": 8,
            "batch_size": 4,
            "lr": 3e-4,
            "weights": loss.weights,
            **{k: getattr(loss, k) for k in ("style_layers", "content_layers", "robust_layers", "content_weight")},
            "style_weight": loss.style_weight,
            "tv_weight": loss.tv_weight,
        }
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

"""The GAN run's settings: :class:`GenerateConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.engine.config import RunConfig, option

# The most --width and --latent-dim: 32 times the default width and about ten times the DCGAN paper's
# 100 noise values. Both at 1024, the two networks hold 374 M parameters (over 6 GB with their
# gradients, Adam's state and the average); the parameters grow with width x latent-dim and
# width squared, so values far beyond run out of memory while the networks are built.
MAX_WIDTH = 1024


@dataclass
class GenerateConfig(RunConfig):
    """The settings of ``cnnkit generate train``: DCGAN on MNIST digits, with the paper's optimiser.

    Both networks train with Adam (Radford et al. 2016: lr 2e-4, beta1 0.5) at a constant learning
    rate; each step updates the discriminator on a real and a generated batch, then the generator.
    The generator that is saved is the exponential moving average of its weights over the steps
    (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training").
    Each field is documented once, at the field (``option(help=...)``): the configuration reference
    and ``cnnkit generate train --help`` show that text.

    Example:
        >>> GenerateConfig(conditional=True).batch_size
        64
    """

    unsupported = (
        "model",
        "weights",
        "optimizer",
        "momentum",
        "weight_decay",
        "schedule",
        "warmup",
        "val_every",
    )

    data: str = option("mnist", help="mnist | fashion_mnist | kmnist | emnist_digits (28x28 grey digits)")
    conditional: bool = option(False, help="class-conditional: the generator is told which digit to draw")
    codes: int = option(
        0,
        help="unconditional only: a categorical code of N values that the generator reads and the "
        "discriminator must read back (InfoGAN, Chen et al. 2016; no labels used); 0: none",
        minimum=0,
        below=1001,
    )
    clusters: int = option(
        0,
        help="unconditional only: both networks are conditioned on K k-means clusters of the training "
        "digits' pixels (no labels used), and a new digit's cluster is drawn by the clusters' shares "
        "(after Liu et al. 2020's self-conditioned GAN); 0: none",
        minimum=0,
        below=1001,
    )
    latent_dim: int = option(
        100, help=f"length of the generator's noise vector (at most {MAX_WIDTH})", minimum=1, maximum=MAX_WIDTH
    )
    width: int = option(
        32,
        help="channels of the discriminator's first convolution; the generator's maps have 4 and 2 times it "
        f"(at most {MAX_WIDTH})",
        minimum=1,
        maximum=MAX_WIDTH,
    )
    epochs: int = 20
    batch_size: int = option(
        64, help="digits per step; at least 2 (batch normalisation needs two to normalise)", minimum=2
    )
    lr: float = option(2e-4, help="Adam's learning rate, constant (the paper's 2e-4)", minimum=1e-12)
    beta1: float = option(0.5, help="Adam's beta1 (the paper's 0.5 steadies the game)", minimum=0, below=1)
    ema: float = option(
        0.999,
        help="exponential moving average of the generator's weights, decay per step (0: off); "
        "the saved generator and the per-epoch grids are the average",
        minimum=0,
        below=1,
    )

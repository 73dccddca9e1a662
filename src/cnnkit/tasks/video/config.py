"""The clip-classification run's settings: :class:`VideoConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.engine.config import MAX_EPOCHS, RunConfig, option

MAX_FRAMES = 1000  # frames of a rendered Moving MNIST clip (the data set's own have 20)
# The side frames are resized to: every clip network of the zoo pools 16 x 16 down to 1 x 1 (a
# smaller side fails in its last pooling), and the 64 x 64 Moving MNIST frames gain nothing beyond
# four times their side, where one training batch of c3d_small's first stage is already gigabytes.
MIN_SIZE, MAX_SIZE = 16, 256


@dataclass
class VideoConfig(RunConfig):
    """The settings of ``cnnkit video train``: which digits appear in a Moving MNIST clip.

    Training clips are drawn afresh every epoch from MNIST's first 55,000 training digits, the
    validation clips (a fixed set) from its last 5,000, the test clips (the fixed seeded test set)
    from its test digits. The network sees every ``stride``-th frame, resized to ``size``: the cost
    of a 3-D convolution grows with frames x pixels, and the digits stay readable at 32x32.

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit video train --help`` show that text.

    Example:
        >>> VideoConfig().model
        'c3d_small'
    """

    unsupported = ("subset", "weights")

    data: str = option(
        "moving_mnist", help="moving_mnist (the only labelled clips built in)", choices=("moving_mnist",)
    )
    model: str = option("c3d_small", help="the network: a zoo model of task video (`cnnkit zoo --task video`)")
    epochs: int = option(
        10, help=f"passes over the training clips (at most {MAX_EPOCHS:,})", minimum=1, below=MAX_EPOCHS + 1
    )
    batch_size: int = option(32, help="global batch size", minimum=1)
    lr: float = option(3e-3, help="peak learning rate of the schedule", minimum=1e-12)
    optimizer: str = option("adamw", help="sgd | adamw | nadam", choices=("sgd", "adamw", "nadam"))
    weight_decay: float = 1e-4
    clips: int = option(2000, help="training clips per epoch (new ones every epoch)", minimum=1)
    val_clips: int = option(500, help="validation clips (from the held-out training digits)", minimum=0)
    test_clips: int = option(10_000, help="test clips: the first N of the fixed test set", minimum=1, below=10_001)
    frames: int = option(
        20, help=f"frames of a Moving MNIST clip (at most {MAX_FRAMES})", minimum=1, below=MAX_FRAMES + 1
    )
    stride: int = option(2, help="the network sees every stride-th frame", minimum=1)
    size: int = option(
        32,
        help=f"frames resized to size x size for the network (px, from {MIN_SIZE} to {MAX_SIZE})",
        minimum=MIN_SIZE,
        maximum=MAX_SIZE,
    )
    channels_last: bool = option(False, help="NDHWC weights and batches of the 3-D convolutions (channels_last_3d)")
    val_every: int = option(1, help="validate after every k-th epoch and after the last (0: never)", minimum=0)

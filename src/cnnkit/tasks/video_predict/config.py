"""The frame-prediction run's settings: :class:`PredictConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.engine.config import MAX_EPOCHS, RunConfig, option

# The most --size: sixteen times Moving MNIST's 64 px frames (the 10 input frames of a batch of 16
# clips are 0.7 GB at 1024 x 1024, before the network's first layer)
MAX_SIZE = 1024


@dataclass
class PredictConfig(RunConfig):
    """The settings of ``cnnkit video-predict train``: 10 frames in, the next 10 out.

    ``data`` is ``moving_mnist`` (training clips new every epoch from MNIST's first 55,000 training
    digits, validation clips from the last 5,000, the fixed seeded test set from its test digits) or
    a folder of a user's clips (one sub-folder of frames or one ``.npy`` per clip; split by ``seed``
    into 80% training, 10% validation, 10% test).

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit video-predict train --help`` show that text.

    Example:
        >>> PredictConfig().model
        'simvp_tiny'
    """

    unsupported = ("subset", "weights")

    data: str = option("moving_mnist", help="moving_mnist | a folder of clips (sub-folders of frames or .npy)")
    model: str = option("simvp_tiny", help="the predictor: a zoo model of task video_predict (simvp, simvp_tiny)")
    epochs: int = option(
        10, help=f"passes over the training clips (at most {MAX_EPOCHS:,})", minimum=1, below=MAX_EPOCHS + 1
    )
    batch_size: int = option(16, help="global batch size", minimum=1)
    lr: float = option(5e-3, help="peak learning rate of the schedule", minimum=1e-12)
    optimizer: str = option("adamw", help="sgd | adamw | nadam", choices=("sgd", "adamw", "nadam"))
    weight_decay: float = 0.0
    clips: int = option(2000, help="Moving MNIST: training clips per epoch (new ones every epoch)", minimum=1)
    val_clips: int = option(200, help="Moving MNIST: validation clips (held-out training digits)", minimum=0)
    test_clips: int = option(
        10_000, help="Moving MNIST: test clips, the first N of the fixed test set", minimum=1, below=10_001
    )
    frames: int = option(10, help="frames in, and as many predicted", minimum=1, below=501)
    size: int = option(
        64,
        help=f"a folder's clips: frames resized to size x size (px, at most {MAX_SIZE})",
        minimum=8,
        maximum=MAX_SIZE,
    )
    channels: int = option(1, help="a folder's clips: 1 (grey) or 3 (RGB)", choices=(1, 3))
    val_every: int = option(1, help="validate after every k-th epoch and after the last (0: never)", minimum=0)

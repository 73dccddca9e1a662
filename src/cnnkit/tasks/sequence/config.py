"""The time-series run's settings: :class:`SequenceConfig`, one recipe for every UCR set."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from cnnkit.engine.config import MAX_ENSEMBLE, MAX_EPOCHS, RunConfig, option
from cnnkit.errors import CnnkitError

MODELS = ("multirocket", "multirocket_hydra", "fcn1d", "resnet1d", "inception_time")
# fitted in closed form (no optimizer steps): the step and optimizer settings do not apply
FITTED = ("multirocket", "multirocket_hydra")
# The most optimizer steps of one network: InceptionTime's recipe (1,500 epochs at batch 64) takes
# about 210,000 on the 8,926 training series of UCR's ElectricDevices. --minutes stops a run only
# between rounds (--epochs), so this also bounds how long one round can run.
MAX_STEPS = 1_000_000
# the settings of gradient training, which a fitted model refuses and its run does not store
GRADIENT_ONLY = (
    "steps",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "schedule",
    "warmup",
    "ema",
    "minutes",
)


@dataclass
class SequenceConfig(RunConfig):
    """The settings of ``cnnkit sequence train``: one recipe, the same for every set.

    The default model, ``multirocket_hydra`` (:mod:`cnnkit.models.rocket`: MultiRocket's features
    beside Hydra's competing-kernel counts), and ``multirocket`` are fitted in one pass: their
    convolutions are fixed and their linear layer is a ridge regression solved in closed form
    (:mod:`cnnkit.tasks.sequence.rocket`), so the settings below that steer gradient training
    (steps, epochs, batch, learning rate, optimizer, schedule, EMA, minutes) are refused with them.
    They are for the trained networks ``fcn1d``, ``resnet1d`` and ``inception_time``.

    Training of those runs for a number of optimizer *steps* (``steps``), not passes over the data, so that a
    set of 20 series and one of 8,000 get the same number of updates; the steps are cut into
    ``epochs`` rounds of equal length (the engine validates and checkpoints after each), every round
    drawn from successive shuffled passes over the training split. The batch follows the reference
    code of Wang et al. 2017 (``min(N / 10, 16)``, at least 2 for batch norm) unless ``batch_size``
    is given.

    Each field is documented once, at the field (``option(help=...)``): the configuration
    reference and ``cnnkit sequence train --help`` show that text.

    Example:
        >>> cfg = SequenceConfig(data="ucr:GunPoint").resolved_for(40)
        >>> cfg.batch_size, cfg.steps_per_epoch
        (4, 100)
    """

    unsupported = ("weights", "subset", "momentum")

    data: str = option("ucr:GunPoint", help="ucr:NAME | a NAME_TRAIN .ts/.tsv/.csv file | a folder holding one")
    znorm: bool = option(
        True,
        help="z-normalise each series per channel (the UCR archive's convention); --no-znorm keeps the "
        "values as they are, where a channel's level carries information (the UEA multivariate sets)",
    )
    model: str = option(
        "multirocket_hydra",
        help="multirocket_hydra (fixed convolutions: MultiRocket's and Hydra's competing kernels, a ridge "
        "classifier fitted in one pass) | multirocket (MultiRocket's alone) | fcn1d | resnet1d | inception_time "
        "(trained by gradient steps)",
        choices=MODELS,
    )
    steps: int = option(
        1000,
        help=f"optimizer steps of one network (rounded up to a multiple of --epochs; at most {MAX_STEPS:,})",
        minimum=1,
        below=MAX_STEPS + 1,
    )
    epochs: int = option(
        10,
        help=f"rounds the steps are cut into: validation and a checkpoint after each (at most {MAX_EPOCHS:,})",
        minimum=1,
        below=MAX_EPOCHS + 1,
    )
    batch_size: int | None = option(
        None,
        help="global batch size (split across processes under torchrun); unset: a tenth of the training "
        "series, at most 16 and at least 2 (Wang et al. 2017)",
        minimum=1,
    )
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    val_fraction: float = option(
        0.2, help="share of each class of TRAIN held out for validation (0: train on all of TRAIN)", minimum=0, below=1
    )
    ensemble: int = option(
        1,
        help=f"networks trained with seeds seed .. seed+K-1, their probabilities averaged (5: InceptionTime; "
        f"at most {MAX_ENSEMBLE})",
        minimum=1,
        below=MAX_ENSEMBLE + 1,
    )
    threads: int | None = option(
        None,
        help="torch threads per process (0: the free cores); unset: 1 for the trained networks (they are small), "
        "the free cores for multirocket and multirocket_hydra",
        minimum=0,
    )
    val_every: int = option(
        1, help="validate after every k-th round and after the last (0: only the final model)", minimum=0
    )

    def resolved_for(self, n_train: int) -> SequenceConfig:
        """A copy with the batch filled in for ``n_train`` training series, and ``steps`` a multiple of ``epochs``.

        Args:
            n_train: series in the training split (after the validation split is carved out).

        Returns:
            The resolved :class:`SequenceConfig`.

        Raises:
            CnnkitError: a bad setting.
        """
        if self.model not in MODELS:
            raise CnnkitError(f"--model is one of {', '.join(MODELS)}. Received: --model {self.model}")
        if n_train < 2:
            raise CnnkitError(f"training needs at least 2 series; the training split has {n_train}")
        batch = self.batch_size or max(2, min(n_train // 10, 16))
        batch = min(batch, n_train)
        steps = math.ceil(self.steps / self.epochs) * self.epochs
        return replace(self, batch_size=batch, steps=steps)

    def unused(self) -> tuple[str, ...]:
        """The shared fields the task does not take, and with a model fitted in one pass (:data:`FITTED`)
        the gradient-training settings (:data:`GRADIENT_ONLY`): its run does not store them."""
        return super().unused() + (GRADIENT_ONLY if self.model in FITTED else ())

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps of one round (``steps / epochs``, rounded up)."""
        return math.ceil(self.steps / self.epochs)

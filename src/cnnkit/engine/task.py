"""What the engine asks of a task, and what a task receives: the plan of phases it trains by.

A task (one per package of :mod:`cnnkit.tasks`, in its ``task.py``) supplies what differs: batches
(augmentation included), the loss -- or, for a task that is not one loss, the whole step (a GAN's
two alternating updates) --, validation metrics, and the module ``cnnkit.load`` returns. A
:class:`Plan` says what trains when: one :class:`Phase` for ordinary training, one per stage for
fine-tuning. The engine (:mod:`cnnkit.engine.loop`) does everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn as nn


class Data(NamedTuple):
    """The splits a run trains and validates on.

    Attributes:
        train: whatever the task's ``batches()`` and ``evaluate()`` take (an ImageSet, a
            DetectionSet, ...).
        val: the validation split, of the same kind; None: no validation.
    """

    train: Any
    val: Any = None


@dataclass(frozen=True)
class Pooled:
    """A loss that is not a mean over the batch's samples, as a task's ``loss`` returns it: sums over
    the batch, and the function that makes the loss of them.

    A detector's class loss is divided by the batch's positive locations, a segmenter's cross-entropy
    by its valid pixels: under torchrun no process's share has the whole batch's count. The engine
    adds each sum over the processes (:func:`~cnnkit.engine.distributed.pool`) and calls ``combine``
    on the whole batch's sums, so every process takes the gradient of the loss of the whole batch
    through its own share's sums: the processes together take one process's gradient on the whole
    batch.

    Attributes:
        sums: this batch's (this process's share's) sums, each a tensor (a count, a summed loss, a
            vector of per-class sums) that adds up over the samples; differentiable where the loss
            depends on it.
        combine: ``fn(sums) -> {"loss": scalar to minimise, ...}``: the loss and its other parts on
            sums of the same names. Every part is logged per sample, as ``train_<name>``.

    Example:
        >>> p = Pooled({"ce": torch.tensor(6.0), "pixels": torch.tensor(3.0)}, lambda s: {"loss": s["ce"] / s["pixels"]})
        >>> p.parts()["loss"].item()
        2.0
    """

    sums: dict[str, torch.Tensor]
    combine: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]

    def parts(self) -> dict[str, torch.Tensor]:
        """The loss and its parts on this batch's own sums (what one process computes)."""
        return self.combine(self.sums)


class Batches(Sized, Iterable, Protocol):
    """One epoch's global batches; ``len`` is the number of optimizer steps."""


class Task(Protocol):
    """What the engine asks of a task: everything that differs between classification, detection, ....

    :func:`~cnnkit.engine.fit` calls ``summary`` once, then per epoch ``batches`` and ``loss`` for
    each step, ``evaluate`` to validate, and ``deployable`` / ``describe`` to save the model that
    ``cnnkit.load`` rebuilds. Implementations: the ``task.py`` of each task package, e.g.
    :class:`~cnnkit.tasks.classify.ClassifyTask`, :class:`~cnnkit.tasks.generate.GenerateTask`.

    A task whose step is not "one loss, one backward, one optimizer step" (a GAN: the discriminator's
    update, then the generator's) defines ``step(model, batch, optimizers) -> stats`` as well: the
    engine then calls it instead of ``loss`` and does no backward or optimizer step of its own. It
    receives :attr:`Setup.optimizers` (every optimizer of the phase, in order) and returns the same
    sums as ``loss`` does. Every logged stat whose name ends in ``loss`` is checked for NaN/inf
    and drawn in ``curves.png``; every optimizer is saved in the resume file. Such a task trains on
    one process (no DDP).

    A task that keeps state of its own across epochs (the classifier's per-image losses, which its
    pruning reads) defines ``state_dict() -> {name: tensor}`` and ``load_state_dict(tensors)``: the
    engine saves that state in the resume file and restores it, so that a resumed run continues
    exactly.

    Attributes:
        name: the task's name, stored in the checkpoint: ``classify`` | ``detect`` | ``segment`` | ...
        metric: the validation number that names the best epoch (higher is better), e.g. ``acc``.
        unit: optional: what the progress lines count per second (``series``, ``clips``; default ``img``).
    """

    name: str
    metric: str

    def batches(self, data, generator: torch.Generator, train: bool) -> Batches:
        """The epoch's global batches (tensors, or tuples/lists/dicts of them), augmentation
        included; every random draw from ``generator`` (the same on every process)."""

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor | Pooled, dict[str, torch.Tensor]]:
        """The loss to minimise and this batch's *sums* to log: ``{"loss": loss * n, ..., "n": n}``
        as 0-d tensors (detached); the engine divides by the summed ``n``. The loss is a scalar
        that is a mean over the batch's samples, or a :class:`Pooled` (a loss normalised otherwise,
        by positives or by valid pixels), whose parts the engine logs itself."""

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """Validation metrics (``metric`` among them), by the same code as ``cnnkit eval``."""

    def deployable(self, model: nn.Module) -> nn.Module:
        """What ``model.safetensors`` holds: the module ``cnnkit.load`` rebuilds."""

    def describe(self, model: nn.Module) -> dict:
        """JSON metadata of the deployable (classes, normalisation, ...): data, not code."""

    def summary(self, model: nn.Module) -> str:
        """Printed before training (the model summary)."""


@dataclass
class Setup:
    """What one phase trains, built when the phase starts (and again when a run resumes in it).

    Attributes:
        optimizer: over the parameters this phase trains (the others have ``requires_grad`` off).
        others: further optimizers, for a task that defines ``step`` (a GAN's discriminator's);
            each is scheduled, checkpointed and restored as ``optimizer`` is.
        schedule: ``(step, steps of the phase) -> lr`` of every group (times the group's
            ``"lr_scale"``, if it has one); None: the groups keep their own lr.
        module: what the step runs instead of the model, sharing its parameters (e.g. the head
            alone on cached features); None: the model.
        data: this phase's data instead of the run's (cached features); None: the run's.
        frozen: modules kept in eval mode while training (batch norms whose statistics stay fixed).
        row: extra history columns of this phase (e.g. the number of trainable parameters).
        freeze: ``(epochs, modules)``: after that many epochs of the phase the modules stop training
            for the rest of it (progressive freezing, FreezeOut: Brock et al. 2017,
            https://arxiv.org/abs/1706.04983): their parameters get no gradient, so the backward
            pass stops above them; their batch norms still normalise by the batch. None: no freeze.
    """

    optimizer: torch.optim.Optimizer
    schedule: Callable[[int, int], float] | None = None
    module: nn.Module | None = None
    data: Data | None = None
    frozen: list[nn.Module] = field(default_factory=list)
    row: dict = field(default_factory=dict)
    others: list[torch.optim.Optimizer] = field(default_factory=list)
    freeze: tuple[int, list[nn.Module]] | None = None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """``optimizer`` followed by ``others``: what a task's ``step`` receives."""
        return [self.optimizer, *self.others]


@dataclass
class Phase:
    """Epochs trained with one :class:`Setup`.

    Attributes:
        epochs: how many epochs the phase trains.
        begin: ``fn(model) -> Setup``: freezes and unfreezes, builds the optimizer; called when the
            phase starts and again when a run resumes inside it.
        name: ``""`` for plain training; a fine-tuning stage's ``"head"``, ``"top"`` or ``"all"``
            (shown in the progress bar and the history).
    """

    epochs: int
    begin: Callable[[nn.Module], Setup]
    name: str = ""


@dataclass
class Plan:
    """What trains when: the phases :func:`~cnnkit.engine.fit` runs in order.

    Attributes:
        phases: one :class:`Phase` for ordinary training, one per stage for fine-tuning.
        seed: seeds the generator of data order and augmentation.
        ema: decay per step of the exponential moving average of the weights (0: off); the saved
            model holds the average.
        val_every: validate after every k-th epoch and after the last (k > 1 when validation costs
            a sizeable share of an epoch; 0: never).
        minutes: a training time budget: stop, saved, before an epoch that would pass it (the next
            epoch is taken to last as long as the one before; 0: every epoch).

    Example:
        >>> Plan([Phase(5, lambda m: Setup(torch.optim.AdamW(m.parameters(), lr=1e-3)))], ema=0.999).epochs
        5
    """

    phases: list[Phase]
    seed: int = 0
    ema: float = 0.0
    val_every: int = 1
    minutes: float = 0.0

    @property
    def epochs(self) -> int:
        """Epochs of every phase together."""
        return sum(p.epochs for p in self.phases)

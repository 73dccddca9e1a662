"""What the engine asks of a task, and what a task receives: the plan of phases it trains by.

A task (``cnnkit.tasks.classify.task``, later ``detect`` and ``segment``) supplies what differs: batches
(augmentation included), the loss, validation metrics, and the module ``cnnkit.load`` returns. A
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
    train: Any                 # whatever the task's batches() and evaluate() take (an ImageSet, ...)
    val: Any = None            # None: no validation


class Batches(Sized, Iterable, Protocol):
    """One epoch's global batches; ``len`` is the number of optimizer steps."""


class Task(Protocol):
    name: str                  # "classify" | "detect" | "segment"
    metric: str                # the validation number that names "best" (higher is better)

    def batches(self, data, generator: torch.Generator, train: bool) -> Batches:
        """The epoch's global batches (tensors, or tuples/lists/dicts of them), augmentation
        included; every random draw from ``generator`` (the same on every process)."""

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss to minimise and this batch's *sums* to log: ``{"loss": loss * n, ...,
        "n": n}`` as 0-d tensors (detached); the engine divides by the summed ``n``."""

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
    """What one phase trains, built when the phase starts (and again when a run resumes in it)."""
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int, int], float] | None = None  # (step, steps of the phase) -> lr of every
                                                        # group (times its "lr_scale", if it has one);
                                                        # None: the groups keep their own lr
    module: nn.Module | None = None     # what the step runs instead of the model (sharing its
                                        # parameters; e.g. the head alone on cached features)
    data: Data | None = None            # this phase's data instead of the run's (cached features)
    frozen: list[nn.Module] = field(default_factory=list)  # kept in eval mode while training (BN)
    row: dict = field(default_factory=dict)                # extra history columns of this phase


@dataclass
class Phase:
    epochs: int
    begin: Callable[[nn.Module], Setup]  # freezes / unfreezes, builds the optimizer
    name: str = ""                       # "" for plain training; "head", "top", "all" fine-tuning


@dataclass
class Plan:
    phases: list[Phase]
    seed: int = 0                        # the generator of data order and augmentation
    ema: float = 0.0                     # EMA decay of the weights per step (0 = off)
    val_every: int = 1                   # validate after every k-th epoch and the last (k > 1 when
                                         # validation costs a sizeable share of an epoch; 0: never)

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

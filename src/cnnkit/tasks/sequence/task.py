"""Series classification as the engine trains it: batches of z-normalised series, cross-entropy, accuracy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.series import SeriesSet
from cnnkit.tasks.sequence.evaluate import evaluate
from cnnkit.tasks.sequence.load import SeriesModel


class SequenceTask:
    """The :class:`~cnnkit.engine.task.Task` of ``cnnkit sequence train``.

    An epoch is ``steps`` batches taken from successive shuffled passes over the set (a pass may
    run on into the next epoch's draw, never repeating a series within a pass); each shuffle comes
    from the engine's generator, so a resumed run draws the same batches. Evaluation batches are
    the set in order. No augmentation: the series go in as read.

    Args:
        batch_size: series per optimizer step.
        steps: optimizer steps per epoch.
        info: metadata stored with the model (config, data name).
        val_name: how the progress lines name the validation split.
    """

    name = "sequence"
    metric = "acc"
    unit = "series"

    def __init__(self, batch_size: int, steps: int, info: dict | None = None, val_name: str = "val"):
        self.batch_size = batch_size
        self.steps = steps
        self.info = info or {}
        self.val_name = val_name

    def batches(self, data: SeriesSet, generator: torch.Generator, train: bool) -> list:
        """The epoch's batches ``(x (B, C, L), y (B,))``: ``steps`` shuffled ones when training."""
        n = len(data)
        if not train:
            return [(data.values[idx], data.labels[idx]) for idx in torch.arange(n).split(self.batch_size)]
        passes = -(-self.steps * self.batch_size // n)  # ceil: enough shuffled passes for the epoch
        dev = generator.device
        order = torch.cat([torch.randperm(n, generator=generator, device=dev) for _ in range(passes)]).cpu()
        idx = order[: self.steps * self.batch_size].view(self.steps, self.batch_size)  # (steps, B)
        return [(data.values[i], data.labels[i]) for i in idx]

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy, and the batch's sums of loss and correct answers."""
        x, y = batch
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        logits = model(x).float()  # (B, K)
        loss = F.cross_entropy(logits, y)
        n = torch.tensor(float(len(y)), device=device)
        correct = (logits.argmax(1) == y).sum().float()
        return loss, {"loss": loss.detach() * len(y), "acc": correct.detach(), "n": n}

    def evaluate(self, model: nn.Module, data: SeriesSet) -> dict[str, float]:
        """Accuracy and mean cross-entropy on ``data`` (the engine's validation row)."""
        out = evaluate(model, data)
        return {"loss": out["loss"], "acc": out["accuracy"]}

    def deployable(self, model: nn.Module) -> nn.Module:
        """The model itself: a :class:`SeriesModel` is trained as it is deployed."""
        return model

    def describe(self, model: nn.Module) -> dict:
        """The checkpoint's metadata: ``info`` plus the model's own description."""
        assert isinstance(model, SeriesModel)
        return {**self.info, **model.describe()}

    def summary(self, model: nn.Module) -> str:
        """The network's :func:`cnnkit.summary` on one training series,
        with the run's optimizer, printed before training."""
        from cnnkit.analysis import summary
        from cnnkit.engine.optim import analysed_optimizer

        assert isinstance(model, SeriesModel)
        c, length = model.input_size
        optimizer = analysed_optimizer(self.info.get("config", {}))
        return str(summary(model.net, input_size=(c, length), batch_size=self.batch_size, optimizer=optimizer))

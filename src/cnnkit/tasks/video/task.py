"""Clip classification as an engine task: which digits appear, binary cross-entropy, both-digits accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.engine.optim import analysed_optimizer
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.task import (
    _Batches,  # an epoch's batches made one at a time: the same for every task
)
from cnnkit.tasks.video.data import clip_batch, epoch_draw
from cnnkit.tasks.video.evaluate import evaluate
from cnnkit.tasks.video.predict import VideoClassifier


@dataclass
class VideoTask:
    """Which digits appear in a clip, as an engine :class:`~cnnkit.engine.Task` for :func:`cnnkit.engine.fit`.

    A multi-label problem: one logit per digit, binary cross-entropy against the multi-hot target.
    Training clips are new every epoch (drawn from the run's generator, so a resumed run sees the
    same ones); validation reports the share of clips whose predicted set of digits is exactly right
    (``both``) and the per-digit accuracy.

    Attributes:
        batch_size: the global batch.
        channels_last: NDHWC batches (the caller converts the model's weights too).
        eval_batch_size: clips per validation batch.
        max_batches: batches per epoch at most (a smoke test's couple); None: all.
        info: checkpoint metadata: data, config, ...
        name: ``"video"``, stored as the checkpoint's task.
        metric: ``"both"``: the share of clips with every digit right names the best epoch.
    """

    batch_size: int = 32
    channels_last: bool = False
    eval_batch_size: int = 64
    max_batches: int | None = None
    info: dict = field(default_factory=dict)
    name: str = "video"
    metric: str = "both"
    unit: str = "clips"

    def batches(self, data, generator: torch.Generator, train: bool = True):
        """Shuffled (clips, targets) batches: float (B, T, 1, H, W) in [0, 1], float (B, 10) multi-hot."""
        n, b = len(data), self.batch_size
        if n < 2:
            raise CnnkitError(f"training needs at least 2 clips (batch norm); received {n}")
        if train:
            epoch_draw(data, generator)
        dev = generator.device
        order = torch.randperm(n, generator=generator, device=dev) if train else torch.arange(n, device=dev)
        chunks = [order[i * b : (i + 1) * b] for i in range(n // b)] or [order]
        chunks = chunks[: self.max_batches] if self.max_batches else chunks

        def make(idx):
            x, y = clip_batch(data, idx.cpu())
            return x.to(dev), y.to(dev)

        return _Batches(chunks, make)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Binary cross-entropy over the 10 digits, and the batch's sums of loss and both-digits hits."""
        x, y = batch
        logits = model(x).float()  # (B, 10)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        hits = ((logits > 0) == (y > 0.5)).all(1).float().sum()
        n = torch.tensor(float(x.shape[0]), device=y.device)
        return loss, {"loss": loss.detach() * x.shape[0], "both": hits.detach(), "n": n}

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """``both`` (every digit right) and ``digit_acc`` (per digit), by :func:`evaluate`."""
        out = evaluate(model, data, self.eval_batch_size)
        return {"both": out["both"], "digit_acc": out["digit_acc"]}

    def deployable(self, model: nn.Module) -> nn.Module:
        """The model itself: the VideoClassifier is trained as it is deployed."""
        return model

    def describe(self, model: VideoClassifier) -> dict:
        """The checkpoint's metadata: ``info`` plus the VideoClassifier's own description."""
        return {**self.info, **model.describe(), "num_classes": len(model.classes)}

    def summary(self, model: VideoClassifier) -> str:
        """:func:`cnnkit.summary` of the training step, printed before training: on Moving MNIST the
        whole model on the clips as they come (frame sampling and resizing included), else the
        network on the clip it sees; with the run's optimizer."""
        from cnnkit.analysis import summary

        config = self.info.get("config", {})
        optimizer = analysed_optimizer(config)
        if self.info.get("data") == "moving_mnist":
            size = (int(config.get("frames", 20)), model.channels, 64, 64)
            return str(summary(model, input_size=size, batch_size=self.batch_size, optimizer=optimizer))
        size = (model.channels, model.frames, model.size, model.size)
        return str(summary(model.net, input_size=size, batch_size=self.batch_size, optimizer=optimizer))

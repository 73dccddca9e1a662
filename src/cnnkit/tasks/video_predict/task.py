"""Frame prediction as an engine task: 10 frames in, 10 out, mean squared error; MSE, MAE and SSIM per frame."""

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
from cnnkit.tasks.video_predict.evaluate import evaluate
from cnnkit.tasks.video_predict.predict import FramePredictor


@dataclass
class PredictTask:
    """Frame prediction as an engine :class:`~cnnkit.engine.Task`, for :func:`cnnkit.engine.fit`.

    A batch is clips of 2 ``frames`` frames: the first half goes in, the second is the target. The
    loss is the mean squared error per pixel; the logged ``mse`` is the table's (summed over a
    frame's pixels). Validation: MSE, MAE and SSIM per frame (:func:`evaluate`); SSIM names the best
    epoch (higher is better).

    Attributes:
        batch_size: the global batch.
        frames: frames in (and out).
        eval_batch_size: clips per validation batch.
        max_batches: batches per epoch at most (a smoke test's couple); None: all.
        info: checkpoint metadata: data, config, ...
        name: ``"video_predict"``, stored as the checkpoint's task.
        metric: ``"ssim"``.
    """

    batch_size: int = 16
    frames: int = 10
    eval_batch_size: int = 32
    max_batches: int | None = None
    info: dict = field(default_factory=dict)
    name: str = "video_predict"
    metric: str = "ssim"
    unit: str = "clips"

    def batches(self, data, generator: torch.Generator, train: bool = True):
        """Shuffled (inputs, targets) batches, float (B, T, C, H, W) each, in [0, 1]."""
        n, b = len(data), self.batch_size
        if n < 1:
            raise CnnkitError("the training split holds no clips")
        if train:
            epoch_draw(data, generator)
        dev = generator.device
        order = torch.randperm(n, generator=generator, device=dev) if train else torch.arange(n, device=dev)
        chunks = [order[i * b : (i + 1) * b] for i in range(n // b)] or [order]
        chunks = chunks[: self.max_batches] if self.max_batches else chunks

        def make(idx):
            x = clip_batch(data, idx.cpu())[0].to(dev)  # (B, 2T, C, H, W)
            return x[:, : self.frames], x[:, self.frames : 2 * self.frames]

        return _Batches(chunks, make)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean squared error per pixel, and the batch's sums of it and of the per-frame MSE."""
        x, y = batch
        pred = model(x).float()  # (B, T, C, H, W)
        loss = F.mse_loss(pred, y)
        n = torch.tensor(float(x.shape[0]), device=y.device)
        per_frame = loss.detach() * y[0, 0].numel()  # summed over a frame's pixels, as the table
        return loss, {"loss": loss.detach() * x.shape[0], "mse": per_frame * x.shape[0], "n": n}

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """MSE and MAE per frame and SSIM (the means over the predicted steps), by :func:`evaluate`."""
        out = evaluate(model, data, self.frames, self.eval_batch_size)
        return {"mse": out["mse"], "mae": out["mae"], "ssim": out["ssim"]}

    def deployable(self, model: nn.Module) -> nn.Module:
        """The model itself: the FramePredictor is trained as it is deployed."""
        return model

    def describe(self, model: FramePredictor) -> dict:
        """The checkpoint's metadata: ``info`` plus the FramePredictor's own description."""
        return {**self.info, **model.describe()}

    def summary(self, model: FramePredictor) -> str:
        """The network's :func:`cnnkit.summary` on the frames it takes, printed before training."""
        from cnnkit.analysis import summary

        size = (model.frames, model.channels, *model.size)
        optimizer = analysed_optimizer(self.info.get("config", {}))
        return str(summary(model.net, input_size=size, batch_size=self.batch_size, optimizer=optimizer))

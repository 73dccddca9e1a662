"""Fast style transfer as an engine task: random crops of photos in, the perceptual loss of the stylised crops."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.task import (
    _Batches,  # an epoch's batches made one at a time: the same for every task
)
from cnnkit.tasks.style.data import PhotoSet
from cnnkit.tasks.style.loss import PerceptualLoss


@dataclass
class StyleTask:
    """Johnson et al.'s training of a transformation network as an engine :class:`~cnnkit.engine.Task`.

    Batches are random ``crop`` x ``crop`` windows of the photos, flipped at random; the loss is
    the :class:`~cnnkit.tasks.style.loss.PerceptualLoss` of the network's output against the crop
    (content) and the style image (style); validation, when a split is given, is that loss on the
    centre crops of its photos.

    Attributes:
        loss_fn: the perceptual loss, holding the style's Gram matrices (not saved with the model).
        batch_size: photos per step.
        crop: training crop side (px).
        max_batches: batches per epoch at most (a smoke test's couple); None: all.
        info: checkpoint metadata: the transformation network's name, style, config, ...
        name: ``"style"``, stored as the checkpoint's task.
        metric: ``"score"``: minus the validation loss names the best epoch.
    """

    loss_fn: PerceptualLoss
    batch_size: int = 4
    crop: int = 256
    max_batches: int | None = None
    info: dict = field(default_factory=dict)
    name: str = "style"
    metric: str = "score"

    def batches(self, data: PhotoSet, generator: torch.Generator, train: bool = True):
        """Shuffled batches of float (B, 3, crop, crop) crops on [0, 1] (centre crops, in order, when not training)."""
        n, b = len(data), self.batch_size
        if n < 1:
            raise CnnkitError(f"{data.name} holds no photo to train on")
        dev = generator.device
        order = torch.randperm(n, generator=generator, device=dev) if train else torch.arange(n, device=dev)
        chunks = [order[i : i + b] for i in range(0, n - b + 1, b)] or [order]
        chunks = chunks[: self.max_batches] if self.max_batches else chunks
        return _Batches(chunks, lambda idx: self._batch(data, idx, generator, train))

    def _batch(self, data: PhotoSet, idx: torch.Tensor, generator: torch.Generator, train: bool) -> torch.Tensor:
        crops = []
        for i in idx.tolist():
            im = data.images[i]  # (3, H, W) uint8, both sides >= crop
            h, w = im.shape[-2:]
            u = torch.rand(3, generator=generator, device=generator.device).tolist() if train else [0.5, 0.5, 1.0]
            top, left = int(u[0] * (h - self.crop + 1)), int(u[1] * (w - self.crop + 1))
            c = im[:, top : top + self.crop, left : left + self.crop]
            crops.append(c.flip(-1) if u[2] < 0.5 else c)
        return torch.stack(crops).float().div_(255).to(generator.device)  # (B, 3, crop, crop)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted perceptual loss of ``model(batch)``, and the batch's sums of it and its three terms."""
        if self.loss_fn.net.mean.device != batch.device:
            self.loss_fn.to(batch.device)
        targets = self.loss_fn.content_targets(batch)
        total, parts = self.loss_fn(model(batch).float(), targets)
        n = batch.shape[0]
        stats = {"loss": total.detach() * n, **{k: v.detach() * n for k, v in parts.items()}}
        return total, {**stats, "n": torch.tensor(float(n), device=batch.device)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: PhotoSet) -> dict[str, float]:
        """The mean loss and its terms on the centre crops of ``data``, and ``score`` = minus the loss."""
        sums: dict[str, float] = {}
        batches = self.batches(data, torch.Generator(self.loss_fn.net.mean.device), train=False)
        for batch in batches:
            _, stats = self.loss(model, batch)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        n = sums.pop("n")
        out = {k: v / n for k, v in sums.items()}
        return {**out, "score": -out["loss"]}

    def deployable(self, model: nn.Module) -> nn.Module:
        """The transformation network itself."""
        return model

    def describe(self, model: nn.Module) -> dict:
        """The checkpoint's metadata: ``info`` (the network's zoo name as ``arch``, the style, the config)."""
        return {**self.info, "task": self.name}

    def summary(self, model: nn.Module) -> str:
        """The network's :func:`cnnkit.summary` on a training crop with the run's optimizer, printed
        before training."""
        from cnnkit.analysis import summary
        from cnnkit.engine.optim import analysed_optimizer

        optimizer = analysed_optimizer(self.info.get("config", {}))
        return str(
            summary(model, input_size=(3, self.crop, self.crop), batch_size=self.batch_size, optimizer=optimizer)
        )

"""Accuracy, per-class precision and recall, and the confusion matrix of a classifier on a data set."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.imageset import Features, ImageSet
from cnnkit.engine.precision import autocast


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    n: int
    confusion: torch.Tensor       # (K, K) int64, rows = true class, columns = predicted
    classes: list[str]

    @property
    def precision(self) -> torch.Tensor:   # (K,) of each predicted class, correct / predicted
        return self.confusion.diag() / self.confusion.sum(0).clamp_min(1)

    @property
    def recall(self) -> torch.Tensor:      # (K,) of each true class, correct / present
        return self.confusion.diag() / self.confusion.sum(1).clamp_min(1)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "n": self.n, "classes": self.classes,
                "precision": self.precision.tolist(), "recall": self.recall.tolist(),
                "confusion": self.confusion.tolist()}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000,
                   channels_last: bool = True, precision: str | None = "auto") -> torch.Tensor:
    """Logits (N, K) for uint8 images (N, C, H, W) -- or float features -- in batches, on the
    model's device. ``precision``: auto | fp32 | bf16, or None for the caller's autocast context."""
    device = next(model.parameters()).device
    context = autocast(precision, device) if precision is not None else contextlib.nullcontext()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device)
        if x.dtype == torch.uint8:
            x = x.float().div_(255).contiguous(memory_format=_fmt(channels_last))
        with context:
            out.append(model(x).float())
    return torch.cat(out)


def evaluate(model: nn.Module, data: ImageSet | Features, batch_size: int = 1000,
             channels_last: bool = True, precision: str | None = "auto") -> Evaluation:
    """Run ``model`` (in eval mode; restored afterwards) over every image of ``data``."""
    was_training = model.training
    model.eval()
    try:
        logits = predict_logits(model, data.x if isinstance(data, Features) else data.images,
                                batch_size, channels_last, precision)
    finally:
        model.train(was_training)
    labels = data.labels.to(logits.device)
    k = len(data.classes)
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k).cpu()
    return Evaluation(accuracy=(pred == labels).float().mean().item(),
                      loss=F.cross_entropy(logits, labels).item(), n=int(labels.numel()),
                      confusion=confusion, classes=list(data.classes))


def _fmt(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format

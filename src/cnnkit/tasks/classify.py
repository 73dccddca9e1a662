"""Classification as an engine task: image batches, cross-entropy, accuracy, the deployable Classifier.

:class:`ClassifyTask` is what ``cnnkit train`` and ``cnnkit finetune`` hand to
:func:`cnnkit.engine.fit`. Its validation is :func:`evaluate` -- the function ``cnnkit eval`` runs
too. The model it trains is a :class:`~cnnkit.train.checkpoint.Classifier` (normalisation, class
names and test-time augmentation inside), which is also what ``cnnkit.load`` returns. A head
trained on cached features gets :class:`Features` instead of an ImageSet: same batches, no scaling.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.imageset import ImageSet
from cnnkit.engine.precision import autocast
from cnnkit.train.checkpoint import Classifier

__all__ = ["Classifier", "ClassifyTask", "Evaluation", "Features", "evaluate", "predict_logits"]


@dataclass
class Features:
    """Inputs already computed (a frozen base's output), with their labels: batched as they are."""
    x: torch.Tensor             # (N, ...) float
    labels: torch.Tensor        # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class ClassifyTask:
    batch_size: int                          # global batch (split across processes under torchrun)
    augment: Callable | None = None          # batched (x, generator) -> x on [0, 1] floats
    label_smoothing: float = 0.0             # of the training loss (validation: plain cross-entropy)
    channels_last: bool = True               # NHWC batches (the model's weights too, by the caller)
    drop_last: bool = True                   # full batches only; False keeps the tail (>= 2 images)
    max_batches: int | None = None           # per epoch (a smoke test's couple of batches)
    eval_batch_size: int = 1000
    val_name: str = "val"                    # how the validation split is named in the log
    info: dict = field(default_factory=dict)  # checkpoint metadata: model, dataset, config, ...
    name: str = "classify"
    metric: str = "acc"

    def batches(self, data: ImageSet | Features, generator: torch.Generator, train: bool = True):
        """Shuffled (x, y) batches: uint8 images scaled to [0, 1] and augmented; features as they are."""
        n, b = len(data), self.batch_size
        order = torch.randperm(n, generator=generator, device=generator.device) if train else \
            torch.arange(n, device=generator.device)
        if self.drop_last:
            chunks = [order[i * b:(i + 1) * b] for i in range(n // b)]
        else:
            chunks = [c for c in order.split(b) if len(c) >= 2]      # BatchNorm needs 2
        chunks = chunks[:self.max_batches] if self.max_batches else chunks
        return _Batches(chunks, lambda idx: self._batch(data, idx, generator, train))

    def _batch(self, data, idx, generator, train):
        if isinstance(data, Features):
            idx = idx.to(data.x.device)
            return data.x[idx], data.labels[idx]
        idx = idx.to(data.images.device)
        x = data.images[idx].float().div_(255)
        if train and self.augment is not None:
            x = self.augment(x, generator)
        return x.contiguous(memory_format=_fmt(self.channels_last)), data.labels[idx]

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        n = torch.tensor(float(y.numel()), device=y.device)
        return loss, {"loss": loss.detach() * y.numel(), "acc": (logits.argmax(1) == y).sum(), "n": n}

    def evaluate(self, model: nn.Module, data: ImageSet | Features) -> dict[str, float]:
        """Loss and accuracy without TTA (5 passes: only the final answer and `cnnkit eval` use it),
        in the engine's precision (its autocast context)."""
        with (model.without_tta() if hasattr(model, "without_tta") else contextlib.nullcontext()):
            result = evaluate(model, data, self.eval_batch_size, self.channels_last, precision=None)
        return {"loss": result.loss, "acc": result.accuracy}

    def deployable(self, model: nn.Module) -> nn.Module:
        return model                     # the Classifier is trained as it is deployed

    def describe(self, model: Classifier) -> dict:
        return {**self.info, "num_classes": len(model.classes), "input_size": list(model.input_size),
                "classes": model.classes, "mean": model.mean.flatten().tolist(),
                "std": model.std.flatten().tolist(), "tta": model.tta}

    def summary(self, model: Classifier) -> str:
        from cnnkit.analysis import summary

        return str(summary(model.net, input_size=model.input_size, batch_size=self.batch_size))


class _Batches:
    """An epoch's batches, made one at a time (augmentation draws happen in order)."""

    def __init__(self, chunks, make):
        self.chunks, self.make = chunks, make

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        return (self.make(idx) for idx in self.chunks)


# ----------------------------------------------------------------------------- evaluation

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

"""Classification as an engine task: image batches, cross-entropy, accuracy, the deployable Classifier.

:class:`ClassifyTask` is what ``cnnkit train`` and ``cnnkit finetune`` hand to
:func:`cnnkit.engine.fit`. Its validation is :func:`evaluate` -- the function ``cnnkit eval`` runs
too. The model it trains is a :class:`~cnnkit.models.deploy.Classifier` (normalisation, class
names and test-time augmentation inside), which is also what ``cnnkit.load`` returns. A head
trained on cached features gets :class:`Features` instead of an ImageSet: same batches, no scaling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.imageset import Features, ImageSet
from cnnkit.models.deploy import Classifier
from cnnkit.tasks.classify.evaluate import _fmt, evaluate


@dataclass
class ClassifyTask:
    """Image classification as an engine :class:`~cnnkit.engine.Task`, for :func:`cnnkit.engine.fit`.

    :func:`~cnnkit.tasks.classify.train` and :func:`~cnnkit.tasks.classify.finetune` build one.
    Batches are uint8 images scaled to [0, 1] and augmented on the fly (or cached features, passed
    as they are); the loss is cross-entropy; validation is :func:`evaluate`, the function
    ``cnnkit eval`` runs, without test-time augmentation. The trained
    :class:`~cnnkit.models.deploy.Classifier` is saved as it is.

    Attributes:
        batch_size: the global batch (split across processes under torchrun).
        augment: batched ``(x, generator) -> x`` on [0, 1] floats, or None.
        label_smoothing: of the training loss (validation: plain cross-entropy).
        channels_last: NHWC batches (the caller converts the model's weights too).
        drop_last: full batches only; False keeps the tail when it holds at least 2 images.
        max_batches: batches per epoch at most (a smoke test's couple); None: all.
        eval_batch_size: images per forward pass in validation.
        val_name: how the validation split is named in the log (``val``, ``test``).
        info: checkpoint metadata beside the classifier's own: model, dataset, config, ...
        name: ``"classify"``, stored as the checkpoint's task.
        metric: ``"acc"``: validation accuracy names the best epoch.

    Example:
        >>> task = ClassifyTask(batch_size=128, label_smoothing=0.1)
        >>> task.metric
        'acc'
    """

    batch_size: int
    augment: Callable | None = None
    label_smoothing: float = 0.0
    channels_last: bool = True
    drop_last: bool = True
    max_batches: int | None = None
    eval_batch_size: int = 1000
    val_name: str = "val"
    info: dict = field(default_factory=dict)
    name: str = "classify"
    metric: str = "acc"

    def batches(self, data: ImageSet | Features, generator: torch.Generator, train: bool = True):
        """Shuffled (x, y) batches: uint8 images scaled to [0, 1] and augmented; features as they are."""
        n, b = len(data), self.batch_size
        order = (
            torch.randperm(n, generator=generator, device=generator.device)
            if train
            else torch.arange(n, device=generator.device)
        )
        if self.drop_last:
            chunks = [order[i * b : (i + 1) * b] for i in range(n // b)]
        else:
            chunks = [c for c in order.split(b) if len(c) >= 2]  # BatchNorm needs 2
        chunks = chunks[: self.max_batches] if self.max_batches else chunks
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
        """Label-smoothed cross-entropy, and the batch's sums of loss and correct answers to log."""
        x, y = batch
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        n = torch.tensor(float(y.numel()), device=y.device)
        return loss, {"loss": loss.detach() * y.numel(), "acc": (logits.argmax(1) == y).sum(), "n": n}

    def evaluate(self, model: nn.Module, data: ImageSet | Features) -> dict[str, float]:
        """Loss and accuracy without TTA (5 passes: only the final answer and `cnnkit eval` use it),
        in the engine's precision (its autocast context)."""
        with model.without_tta() if hasattr(model, "without_tta") else contextlib.nullcontext():
            result = evaluate(model, data, self.eval_batch_size, self.channels_last, precision=None)
        return {"loss": result.loss, "acc": result.accuracy}

    def deployable(self, model: nn.Module) -> nn.Module:
        """The model itself: the Classifier is trained as it is deployed."""
        return model

    def describe(self, model: Classifier) -> dict:
        """The checkpoint's metadata: ``info`` plus classes, input size, normalisation and TTA."""
        return {
            **self.info,
            "num_classes": len(model.classes),
            "input_size": list(model.input_size),
            "classes": model.classes,
            "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(),
            "tta": model.tta,
            **({"pad": model.pad} if model.pad else {}),
        }

    def summary(self, model: Classifier) -> str:
        """The network's :func:`cnnkit.summary` at the training batch,
        with the run's optimizer, printed before training."""
        from cnnkit.analysis import summary
        from cnnkit.engine.optim import analysed_optimizer

        optimizer = analysed_optimizer(self.info.get("config", {}))
        return str(summary(model.net, input_size=model.net_input_size, batch_size=self.batch_size, optimizer=optimizer))


class _Batches:
    """An epoch's batches, made one at a time (augmentation draws happen in order)."""

    def __init__(self, chunks, make):
        self.chunks, self.make = chunks, make

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        return (self.make(idx) for idx in self.chunks)

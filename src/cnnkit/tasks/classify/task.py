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
        prune: InfoBatch's pruning (Qin et al. 2024, https://arxiv.org/abs/2303.04947): each epoch
            leaves out this share, drawn at random, of the training images whose last loss was
            below the mean of the last losses, and scales the loss of the others below the mean by
            1 / (1 - prune), so that the expected gradient stays the full epoch's. The first epoch,
            with no losses yet, sees every image. An epoch keeps at least one batch: where pruning
            would leave fewer images, some of those it left out, drawn at random, stay. 0: off.

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
    prune: float = 0.0
    _losses: torch.Tensor | None = field(default=None, init=False, repr=False)  # (N,) each image's last loss
    _fresh: torch.Tensor | None = field(default=None, init=False, repr=False)  # (N,) this epoch's, inf: unseen

    def batches(self, data: ImageSet | Features, generator: torch.Generator, train: bool = True):
        """Shuffled (x, y) batches: uint8 images scaled to [0, 1] and augmented; features as they are.
        With ``prune``, training batches are (x, y, indices, loss weights) of the kept images."""
        n, b = len(data), self.batch_size
        weight = None
        if train and self.prune and isinstance(data, ImageSet):
            order, weight = self._pruned(n, generator)
        elif train:
            order = torch.randperm(n, generator=generator, device=generator.device)
        else:
            order = torch.arange(n, device=generator.device)
        if self.drop_last:
            chunks = [order[i * b : (i + 1) * b] for i in range(len(order) // b)]
        else:
            chunks = [c for c in order.split(b) if len(c) >= 2]  # BatchNorm needs 2
        chunks = chunks[: self.max_batches] if self.max_batches else chunks
        return _Batches(chunks, lambda idx: self._batch(data, idx, generator, train, weight))

    def _pruned(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's kept images in random order, and every image's loss weight (InfoBatch)."""
        device = generator.device
        if self._losses is None or len(self._losses) != n:
            self._losses = torch.full((n,), float("inf"), device=device)
        losses = self._losses.to(device)
        if self._fresh is not None:  # the last epoch's losses; under torchrun each rank saw its shard
            fresh = self._fresh.to(device)
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(fresh, torch.distributed.ReduceOp.MIN)
            losses = torch.where(fresh.isfinite(), fresh, losses)
        self._losses, self._fresh = losses, torch.full((n,), float("inf"), device=device)
        seen = losses.isfinite()
        low = seen & (losses < losses[seen].mean()) if bool(seen.any()) else seen
        drop = low & (torch.rand(n, generator=generator, device=device) < self.prune)
        short = min(n, self.batch_size if self.drop_last else 2) - (n - int(drop.sum()))
        if short > 0:  # too few left for one batch: as many of the left-out images, drawn at random, stay
            out = drop.nonzero().flatten()
            drop[out[torch.randperm(len(out), generator=generator, device=device)[:short]]] = False
        weight = torch.where(low, 1.0 / (1.0 - self.prune), 1.0)
        kept = (~drop).nonzero().flatten()
        return kept[torch.randperm(len(kept), generator=generator, device=device)], weight

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Pruning's per-image losses (none without pruning): the engine saves them with the resume state.
        Under torchrun every process calls it: each one's losses of its shard are merged first."""
        if self._fresh is not None and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self._fresh, torch.distributed.ReduceOp.MIN)
        return {} if self._losses is None else {"losses": self._losses, "fresh": self._fresh}  # set together

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` gave (a run resumed between epochs)."""
        self._losses, self._fresh = state.get("losses"), state.get("fresh")

    def _batch(self, data, idx, generator, train, weight=None):
        if isinstance(data, Features):
            idx = idx.to(data.x.device)
            return data.x[idx], data.labels[idx]
        idx = idx.to(data.images.device)
        x = data.images[idx].float().div_(255)
        if train and self.augment is not None:
            x = self.augment(x, generator)
        x = x.contiguous(memory_format=_fmt(self.channels_last))
        return (x, data.labels[idx]) if weight is None else (x, data.labels[idx], idx, weight[idx])

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Label-smoothed cross-entropy, and the batch's sums of loss and correct answers to log.
        A pruned batch's images' losses are weighted and kept for the next epoch's choice."""
        x, y = batch[:2]
        logits = model(x).float()
        n = torch.tensor(float(y.numel()), device=y.device)
        if len(batch) == 2:
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            return loss, {"loss": loss.detach() * y.numel(), "acc": (logits.argmax(1) == y).sum(), "n": n}
        idx, weight = batch[2:]
        each = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="none")
        self._fresh[idx.to(self._fresh.device)] = each.detach().to(self._fresh.device)
        loss = (each * weight.to(each.device)).mean()
        return loss, {"loss": each.detach().sum(), "acc": (logits.argmax(1) == y).sum(), "n": n}

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
        mean, std = model.normalisation()
        return {
            **self.info,
            "num_classes": len(model.classes),
            "input_size": list(model.input_size),
            "classes": model.classes,
            "mean": mean,
            "std": std,
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

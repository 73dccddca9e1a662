"""Detection as an engine task: letterboxed batches with flips and jitter, the detector's loss, COCO AP."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnnkit.data.detection import (
    colour_jitter,
    hflip,
    scale_jitter,
)
from cnnkit.engine.task import Pooled
from cnnkit.errors import counted
from cnnkit.metrics.detection import coco_evaluate, voc_evaluate
from cnnkit.models.detection import Detector, detection_parts, detector_sums
from cnnkit.tasks.classify.task import (
    _Batches,  # an epoch's batches made one at a time (shared with classify)
)
from cnnkit.tasks.detect.data import DetectionSet
from cnnkit.tasks.detect.predict import predict_set


@dataclass
class DetectTask:
    """Object detection as an engine :class:`~cnnkit.engine.Task`, for :func:`cnnkit.engine.fit`.

    Batches are letterboxed images with their boxes, flipped and jittered on the fly; the loss is
    the detector's (focal or varifocal class loss, GIoU box loss, centre-ness); validation is COCO
    AP in original pixels, as ``cnnkit detect eval`` reports it.

    Attributes:
        classes: the object class names (no background class).
        batch_size: the global batch.
        flip: probability of a horizontal flip (0: off).
        scale: zoom range of the scale-and-crop jitter (None: off).
        colour: brightness / contrast / saturation jitter (0: off).
        fill: value in [0, 1] of the padding the jitter brings in.
        channels_last: NHWC batches (the caller converts the model's weights too).
        cls_loss: ``"focal"`` | ``"varifocal"`` (IoU-aware targets).
        box_weight: weight of the GIoU box loss beside the class loss.
        eval_batch_size: images per forward pass in validation.
        max_batches: batches per epoch at most (a smoke test's couple); None: all.
        decode_args: :func:`~cnnkit.models.detection.decode`'s ``score_threshold``,
            ``nms_threshold``, ... for validation and the saved model.
        info: checkpoint metadata: backbone, dataset, config.
        val_name: how the validation split is named in the log.
        name: ``"detect"``, stored as the checkpoint's task.
        metric: ``"AP"``: COCO AP@[.5:.95] names the best epoch.
    """

    classes: list[str]
    batch_size: int = 8
    flip: float = 0.5
    scale: tuple[float, float] | None = (0.7, 1.3)
    colour: float = 0.2
    fill: float = 0.0
    channels_last: bool = False
    cls_loss: str = "focal"
    box_weight: float = 1.0
    eval_batch_size: int = 16
    max_batches: int | None = None
    decode_args: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    val_name: str = "val"
    name: str = "detect"
    metric: str = "AP"

    def batches(self, data: DetectionSet, generator: torch.Generator, train: bool = True):
        """Shuffled (x, boxes, labels) batches: x float (B, C, S, S) on [0, 1], augmented when training."""
        n, b = len(data), self.batch_size
        order = (
            torch.randperm(n, generator=generator, device=generator.device)
            if train
            else torch.arange(n, device=generator.device)
        )
        chunks = [c for c in order.split(b) if len(c) >= 2 or not train]
        if train and n >= b:
            chunks = [c for c in chunks if len(c) == b]
        chunks = chunks[: self.max_batches] if self.max_batches else chunks
        return _Batches(chunks, lambda idx: self._batch(data, idx, generator, train))

    def _batch(self, data: DetectionSet, idx, generator, train):
        idx = idx.to(data.images.device)
        x = data.images[idx].float().div_(255)
        boxes, labels = data.boxes[idx], data.labels[idx]
        if train:
            if self.flip > 0:
                x, boxes, labels = hflip(x, boxes, labels, generator, self.flip)
            if self.scale is not None:
                x, boxes, labels = scale_jitter(x, boxes, labels, generator, self.scale, self.fill)
            if self.colour > 0:
                x, boxes, labels = colour_jitter(x, boxes, labels, generator, self.colour, self.colour, self.colour)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, boxes, labels

    def detector_sums(self, out: dict, boxes, labels) -> dict[str, torch.Tensor]:
        """The sums over the batch the detector's loss is made of, on ``out`` with this task's
        settings (the instance task's loss too)."""
        return detector_sums(out, boxes, labels, cls_loss=self.cls_loss)

    def combine(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The detector's loss and its parts from the sums of a batch (or of every process's share of it)."""
        return detection_parts(sums, self.box_weight)

    def loss(self, model: nn.Module, batch) -> tuple[Pooled, dict[str, torch.Tensor]]:
        """The detector's loss as sums over the batch (its class and centre-ness losses are means over
        the batch's positive locations, not over its images), and the batch's number of images."""
        x, boxes, labels = batch
        sums = self.detector_sums(model(x), boxes, labels)
        return Pooled(sums, self.combine), {"n": torch.tensor(float(x.shape[0]), device=x.device)}

    def evaluate(self, model: nn.Module, data: DetectionSet) -> dict[str, float]:
        """COCO AP / AP50 / AP75 / AR100 (and VOC AP@0.5) in original pixels."""
        predictions = predict_set(model, data, self.eval_batch_size, **self.decode_args)
        targets = data.targets()
        m = coco_evaluate(predictions, targets, classes=data.classes)
        voc = voc_evaluate(predictions, targets, len(data.classes))
        return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "AR100": m["AR100"], "VOC_AP50": voc["mAP"]}

    def deployable(self, model: nn.Module) -> nn.Module:
        """The model itself: the detector is trained as it is deployed."""
        return model

    def describe(self, model: Detector) -> dict:
        """The checkpoint's metadata: ``info`` plus classes, normalisation and decoding settings."""
        return {
            **self.info,
            "task": "detect",
            "classes": list(self.classes),
            "num_classes": model.num_classes,
            "mean": model.normalise.mean.flatten().tolist(),
            "std": model.normalise.std.flatten().tolist(),
            "decode": dict(self.decode_args),
        }

    def summary(self, model: Detector) -> str:
        """One line: backbone, pyramid strides, classes and parameters, printed before training."""
        params = sum(p.numel() for p in model.parameters())
        return (
            f"detector: {self.info.get('backbone', type(model.features).__name__)} pyramid at strides "
            f"{model.strides} -> FPN-lite -> anchor-free head, {counted(len(self.classes), 'class')}, "
            f"{params / 1e6:.2f} M parameters"
        )

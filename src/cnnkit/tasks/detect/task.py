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
from cnnkit.metrics.detection import coco_evaluate, voc_evaluate
from cnnkit.models.detection import Detector, detector_loss
from cnnkit.tasks.classify.task import (
    _Batches,  # an epoch's batches made one at a time (shared with classify)
)
from cnnkit.tasks.detect.data import DetectionSet
from cnnkit.tasks.detect.predict import predict_set


@dataclass
class DetectTask:
    classes: list[str]
    batch_size: int = 8                        # global batch
    flip: float = 0.5                          # probability of a horizontal flip (0: off)
    scale: tuple[float, float] | None = (0.7, 1.3)   # zoom range of the scale/crop jitter (None: off)
    colour: float = 0.2                        # brightness/contrast/saturation jitter (0: off)
    fill: float = 0.0                          # value of the padding the jitter brings in ([0, 1])
    channels_last: bool = False                # NHWC batches (the model's weights too, by the caller)
    cls_loss: str = "focal"                    # "focal" | "varifocal" (IoU-aware targets)
    box_weight: float = 1.0                    # weight of the GIoU loss beside the class loss
    eval_batch_size: int = 16
    max_batches: int | None = None             # per epoch (a smoke test's couple of batches)
    decode_args: dict = field(default_factory=dict)   # score_threshold, nms_threshold, ... of decode
    info: dict = field(default_factory=dict)   # checkpoint metadata: backbone, dataset, config
    val_name: str = "val"                      # how validation is named in the log
    name: str = "detect"
    metric: str = "AP"

    def batches(self, data: DetectionSet, generator: torch.Generator, train: bool = True):
        n, b = len(data), self.batch_size
        order = torch.randperm(n, generator=generator, device=generator.device) if train else \
            torch.arange(n, device=generator.device)
        chunks = [c for c in order.split(b) if len(c) >= 2 or not train]
        if train and n >= b:
            chunks = [c for c in chunks if len(c) == b]
        chunks = chunks[:self.max_batches] if self.max_batches else chunks
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

    def detector_parts(self, out: dict, boxes, labels) -> dict[str, torch.Tensor]:
        """The detector's loss parts on ``out`` with this task's settings (the instance task's loss too)."""
        return detector_loss(out, boxes, labels, cls_loss=self.cls_loss, box_weight=self.box_weight)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, boxes, labels = batch
        parts = self.detector_parts(model(x), boxes, labels)
        n = torch.tensor(float(x.shape[0]), device=x.device)
        logged = {k: v.detach() * n for k, v in parts.items()}
        return parts["loss"], {**logged, "n": n}

    def evaluate(self, model: nn.Module, data: DetectionSet) -> dict[str, float]:
        """COCO AP / AP50 / AP75 / AR100 (and VOC AP@0.5) in original pixels."""
        predictions = predict_set(model, data, self.eval_batch_size, **self.decode_args)
        targets = data.targets()
        m = coco_evaluate(predictions, targets, classes=data.classes)
        voc = voc_evaluate(predictions, targets, len(data.classes))
        return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "AR100": m["AR100"], "VOC_AP50": voc["mAP"]}

    def deployable(self, model: nn.Module) -> nn.Module:
        return model

    def describe(self, model: Detector) -> dict:
        return {**self.info, "task": "detect", "classes": list(self.classes),
                "num_classes": model.num_classes, "mean": model.normalise.mean.flatten().tolist(),
                "std": model.normalise.std.flatten().tolist(), "decode": dict(self.decode_args)}

    def summary(self, model: Detector) -> str:
        params = sum(p.numel() for p in model.parameters())
        return (f"detector: {self.info.get('backbone', type(model.features).__name__)} pyramid at strides "
                f"{model.strides} -> FPN-lite -> anchor-free head, {len(self.classes)} classes, "
                f"{params / 1e6:.2f} M parameters")

"""Instance segmentation as an engine task: the detector's loss plus a mask loss on RoIs; box and mask AP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.detection import (
    colour_jitter,
    hflip,
    scale_jitter,
)
from cnnkit.engine.task import Pooled
from cnnkit.errors import counted
from cnnkit.metrics.detection import coco_evaluate
from cnnkit.metrics.instance import mask_evaluate
from cnnkit.models.instance import MaskDetector
from cnnkit.tasks.detect.task import DetectTask
from cnnkit.tasks.instance.data import InstanceSet, jitter_boxes, roi_mask_targets
from cnnkit.tasks.instance.predict import predict_instances


@dataclass
class InstanceTask(DetectTask):
    """Instance segmentation as an engine :class:`~cnnkit.engine.Task`, for :func:`cnnkit.engine.fit`.

    Detection's batches and loss (:class:`~cnnkit.tasks.detect.DetectTask`), plus a mask loss on
    RoIs: each ground-truth box and jittered copies of it, against the instance's mask RoIAligned
    over the box. Validation is COCO mask AP, with box AP beside it. The fields not listed here
    are :class:`~cnnkit.tasks.detect.DetectTask`'s.

    Attributes:
        roi_jitter: jittered copies of each ground-truth box the mask head trains on.
        mask_weight: the mask loss's weight beside the detector's.
        name: ``"instance"``, stored as the checkpoint's task.
        metric: ``"mask_AP"``: COCO mask AP names the best epoch.
    """

    roi_jitter: int = 2
    mask_weight: float = 1.0
    name: str = "instance"
    metric: str = "mask_AP"

    def _batch(self, data: InstanceSet, idx, generator, train):
        idx = idx.to(data.images.device)
        x = data.images[idx].float().div_(255)
        c = x.shape[1]
        boxes, labels = data.boxes[idx], data.labels[idx]
        # (B, M, S, S): the columns some image of the batch fills (the rest are padding, and stay so)
        filled = torch.nonzero((labels >= 0).any(0)).flatten()
        masks = data.masks[idx, : int(filled.max()) + 1 if len(filled) else 0].float()
        if train:
            if self.flip > 0:  # masks as extra channels move with the pixels
                xm, boxes, labels = hflip(torch.cat([x, masks], 1), boxes, labels, generator, self.flip)
                x, masks = xm[:, :c], xm[:, c:]
            if self.scale is not None:  # the jitter pads with `fill`: shift masks by it
                xm, boxes, labels = scale_jitter(
                    torch.cat([x, masks + self.fill], 1), boxes, labels, generator, self.scale, self.fill
                )
                x, masks = xm[:, :c], xm[:, c:] - self.fill
            if self.colour > 0:
                x, boxes, labels = colour_jitter(x, boxes, labels, generator, self.colour, self.colour, self.colour)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rois, sources = [], []
        for i in range(len(idx)):  # per image: RoI boxes, their labels, and the mask of each
            keep = torch.nonzero(labels[i] >= 0).flatten()
            copies = self.roi_jitter if train else 0
            b, src = jitter_boxes(boxes[i, keep], copies, generator, size=tuple(x.shape[-2:]))
            rois.append((b, labels[i, keep][src]))
            sources.append(i * masks.shape[1] + keep[src])
        # the 28x28 targets of every RoI of the batch in one RoIAlign over its masks
        targets = roi_mask_targets(masks.flatten(0, 1), torch.cat([b for b, _ in rois]), index=torch.cat(sources))
        targets = targets.split([len(b) for b, _ in rois])
        return x, boxes, labels, [(b, lab, t) for (b, lab), t in zip(rois, targets)]

    def loss(self, model: nn.Module, batch) -> tuple[Pooled, dict[str, torch.Tensor]]:
        """The detector's sums (:meth:`~cnnkit.tasks.detect.DetectTask.loss`) and the mask BCE summed
        over the RoIs' pixels, with their number; and the batch's number of images."""
        x, boxes, labels, rois = batch
        out = model(x, [r[0] for r in rois])
        sums = self.detector_sums(out, boxes, labels)
        roi_labels = torch.cat([r[1] for r in rois])
        targets = torch.cat([r[2] for r in rois])
        if len(targets):
            net = model.module if hasattr(model, "module") else model
            logits = net.select(out["masks"], roi_labels)
            sums["mask"] = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        else:
            sums["mask"] = out["masks"].sum() * 0
        sums["mask_pixels"] = torch.tensor(float(targets.numel()), device=x.device)
        return Pooled(sums, self.combine), {"n": torch.tensor(float(x.shape[0]), device=x.device)}

    def combine(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The detector's loss plus ``mask_weight`` times the mask BCE, the mean over the RoIs' pixels."""
        parts = super().combine(sums)
        mask = sums["mask"] / sums["mask_pixels"].clamp(min=1)
        return {**parts, "loss": parts["loss"] + self.mask_weight * mask, "mask": mask}

    def evaluate(self, model: nn.Module, data: InstanceSet) -> dict[str, float]:
        """COCO mask AP / AP50 / AP75 (pycocotools segm) in original pixels, and box AP beside it."""
        predictions = predict_instances(model, data, self.eval_batch_size, **self.decode_args)
        masks = [{**p, "scores": p["mask_scores"]} for p in predictions]  # masks ranked by score x maskness
        m = mask_evaluate(masks, data.mask_targets(), classes=data.classes)
        b = coco_evaluate(predictions, data.targets(), classes=data.classes)
        return {
            "mask_AP": m["AP"],
            "mask_AP50": m["AP50"],
            "mask_AP75": m["AP75"],
            "mask_AR100": m["AR100"],
            "box_AP": b["AP"],
            "box_AP50": b["AP50"],
        }

    def describe(self, model: MaskDetector) -> dict:
        """The checkpoint's metadata: detection's plus the mask head's shape."""
        det = super().describe(model)
        return {
            **det,
            "task": "instance",
            "mask_convs": len(model.mask_head.fcn) // 2,
            "mask_width": model.mask_head.logits.in_channels,
            "class_agnostic": model.class_agnostic,
        }

    def summary(self, model: MaskDetector) -> str:
        """One line: backbone, strides, mask head, classes and parameters, printed before training."""
        params = sum(p.numel() for p in model.parameters())
        head = sum(p.numel() for p in model.mask_head.parameters())
        return (
            f"mask detector: {self.info.get('backbone', '?')} pyramid at strides {model.strides} -> "
            f"FPN-lite -> anchor-free head + mask head (RoIAlign 14x14 at stride {model.mask_stride}, "
            f"{len(model.mask_head.fcn) // 2} convs, 28x28 masks, {head / 1e6:.2f} M), "
            f"{counted(len(self.classes), 'class')}, {params / 1e6:.2f} M parameters"
        )

"""Localisation: a classifier with a box-regression head, one object per image.

The first step from classification to detection (OverFeat: Sermanet et al. 2013,
https://arxiv.org/abs/1312.6229): the backbone's last map is pooled, one linear layer gives class
logits and another the object's box, as sigmoid-normalised centre and size of the input image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.models.detection import Normalise
from cnnkit.ops import box_convert, box_iou_elementwise, generalized_box_iou_elementwise


class Localiser(nn.Module):
    """features (``strides``/``channels``, forward -> maps) -> pooled last map -> (logits, box).

    Input (B, C, H, W) floats in [0, 1]. Output: logits (B, num_classes) and boxes (B, 4) xyxy pixels.
    """

    def __init__(self, features: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.features = features
        c = features.channels[-1]
        self.classifier = nn.Linear(c, num_classes)
        self.box = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        f = self.features(self.normalise(x))[-1].mean((2, 3))  # (B, C_last)
        cxcywh = torch.sigmoid(self.box(f)) * torch.tensor([w, h, w, h], dtype=f.dtype, device=f.device)
        return self.classifier(f), box_convert(cxcywh, "cxcywh", "xyxy")  # (B, K), (B, 4)


def localisation_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    gt: torch.Tensor,
    image_size: tuple[int, int],
    box_weight: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Cross-entropy + box_weight * (GIoU loss + L1 on boxes in image-size units)."""
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    ce = F.cross_entropy(logits, labels)
    giou = (1 - generalized_box_iou_elementwise(boxes, gt)).mean()
    l1 = F.l1_loss(boxes / scale, gt / scale)
    return {"loss": ce + box_weight * (giou + l1), "ce": ce, "giou": giou, "l1": l1}


@torch.no_grad()
def localisation_metrics(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, gt: torch.Tensor) -> dict:
    """{"accuracy", "mean_iou", "hit@0.5" (right class and IoU >= 0.5)}."""
    right = logits.argmax(1) == labels
    iou = box_iou_elementwise(boxes, gt)
    return {
        "accuracy": right.float().mean().item(),
        "mean_iou": iou.mean().item(),
        "hit@0.5": (right & (iou >= 0.5)).float().mean().item(),
    }

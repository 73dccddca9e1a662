"""Semantic-segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy, and the
boundary IoU of Cheng et al. 2021 (https://arxiv.org/abs/2103.16562), where lost spatial detail shows.

Everything is computed over the whole data set, not averaged per image (as PASCAL VOC and Cityscapes
score): accumulate with :class:`SegmentationMeter`, or call the functions on one batch. Pixels whose
target is ``ignore_index`` (255, VOC's "void") count nowhere.

>>> m = SegmentationMeter(num_classes=2)
>>> m.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 255]]))
>>> m.compute()["iou"]
[0.5, 0.5]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnkit.errors import CnnkitError

IGNORE_INDEX = 255


def _check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None, what: str) -> None:
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        bad = int(valid.max() if valid.max() >= num_classes else valid.min())
        raise CnnkitError(
            f"{what} holds label {bad}, outside the {num_classes} classes 0..{num_classes - 1}"
            + (f" (and the ignore index {ignore_index})" if ignore_index is not None else "")
        )


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """(N, N) int64 counts, row = true class, column = predicted class, over pixels not ignored.

    ``pred`` and ``target`` are integer label maps of the same shape, e.g. (B, H, W).
    """
    if pred.shape != target.shape:
        raise CnnkitError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred, target = pred.long().flatten(), target.long().flatten()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    _check_labels(target, num_classes, None, "the target")
    _check_labels(pred, num_classes, None, "the prediction")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN) = cm[c, c] / (row c + column c - cm[c, c]); NaN for a class never seen."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the target or the prediction."""
    iou = iou_per_class(cm)
    return float(iou.nanmean()) if (~iou.isnan()).any() else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct pixels / pixels not ignored."""
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total else math.nan  # float64, as the IoUs


def boundary_band(mask: torch.Tensor, d: int) -> torch.Tensor:
    """The pixels of a binary mask within ``d`` px of its contour: the mask minus its erosion by d.

    Distance is the chessboard distance (erosion by a 3x3 square, d times); beyond the image counts as
    background, so a mask cut by the image border has a contour there (as in Cheng et al.'s code).
    ``mask``: bool (..., H, W) -> bool (..., H, W).
    """
    if d < 1:
        raise CnnkitError(f"the boundary width d is at least 1 pixel. Received: d={d!r}")
    shape = mask.shape
    x = mask.reshape(-1, 1, *shape[-2:]).float()
    background = F.pad(1 - x, (d, d, d, d), value=1.0)  # (M, 1, H + 2d, W + 2d)
    near_background = F.max_pool2d(background, 2 * d + 1, stride=1)  # (M, 1, H, W)
    return (mask.reshape(x.shape) & (near_background > 0)).reshape(shape)


def boundary_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, d: int, ignore_index: int | None = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: |G_d n P_d| and |G_d u P_d|, with G_d (P_d) the boundary band of the class's target
    (predicted) mask, summed over the batch. ``pred``, ``target``: (B, H, W) or (H, W) label maps.

    An ignored pixel (target ``ignore_index``) belongs to no class in either mask, so what the model
    answers there cannot move a band: a prediction that agrees with the target on every scored pixel
    has boundary IoU 1."""
    if pred.shape != target.shape:
        raise CnnkitError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    _check_labels(target, num_classes, ignore_index, "the target")
    _check_labels(pred, num_classes, None, "the prediction")
    pred, target = pred.long().reshape(-1, *pred.shape[-2:]), target.long().reshape(-1, *target.shape[-2:])
    keep = (target != ignore_index) if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    pred = torch.where(keep, pred, -1)  # the target's ignored pixels are no class's in the prediction too
    inter = torch.zeros(num_classes, dtype=torch.long)
    union = torch.zeros(num_classes, dtype=torch.long)
    for c in range(num_classes):  # one class at a time: (B, H, W) bool maps only
        g = boundary_band(target == c, d) & keep
        p = boundary_band(pred == c, d) & keep
        inter[c] = (g & p).sum()
        union[c] = (g | p).sum()
    return inter, union


def boundary_iou(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, d: int = 3, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """Per-class boundary IoU (Cheng et al. 2021) of label maps; NaN for a class in neither."""
    inter, union = boundary_counts(pred, target, num_classes, d, ignore_index)
    return _ratio(inter, union)


def _ratio(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    inter, union = inter.double(), union.double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, math.nan))


class SegmentationMeter:
    """Accumulates the confusion matrix and boundary counts over batches; ``compute()`` gives the metrics.

    Args:
        num_classes: N, labels 0..N-1 (0 is background by cnnkit's convention).
        ignore_index: target label that is not scored (255), or None.
        boundary_d: the boundary IoU's band width d in pixels (0: no boundary IoU).
        class_names: names for the per-class dict entries (default "0".."N-1").
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        boundary_d: int = 3,
        class_names: list[str] | None = None,
    ):
        self.num_classes, self.ignore_index, self.boundary_d = num_classes, ignore_index, boundary_d
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.b_inter = torch.zeros(num_classes, dtype=torch.long)
        self.b_union = torch.zeros(num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: integer label maps of one shape, (B, H, W) or (H, W)."""
        pred, target = pred.cpu(), target.cpu()
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.boundary_d:
            inter, union = boundary_counts(pred, target, self.num_classes, self.boundary_d, self.ignore_index)
            self.b_inter += inter
            self.b_union += union

    def compute(self) -> dict:
        """``{"mIoU", "pixel_accuracy", "iou": [per class], "iou_by_class": {name: IoU},
        "boundary_iou" (mean), "boundary_iou_per_class", "confusion": N x N lists}``; NaN as None."""
        iou = iou_per_class(self.cm)
        out = {
            "mIoU": mean_iou(self.cm),
            "pixel_accuracy": pixel_accuracy(self.cm),
            "iou": _floats(iou),
            "iou_by_class": dict(zip(self.class_names, _floats(iou))),
            "confusion": self.cm.tolist(),
        }
        if self.boundary_d:
            biou = _ratio(self.b_inter, self.b_union)
            out["boundary_iou"] = float(biou.nanmean()) if (~biou.isnan()).any() else math.nan
            out["boundary_iou_per_class"] = _floats(biou)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _floats(t: torch.Tensor) -> list:
    return [None if math.isnan(v) else float(v) for v in t.tolist()]

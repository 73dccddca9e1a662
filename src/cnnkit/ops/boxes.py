"""Boxes as tensors: format conversions, IoU / GIoU (pairwise and elementwise) and NMS.

Every box tensor is (..., 4) float. Formats:
``xyxy`` (x1, y1, x2, y2) corners, ``xywh`` (x1, y1, width, height), ``cxcywh`` (centre, width,
height). Areas are ``(x2 - x1) * (y2 - y1)`` with no +1: pixel boxes are half-open [x1, x2).

NMS is greedy NMS (keep the best box, drop every later box that overlaps a kept one by more than
the threshold), computed without a Python loop per box: see :func:`nms`.
"""

from __future__ import annotations

import torch

from ..errors import CnnkitError

FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    """Convert (..., 4) boxes between ``xyxy``, ``xywh`` and ``cxcywh``."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in FORMATS:
            raise CnnkitError(f"unknown box format {fmt!r}: use one of {', '.join(FORMATS)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    # (a, b, c, d) are xyxy now
    if out_fmt == "xywh":
        return torch.stack([a, b, c - a, d - b], -1)
    if out_fmt == "cxcywh":
        return torch.stack([(a + c) / 2, (b + d) / 2, c - a, d - b], -1)
    return torch.stack([a, b, c, d], -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area; a box with x2 < x1 or y2 < y1 has area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcasting a (..., 4) and b (..., 4) -> intersection and union areas (...)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a) + box_area(b) - inter


def _giou(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=eps)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]                        # area of the smallest enclosing box
    return iou - (hull - union) / hull.clamp(min=eps)


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Pairwise IoU: a (N, 4), b (M, 4) xyxy -> (N, M)."""
    inter, union = _inter_union(a[:, None, :], b[None, :, :])
    return inter / union.clamp(min=eps)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019, https://arxiv.org/abs/1902.09630): (N, 4), (M, 4) -> (N, M).

    GIoU = IoU - |hull \\ (A u B)| / |hull|, in [-1, 1]; it still has a gradient when boxes do not overlap.
    """
    return _giou(a[:, None, :], b[None, :, :], eps)


def box_iou_elementwise(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of matching rows: a (..., 4), b (..., 4) -> (...)."""
    inter, union = _inter_union(a, b)
    return inter / union.clamp(min=eps)


def generalized_box_iou_elementwise(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """GIoU of matching rows: a (..., 4), b (..., 4) -> (...); ``1 - giou`` is the GIoU loss."""
    return _giou(a, b, eps)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: (N, 4) xyxy, (N,) scores -> int64 indices of the kept boxes, best score first.

    A box is kept when no *kept* box with a higher score overlaps it by IoU > ``iou_threshold``
    (ties in score keep the earlier index first). Instead of one Python step per box, the kept set is
    the fixed point of ``keep[i] = not any(keep[j] and S[j, i] for j < i)`` on the sorted boxes, with
    ``S = triu(IoU > t)``; iterating from ``keep = all`` settles position i once every j < i has
    settled, so it is exact and takes as many (N x N, vectorised) rounds as the longest chain of
    suppressions, a handful in practice.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    suppress = (box_iou(b, b) > iou_threshold).triu(diagonal=1).to(torch.float32)  # S[j, i], j < i
    keep = torch.ones(len(b), dtype=torch.bool, device=b.device)
    for _ in range(len(b)):
        new = (keep.to(torch.float32) @ suppress) == 0                # no kept j < i suppresses i
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes only suppress boxes of the same group (class, or image * classes + class).

    Each group is moved to its own region of the plane (offset by group * (max coordinate + 1)), so one
    :func:`nms` call never lets two groups overlap. Returns indices, best score first.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    span = boxes.max() - boxes.min() + 1
    shifted = boxes - boxes.min() + (groups.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)

"""Boxes as tensors: format conversions, IoU / GIoU (pairwise and elementwise) and NMS.

Every box tensor is (..., 4) float. Formats:
``xyxy`` (x1, y1, x2, y2) corners, ``xywh`` (x1, y1, width, height), ``cxcywh`` (centre, width,
height). Areas are ``(x2 - x1) * (y2 - y1)`` with no +1: pixel boxes are half-open [x1, x2).

NMS is greedy NMS (keep the best box, drop every later box that overlaps a kept one by more than
the threshold), in blocks: see :func:`nms`.
"""

from __future__ import annotations

import numpy as np
import torch

from cnnkit.errors import CnnkitError

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
    hull = wh[..., 0] * wh[..., 1]  # area of the smallest enclosing box
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


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int | None = None, block: int = 128
) -> torch.Tensor:
    """Greedy NMS: (N, 4) xyxy, (N,) scores -> int64 indices of the kept boxes, best score first.

    A box is kept when no *kept* box with a higher score overlaps it by IoU > ``iou_threshold``
    (ties in score keep the earlier index first). ``max_keep`` stops after that many (the same first
    boxes as without it). The sorted boxes go in blocks of ``block``, as GPU NMS kernels do: inside a
    block a short sequential pass over its small IoU matrix; then one vectorised IoU of the block's
    kept boxes against every later box removes what they suppress. A suppressed box never gets an
    IoU row of its own, so the work is about (kept boxes) x N, not N x N.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    n = len(b)
    alive = torch.ones(n, dtype=torch.bool, device=b.device)
    kept: list[torch.Tensor] = []
    count = 0
    for start in range(0, n, block):
        end = min(start + block, n)
        idx = torch.nonzero(alive[start:end]).flatten() + start
        if len(idx) == 0:
            continue
        over = (box_iou(b[idx], b[idx]) > iou_threshold).triu(diagonal=1).cpu().numpy()
        gone = np.zeros(len(idx), dtype=bool)
        local = []
        for i in range(len(idx)):  # greedy inside the block
            if gone[i]:
                continue
            local.append(i)
            gone |= over[i]
            if max_keep is not None and count + len(local) >= max_keep:
                break
        k = idx[torch.tensor(local, device=idx.device)]
        kept.append(k)
        count += len(local)
        if max_keep is not None and count >= max_keep:
            break
        if end < n:  # what this block's kept boxes suppress later
            alive[end:] &= ~(box_iou(b[k], b[end:]) > iou_threshold).any(0)
    return order[torch.cat(kept)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float, max_keep: int | None = None
) -> torch.Tensor:
    """Class-aware NMS: boxes only suppress boxes of the same group (class, or image * classes + class).

    Each group is moved to its own region of the plane (offset by group * (max coordinate + 1)), so one
    :func:`nms` call never lets two groups overlap. Returns indices, best score first.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    span = boxes.max() - boxes.min() + 1
    shifted = boxes - boxes.min() + (groups.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold, max_keep)

"""Instance data as the task trains on it: boxes with their masks, and mask targets per RoI."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from cnnkit.data.detection import (
    letterbox,
    pad_targets,
)
from cnnkit.errors import CnnkitError
from cnnkit.ops import box_iou_elementwise, roi_align
from cnnkit.tasks.detect.data import DetectionSet
from cnnkit.tasks.instance.config import MASK_SIZE, InstanceConfig


@dataclass
class InstanceSet(DetectionSet):
    """A :class:`DetectionSet` whose boxes each have an instance mask."""

    masks: torch.Tensor | None = None  # (N, M, S, S) uint8 0/1, letterboxed, row j = box j
    originals: list[torch.Tensor] = field(default_factory=list)  # N x (m_i, H_i, W_i) bool, original pixels

    def mask_targets(self) -> list[dict[str, torch.Tensor]]:
        """Ground truth per image in original pixels: {"masks" (m, H, W) bool, "labels" (m,)}."""
        return [{"masks": o, "labels": lab[lab >= 0]} for o, lab in zip(self.originals, self.labels)]


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool -> its tight half-open box (4,) x1, y1, x2, y2 (zeros when empty)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return torch.zeros(4)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def from_instances(
    images, instances, labels, classes: list[str], size: int, names: list[str] | None = None, fill: float = 0.0
) -> InstanceSet:
    """Images (C, H, W) uint8 with instance-id maps (H, W) (0 none, 1..n) -> an :class:`InstanceSet`.

    ``labels[i]`` gives the class of ids 1..n of image i in order (a tensor, or None for class 0).
    Each id's box is tight around its mask; images are letterboxed to ``size`` and each mask with
    them (bilinear, >= 0.5). Ids absent from the map are skipped.
    """
    if len(images) == 0:
        raise CnnkitError("empty dataset: no images to segment")
    xs, boxes, labs, scales, small, originals, sizes = [], [], [], [], [], [], []
    for i, (img, inst) in enumerate(zip(images, instances)):
        if tuple(inst.shape) != tuple(img.shape[1:]):
            raise CnnkitError(
                f"image {names[i] if names else i}: instance map {tuple(inst.shape)} is not the "
                f"image's size {tuple(img.shape[1:])}"
            )
        ids = [int(v) for v in torch.unique(inst) if v > 0]
        m = torch.stack([inst == v for v in ids]) if ids else torch.zeros(0, *inst.shape, dtype=torch.bool)
        lab = (
            labels[i]
            if labels is not None and labels[i] is not None
            else torch.zeros(int(inst.max()), dtype=torch.int64)
        )
        lab = torch.as_tensor([int(lab[v - 1]) for v in ids], dtype=torch.int64)
        b = torch.stack([mask_box(k) for k in m]) if ids else torch.zeros(0, 4)
        x, sb, scale = letterbox(img, b, size, fill)
        nh, nw = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[2] * scale))
        sm = torch.zeros(len(ids), size, size, dtype=torch.uint8)
        if ids:
            sm[:, :nh, :nw] = (
                F.interpolate(m[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0] >= 0.5
            ).to(torch.uint8)
        xs.append((x * 255).round().to(torch.uint8))
        boxes.append(sb)
        labs.append(lab)
        scales.append(scale)
        small.append(sm)
        originals.append(m)
        sizes.append(tuple(inst.shape))
    b, lab = pad_targets(boxes, labs)
    masks = torch.zeros(len(xs), b.shape[1], size, size, dtype=torch.uint8)
    for i, sm in enumerate(small):
        masks[i, : len(sm)] = sm
    return InstanceSet(
        torch.stack(xs),
        b,
        lab,
        torch.tensor(scales),
        list(classes),
        list(names) if names else [f"image{i:05d}" for i in range(len(xs))],
        masks,
        originals,
        sizes=torch.tensor(sizes, dtype=torch.int64),
    )


def jitter_boxes(
    boxes: torch.Tensor,
    copies: int,
    g: torch.Generator,
    shift: float = 0.1,
    scale: float = 0.15,
    min_iou: float = 0.5,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, 4) boxes -> (L * (1 + copies), 4) with index: the boxes, then ``copies`` jittered copies each.

    A copy moves its centre by U(-shift, shift) of the box's width/height and scales each side by
    exp(U(-scale, scale)); a copy with IoU < ``min_iou`` to its box (or empty after clipping to
    ``size``) is replaced by the box itself. Returns (boxes, index of the source box).
    """
    n = len(boxes)
    src = torch.arange(n, device=boxes.device).repeat(1 + copies)
    if copies == 0 or n == 0:
        return boxes, src
    b = boxes.repeat(copies, 1)
    wh = (b[:, 2:] - b[:, :2]).clamp(min=1)
    c = (b[:, 2:] + b[:, :2]) / 2 + (torch.rand(len(b), 2, generator=g, device=b.device) * 2 - 1) * shift * wh
    wh = wh * torch.exp((torch.rand(len(b), 2, generator=g, device=b.device) * 2 - 1) * scale)
    j = torch.cat([c - wh / 2, c + wh / 2], 1)
    if size is not None:
        h, w = size
        j = torch.stack([j[:, 0].clamp(0, w), j[:, 1].clamp(0, h), j[:, 2].clamp(0, w), j[:, 3].clamp(0, h)], 1)
    ok = box_iou_elementwise(j, b) >= min_iou
    j = torch.where(ok[:, None], j, b)
    return torch.cat([boxes, j]), src


def roi_mask_targets(
    masks: torch.Tensor, rois: torch.Tensor, size: int = MASK_SIZE, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Instance masks (N, H, W) (0/1, float or uint8) and boxes (K, 4) -> (K, size, size) 0/1 float:
    box k's mask (``masks[index[k]]``; by default ``masks[k]``, one box per mask) RoIAligned over
    the box (as the head's features are) and thresholded at 0.5."""
    if len(rois) == 0:
        return masks.new_zeros(0, size, size, dtype=torch.float32)
    k = len(rois)
    idx = torch.arange(k, device=rois.device) if index is None else index.to(rois.device)
    boxes = torch.cat([idx.to(rois.dtype)[:, None], rois], 1)
    crop = roi_align(masks[:, None].float(), boxes, size, 1.0, sampling_ratio=2, aligned=True)
    return (crop[:, 0] >= 0.5).float()


def load_instance_data(
    cfg: InstanceConfig, split: dict | None = None
) -> tuple[InstanceSet, InstanceSet, InstanceSet, dict]:
    """(train, validation, test, split) of a resolved config: Penn-Fudan's instances on its fixed split
    with the validation part carved from the training photos
    (:func:`~cnnkit.data.pennfudan.carve_validation`), or digit scenes with validation scenes of their own."""
    if cfg.data == "digits":
        from cnnkit.data.scenes import digit_scenes

        sets = []
        for part, n in zip(("train", "val", "test"), (cfg.scenes[0], cfg.scenes[1], cfg.scenes[1])):
            digits = tuple(cfg.train_digits) if part == "train" else (1, 4)  # as detection's scenes
            s = digit_scenes(part, n, cfg.image_size, cfg.data_dir, cfg.seed, digits=digits)
            sets.append(
                from_instances(
                    s.images, s.instances, s.labels, s.classes, cfg.image_size, [f"scene{i:05d}" for i in range(n)]
                )
            )
        tr, va, te = sets
        split = {"train": tr.names, "val": va.names, "test": te.names}
    elif cfg.data == "pennfudan":
        from cnnkit.data.pennfudan import carve_validation, pennfudan_root, pennfudan_split
        from cnnkit.data.segmentation import pennfudan_segmentation

        root = pennfudan_root(cfg.data_dir)
        fixed = carve_validation(pennfudan_split(root))
        if split is not None and carve_validation(split) != fixed:
            raise CnnkitError(
                "the run's split.json is not Penn-Fudan's fixed split; this run was not written by "
                "`cnnkit instance train --data pennfudan`"
            )
        sets = []
        for part in ("train", "val", "test"):
            s = pennfudan_segmentation(part, cfg.data_dir, names=fixed[part])
            size = cfg.image_size if part == "train" else cfg.test_side()
            sets.append(from_instances(s.images, s.instances, None, ["person"], size, s.names))
        tr, va, te = sets
        split = fixed
    else:
        raise CnnkitError(f"--data {cfg.data!r}: instance segmentation reads pennfudan or digits")
    if cfg.subset:
        k = cfg.subset
        tr = InstanceSet(
            tr.images[:k],
            tr.boxes[:k],
            tr.labels[:k],
            tr.scales[:k],
            tr.classes,
            tr.names[:k],
            tr.masks[:k],
            tr.originals[:k],
            sizes=tr.sizes[:k] if tr.sizes is not None else None,
        )
    return tr, va, te, split


def _to(s: InstanceSet, device) -> InstanceSet:
    return replace(
        s, images=s.images.to(device), boxes=s.boxes.to(device), labels=s.labels.to(device), masks=s.masks.to(device)
    )

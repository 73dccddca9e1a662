"""A single-stage anchor-free detector (FCOS-style) on any backbone's feature pyramid.

FCOS: Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019,
https://arxiv.org/abs/1904.01355 (centre sampling and the GIoU box loss from its improved version,
and YOLOX, https://arxiv.org/abs/2107.08430, which argues the same anchor-free grid for YOLO).

Why anchor-free: each location of each stride predicts a class score, a centre-ness and its distances
(l, t, r, b) to the four sides of the box it lies in. There are no anchor shapes to tune to a
dataset, which matters on small data (Penn-Fudan's 120 training photos, digit scenes) where anchor
statistics are unreliable, and one prediction per location (not 9 anchors) means ~9x fewer
candidates to decode and NMS. Centre sampling (a location is positive only within ``radius`` strides
of a box's centre) gives every box a few high-quality positives regardless of its aspect ratio.

Pieces, each a small function tested on its own:
``grid_points`` (the location of every prediction), ``assign_targets`` (which box each location
learns), ``detection_loss`` (focal or varifocal class loss + GIoU box loss + centre-ness BCE, made of
sums over the batch by ``detection_sums`` and ``detection_parts``), ``decode``
(scores, boxes, top-k, class-aware NMS). The module is backbone -> :class:`FPNLite` ->
:class:`DetectionHead`; ``Detector.forward`` returns the raw maps flattened over all levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.constants import IMAGENET_MEAN, IMAGENET_STD
from cnnkit.errors import CnnkitError
from cnnkit.layers.norm import GroupNorm
from cnnkit.models._common import check_args
from cnnkit.ops import batched_nms, box_iou_elementwise, generalized_box_iou_elementwise


class Normalise(nn.Module):
    """(x - mean) / std per channel, with mean and std as buffers (they travel in the state dict)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def default_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for RGB, 0.5/0.25 for anything else (grey digits)."""
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.25,) * channels)


def _conv_gn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), GroupNorm(min(32, cout // 4), cout), nn.ReLU(inplace=True)
    )


class FPNLite(nn.Module):
    """1x1 laterals to ``width`` channels, a top-down sum (nearest upsampling), a 3x3 conv per level."""

    def __init__(self, channels: Sequence[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.output = nn.ModuleList(_conv_gn(width, width) for _ in channels)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [lat(m) for lat, m in zip(self.lateral, maps)]  # (B, width, H_i, W_i)
        for i in range(len(x) - 2, -1, -1):  # coarse to fine
            x[i] = x[i] + F.interpolate(x[i + 1], size=x[i].shape[-2:], mode="nearest")
        return [out(m) for out, m in zip(self.output, x)]


class DetectionHead(nn.Module):
    """Shared across levels: a conv tower, then class logits (C), box distances (4), centre-ness (1).

    With ``separate`` the class logits read one tower and the box distances and centre-ness a second
    (FCOS's layout: classification and localisation want different features); else one tower feeds all
    three. Box distances are ``softplus(raw * scale_level) * stride`` pixels, scale one learnt number per level.
    """

    def __init__(
        self, width: int, num_classes: int, levels: int, convs: int = 2, prior: float = 0.01, separate: bool = False
    ):
        super().__init__()
        self.tower = nn.Sequential(*[_conv_gn(width, width) for _ in range(convs)])
        self.box_tower = nn.Sequential(*[_conv_gn(width, width) for _ in range(convs)]) if separate else None
        self.cls = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box = nn.Conv2d(width, 4, 3, padding=1)
        self.ctr = nn.Conv2d(width, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(levels))
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))  # focal loss's prior (RetinaNet)
        for conv in (self.box, self.ctr):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, maps: list[torch.Tensor], strides: Sequence[int]) -> dict[str, torch.Tensor]:
        cls, box, ctr = [], [], []
        for i, (m, s) in enumerate(zip(maps, strides)):
            t = self.tower(m)
            tb = self.box_tower(m) if self.box_tower is not None else t
            # outputs in fp32 under bf16 autocast: box distances in pixels, the losses and decoding
            cls.append(self.cls(t).float().flatten(2).transpose(1, 2))  # (B, H_i*W_i, C)
            dist = F.softplus(self.box(tb).float() * self.scales[i]) * s
            box.append(dist.flatten(2).transpose(1, 2))  # (B, H_i*W_i, 4) l, t, r, b
            ctr.append(self.ctr(tb).float().flatten(1))  # (B, H_i*W_i)
        return {"cls": torch.cat(cls, 1), "box": torch.cat(box, 1), "ctr": torch.cat(ctr, 1)}


def grid_points(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of every location, level after level: points (A, 2) x, y in pixels and stride (A,).

    Location (i, j) of a stride-s map sits at ((j + 0.5) s, (i + 0.5) s), the centre of its cell.
    """
    pts, st = [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        pts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s))
        st.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(pts), torch.cat(st)


def level_ranges(strides: torch.Tensor, level_strides: Sequence[int], ratio: float = 8.0) -> torch.Tensor:
    """(A, 2) [lo, hi) of max(l, t, r, b) each location may regress: FCOS's scale assignment with
    hi = ratio * stride (64, 128, ... for strides 8, 16), the first level from 0 and the last to inf."""
    bounds = [0.0] + [ratio * s for s in level_strides[:-1]] + [math.inf]
    lo = torch.zeros_like(strides)
    hi = torch.zeros_like(strides)
    for i, s in enumerate(level_strides):
        at = strides == s
        lo[at], hi[at] = bounds[i], bounds[i + 1]
    return torch.stack([lo, hi], 1)


def assign_targets(
    points: torch.Tensor,
    strides: torch.Tensor,
    ranges: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which box each location learns (FCOS with centre sampling).

    points (A, 2), strides (A,), ranges (A, 2); boxes (B, M, 4) xyxy, labels (B, M) with -1 on padding.
    A location is a candidate for box g when it lies inside g, within ``radius`` strides of g's
    centre, and max(l, t, r, b) falls in its level's range; among candidates the smallest box wins.
    Returns labels (B, A) (-1: background) and the matched boxes (B, A, 4).
    """
    px, py = points[:, 0][None, :, None], points[:, 1][None, :, None]  # (1, A, 1)
    x1, y1, x2, y2 = (boxes[..., k][:, None, :] for k in range(4))  # (B, 1, M)
    ltrb = torch.stack([px - x1, py - y1, x2 - px, y2 - py], -1)  # (B, A, M, 4)
    inside = ltrb.amin(-1) > 0
    r = (radius * strides)[None, :, None]
    near = ((px - (x1 + x2) / 2).abs() < r) & ((py - (y1 + y2) / 2).abs() < r)
    reach = ltrb.amax(-1)
    in_range = (reach >= ranges[:, 0][None, :, None]) & (reach < ranges[:, 1][None, :, None])
    cand = inside & near & in_range & (labels >= 0)[:, None, :]  # (B, A, M)
    area = ((x2 - x1) * (y2 - y1)).expand_as(cand)
    area = torch.where(cand, area, torch.full_like(area, math.inf))
    best_area, best = area.min(-1)  # (B, A)
    matched = boxes.gather(1, best[..., None].expand(-1, -1, 4))  # (B, A, 4)
    out_labels = torch.where(torch.isfinite(best_area), labels.gather(1, best), torch.full_like(best, -1))
    return out_labels, matched


def centreness(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centre-ness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)): points (A, 2), boxes (B, A, 4)."""
    l, t = points[:, 0] - boxes[..., 0], points[:, 1] - boxes[..., 1]
    r, b = boxes[..., 2] - points[:, 0], boxes[..., 3] - points[:, 1]
    lr = torch.minimum(l, r).clamp(min=0) / torch.maximum(l, r).clamp(min=1e-6)
    tb = torch.minimum(t, b).clamp(min=0) / torch.maximum(t, b).clamp(min=1e-6)
    return (lr * tb).sqrt()


def distances_to_boxes(points: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """points (A, 2), dist (B, A, 4) l, t, r, b -> (B, A, 4) xyxy."""
    return torch.stack(
        [
            points[:, 0] - dist[..., 0],
            points[:, 1] - dist[..., 1],
            points[:, 0] + dist[..., 2],
            points[:, 1] + dist[..., 3],
        ],
        -1,
    )


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Lin et al. 2017 (https://arxiv.org/abs/1708.02002), summed: -alpha_t (1 - p_t)^gamma log p_t."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (a_t * (1 - p_t) ** gamma * ce).sum()


def varifocal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0
) -> torch.Tensor:
    """Zhang et al. 2021 (VarifocalNet, https://arxiv.org/abs/2008.13367), summed: BCE towards the
    soft target q (the IoU of the predicted box on its positive class, 0 elsewhere), positives
    weighted by q and not down-weighted, negatives by alpha p^gamma as in focal loss."""
    p = torch.sigmoid(logits)
    weight = torch.where(targets > 0, targets, alpha * p.detach() ** gamma)
    return (weight * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")).sum()


def detection_sums(
    out: dict[str, torch.Tensor], labels: torch.Tensor, matched: torch.Tensor, cls_loss: str = "focal"
) -> dict[str, torch.Tensor]:
    """The sums over a batch that the detector's loss is made of (:func:`detection_parts`).

    ``cls``: the focal or varifocal class loss summed over all locations and classes; ``positives``:
    the positive locations; ``box``: the GIoU loss summed over positives, each weighted by its
    centre-ness target; ``ctr_target``: those targets summed; ``ctr``: the centre-ness BCE summed over
    positives. Each adds up over a batch's images, so a batch split in shares has the sums of its shares.
    """
    if cls_loss not in ("focal", "varifocal"):
        raise CnnkitError(f"cls_loss must be focal or varifocal; received {cls_loss!r}")
    points = out["points"]
    pos = labels >= 0  # (B, A)
    onehot = torch.zeros_like(out["cls"])
    onehot[pos] = F.one_hot(labels[pos], out["cls"].shape[-1]).to(onehot.dtype)
    if pos.any():
        pred = distances_to_boxes(points, out["box"])[pos]  # (P, 4)
        target_ctr = centreness(points, matched)[pos]
        giou = generalized_box_iou_elementwise(pred, matched[pos])
        box = ((1 - giou) * target_ctr).sum()
        ctr_target = target_ctr.sum()
        ctr = F.binary_cross_entropy_with_logits(out["ctr"][pos], target_ctr, reduction="sum")
    else:
        # every head stays in the graph (times 0): under DDP's static graph each step uses the same parameters
        box, ctr = out["box"].sum() * 0, out["ctr"].sum() * 0
        ctr_target = box.detach()
    if cls_loss == "focal":
        cls = sigmoid_focal_loss(out["cls"], onehot)
    else:
        if pos.any():
            iou = box_iou_elementwise(pred.detach(), matched[pos]).clamp(min=0.01)  # (P,)
            onehot[pos] = onehot[pos] * iou[:, None]
        cls = varifocal_loss(out["cls"], onehot)
    positives = pos.sum().to(cls.dtype)
    return {"cls": cls, "positives": positives, "box": box, "ctr_target": ctr_target, "ctr": ctr}


def detection_parts(sums: dict[str, torch.Tensor], box_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The detector's loss from :func:`detection_sums` (of a batch, or added over its shares).

    Class loss / number of positives; GIoU loss on positives weighted by their centre-ness target
    (FCOS) and by ``box_weight`` (2 in GFL and VarifocalNet); centre-ness BCE, the mean over positives.
    Returns the parts (``box`` unweighted) and ``loss``.
    """
    n_pos = sums["positives"].clamp(min=1)
    cls = sums["cls"] / n_pos
    box = sums["box"] / sums["ctr_target"].clamp(min=1e-6)
    ctr = sums["ctr"] / n_pos
    return {"loss": cls + box_weight * box + ctr, "cls": cls, "box": box, "ctr": ctr}


def detection_loss(
    out: dict[str, torch.Tensor],
    labels: torch.Tensor,
    matched: torch.Tensor,
    cls_loss: str = "focal",
    box_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The detector's loss from its raw output and :func:`assign_targets`' result.

    Class loss over all locations and classes / number of positives: ``"focal"`` (one-hot targets)
    or ``"varifocal"`` (IoU-aware targets, :func:`varifocal_loss`); GIoU loss on positives weighted
    by their centre-ness target (FCOS) and by ``box_weight`` (2 in GFL and VarifocalNet); centre-ness BCE
    on positives. Returns the parts (``box`` unweighted) and ``loss``: :func:`detection_parts` of
    :func:`detection_sums`.
    """
    return detection_parts(detection_sums(out, labels, matched, cls_loss), box_weight)


def detector_sums(
    out: dict[str, torch.Tensor],
    boxes: torch.Tensor,
    labels: torch.Tensor,
    radius: float = 1.5,
    cls_loss: str = "focal",
) -> dict[str, torch.Tensor]:
    """:func:`assign_targets` + :func:`detection_sums` on a :class:`Detector`'s output (a free function,
    so that a DDP-wrapped model's forward is what runs)."""
    level_strides = sorted(set(out["strides"].tolist()))
    assigned, matched = assign_targets(
        out["points"], out["strides"], level_ranges(out["strides"], level_strides), boxes, labels, radius
    )
    return detection_sums(out, assigned, matched, cls_loss)


def detector_loss(
    out: dict[str, torch.Tensor],
    boxes: torch.Tensor,
    labels: torch.Tensor,
    radius: float = 1.5,
    cls_loss: str = "focal",
    box_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """:func:`detection_parts` of :func:`detector_sums`: the detector's loss on its output."""
    return detection_parts(detector_sums(out, boxes, labels, radius, cls_loss), box_weight)


@torch.no_grad()
def flip_merge(out: dict[str, torch.Tensor], flipped: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """A detector's raw output averaged with its output on the mirrored image (flip test-time augmentation).

    ``flipped`` is the output on ``x.flip(-1)``, an image ``width`` pixels wide. Each location takes the
    mean of its own class and centre-ness logits and those of its mirror location, and of its box
    distances and the mirror's with left and right swapped. Where a level's grid is not symmetric
    about the image's centre (a width its stride does not divide), the two outputs' locations are
    pooled instead (the mirrored ones with their points mirrored), and decoding's NMS merges them.

    Returns:
        A raw output (``cls``, ``box``, ``ctr``, ``points``, ``strides``) that :func:`decode` reads.
    """
    pts, st = out["points"], out["strides"]
    swap = flipped["box"][..., [2, 1, 0, 3]]  # l, t, r, b in the mirror image -> in this one
    m = 4 * int(max(width, float(pts[:, 1].max()) + 1)) + 8
    key = (st.round().long() * m + (2 * pts[:, 1]).round().long()) * m + (2 * pts[:, 0]).round().long()
    mirror = (st.round().long() * m + (2 * pts[:, 1]).round().long()) * m + (2 * (width - pts[:, 0])).round().long()
    order = key.argsort()
    at = order[torch.searchsorted(key[order], mirror).clamp(max=len(key) - 1)]
    if bool((key[at] == mirror).all()):
        return {
            "cls": (out["cls"] + flipped["cls"][:, at]) / 2,
            "ctr": (out["ctr"] + flipped["ctr"][:, at]) / 2,
            "box": (out["box"] + swap[:, at]) / 2,
            "points": pts,
            "strides": st,
        }
    mirrored = torch.stack([width - pts[:, 0], pts[:, 1]], 1)
    return {
        "cls": torch.cat([out["cls"], flipped["cls"]], 1),
        "ctr": torch.cat([out["ctr"], flipped["ctr"]], 1),
        "box": torch.cat([out["box"], swap], 1),
        "points": torch.cat([pts, mirrored]),
        "strides": torch.cat([st, st]),
    }


def decode(
    out: dict[str, torch.Tensor],
    image_size: tuple[int, int],
    score_threshold: float = 0.05,
    nms_threshold: float = 0.6,
    top_k: int = 1000,
    max_detections: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Raw output -> per image {"boxes" (k, 4) xyxy pixels, "scores" (k,), "labels" (k,)}.

    score = sqrt(sigmoid(class) * sigmoid(centre-ness)) (FCOS); keep scores above the threshold,
    the ``top_k`` best, clip to the image, class-aware NMS, the best ``max_detections``.
    """
    h, w = image_size
    scores = (torch.sigmoid(out["cls"]) * torch.sigmoid(out["ctr"])[..., None]).sqrt()  # (B, A, C)
    boxes = distances_to_boxes(out["points"], out["box"])
    lim = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    boxes = boxes.clamp(min=0).minimum(lim)
    results = []
    n_classes = scores.shape[-1]
    for i in range(scores.shape[0]):
        flat = scores[i].flatten()  # (A * C,)
        keep = torch.nonzero(flat > score_threshold).flatten()
        if len(keep) > top_k:
            keep = keep[flat[keep].topk(top_k).indices]
        s, loc, cls = flat[keep], keep // n_classes, keep % n_classes
        b = boxes[i, loc]
        kept = batched_nms(b, s, cls, nms_threshold, max_keep=max_detections)
        results.append({"boxes": b[kept], "scores": s[kept], "labels": cls[kept]})
    return results


class Detector(nn.Module):
    """Backbone pyramid -> FPN-lite -> shared anchor-free head.

    Args:
        features: a module with ``strides`` and ``channels`` lists whose forward returns one map per
            stride (:func:`cnnkit.models.features.create_features`).
        num_classes: object classes (no background class: sigmoid scores).
        width: channels of the neck and head.
        head_convs: 3x3 convs in the head's tower (in each tower, with ``separate_towers``).
        separate_towers: one tower for the class logits, another for box distances and centre-ness.
        mean, std: input normalisation (images come in as floats in [0, 1]).
    Input (B, C, H, W) in [0, 1]; output a dict of flattened maps over A = sum of H_i * W_i locations:
    ``cls`` (B, A, num_classes) logits, ``box`` (B, A, 4) distances in pixels, ``ctr`` (B, A) logits,
    and where they are: ``points`` (A, 2) pixels, ``strides`` (A,) (see :func:`grid_points`).
    """

    def __init__(
        self,
        features: nn.Module,
        num_classes: int,
        width: int = 64,
        head_convs: int = 2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        radius: float = 1.5,
        separate_towers: bool = False,
    ):
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.features = features
        self.strides = list(features.strides)
        self.num_classes = num_classes
        self.radius = radius
        self.neck = FPNLite(features.channels, width)
        self.head = DetectionHead(width, num_classes, len(self.strides), head_convs, separate=separate_towers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.neck(self.features(self.normalise(x)))
        out = self.head(maps, self.strides)
        out["points"], out["strides"] = grid_points([m.shape[-2:] for m in maps], self.strides, x.device)
        return out

    def loss(self, x: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images (B, C, H, W), padded targets (B, M, 4) and (B, M) -> the loss parts."""
        return detector_loss(self(x), boxes, labels, self.radius)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, **decode_args) -> list[dict[str, torch.Tensor]]:
        """Images (B, C, H, W) in [0, 1] -> per image boxes / scores / labels (see :func:`decode`)."""
        return decode(self(x), tuple(x.shape[-2:]), **decode_args)

    def freeze_backbone(self, stride: int = 0, batchnorm: bool = True) -> list[nn.Module]:
        """Fine-tuning a pretrained backbone on little data: the backbone modules whose output stride
        is <= ``stride`` (stem and early stages) are not trained (``requires_grad=False``: no backward
        through the high-resolution maps) and, with ``batchnorm``, no BatchNorm of the backbone is.
        Returns those BatchNorm modules: the engine keeps them in eval mode while training
        (``Setup.frozen``), so that they keep their ImageNet statistics."""
        for module in self.features.up_to_stride(stride):
            module.requires_grad_(False)
        bns = (
            [m for m in self.features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if batchnorm else []
        )
        for m in bns:
            m.requires_grad_(False)
        return bns


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyPyramid(nn.Module):
    """A small from-scratch pyramid for MNIST-sized objects (backbone name ``"tiny"``): maps at strides 4/8/16
    (any increasing subset).

    Two stride-2 convs to stride 4, then per stride a stride-2 conv and a 3x3 conv (Conv-BN-ReLU).
    Digits of 10-56 px need neither ImageNet features nor a ResNet's depth; a few channels at stride
    4 are what lets a laptop CPU see tens of thousands of scenes in minutes.
    (B, C, H, W) -> [(B, c_4, H/4, W/4), (B, c_8, H/8, W/8), (B, c_16, H/16, W/16)].
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 96), out_strides=(4, 8, 16)):
        super().__init__()
        if (
            not out_strides
            or any(st not in (4, 8, 16) for st in out_strides)
            or list(out_strides) != sorted(set(out_strides))
        ):
            raise CnnkitError(f"backbone 'tiny' has maps at strides (4, 8, 16); received: out_strides={out_strides!r}")
        c4, c8, c16 = channels
        self.stem = nn.Sequential(_conv_bn(in_channels, c4 // 2, 2), _conv_bn(c4 // 2, c4, 2), _conv_bn(c4, c4))
        self.stages = nn.ModuleList(
            [
                nn.Sequential(_conv_bn(c4, c8, 2), _conv_bn(c8, c8)),
                nn.Sequential(_conv_bn(c8, c16, 2), _conv_bn(c16, c16)),
            ]
        )
        self.strides = list(out_strides)
        self._taps = [(4, 8, 16).index(st) for st in out_strides]
        self.channels = [list(channels)[i] for i in self._taps]

    def up_to_stride(self, stride: int) -> list[nn.Module]:
        """The stem (output stride 4) when ``stride`` >= 4: as :meth:`FeatureExtractor.up_to_stride`."""
        return [self.stem] if stride >= 4 else []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.stem(x)]  # (B, c_4, H/4, W/4)
        for stage in self.stages[: self._taps[-1]]:
            maps.append(stage(maps[-1]))  # halves H, W
        return [maps[i] for i in self._taps]


def create_detector(
    backbone: str,
    num_classes: int,
    weights: str | None = None,
    in_channels: int = 3,
    out_strides: Sequence[int] = (8, 16, 32),
    width: int = 64,
    head_convs: int = 2,
    separate_towers: bool = False,
) -> Detector:
    """A :class:`Detector` on zoo model ``backbone``'s pyramid (see ``create_features``), or on
    :class:`TinyPyramid` for ``backbone="tiny"`` (from scratch: ``weights`` must be None)."""
    from cnnkit.models.features import create_features

    check_args(num_classes, in_channels)
    if backbone == "tiny":
        if weights is not None:
            raise CnnkitError(f"backbone 'tiny' has no pretrained weights; received: weights={weights!r}")
        fx = TinyPyramid(in_channels, out_strides=tuple(out_strides))
    else:
        fx = create_features(backbone, weights=weights, out_strides=tuple(out_strides), in_channels=in_channels)
    from cnnkit.models.weights import weights_stats

    mean, std = weights_stats(backbone, weights, in_channels) or default_stats(in_channels)
    return Detector(
        fx, num_classes, width=width, head_convs=head_convs, mean=mean, std=std, separate_towers=separate_towers
    )

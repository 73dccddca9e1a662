"""Detection metrics: COCO's AP@[.50:.95] / AP50 / AP75 / AR@100 / per-class AP, and VOC AP@0.5.

COCO numbers are the field's currency, so they come from pycocotools itself (the ``detect`` extra),
fed from memory: no JSON files are written. VOC-style AP@0.5 is cnnkit's own (a few lines, the
PASCAL VOC 2010+ all-point interpolation: https://host.robots.ox.ac.uk/pascal/VOC/voc2012/devkit_doc.pdf).

Inputs, one entry per image, boxes in pixels as ``xyxy``:
  predictions[i] = {"boxes": (k, 4), "scores": (k,), "labels": (k,)}
  targets[i]     = {"boxes": (m, 4), "labels": (m,)}
Labels are class indices 0..C-1. Images with no boxes are fine on either side. A target may add
``"crowd_boxes"`` (c, 4) and ``"crowd_labels"`` (c,): COCO's crowd regions (``iscrowd`` 1). A
detection that falls in one (intersection over the detection's own area above the threshold) and
matches no other box is ignored, neither a true nor a false positive, as COCOeval ignores it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from cnnkit.errors import CnnkitError
from cnnkit.ops import box_area, box_iou


def _np(x, shape_tail=()) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.reshape(-1, *shape_tail) if shape_tail else a.reshape(-1)


def require_pycocotools() -> None:
    """Raise :class:`CnnkitError` naming the ``detect`` extra where pycocotools is not installed.

    COCO AP comes from pycocotools, so training a detector or an instance model (its validation
    scores AP) and evaluating one need it; their entry points call this first, before any work.
    """
    try:
        import pycocotools.cocoeval  # noqa: F401 -- the evaluator coco_summary runs
        import pycocotools.mask  # noqa: F401 -- the RLEs of instance masks
    except ImportError as exc:
        raise CnnkitError("COCO metrics need pycocotools: pip install 'cnnkit[detect]'") from exc


def _check(predictions: Sequence[dict], targets: Sequence[dict]) -> None:
    if len(predictions) != len(targets):
        raise CnnkitError(
            f"predictions and targets must have one entry per image; received "
            f"{len(predictions)} predictions and {len(targets)} targets"
        )


def coco_evaluate(predictions: Sequence[dict], targets: Sequence[dict], classes: Sequence[str] | None = None) -> dict:
    """COCO bbox metrics by pycocotools' COCOeval: {"AP", "AP50", "AP75", "AR100", "per_class_AP", "images"}.

    A value COCO cannot define (no ground truth at all, or for that class) is -1, as in pycocotools.
    ``per_class_AP`` maps class name (or index) -> AP@[.50:.95].
    """
    _check(predictions, targets)
    require_pycocotools()
    n_classes = (
        len(classes)
        if classes is not None
        else 1
        + max(
            [int(_np(t["labels"]).max()) for t in targets if len(_np(t["labels"]))]
            + [int(_np(p["labels"]).max()) for p in predictions if len(_np(p["labels"]))]
            + [0]
        )
    )
    names = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
    images = [{"id": i + 1} for i in range(len(targets))]
    categories = [{"id": c + 1, "name": names[c]} for c in range(n_classes)]

    def anns(entries, with_scores):
        out = []
        for i, e in enumerate(entries):
            boxes, labels = _np(e["boxes"], (4,)).astype(float), _np(e["labels"]).astype(int)
            scores = _np(e["scores"]).astype(float) if with_scores else None
            crowd = [0] * len(boxes)
            if not with_scores and "crowd_boxes" in e:  # crowd regions: ground truth that COCOeval ignores
                boxes = np.concatenate([boxes, _np(e["crowd_boxes"], (4,)).astype(float)])
                labels = np.concatenate([labels, _np(e["crowd_labels"]).astype(int)])
                crowd += [1] * (len(boxes) - len(crowd))
            for j, (b, c) in enumerate(zip(boxes, labels)):
                w, h = b[2] - b[0], b[3] - b[1]
                a = {
                    "id": len(out) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": crowd[j],
                }
                if with_scores:
                    a["score"] = scores[j]
                out.append(a)
        return out

    return coco_summary(images, categories, anns(targets, False), anns(predictions, True), "bbox")


def coco_summary(images: list[dict], categories: list[dict], gt: list[dict], dt: list[dict], iou_type: str) -> dict:
    """pycocotools' COCOeval (``iou_type`` "bbox" or "segm") on in-memory COCO lists:
    {"AP", "AP50", "AP75", "AR100", "per_class_AP" (category name -> AP@[.50:.95]), "images"}."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def coco(annotations):
        c = COCO()
        c.dataset = {"images": images, "categories": categories, "annotations": annotations}
        with contextlib.redirect_stdout(io.StringIO()):
            c.createIndex()
        return c

    ev = COCOeval(coco(gt), coco(dt), iouType=iou_type)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    precision = ev.eval["precision"]  # (T iou, R recall, K class, A area, M maxDets)
    per_class = {}
    for k, cat in enumerate(categories):
        p = precision[:, :, k, 0, -1]
        per_class[cat["name"]] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return {
        "AP": stats[0],
        "AP50": stats[1],
        "AP75": stats[2],
        "AR100": stats[8],
        "per_class_AP": per_class,
        "images": len(images),
    }


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all-point interpolation, VOC 2010+)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: max to the right
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_evaluate(
    predictions: Sequence[dict], targets: Sequence[dict], num_classes: int, iou_threshold: float = 0.5
) -> dict:
    """VOC AP@0.5: {"mAP": mean over classes that have ground truth, "per_class_AP": [...]}

    Matching follows the VOC devkit: detections of a class in descending score; each is matched to
    the ground-truth box it overlaps most; IoU > threshold and that box not yet taken -> true
    positive, otherwise false positive (a duplicate), unless it lies in a crowd region of its class
    (intersection over its own area > threshold): then it is ignored, as the devkit ignores
    "difficult" objects. A class with no ground truth has AP nan.
    IoU is continuous (no +1 pixel in widths), as cnnkit's boxes are half-open.
    """
    _check(predictions, targets)
    per_class = []
    for c in range(num_classes):
        scores, image, boxes = [], [], []
        gts, crowds, taken, n_gt = [], [], [], 0
        for i, (p, t) in enumerate(zip(predictions, targets)):
            keep = _np(p["labels"]) == c
            scores.append(_np(p["scores"])[keep])
            boxes.append(_np(p["boxes"], (4,))[keep])
            image.append(np.full(int(keep.sum()), i))
            g = _np(t["boxes"], (4,))[_np(t["labels"]) == c]
            gts.append(torch.as_tensor(g, dtype=torch.float64))
            cg = _np(t["crowd_boxes"], (4,))[_np(t["crowd_labels"]) == c] if "crowd_boxes" in t else np.zeros((0, 4))
            crowds.append(torch.as_tensor(cg, dtype=torch.float64))
            taken.append(np.zeros(len(g), dtype=bool))
            n_gt += len(g)
        if n_gt == 0:
            per_class.append(float("nan"))
            continue
        scores, image, boxes = np.concatenate(scores), np.concatenate(image), np.concatenate(boxes)
        order = np.argsort(-scores, kind="stable")
        tp, ignored = np.zeros(len(order)), np.zeros(len(order), dtype=bool)
        for r, d in enumerate(order):
            g, box = gts[image[d]], torch.as_tensor(boxes[d][None], dtype=torch.float64)
            if len(g):
                iou = box_iou(box, g)[0]
                best = int(iou.argmax())
                if iou[best] > iou_threshold and not taken[image[d]][best]:
                    tp[r] = 1
                    taken[image[d]][best] = True
                    continue
            cg = crowds[image[d]]
            if len(cg):
                lt, rb = torch.maximum(box[:, :2], cg[:, :2]), torch.minimum(box[:, 2:], cg[:, 2:])
                inter = (rb - lt).clamp(min=0).prod(1)
                ignored[r] = bool((inter / box_area(box).clamp(min=1e-9) > iou_threshold).any())
        tp = tp[~ignored]
        ctp = np.cumsum(tp)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, len(tp) + 1)
        per_class.append(voc_ap(recall, precision))
    valid = [a for a in per_class if not np.isnan(a)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "per_class_AP": per_class}

"""Instance-mask metrics: COCO's mask AP@[.50:.95] / AP50 / AP75 / AR@100 by pycocotools' ``segm`` evaluation.

As :mod:`cnnkit.metrics.detection` does for boxes, the numbers come from pycocotools itself, fed from
memory: each mask becomes COCO's run-length encoding (``pycocotools.mask.encode``), and COCOeval
with ``iouType="segm"`` compares them by mask IoU. Inputs, one entry per image, masks at the
image's size:
  predictions[i] = {"masks": (k, H, W) bool, "scores": (k,), "labels": (k,)}
  targets[i]     = {"masks": (m, H, W) bool, "labels": (m,)}
and optionally in a target ``"crowd_masks"`` (c, H, W) and ``"crowd_labels"`` (c,): COCO's crowd
regions (``iscrowd`` 1), ground truth that COCOeval ignores the detections in (as
:func:`~cnnkit.metrics.detection.coco_evaluate` does with crowd boxes).
Labels are class indices 0..C-1. Images with no instances are fine on either side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnkit.errors import CnnkitError
from cnnkit.metrics.detection import _check, _np, coco_summary, require_pycocotools


def encode_masks(masks) -> list[dict]:
    """(k, H, W) bool/0-1 masks -> k COCO RLEs (``{"size": [H, W], "counts": bytes}``)."""
    from pycocotools import mask as coco_mask

    m = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
    if m.ndim != 3:
        raise CnnkitError(f"masks must be (k, H, W); received shape {m.shape}")
    if len(m) == 0:
        return []
    return coco_mask.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))


def mask_evaluate(predictions: Sequence[dict], targets: Sequence[dict], classes: Sequence[str] | None = None) -> dict:
    """COCO segm metrics by COCOeval: {"AP", "AP50", "AP75", "AR100", "per_class_AP", "images"}.

    A value COCO cannot define (no ground truth at all, or for that class) is -1, as in pycocotools.
    """
    _check(predictions, targets)
    require_pycocotools()
    from pycocotools import mask as coco_mask

    labels = [int(v) for e in [*targets, *predictions] for v in _np(e["labels"])]
    n_classes = len(classes) if classes is not None else 1 + max(labels + [0])
    names = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
    images = []
    for i, t in enumerate(targets):
        h, w = np.shape(t["masks"])[-2:]
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
    categories = [{"id": c + 1, "name": names[c]} for c in range(n_classes)]

    def anns(entries, with_scores):
        out = []
        for i, e in enumerate(entries):
            ls = _np(e["labels"]).astype(int)
            rles = encode_masks(e["masks"])
            if len(rles) != len(ls):
                raise CnnkitError(f"image {i}: {len(rles)} masks but {len(ls)} labels; give one label per mask")
            crowd = [0] * len(rles)
            if not with_scores and "crowd_masks" in e:  # crowd regions: ground truth that COCOeval ignores
                more = encode_masks(e["crowd_masks"])
                rles, ls = [*rles, *more], np.concatenate([ls, _np(e["crowd_labels"]).astype(int)])
                crowd += [1] * len(more)
            if rles and tuple(rles[0]["size"]) != (images[i]["height"], images[i]["width"]):
                raise CnnkitError(
                    f"image {i}: masks are {rles[0]['size'][1]}x{rles[0]['size'][0]} px but the "
                    f"ground truth is {images[i]['width']}x{images[i]['height']}; paste masks at the image's size"
                )
            scores = _np(e["scores"]).astype(float) if with_scores else None
            for j, (rle, c) in enumerate(zip(rles, ls)):
                a = {
                    "id": len(out) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "segmentation": rle,
                    "area": float(coco_mask.area(rle)),
                    "bbox": coco_mask.toBbox(rle).tolist(),
                    "iscrowd": crowd[j],
                }
                if with_scores:
                    a["score"] = scores[j]
                out.append(a)
        return out

    return coco_summary(images, categories, anns(targets, False), anns(predictions, True), "segm")

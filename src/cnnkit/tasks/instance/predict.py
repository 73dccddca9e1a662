"""Boxes and masks of a trained model on a data set or on image files, drawn as overlays."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.data.detection import unletterbox
from cnnkit.errors import CnnkitError, output_folder
from cnnkit.models.instance import MaskDetector, paste_masks
from cnnkit.tasks.detect.data import DetectionSet
from cnnkit.tasks.detect.predict import draw_detections
from cnnkit.tasks.instance.data import from_instances


@torch.no_grad()
def predict_instances(
    model: nn.Module, data: DetectionSet, batch_size: int = 16, sizes=None, **decode_args
) -> list[dict[str, torch.Tensor]]:
    """Detections with masks for every image of ``data``, in its original pixels.

    The model runs in eval mode; its own mode is restored afterwards.

    Args:
        model: a :class:`~cnnkit.models.instance.MaskDetector` (or a DDP wrapper of one).
        data: the letterboxed images (each image's size maps its boxes back:
            :func:`~cnnkit.data.detection.unletterbox`).
        batch_size: images per forward pass.
        sizes: each image's original (H, W) (default: the sizes of ``data.originals``).
        **decode_args: :func:`cnnkit.models.detection.decode`'s ``score_threshold``,
            ``nms_threshold``, ... (a run stores its own as ``info["decode"]``).

    Returns:
        Per image ``{"boxes" (k, 4), "scores" (k,), "labels" (k,), "masks" (k, H, W) bool,
        "mask_scores" (k,)}``; the mask scores (score x maskness) rank the masks.
    """
    net = model.module if hasattr(model, "module") else model
    sizes = sizes or [tuple(o.shape[-2:]) for o in data.originals]
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    out = []
    try:
        for i in range(0, len(data), batch_size):
            x = data.images[i : i + batch_size].to(device).float().div_(255)
            for j, det in enumerate(net.predict(x, **decode_args)):
                size = sizes[i + j]
                # each mask spans its whole box, the part past the image included; the box reported is clipped
                boxes = unletterbox(det["boxes"].cpu(), data.images.shape[-1], *size, clip=False)
                out.append(
                    {
                        "boxes": unletterbox(det["boxes"].cpu(), data.images.shape[-1], *size),
                        "scores": det["scores"].cpu(),
                        "labels": det["labels"].cpu(),
                        "mask_scores": det["mask_scores"].cpu(),
                        "masks": paste_masks(det["masks"].cpu(), boxes, size),
                    }
                )
    finally:
        net.train(was)
    return out


@torch.no_grad()
def predict_files(model: MaskDetector, paths, out_dir, score: float = 0.3) -> list[dict]:
    """Instances in image files, each drawn to ``out_dir/<stem>.png``: masks (one colour each) and boxes.

    Args:
        model: a :class:`~cnnkit.models.instance.MaskDetector` with its ``.info`` (what
            :func:`load_mask_detector` returns).
        paths: image files (PNG, JPEG, ...).
        out_dir: the folder of the drawings (created if missing).
        score: the least detection score kept.

    Returns:
        Per image ``{"image", "png", "boxes", "scores", "labels" (names), "mask_scores",
        "mask_pixels"}`` as plain lists.

    Raises:
        CnnkitError: a file that is missing or not a readable image (before any work is done).

    Example:
        >>> predict_files(load_mask_detector("runs/inst"), ["street.jpg"], "out/")   # doctest: +SKIP
    """
    from pathlib import Path

    from cnnkit.data.images import read_pixels
    from cnnkit.engine.runfolder import output_stems

    size = int(model.info["input_size"][-1])
    c = model.normalise.mean.shape[1]
    classes = list(model.info["classes"])
    for p in paths:
        if not Path(p).is_file():
            raise CnnkitError(f"missing image {p}: no such file")
    images = [read_pixels(Path(p), channels=c) for p in paths]  # a missing file fails before any work
    out_dir = Path(out_dir)
    stems = output_stems(paths, out_dir, (".png",), "--out-dir")  # unique, and never an input's own name
    output_folder(out_dir)
    results = []
    for p, stem, img in zip(paths, stems, images):
        data = from_instances([img], [torch.zeros(img.shape[1:], dtype=torch.uint8)], None, classes, size)
        det = predict_instances(model, data, 1, sizes=[tuple(img.shape[1:])], **model.info.get("decode", {}))[0]
        keep = det["scores"] >= score
        det = {k: v[keep] for k, v in det.items()}
        h, w = img.shape[1:]
        det["boxes"] = det["boxes"].clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
        png = out_dir / f"{stem}.png"
        shown = {
            "boxes": det["boxes"].tolist(),
            "scores": det["scores"].tolist(),
            "labels": [classes[k] for k in det["labels"].tolist()],
            "mask_scores": det["mask_scores"].tolist(),
        }
        draw_detections(overlay_instances(img, det["masks"]), shown, png)
        results.append(
            {"image": str(p), "png": str(png), **shown, "mask_pixels": det["masks"].flatten(1).sum(1).tolist()}
        )
    return results


def overlay_instances(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 and (k, H, W) bool (best first) -> (3, H, W) uint8 with instance j tinted in
    palette colour j + 1 (:func:`cnnkit.tasks.segment.overlay`); where masks overlap the better one shows."""
    from cnnkit.tasks.segment.predict import overlay

    ids = torch.zeros(image.shape[1:], dtype=torch.int64)
    for j in range(len(masks) - 1, -1, -1):
        ids[masks[j]] = j + 1
    return overlay(image, ids, len(masks) + 1)

"""Boxes of a trained detector on a data set or on image files, and their drawing."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.data.detection import (
    letterbox,
)
from cnnkit.engine.runfolder import save_png
from cnnkit.export import model_device
from cnnkit.models.deploy import flip_tta
from cnnkit.models.detection import decode, flip_merge
from cnnkit.tasks.detect.data import DetectionSet


@torch.no_grad()
def predict_set(
    model: nn.Module, data: DetectionSet, batch_size: int = 16, **decode_args
) -> list[dict[str, torch.Tensor]]:
    """Detections for every image of ``data``, in its original pixels.

    The model runs in eval mode; its own mode is restored afterwards.

    Args:
        model: a :class:`~cnnkit.models.detection.Detector`.
        data: the letterboxed images (their ``sizes``, or else ``scales``, map the boxes back).
        batch_size: images per forward pass.
        **decode_args: :func:`cnnkit.models.detection.decode`'s ``score_threshold``,
            ``nms_threshold``, ``top_k``, ``max_detections``, and ``tta="flip"``: the output averaged
            with the mirror image's (:func:`~cnnkit.models.detection.flip_merge`) (a run stores its
            own as ``info["decode"]``).

    Returns:
        Per image ``{"boxes" (k, 4) x1 y1 x2 y2 (clipped to the image where ``data`` has its
        size), "scores" (k,), "labels" (k,) int64}``, best first.
    """
    tta = flip_tta(decode_args.pop("tta", ""))
    was = model.training
    model.eval()
    device = model_device(model)
    out = []
    try:
        for i in range(0, len(data), batch_size):
            x = data.images[i : i + batch_size].to(device).float().div_(255)
            raw = model(x)
            if tta:
                raw = flip_merge(raw, model(x.flip(-1)), x.shape[-1])
            for j, det in enumerate(decode(raw, tuple(x.shape[-2:]), **decode_args), i):
                boxes = data.original_boxes(det["boxes"].cpu(), j)
                out.append({"boxes": boxes, "scores": det["scores"].cpu(), "labels": det["labels"].cpu()})
    finally:
        model.train(was)
    return out


@torch.no_grad()
def predict_images(
    model: nn.Module, images: list[torch.Tensor], size: int, classes: list[str], **decode_args
) -> list[dict]:
    """Detections on images of any size: each is letterboxed to ``size`` and its boxes mapped back.

    Args:
        model: a :class:`~cnnkit.models.detection.Detector`, or its exported file
            (:func:`cnnkit.tasks.detect.load.onnx_detector`).
        images: uint8 (C, H, W) tensors; grey or colour is converted to the model's channels.
        size: the square side the model was trained at (``model.info["input_size"][-1]``).
        classes: the class names, in index order.
        **decode_args: :func:`cnnkit.models.detection.decode`'s ``score_threshold``,
            ``nms_threshold``, ``top_k``, ``max_detections`` (a run stores its own as ``info["decode"]``).

    Returns:
        Per image ``{"boxes": [[x1, y1, x2, y2], ...] (original pixels), "scores": [...],
        "labels": [class names]}`` as plain lists.

    Example:
        >>> model = load_detector("runs/pennfudan")                                   # doctest: +SKIP
        >>> predict_images(model, [read_pixels("street.jpg")], 320, model.info["classes"])  # doctest: +SKIP
    """
    c = model.normalise.mean.shape[1] if hasattr(model, "normalise") else model.input_size[0]  # an OnnxModel
    results = []
    for img in images:
        if img.shape[0] != c:
            img = img[:1] if c == 1 else img.expand(c, -1, -1)
        x, _, scale = letterbox(img, torch.zeros(0, 4), size)
        det = predict_set(
            model,
            DetectionSet(
                (x[None] * 255).round().to(torch.uint8),
                torch.zeros(1, 1, 4),
                torch.full((1, 1), -1),
                torch.tensor([scale]),
                classes,
                sizes=torch.tensor([tuple(img.shape[1:])]),
            ),
            1,
            **decode_args,
        )[0]
        results.append(
            {
                "boxes": det["boxes"].tolist(),
                "scores": det["scores"].tolist(),
                "labels": [classes[k] for k in det["labels"].tolist()],
            }
        )
    return results


def draw_detections(image: torch.Tensor, det: dict, path) -> None:
    """Write ``image`` with its boxes, labels and scores drawn, as a PNG (Pillow).

    Args:
        image: uint8 (C, H, W), grey or RGB.
        det: ``{"boxes", "scores", "labels"}`` as :func:`predict_images` gives them (boxes in the
            image's pixels, labels as names).
        path: the PNG file to write.
    """
    from PIL import Image, ImageDraw

    arr = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    im = Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(im)
    for (x1, y1, x2, y2), s, name in zip(det["boxes"], det["scores"], det["labels"]):
        draw.rectangle(
            [x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=(255, 40, 40), width=max(1, round(max(im.size) / 250))
        )
        draw.text((x1 + 2, max(0, y1 - 11)), f"{name} {s:.2f}", fill=(255, 255, 0))
    save_png(im, path)

"""IoU, pixel accuracy and boundary F-score of a segmenter on a data set or a run's split."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.data.segmentation import IGNORE_INDEX, SegmentationSet, segmentation_digest
from cnnkit.engine.runfolder import resolve, run_photos, warn_if_changed
from cnnkit.errors import CnnkitError
from cnnkit.metrics.segmentation import SegmentationMeter
from cnnkit.models.deploy import flip_tta
from cnnkit.tasks.segment.config import SegmentConfig
from cnnkit.tasks.segment.data import PARTS, load_splits
from cnnkit.tasks.segment.load import load_segmenter
from cnnkit.tasks.segment.predict import predict_image, predict_masks, scales


def evaluate(
    model: nn.Module, data: SegmentationSet, boundary_d: int = 3, batch_size: int = 32, max_side: int | None = None
) -> dict:
    """IoU, pixel accuracy and boundary IoU of a segmenter over every image of ``data``.

    The model answers by its test-time procedure when in eval mode, and is scored at the data's own
    resolution: with ``max_side`` each photo goes through :func:`predict_image` (the network sees it
    shrunk, its logits are resized back to the photo), exactly the label map ``cnnkit segment
    predict`` writes.

    Args:
        model: float (B, C, H, W) in [0, 1] -> logits (B, K, H, W), e.g. a :class:`Segmenter`.
        data: images with their masks (255: ignored pixels).
        boundary_d: band width (px) of the boundary IoU (0: none).
        batch_size: stacked images per forward pass (a list of photos goes one by one).
        max_side: photos longer than this are shrunk for the network (the run's ``max_side``);
            None: the network sees each image as it is.

    Returns:
        :meth:`~cnnkit.metrics.segmentation.SegmentationMeter.compute`'s ``{"mIoU",
        "pixel_accuracy", "iou", "iou_by_class", "boundary_iou", "boundary_iou_per_class",
        "confusion"}`` (None where undefined), plus ``images``.
    """
    meter = SegmentationMeter(data.num_classes, IGNORE_INDEX, boundary_d, data.classes)
    if max_side is not None and not isinstance(data.images, torch.Tensor):
        was_training = model.training
        preds = [predict_image(model, im, max_side) for im in data.images]
        model.train(was_training)
    else:
        preds = predict_masks(model, data.images, batch_size)
    if isinstance(preds, torch.Tensor):
        meter.update(preds, data.masks.long())
    else:
        for p, m in zip(preds, data.masks):
            meter.update(p, m.long())
    return {**meter.compute(), "images": len(data)}


def evaluate_run(
    path,
    split: str = "test",
    data_dir: str | None = None,
    tta: str | None = None,
    test_scale: float | tuple[float, ...] | None = None,
) -> dict:
    """The metrics of a segmentation run on a split of its data: what ``cnnkit segment eval`` reports.

    Photos are scored at their own size, by the procedure ``cnnkit segment predict`` writes its
    label maps with (shrunk to the run's ``max_side`` for the network, the answer resized back).

    Args:
        path: a run folder or its ``model.safetensors``.
        split: ``test``, ``val`` or ``train`` of the run's own split.
        data_dir: the folder holding the built-in data sets (default: the run's).
        tta: ``"flip"`` | ``"none"`` instead of the test-time augmentation the run saved.
        test_scale: the factor (or factors, their answers averaged) the image is resized by before the
            network, instead of the saved ones.

    Returns:
        ``{"mIoU", "pixel_accuracy", "iou" (by class name), "boundary_iou", "images", "split",
        "data", "confusion"}``.

    Raises:
        CnnkitError: not a segmentation run, an unknown split, a bad ``tta`` or ``test_scale``, or
            data that cannot be found.

    Example:
        >>> evaluate_run("runs/seg", tta="none")["mIoU"]     # doctest: +SKIP
    """
    tta = flip_tta(tta) if tta is not None else None
    if test_scale is not None:
        test_scale = scales(test_scale)
    model = load_segmenter(path)
    if tta is not None:
        model.tta = tta
    if test_scale is not None:
        model.test_scale = test_scale
    cfg = SegmentConfig.from_dict(model.info["config"], strict=False)
    if data_dir is not None:
        cfg.data_dir = data_dir
    if split not in ("train", "val", "test"):
        raise CnnkitError(f"--split is train, val or test. Received: --split {split}")
    names = run_photos(resolve(path), cfg.data)  # the run's own photos
    # the scored part's photos alone, their masks checked against the run's classes
    sets = dict(zip(PARTS, load_splits(cfg, own_size=True, split=names, parts=(split,), classes=model.classes)))
    # the part as the run recorded it (each photo shrunk as training reads it), where it changed since
    scored = sets[split]
    warn_if_changed(
        cfg.data, lambda: segmentation_digest(scored, cfg.max_side), model.info, resolve(path).parent, split, "photos"
    )
    out = evaluate(model, sets[split], cfg.boundary_d, max_side=cfg.max_side)
    return {
        "mIoU": out["mIoU"],
        "pixel_accuracy": out["pixel_accuracy"],
        "iou": out["iou_by_class"],
        "boundary_iou": out["boundary_iou"],
        "images": out["images"],
        "split": split,
        "data": cfg.data,
        "confusion": out["confusion"],
    }

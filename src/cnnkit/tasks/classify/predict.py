"""Classify image files: each is converted and resized the way the training images were."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.data.images import read_image
from cnnkit.errors import CnnkitError
from cnnkit.export import OnnxModel, model_device
from cnnkit.tasks.classify.evaluate import images_per_batch

PREDICT_BATCH = 64  # images per forward pass (fewer on a CPU for large images: images_per_batch)


def run_loader(model: nn.Module) -> Callable[[str | Path], torch.Tensor] | None:
    """How a run trained on an image folder read its images, as ``fn(path) -> (C, H, W)`` floats in
    [0, 1]: the shorter side resized to cover the input over the run's crop share, the centre kept,
    with the run's interpolation (:func:`~cnnkit.data.imagefolder.decode_image`, what training and
    ``cnnkit eval`` read; an exported file carries them as ``cnnkit.reading``); None for any other
    model (a built-in data set's run, a converted one).

    Raises:
        CnnkitError: a fine-tuning run whose metadata names a crop share or interpolation it cannot have.
    """
    from cnnkit.data.datasets import folder_reading
    from cnnkit.data.imagefolder import decode_image

    info = getattr(model, "info", None)
    reading = folder_reading(info if isinstance(info, dict) else {}, getattr(model, "input_size", None))
    if reading is None:
        return None
    crop, interpolation = reading
    c, h, w = model.input_size
    return lambda path: decode_image(path, (h, w), c, "shorter", crop, interpolation).float() / 255


def load_image(path: str | Path, input_size: tuple[int, int, int], dark_background: bool) -> torch.Tensor:
    """An image file -> float (C, H, W) in [0, 1] at the model's input size.

    Grey (C = 1) or RGB (C = 3), resized to H x W with bilinear filtering. For digit-like data
    (white strokes on black) an image with a light background is inverted first.
    """
    c, h, w = input_size
    return read_image(path, c, (h, w), dark_background)


@torch.no_grad()
def predict_files(model: nn.Module, paths: list[str], top: int = 3, loader=None) -> list[dict]:
    """The most probable classes of each image file.

    Args:
        model: a classifier with ``classes`` and ``input_size`` (what :func:`cnnkit.load` returns,
            or an exported file's :func:`onnx_classifier`).
        paths: image files (PNG, JPEG, ...).
        top: how many (class, probability) pairs to keep per image.
        loader: ``fn(path) -> (C, H, W)`` float tensor in [0, 1] that reads one image (default: the
            file converted and resized to the model's input the way its training images were:
            :func:`run_loader` for a run on an image folder, else :func:`load_image`).

    Returns:
        Per image ``{"image": path, "top": [(class name, probability), ...]}``, most probable first.

    Raises:
        CnnkitError: a file that is missing or not a readable image.

    Example:
        >>> predict_files(cnnkit.load("runs/mnist"), ["seven.png"], top=1)   # doctest: +SKIP
        [{'image': 'seven.png', 'top': [('7', 0.9...)]}]
    """
    dark = bool(getattr(model, "info", {}).get("dataset", {}).get("dark_background", False))
    loader = loader or run_loader(model) or (lambda p: load_image(p, model.input_size, dark))
    device, batches, start = model_device(model), [], 0
    while start < len(paths):  # read and answered a batch at a time: memory stays bounded however many files
        first = loader(paths[start])  # (C, H, W)
        n = images_per_batch(device, first.shape[-2:], PREDICT_BATCH)
        x = torch.stack([first, *(loader(p) for p in paths[start + 1 : start + n])])  # (n, C, H, W)
        logits = model(x.to(device)).float()
        if logits.dim() == 4 and logits.shape[-2:] == (1, 1):  # a `classify fcn` run at its own size: a 1x1 map
            logits = logits.flatten(1)
        if logits.dim() != 2:
            raise CnnkitError(
                f"the model answers a {'x'.join(map(str, logits.shape[1:]))} map of class scores per "
                f"{'x'.join(map(str, model.input_size))} image, not one score per class: a `classify fcn` run "
                "gives one at its own input size (export it without --input)"
            )
        batches.append(logits.softmax(1).cpu())
        start += n
    probs = torch.cat(batches) if batches else torch.zeros(0, len(model.classes))
    p, i = probs.topk(min(top, probs.shape[1]), dim=1)
    return [
        {"image": str(path), "top": [(model.classes[k], float(v)) for v, k in zip(pv, ik)]}
        for path, pv, ik in zip(paths, p.tolist(), i.tolist())
    ]


def onnx_classifier(path: str | Path) -> OnnxModel:
    """An exported classifier (``cnnkit export``) run by ONNX Runtime, ready for :func:`predict_files`.

    Args:
        path: the ``.onnx`` file; its metadata gives the classes and the input size.

    Returns:
        An :class:`~cnnkit.export.OnnxModel` with ``classes``, ``input_size`` and ``info``.

    Raises:
        CnnkitError: onnxruntime is not installed, the file is not an ONNX model, its metadata is
            damaged, or it is not a classifier of images.
    """
    model = OnnxModel(path)
    if model.task not in (None, "classify"):
        raise CnnkitError(f"{path} is a {model.task} model (metadata cnnkit.task); classify predict runs classifiers")
    if model.input_size is None or len(model.input_size) != 3 or model.input_size[0] not in (1, 3):
        raise CnnkitError(
            f"{path} does not state an image input size (C, H, W) with 1 or 3 channels (received "
            f"{model.input_size}); export it with `cnnkit export RUN --out FILE.onnx`"
        )
    if model.classes is None:
        out = model.session.get_outputs()[0].shape
        if len(out) != 2 or not isinstance(out[1], int):
            raise CnnkitError(f"{path} names no classes (metadata cnnkit.classes); export it with `cnnkit export`")
        model.classes = [str(i) for i in range(out[1])]  # a foreign file: its class indices
    return model


def predictor(source: str, top: int | None = None, trust_code: bool = False, factory: str | None = None):
    """What ``cnnkit classify predict`` runs: ``(model, loader, top)``.

    Args:
        source: a run folder or ``model.safetensors``, an exported ``.onnx`` file (run by ONNX
            Runtime), or a zoo name with published ImageNet weights.
        top: classes shown per image (default: 3 for a run, 5 for a zoo model).
        trust_code: allow building a network by running ``factory`` (as for :func:`cnnkit.load`).
        factory: ``FILE.py:FUNCTION`` that builds the network (with ``trust_code``).

    Returns:
        The classifier, the image loader for :func:`predict_files` (None: the run's own), and ``top``.

    Raises:
        CnnkitError: an unknown zoo name, or a checkpoint that cannot be read.
    """
    from functools import partial

    from cnnkit.models.preprocess import load_photo, pretrained_classifier
    from cnnkit.tasks.classify.load import load_classifier

    if str(source).lower().endswith(".onnx"):
        return onnx_classifier(source), None, top or 3
    if not Path(source).exists() and "/" not in source and not source.endswith(".safetensors"):
        model = pretrained_classifier(source)  # a zoo name: its ImageNet weights and classes
        return model, partial(load_photo, pre=model.preprocess), top or 5
    model = load_classifier(source, trust_code=trust_code, factory=factory)  # its weights checked finite
    return model, None, top or 3

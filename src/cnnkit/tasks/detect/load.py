"""Build a detector for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import math
import os

import torch

from cnnkit.engine.runfolder import load_run_model
from cnnkit.errors import CnnkitError
from cnnkit.export import DECODE_KEY, OnnxModel
from cnnkit.models.deploy import flip_tta
from cnnkit.models.detection import Detector, create_detector


def build_detector(info: dict) -> Detector:
    """The (untrained) detector a checkpoint's metadata describes."""
    try:
        model = create_detector(
            info["backbone"],
            len(info["classes"]),
            weights=None,
            in_channels=int(info["in_channels"]),
            out_strides=tuple(info["out_strides"]),
            width=int(info["width"]),
            head_convs=int(info.get("head_convs", 2)),
            separate_towers=bool(info.get("separate_towers", False)),
        )
    except KeyError as exc:
        raise CnnkitError(
            f"checkpoint metadata lacks field {exc.args[0]!r}: not a `cnnkit detect train` model"
        ) from None
    mean, std = info.get("mean"), info.get("std")
    if mean is not None:
        model.normalise.mean.copy_(torch.tensor(mean)[None, :, None, None])
        model.normalise.std.copy_(torch.tensor(std)[None, :, None, None])
    return model


def load_detector(path: str | os.PathLike, device: str = "cpu") -> Detector:
    """A trained detector from a run folder or its ``model.safetensors``, rebuilt from data, never code.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit detect train``.
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Returns:
        The :class:`~cnnkit.models.detection.Detector` in eval mode, the checkpoint's metadata as
        ``.info`` (classes, input size, decoding settings, config).

    Raises:
        CnnkitError: not a detection run, or a damaged or crafted file.

    Example:
        >>> model = load_detector("runs/pennfudan")      # doctest: +SKIP
        >>> model.info["classes"]                        # doctest: +SKIP
        ['person']
    """
    return load_run_model(path, "detect", build_detector, device)


def new_detector(
    backbone: str,
    classes: list[str],
    in_channels: int,
    size: int,
    weights: str | None = None,
    out_strides=(8, 16, 32),
    width: int = 64,
    head_convs: int = 2,
    separate_towers: bool = False,
) -> tuple[Detector, dict]:
    """A fresh detector and the metadata that rebuilds it (what ``describe`` stores)."""
    model = create_detector(
        backbone,
        len(classes),
        weights=weights,
        in_channels=in_channels,
        out_strides=out_strides,
        width=width,
        head_convs=head_convs,
        separate_towers=separate_towers,
    )
    info = {
        "backbone": backbone,
        "in_channels": in_channels,
        "out_strides": list(out_strides),
        "width": width,
        "head_convs": head_convs,
        "separate_towers": separate_towers,
        "input_size": [in_channels, size, size],
        "weights": weights,
    }
    return model, info


def onnx_detector(path: str | os.PathLike) -> OnnxModel:
    """A detector exported by ``cnnkit export``, run by ONNX Runtime, for ``predict_images``.

    The file returns the raw maps (``cls``, ``box``, ``ctr``, ``points``); decoding and NMS run
    in Python as for the PyTorch model.

    Args:
        path: the ``.onnx`` file.

    Returns:
        An :class:`~cnnkit.export.OnnxModel` whose ``info`` has the classes, the input size and the
        run's decoding settings and flip (``info["decode"]``, from ``cnnkit.decode``; older files: none).

    Raises:
        CnnkitError: onnxruntime is missing, the file is not an ONNX model, its metadata is damaged,
            or it is not a detector exported with its classes and square input size.
    """
    model = OnnxModel(path)
    if model.task != "detect" or not {"cls", "box", "ctr", "points"} <= set(model.output_names):
        raise CnnkitError(
            f"{path} is not a detector exported by `cnnkit export` (task {model.task}, outputs "
            f"{', '.join(model.output_names)[:80]}); export a `cnnkit detect train` run"
        )
    size = model.input_size
    if model.classes is None or size is None or len(size) != 3 or size[1] != size[2]:
        raise CnnkitError(
            f"{path} does not state its classes and a square input size (received {size}); export it with `cnnkit export`"
        )
    decode = model.meta_value(DECODE_KEY, dict) or {}  # what predict_set reads: the run's own flip and NMS
    numbers = ("score_threshold", "nms_threshold", "top_k", "max_detections")
    try:
        ok = set(decode) <= {*numbers, "tta"} and all(
            isinstance(decode[k], (int, float))
            and not isinstance(decode[k], bool)
            and math.isfinite(decode[k])
            and decode[k] >= 0
            for k in numbers
            if k in decode
        )
        if not ok:
            raise CnnkitError(DECODE_KEY)
        if "tta" in decode:
            decode["tta"] = flip_tta(decode["tta"])
    except CnnkitError:
        raise model._bad(DECODE_KEY, f"the run's decoding settings ({', '.join(numbers)}, tta)") from None
    model.info["decode"] = decode
    return model

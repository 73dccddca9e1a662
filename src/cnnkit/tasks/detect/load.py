"""Build a detector for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import os

import torch

from cnnkit.engine.runfolder import load_run_model
from cnnkit.errors import CnnkitError
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

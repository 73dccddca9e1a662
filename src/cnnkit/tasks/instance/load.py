"""Build a mask detector for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import os

from cnnkit.engine.runfolder import load_run_model
from cnnkit.errors import CnnkitError
from cnnkit.models.instance import MaskDetector
from cnnkit.tasks.detect.load import build_detector, new_detector
from cnnkit.tasks.instance.config import InstanceConfig


# ----------------------------------------------------------------------------- building and loading
def new_mask_detector(cfg: InstanceConfig, classes: list[str], in_channels: int) -> tuple[MaskDetector, dict]:
    strides = tuple(getattr(cfg, "strides", ()) or (8, 16, 32))
    det, info = new_detector(
        cfg.model,
        classes,
        in_channels,
        cfg.test_side(),  # the side predict and export letterbox to
        cfg.weights,
        strides,
        cfg.width,
        cfg.head_convs,
        bool(cfg.separate_towers),
    )
    model = MaskDetector(det, cfg.mask_width, cfg.mask_convs)
    return model, {**info, "mask_width": cfg.mask_width, "mask_convs": cfg.mask_convs}


def load_mask_detector(path: str | os.PathLike, device: str = "cpu") -> MaskDetector:
    """A trained mask detector from a run folder or its ``model.safetensors``, rebuilt from data, never code.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit instance train``.
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Returns:
        The :class:`~cnnkit.models.instance.MaskDetector` in eval mode, the checkpoint's metadata
        as ``.info``.

    Raises:
        CnnkitError: not an instance run, or a damaged or crafted file.

    Example:
        >>> model = load_mask_detector("runs/inst")      # doctest: +SKIP
    """

    def build(info: dict) -> MaskDetector:
        try:
            return MaskDetector(
                build_detector(info), int(info["mask_width"]), int(info["mask_convs"]), bool(info["class_agnostic"])
            )
        except KeyError as exc:
            raise CnnkitError(
                f"checkpoint metadata lacks field {exc.args[0]!r}: not a `cnnkit instance train` model"
            ) from None

    return load_run_model(path, "instance", build, device)

"""Build a segmenter for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import torch

from cnnkit.data.segmentation import SegmentationSet
from cnnkit.engine.runfolder import load_run_model
from cnnkit.errors import CnnkitError
from cnnkit.tasks.segment.config import SegmentConfig
from cnnkit.tasks.segment.data import _channels, input_stats
from cnnkit.tasks.segment.predict import Segmenter


def build_model(cfg: SegmentConfig, train: SegmentationSet) -> Segmenter:
    """The network (seeded init) wrapped with its input normalisation (:func:`input_stats`)."""
    from cnnkit.models.segmentation import create_segmenter

    torch.manual_seed(cfg.seed)
    net = create_segmenter(
        cfg.arch,
        cfg.model,
        train.num_classes,
        in_channels=_channels(train),
        output_stride=cfg.output_stride,
        weights=cfg.weights,
        width=cfg.width,
        finest=cfg.finest,
    )
    mean, std = input_stats(cfg, train)
    return Segmenter(net, mean, std, train.classes, _segmenter_tta(cfg.tta), cfg.test_scale)


def _segmenter_tta(tta: str) -> str:
    """``--tta`` (flip | none) -> a :class:`Segmenter`'s ``tta`` ("flip" | "")."""
    if tta not in ("flip", "none"):
        raise CnnkitError(f"--tta is flip or none. Received: --tta {tta}")
    return "" if tta == "none" else tta


def load_segmenter(path, device: str = "cpu") -> Segmenter:
    """A trained segmenter from a run folder or its ``model.safetensors``, rebuilt from data, never code.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit segment train``.
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Returns:
        The :class:`Segmenter` in eval mode, the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: not a segmentation run, or a damaged or crafted file.

    Example:
        >>> model = load_segmenter("runs/seg")                   # doctest: +SKIP
        >>> model.predict(torch.rand(1, 3, 320, 320)).shape      # doctest: +SKIP
        torch.Size([1, 320, 320])
    """
    return load_run_model(path, "segment", Segmenter.from_info, device)

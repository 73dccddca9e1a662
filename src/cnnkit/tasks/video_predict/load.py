"""Build a frame predictor for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import torch

from cnnkit.engine.runfolder import load_run_model
from cnnkit.errors import CnnkitError
from cnnkit.tasks.video_predict.config import PredictConfig
from cnnkit.tasks.video_predict.predict import FramePredictor


def build_model(cfg: PredictConfig, size: tuple[int, int] = (64, 64), channels: int = 1) -> FramePredictor:
    """The zoo predictor ``cfg.model`` (seeded init) for ``cfg.frames`` frames of ``size``.

    Raises:
        CnnkitError: a model that is not a frame predictor of the zoo.
    """
    from cnnkit.models import create_model, model_info

    if model_info(cfg.model).task != "video_predict":
        raise CnnkitError(f"--model {cfg.model} is not a frame predictor; use simvp or simvp_tiny")
    torch.manual_seed(cfg.seed)
    net = create_model(cfg.model, in_channels=channels, frames=cfg.frames)
    return FramePredictor(net, cfg.model, cfg.frames, channels, size)


def load_predictor(path, device: str = "cpu") -> FramePredictor:
    """A trained frame predictor from a run folder or its ``model.safetensors``, rebuilt from data, never code.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit video-predict train``.
        device: where the model goes.

    Returns:
        The :class:`FramePredictor` in eval mode, the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: not a frame-prediction run, or a damaged or crafted file.

    Example:
        >>> model = load_predictor("runs/predict")                     # doctest: +SKIP
        >>> model(torch.rand(1, 10, 1, 64, 64)).shape                  # doctest: +SKIP
        torch.Size([1, 10, 1, 64, 64])
    """
    return load_run_model(path, "video_predict", FramePredictor.from_info, device)

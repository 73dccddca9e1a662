"""MSE and MAE per frame and SSIM, per predicted step, of a frame predictor on clips or a run's split."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.engine.runfolder import read_split, resolve
from cnnkit.errors import CnnkitError
from cnnkit.metrics.video import VideoPredictionMeter
from cnnkit.tasks.video.data import clip_batch
from cnnkit.tasks.video.evaluate import eval_config
from cnnkit.tasks.video_predict.config import PredictConfig
from cnnkit.tasks.video_predict.data import load_splits
from cnnkit.tasks.video_predict.load import load_predictor


@torch.no_grad()
def evaluate(model: nn.Module, data, frames: int = 10, batch_size: int = 32) -> dict:
    """The table's metrics of a frame predictor on clips of 2 ``frames`` frames.

    Args:
        model: (B, T, C, H, W) in [0, 1] -> the next T frames, e.g. a :class:`FramePredictor`
            (in eval mode its output is clamped to [0, 1]).
        data: clips (Moving MNIST or a user's folder) of at least 2 ``frames`` frames.
        frames: frames in, and predicted.
        batch_size: clips per forward pass.

    Returns:
        :meth:`~cnnkit.metrics.video.VideoPredictionMeter.compute`'s ``{"mse", "mae", "ssim",
        "mse_per_step", "mae_per_step", "ssim_per_step", "clips"}``: MSE and MAE summed over a
        frame's pixels, means over the predicted steps and clips.

    Raises:
        CnnkitError: a predicted frame holds NaN or infinite pixels (a network that diverged).
    """
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    meter = VideoPredictionMeter()
    try:
        for lo in range(0, len(data), batch_size):
            x = clip_batch(data, range(lo, min(lo + batch_size, len(data))))[0]  # (B, 2T, C, H, W)
            pred = model(x[:, :frames].to(device)).float()
            if not bool(torch.isfinite(pred).all()):  # a NaN frame scores NaN: no number to report
                raise CnnkitError(
                    "the network predicts frames that are not finite (NaN or infinite pixels): its weights "
                    "diverged in training; train it again with a lower --lr"
                )
            meter.update(pred.clamp(0, 1), x[:, frames : 2 * frames])
    finally:
        model.train(was)
    return meter.compute()


def evaluate_run(path, split: str = "test", data_dir: str | None = None, clips: int | None = None) -> dict:
    """The metrics of a frame-prediction run on a split: what ``cnnkit video-predict eval`` reports.

    Args:
        path: a run folder or its ``model.safetensors``.
        split: ``test`` or ``val``.
        data_dir: the folder holding ``mnist/`` (default: the run's).
        clips: Moving MNIST: the first N clips of the split (default: the run's number).

    Returns:
        :func:`evaluate`'s numbers, plus ``split`` and ``data``.

    Raises:
        CnnkitError: not a frame-prediction run, an unknown split, data that cannot be found.

    Example:
        >>> evaluate_run("runs/predict", clips=1000)["mse"]    # doctest: +SKIP
    """
    model = load_predictor(path)
    cfg = eval_config(model, PredictConfig, split, data_dir, clips, resolve(path))
    cfg.clips, cfg.val_clips = 1, max(cfg.val_clips, 1)
    own = read_split(resolve(path), ("train", "val", "test")) if cfg.data != "moving_mnist" else None
    _, val, test = load_splits(cfg, own)  # a folder run's own clips (its split.json), where it has one
    out = evaluate(model, test if split == "test" else val, cfg.frames)
    return {**out, "split": split, "data": cfg.data}


__all__ = ["clip_batch", "evaluate", "evaluate_run"]

"""Build a clip classifier for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import torch

from cnnkit.engine.runfolder import load_run_model
from cnnkit.tasks.video.config import VideoConfig
from cnnkit.tasks.video.predict import DIGITS, VideoClassifier, clip_network

MEAN, STD = 0.05, 0.2  # Moving MNIST pixels on [0, 1]: about 5% ink


def build_model(cfg: VideoConfig) -> VideoClassifier:
    """The zoo network ``cfg.model`` (seeded init) wrapped with the clip handling of ``cfg``.

    Raises:
        CnnkitError: a model that is not a clip classifier of the zoo.
    """
    frames = (cfg.frames - 1) // cfg.stride + 1
    torch.manual_seed(cfg.seed)
    net = clip_network(cfg.model, len(DIGITS), 1, frames)
    return VideoClassifier(net, cfg.model, DIGITS, frames, cfg.stride, cfg.size, MEAN, STD, 1)


def load_video_classifier(path, device: str = "cpu") -> VideoClassifier:
    """A trained clip classifier from a run folder or its ``model.safetensors``, rebuilt from data, never code.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit video train``.
        device: where the model goes.

    Returns:
        The :class:`VideoClassifier` in eval mode, the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: not a clip-classification run, or a damaged or crafted file.

    Example:
        >>> model = load_video_classifier("runs/video")                # doctest: +SKIP
        >>> model(torch.rand(1, 20, 1, 64, 64)).shape                  # doctest: +SKIP
        torch.Size([1, 10])
    """
    return load_run_model(path, "video", VideoClassifier.from_info, device)

"""Clips as the prediction task trains on them: Moving MNIST, or a user's folder split 80/10/10."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.data.video import VideoClips
from cnnkit.errors import CnnkitError
from cnnkit.tasks.video.data import moving_mnist_splits
from cnnkit.tasks.video_predict.config import PredictConfig


class ClipSubset(torch.utils.data.Dataset):
    """The clips ``indices`` of a :class:`VideoClips` (a split of a user's folder)."""

    def __init__(self, clips: VideoClips, indices: list[int]):
        self.clips, self.indices = clips, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.clips[self.indices[i]]


def load_splits(cfg: PredictConfig):
    """(train, validation, test) clips of 2 x ``cfg.frames`` frames for a config.

    Raises:
        CnnkitError: a folder that holds no clips, or fewer than 3 (one per split).
    """
    if cfg.data == "moving_mnist":
        return moving_mnist_splits(cfg.clips, cfg.val_clips, cfg.test_clips, 2 * cfg.frames, cfg.data_dir, cfg.seed)
    if not Path(cfg.data).expanduser().is_dir():
        raise CnnkitError(f"--data is moving_mnist or a folder of clips. Received: --data {cfg.data}")
    clips = VideoClips(cfg.data, cfg.channels, (cfg.size, cfg.size), 2 * cfg.frames)
    n = len(clips)
    if n < 3:
        raise CnnkitError(f"{cfg.data} holds {n} clip(s); training, validation and test need at least 3")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_eval = max(1, n // 10)
    val, test, train = order[:n_eval], order[n_eval : 2 * n_eval], order[2 * n_eval :]
    return ClipSubset(clips, train), ClipSubset(clips, val), ClipSubset(clips, test)

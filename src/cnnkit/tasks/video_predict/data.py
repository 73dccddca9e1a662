"""Clips as the prediction task trains on them: Moving MNIST, or a user's folder split 80/10/10."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.data.video import VideoClips
from cnnkit.errors import CnnkitError, gone_from_split
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


def load_splits(cfg: PredictConfig, split: dict[str, list[str]] | None = None):
    """(train, validation, test) clips of 2 x ``cfg.frames`` frames for a config.

    A folder's clips are split 80/10/10 by ``cfg.seed``, or, with ``split`` (a run's ``split.json``,
    :func:`~cnnkit.engine.runfolder.read_split`), into the clips it names: a resumed or evaluated run
    keeps its own parts, whatever was added to or taken from the folder since.

    Raises:
        CnnkitError: a folder that holds no clips, or fewer than 3 (one per split); a clip ``split``
            names that is gone from the folder.
    """
    if cfg.data == "moving_mnist":
        return moving_mnist_splits(cfg.clips, cfg.val_clips, cfg.test_clips, 2 * cfg.frames, cfg.data_dir, cfg.seed)
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise CnnkitError(f"--data is moving_mnist or a folder of clips. Received: --data {cfg.data}")
    if split is not None:
        names = [name for part in ("train", "val", "test") for name in split.get(part, [])]
        gone = [name for name in names if not (root / name).exists()]
        if gone:
            raise gone_from_split([root / name for name in gone], "clip")
        clips = VideoClips(root, cfg.channels, (cfg.size, cfg.size), 2 * cfg.frames, clips=[root / n for n in names])
        index = {name: i for i, name in enumerate(names)}
        return tuple(ClipSubset(clips, [index[n] for n in split.get(part, [])]) for part in ("train", "val", "test"))
    clips = VideoClips(root, cfg.channels, (cfg.size, cfg.size), 2 * cfg.frames)
    n = len(clips)
    if n < 3:
        raise CnnkitError(f"{cfg.data} holds {n} clip(s); training, validation and test need at least 3")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_eval = max(1, n // 10)
    val, test, train = order[:n_eval], order[n_eval : 2 * n_eval], order[2 * n_eval :]
    return ClipSubset(clips, train), ClipSubset(clips, val), ClipSubset(clips, test)


def split_names(parts) -> dict[str, list[str]]:
    """``{"train": names, "val": names, "test": names}`` of a folder's (train, val, test) clips, as a
    run's ``split.json`` keeps them (names inside the data folder)."""
    return {k: [part.clips.clips[i].name for i in part.indices] for k, part in zip(("train", "val", "test"), parts)}

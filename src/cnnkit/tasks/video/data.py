"""Clips as the video tasks train on them: the Moving MNIST splits and batches of float clips."""

from __future__ import annotations

import torch

from cnnkit.data.video import MovingMnist, MovingMnistSpec, VideoClips
from cnnkit.errors import CnnkitError

VAL_SEED = 1  # the validation clips' seed (the test set has its own, data.video.TEST_SEED)


def moving_mnist_splits(
    clips: int, val_clips: int, test_clips: int, frames: int = 20, data_dir=None, seed: int = 0
) -> tuple[MovingMnist, MovingMnist | None, MovingMnist]:
    """(train, validation, test) Moving MNIST sets.

    Train: ``clips`` clips drawn afresh every epoch from MNIST's first 55,000 training digits;
    validation: a fixed set from the last 5,000 (None when ``val_clips`` is 0); test: the first
    ``test_clips`` of the fixed seeded test set (MNIST's test digits).
    """
    spec = MovingMnistSpec(num_frames=frames)
    train = MovingMnist("train", clips, seed=seed, fresh=True, data_dir=data_dir, spec=spec)
    val = MovingMnist("val", val_clips, seed=VAL_SEED, data_dir=data_dir, spec=spec) if val_clips else None
    test = MovingMnist("test", test_clips, data_dir=data_dir, spec=spec)
    return train, val, test


def clip_batch(data, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clips ``idx`` of ``data`` as float (B, T, C, H, W) in [0, 1], and their targets (None for user clips).

    ``data`` is a :class:`MovingMnist` (targets: the (B, 10) multi-hot of the digits) or a
    :class:`VideoClips` / sequence of (T, C, H, W) clips of one shape.
    """
    idx = torch.as_tensor(idx).reshape(-1).tolist()
    if isinstance(data, MovingMnist):
        clips, target = data.batch(idx)
        return clips[:, :, None].float().div_(255), target  # (B, T, H, W) uint8 -> (B, T, 1, H, W)
    items = [data[i] for i in idx]
    shapes = {tuple(c.shape) for c in items}
    if len(shapes) > 1:
        raise CnnkitError(f"clips of one batch must share a shape; received {sorted(shapes)[:2]}")
    return torch.stack(items), None


def epoch_draw(data, generator: torch.Generator) -> None:
    """New training clips for an epoch of a fresh :class:`MovingMnist`, seeded from the run's generator
    (so a resumed run draws the same clips)."""
    if isinstance(data, MovingMnist) and data.fresh:
        data.set_epoch(int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)))


__all__ = ["VideoClips", "clip_batch", "epoch_draw", "moving_mnist_splits"]

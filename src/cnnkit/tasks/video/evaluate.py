"""Both-digits accuracy and per-digit accuracy of a clip classifier on clips or a run's split."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.engine.runfolder import resolve
from cnnkit.errors import CnnkitError
from cnnkit.tasks.video.config import VideoConfig
from cnnkit.tasks.video.data import clip_batch, moving_mnist_splits
from cnnkit.tasks.video.load import load_video_classifier


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 64) -> dict:
    """How often a clip classifier names exactly the digits of a clip.

    A digit counts as named when its probability (sigmoid of the logit) is above 1/2.

    Args:
        model: clips (B, T, C, H, W) in [0, 1] -> logits (B, 10), e.g. a :class:`VideoClassifier`.
        data: labelled clips (:class:`~cnnkit.data.video.MovingMnist`).
        batch_size: clips per forward pass.

    Returns:
        ``{"both": share of clips whose named digits are exactly theirs, "digit_acc": share of
        (clip, digit) decisions right, "top2": share of clips of two different digits whose two
        highest logits are those digits, "clips": N}``.

    Raises:
        CnnkitError: clips without labels.
    """
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    both = right = top2 = pairs = n = 0
    try:
        for lo in range(0, len(data), batch_size):
            x, y = clip_batch(data, range(lo, min(lo + batch_size, len(data))))
            if y is None:
                raise CnnkitError("these clips have no labels: evaluation needs Moving MNIST clips")
            logits = model(x.to(device)).float().cpu()  # (B, 10)
            named, truth = logits > 0, y > 0.5
            both += int((named == truth).all(1).sum())
            right += int((named == truth).sum())
            two = truth.sum(1) == 2
            top = torch.zeros_like(truth).scatter_(1, logits.topk(2, 1).indices, True)
            top2 += int(((top == truth).all(1) & two).sum())
            pairs += int(two.sum())
            n += len(y)
    finally:
        model.train(was)
    return {"both": both / n, "digit_acc": right / (n * 10), "top2": top2 / max(pairs, 1), "clips": n}


def eval_config(model, config_cls, split: str, data_dir: str | None, clips: int | None, file=None):
    """The run config a video run is evaluated with: its own, ``data_dir`` and ``clips`` applied.

    Args:
        model: the loaded run's deployable (its ``info["config"]``).
        config_cls: the task's config class (``VideoConfig``, ``PredictConfig``).
        split: ``test`` or ``val`` (checked here).
        data_dir: instead of the run's data folder (None: the run's).
        clips: the first N clips of the split (None: the run's number).
        file: the checkpoint, named in the error when its stored settings are damaged.

    Returns:
        The config, ``test_clips`` and ``val_clips`` set to ``clips`` when given.

    Raises:
        CnnkitError: an unknown split, a ``clips`` below 1 or above the 10,000 test clips, ``clips``
            for a run on a folder of clips (its split is scored whole), the validation split of a run
            that kept none (``--val-clips 0``) without ``clips``, or damaged stored settings.
    """
    if split not in ("test", "val"):
        raise CnnkitError(f"--split is test or val. Received: --split {split}")
    from cnnkit.data.video import TEST_SIZE
    from cnnkit.engine.runfolder import stored_config

    cfg = stored_config(config_cls, model.info, file or "the checkpoint")
    if data_dir is not None:
        cfg.data_dir = data_dir
    if clips is not None:
        if cfg.data != "moving_mnist":
            raise CnnkitError(
                f"--clips picks Moving MNIST clips; this run's data is the folder {cfg.data}, whose {split} "
                "split is scored whole: leave --clips out"
            )
        if clips < 1:
            raise CnnkitError(f"--clips must be a positive integer. Received: --clips {clips}")
        if split == "test" and clips > TEST_SIZE:
            raise CnnkitError(
                f"--clips {clips} is more than the {TEST_SIZE:,} clips of the test set; give at most {TEST_SIZE}"
            )
        cfg.test_clips = cfg.val_clips = clips
    elif split == "val" and cfg.data == "moving_mnist" and not cfg.val_clips:
        raise CnnkitError(
            "this run kept no validation clips (--val-clips 0); give --clips N to score the first N of its "
            "validation set, or --split test"
        )
    return cfg


def evaluate_run(path, split: str = "test", data_dir: str | None = None, clips: int | None = None) -> dict:
    """The metrics of a clip-classification run on a split: what ``cnnkit video eval`` reports.

    Args:
        path: a run folder or its ``model.safetensors``.
        split: ``test`` (the fixed test set) or ``val`` (the run's validation clips).
        data_dir: the folder holding ``mnist/`` (default: the run's).
        clips: evaluate the first N clips of the split (default: the run's number).

    Returns:
        :func:`evaluate`'s numbers, plus ``split``.

    Raises:
        CnnkitError: not a clip-classification run, an unknown split, data that cannot be found.

    Example:
        >>> evaluate_run("runs/video", clips=1000)["both"]    # doctest: +SKIP
    """
    model = load_video_classifier(path)
    cfg = eval_config(model, VideoConfig, split, data_dir, clips, resolve(path))
    _, val, test = moving_mnist_splits(1, max(cfg.val_clips, 1), cfg.test_clips, cfg.frames, cfg.data_dir, cfg.seed)
    return {**evaluate(model, test if split == "test" else val), "split": split}

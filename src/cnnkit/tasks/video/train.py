"""The clip-classification recipe ``cnnkit video train`` runs, through the one engine."""

from __future__ import annotations

import torch

from cnnkit.engine.config import use_threads
from cnnkit.errors import CnnkitError, short_error
from cnnkit.tasks.video.config import VideoConfig
from cnnkit.tasks.video.data import moving_mnist_splits
from cnnkit.tasks.video.evaluate import evaluate
from cnnkit.tasks.video.load import build_model
from cnnkit.tasks.video.task import VideoTask


def train(
    cfg: VideoConfig,
    out=None,
    resume: bool = False,
    quiet: bool = False,
    device: str | None = None,
    max_batches: int | None = None,
    on_epoch_end=None,
):
    """Train a clip classifier by ``cfg`` into the run folder ``out``: what ``cnnkit video train`` runs.

    Training clips are new every epoch, validation clips come from held-out training digits, and the
    final model is scored once on the test clips (MNIST's test digits).

    Args:
        cfg: the settings.
        out: the run folder; None writes nothing.
        resume: continue the run in ``out`` exactly.
        quiet: no summary, progress bar or epoch lines.
        device: ``cpu`` | ``cuda`` (default: ``cfg.device``).
        max_batches: batches per epoch at most (smoke tests); None: all.
        on_epoch_end: ``fn(epoch, row)`` called after each saved epoch (:func:`~cnnkit.engine.fit`).

    Returns:
        The engine's :class:`~cnnkit.engine.FitResult`, with ``.test``: :func:`evaluate`'s numbers
        on the test clips.

    Raises:
        CnnkitError: a bad setting, MNIST missing, a diverging loss, or nothing to resume in ``out``.

    Example:
        >>> result = train(VideoConfig(epochs=5), "runs/video")     # doctest: +SKIP
        >>> result.test["both"]                                     # doctest: +SKIP
    """

    from cnnkit.engine import Data, fit_run, single_phase_plan

    if cfg.clips < cfg.batch_size:
        raise CnnkitError(f"--clips ({cfg.clips}) must be at least --batch-size ({cfg.batch_size})")
    use_threads(cfg.threads)
    train_set, val_set, test_set = moving_mnist_splits(
        cfg.clips, cfg.val_clips, cfg.test_clips, cfg.frames, cfg.data_dir, cfg.seed
    )
    model = build_model(cfg)
    _check_frames(model, cfg)
    if cfg.channels_last:  # the 3-D convolutions' weights NDHWC (a 2-D network is left as it is)
        for p in model.net.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    task = VideoTask(
        cfg.batch_size, cfg.channels_last, max_batches=max_batches, info={"config": cfg.to_dict(), "data": cfg.data}
    )

    plan = single_phase_plan(cfg, lambda m: m.net)
    result = fit_run(
        task,
        model,
        Data(train_set, val_set),
        plan,
        cfg,
        out,
        command="cnnkit video train",
        resume=resume,
        quiet=quiet,
        device=device,
        on_epoch_end=on_epoch_end,
    )
    result.test = evaluate(result.model, test_set)
    return result


def _check_frames(model, cfg: VideoConfig) -> None:
    """One pass of an empty clip before any data is drawn: too few frames for the network's pooling
    is one line naming the flags, not a traceback from inside it."""
    frames = (cfg.frames - 1) // cfg.stride + 1
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, cfg.frames, 1, cfg.size, cfg.size))
    except RuntimeError as exc:
        raise CnnkitError(
            f"--model {cfg.model} cannot take {frames} frames of {cfg.size}x{cfg.size} (--frames {cfg.frames}, "
            f"--stride {cfg.stride}, --size {cfg.size}): {short_error(exc, clause=True)}; give more frames "
            "or a smaller --stride"
        ) from None
    finally:
        model.train()

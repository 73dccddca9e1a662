"""The clip-classification recipe ``cnnkit video train`` runs, through the one engine."""

from __future__ import annotations

from dataclasses import replace

import torch

from cnnkit.engine.config import use_threads
from cnnkit.errors import CnnkitError, short_error
from cnnkit.tasks.video.config import MAX_FRAMES, VideoConfig
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
    """One pass of an empty clip before any data is drawn. Too few frames for the network's pooling
    over time is one line naming the flag to change and its range: the fewest frames the network
    takes (:func:`_fewest_frames`; c3d_small pools time in its stages and needs 8) gives the
    largest ``--stride`` that ``--frames`` allows, or the fewest ``--frames`` at that stride."""
    error = _pass_fails(model, cfg.frames, cfg.size)
    if error is None:
        return
    frames = (cfg.frames - 1) // cfg.stride + 1  # what the network gets: every stride-th frame
    need = _fewest_frames(cfg)
    if need is None or need == 1:  # no number of frames passes, or one does: frames are not what it lacks
        raise CnnkitError(
            f"--model {cfg.model} cannot take {frames} frames of {cfg.size}x{cfg.size} (--frames {cfg.frames}, "
            f"--stride {cfg.stride}, --size {cfg.size}): {short_error(error, clause=True)}; give another "
            + ("--model" if need is None else "--size or --model")
        )
    seen = f"the network needs at least {need} frames and --stride {cfg.stride} leaves it {frames} of the {cfg.frames}"
    if cfg.frames >= need:
        raise CnnkitError(
            f"--stride must be from 1 to {(cfg.frames - 1) // (need - 1)} for --model {cfg.model} at --frames "
            f"{cfg.frames}: {seen}; received {cfg.stride}"
        )
    fewest = (need - 1) * cfg.stride + 1  # the clip's frames that leave `need` at this stride
    if fewest <= MAX_FRAMES:
        raise CnnkitError(
            f"--frames must be from {fewest} to {MAX_FRAMES} for --model {cfg.model} at --stride {cfg.stride}: "
            f"{seen}; received {cfg.frames}"
        )
    raise CnnkitError(f"{seen}: give --stride 1 and --frames from {need} to {MAX_FRAMES} (--model {cfg.model})")


# the side the fewest frames are probed at: the smallest --size, which every clip network of the zoo
# takes (its pooling over time does not depend on the side)
PROBE_SIDE = 16


def _fewest_frames(cfg: VideoConfig) -> int | None:
    """The fewest frames ``cfg.model`` takes (None: not even :data:`MAX_FRAMES`), by bisection over
    passes of empty clips of :data:`PROBE_SIDE` pixels, each through a network built for that many."""

    def passes(t: int) -> bool:
        return _pass_fails(build_model(replace(cfg, frames=t, stride=1)), t, PROBE_SIDE) is None

    if not passes(MAX_FRAMES):
        return None
    low, high = 0, MAX_FRAMES  # fails at low (0 frames: no clip), passes at high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if passes(mid) else (mid, high)
    return high


def _pass_fails(model, frames: int, size: int) -> RuntimeError | None:
    """The error of ``model``'s pass over an empty clip of ``frames`` frames of ``size`` x ``size``
    (in eval mode, its mode restored after); None where it passes."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, frames, 1, size, size))
    except RuntimeError as exc:
        return exc
    finally:
        model.train()
    return None

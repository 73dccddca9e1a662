"""The frame-prediction recipe ``cnnkit video-predict train`` runs, through the one engine."""

from __future__ import annotations

from pathlib import Path

from cnnkit.engine.config import use_threads
from cnnkit.engine.distributed import launched
from cnnkit.engine.runfolder import SPLIT_FILE, atomic_write_bytes, json_text, read_split
from cnnkit.errors import CnnkitError
from cnnkit.tasks.video_predict.config import PredictConfig
from cnnkit.tasks.video_predict.data import load_splits, split_names
from cnnkit.tasks.video_predict.evaluate import evaluate
from cnnkit.tasks.video_predict.load import build_model
from cnnkit.tasks.video_predict.task import PredictTask


def train(
    cfg: PredictConfig,
    out=None,
    resume: bool = False,
    quiet: bool = False,
    device: str | None = None,
    max_batches: int | None = None,
    on_epoch_end=None,
):
    """Train a frame predictor by ``cfg`` into the run folder ``out``: what ``cnnkit video-predict train`` runs.

    Moving MNIST training clips are new every epoch; validation clips come from held-out training
    digits (a folder: 10% of its clips); the final model is scored once on the test clips. A folder
    run keeps the names of each part's clips in ``split.json``, which ``resume`` and eval read, so
    clips added to the folder later never enter its validation or test part.

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
        on the test clips (MSE, MAE, SSIM and their per-step lists).

    Raises:
        CnnkitError: a bad setting, data that cannot be found or read, a diverging loss, or nothing
            to resume in ``out``.

    Example:
        >>> result = train(PredictConfig(epochs=5), "runs/predict")     # doctest: +SKIP
        >>> result.test["mse"]                                          # doctest: +SKIP
    """

    from cnnkit.engine import Data, fit_run, single_phase_plan

    use_threads(cfg.threads)
    folder = cfg.data != "moving_mnist"
    own = read_split(out, ("train", "val", "test")) if resume and folder and out is not None else None
    train_set, val_set, test_set = load_splits(cfg, own)  # on resume: the run's own clips
    if cfg.data != "moving_mnist":  # the folder's clips, every split's, checked before any training
        train_set.clips.check()
    if len(train_set) < cfg.batch_size:
        raise CnnkitError(
            f"{len(train_set)} training clips are fewer than --batch-size {cfg.batch_size}: "
            f"use --batch-size {len(train_set)} or less"
        )
    first = train_set[0][0] if cfg.data == "moving_mnist" else train_set[0]  # (T, H, W) or (T, C, H, W)
    channels = 1 if cfg.data == "moving_mnist" else first.shape[1]
    model = build_model(cfg, tuple(first.shape[-2:]), channels)
    _check_size(model, cfg)
    task = PredictTask(
        cfg.batch_size, cfg.frames, max_batches=max_batches, info={"config": cfg.to_dict(), "data": cfg.data}
    )

    plan = single_phase_plan(cfg, lambda m: m.net)
    split = split_names((train_set, val_set, test_set)) if folder else None

    def epoch_end(epoch: int, row: dict) -> None:  # split.json beside the engine's files, once it has written them
        if split is not None and out is not None and launched()[0] == 0 and not (Path(out) / SPLIT_FILE).is_file():
            atomic_write_bytes(Path(out) / SPLIT_FILE, json_text(split, indent=1).encode())
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    result = fit_run(
        task,
        model,
        Data(train_set, val_set),
        plan,
        cfg,
        out,
        command="cnnkit video-predict train",
        resume=resume,
        quiet=quiet,
        device=device,
        on_epoch_end=epoch_end,
    )
    result.test = evaluate(result.model, test_set, cfg.frames)
    return result


def _check_size(model, cfg: PredictConfig) -> None:
    """The frame size checked before any training: validation and test score SSIM over an 11x11
    window, and the network's strides must halve the sides and double them back; either is one line
    naming ``--size``, not a traceback in the first batch or an error after the first epoch."""
    from cnnkit.metrics.video import SSIM_WINDOW

    h, w = model.size
    factor = getattr(model.net, "factor", 1)
    if min(h, w) < SSIM_WINDOW or h % factor or w % factor:
        fits = max(-(-SSIM_WINDOW // factor) * factor, h - h % factor)
        raise CnnkitError(
            f"frames of {h}x{w} (--size {cfg.size}) cannot be predicted and scored: SSIM needs at least "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} and --model {cfg.model} sides that are multiples of {factor}; "
            f"give --size {fits}"
        )

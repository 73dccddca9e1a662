"""The segmentation recipe ``cnnkit segment train`` runs, through the one engine."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.layers import keep_depthwise
from cnnkit.tasks.segment.config import SegmentConfig, encoder_weights, stored_settings
from cnnkit.tasks.segment.data import PARTS, load_splits
from cnnkit.tasks.segment.evaluate import evaluate
from cnnkit.tasks.segment.load import build_model
from cnnkit.tasks.segment.predict import Segmenter
from cnnkit.tasks.segment.task import SegmentTask


def train(cfg: SegmentConfig, out=None, resume: bool = False, quiet: bool = False, device: str | None = None):
    """Train a segmenter by ``cfg`` into the run folder ``out``: what ``cnnkit segment train`` runs.

    The encoder's batch norms and first layers can stay frozen and its learning rate be a fraction
    of the decoder's (the data's defaults do so for a pretrained encoder); the split is written to
    ``out/split.json`` beside the model (train, the validation part carved from it, test; a VOC
    folder's official lists where it has them, :func:`~cnnkit.data.segmentation.voc_split`); every
    epoch's validation runs on the validation part, and the final model is scored once on the test
    split with its test-time procedure, at the photos' own size (as ``cnnkit segment predict`` answers).

    Args:
        cfg: the settings; None fields take the data's defaults (:meth:`SegmentConfig.resolved`).
        out: the run folder; None writes nothing.
        resume: continue the run in ``out`` exactly.
        quiet: no summary, progress bar or epoch lines.
        device: ``cpu`` | ``cuda`` (default: ``cfg.device``).

    Returns:
        The engine's :class:`~cnnkit.engine.FitResult`, with ``.test``: the final model's metrics
        on the test split (as :func:`evaluate` gives them).

    Raises:
        CnnkitError: a bad setting, data that cannot be found or read, ``--freeze-to`` on an
            encoder without a stem, a diverging loss, or nothing to resume in ``out``.

    Example:
        >>> result = train(SegmentConfig(data="pennfudan"), "runs/seg")   # doctest: +SKIP
        >>> result.test["mIoU"]                                           # doctest: +SKIP
    """
    from pathlib import Path

    from cnnkit.data.segmentation import segmentation_digest
    from cnnkit.engine import Data, Phase, Plan, Setup, fit_run
    from cnnkit.engine.config import use_threads
    from cnnkit.engine.distributed import launched
    from cnnkit.engine.optim import lr_at, make_optimizer
    from cnnkit.engine.runfolder import (
        SPLIT_FILE,
        atomic_write_bytes,
        check_resumed_data,
        json_text,
        run_classes,
        run_photos,
    )
    from cnnkit.models.segmentation import check_fcn_paper
    from cnnkit.tasks.detect.data import photo_files
    from cnnkit.tasks.segment.predict import scales

    cfg = cfg.resolved()
    for key in ("epochs", "batch_size", "crop"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise CnnkitError(f"--{key.replace('_', '-')} must be a positive integer. Received: {getattr(cfg, key)}")
    if cfg.val_every < 0:
        raise CnnkitError(
            f"--val-every must be an integer >= 0 (0: no validation while training). Received: {cfg.val_every}"
        )
    scales(cfg.test_scale)  # a bad --test-scale fails before any data is read
    for key in ("jitter", "dice", "lovasz", "encoder_lr"):  # weights and fractions: a negative one trains nonsense
        v = getattr(cfg, key)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf):
            raise CnnkitError(f"--{key.replace('_', '-')} must be a finite number >= 0. Received: {v!r}")
    if cfg.keep_depthwise and (encoder_weights(cfg.weights) is None or cfg.model == "unet"):
        raise CnnkitError(
            "--keep-depthwise keeps a pretrained encoder's depthwise filters: it needs a zoo encoder with "
            "--weights imagenet; leave it out to train from scratch"
        )
    if cfg.fcn_paper:  # before any data is read
        check_fcn_paper(cfg.arch, cfg.model)
    if cfg.output_stride != 16 and cfg.arch != "deeplabv3":
        raise CnnkitError(
            f"--output-stride sets DeepLab's output stride; the {cfg.arch} decoder has none: leave it out or "
            "add --arch deeplabv3"
        )
    lo, hi = (float(v) for v in cfg.train_scale)
    if not 0 < lo <= hi <= 4:  # NaN fails too
        raise CnnkitError(f"--train-scale must be two factors 0 < LO <= HI <= 4. Received: {tuple(cfg.train_scale)}")
    use_threads(cfg.threads)
    resumed = run_photos(out, cfg.data) if resume and out is not None else None
    # on resume: the run's own photos (those of its split alone decoded) and classes
    classes = run_classes(out) if resumed is not None else None
    train_set, val_set, test_set, split = load_splits(cfg, split=resumed, classes=classes)
    parts = zip(PARTS, (train_set, val_set, test_set)) if cfg.data != "digits" else ()  # scenes: none recorded
    # recorded: what --resume and eval check the photos by
    files = photo_files(cfg.data, {k: segmentation_digest(s, cfg.max_side) for k, s in parts if s is not None})
    if resume:  # the photos of each part as the run recorded them, else --resume would mix two data sets
        check_resumed_data(cfg.data, files, out, "photos")
    if "source" in split and not quiet and launched()[0] == 0:
        print(f"split: {split['source']}")
    model = build_model(cfg, train_set)
    side = cfg.crop or cfg.canvas or 256  # digit scenes train whole, at the canvas size
    _check_batch_norm(cfg, side, model.size_multiple, cfg.batch_size // launched()[1])
    task = SegmentTask(
        cfg.batch_size,
        side,
        scale=tuple(cfg.train_scale),
        jitter=cfg.jitter,
        boundary_d=cfg.boundary_d,
        channels_last=cfg.channels_last,
        dice=cfg.dice,
        lovasz=cfg.lovasz,
        val_name="val",
        info={"config": cfg.to_dict(), "data": cfg.data, "data_files": files},
    )

    stem = []
    if cfg.freeze_to:
        if not hasattr(model.net.encoder, "stem"):
            raise CnnkitError("--freeze-to freezes the first layers of a zoo backbone; U-Net's own encoder has none")
        stem = model.net.encoder.stem(cfg.freeze_to)
    for layer in stem:  # before the summary, whose "Trainable" column then shows it
        layer.requires_grad_(False)
    if cfg.keep_depthwise:
        keep_depthwise(model.net.encoder)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    def setup(m: Segmenter) -> Setup:
        opt = make_optimizer(m.net, cfg)
        encoder = {id(p) for p in m.net.encoder.parameters()}
        if cfg.encoder_lr != 1:  # the encoder's parameters in groups of their own, at a fraction of the lr
            groups = []
            for g in opt.param_groups:
                for mine, scale in ((False, 1.0), (True, cfg.encoder_lr)):
                    ps = [p for p in g["params"] if (id(p) in encoder) == mine]
                    if ps:
                        groups.append({**g, "params": ps, "lr_scale": scale})
            opt.param_groups.clear()
            for g in groups:
                opt.add_param_group(g)
        frozen = (
            [b for b in m.net.encoder.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
            if cfg.freeze_bn
            else []
        )
        return Setup(opt, schedule=lambda step, total: lr_at(step, total, cfg), frozen=frozen + stem)

    plan = Plan([Phase(cfg.epochs, setup)], seed=cfg.seed, ema=cfg.ema, val_every=cfg.val_every)

    def write_split(epoch: int, row: dict) -> None:  # beside the engine's files, once it has written them
        if launched()[0] == 0 and out is not None and not (Path(out) / SPLIT_FILE).is_file():
            atomic_write_bytes(Path(out) / SPLIT_FILE, json_text(split, indent=1).encode())

    try:
        result = fit_run(
            task,
            model,
            Data(train_set, val_set),
            plan,
            cfg,
            out,
            command="cnnkit segment train",
            resume=resume,
            quiet=quiet,
            device=device,
            on_epoch_end=write_split,
            read_settings=stored_settings,  # a run of an earlier version resumes with the settings it trained by
        )
    finally:
        for layer in stem:
            layer.requires_grad_(True)
    result.test = evaluate(result.model, test_set, cfg.boundary_d, max_side=cfg.max_side)  # at the photos' own size
    return result


def _check_batch_norm(cfg: SegmentConfig, side: int, stride: int, per_step: int) -> None:
    """Training batch norm needs two values per channel: one image a step is refused where a trained
    batch norm sees a 1x1 map (DeepLab-v3's image pooling always; the encoder's deepest map, unless
    ``--freeze-bn``, on a crop of at most its stride: the Segmenter pads the crop to a multiple of
    it, so a decoder's maps are 2x2 or more), which PyTorch would stop in the first step with a traceback."""
    if per_step >= 2:
        return
    if cfg.arch == "deeplabv3":
        raise CnnkitError(
            f"DeepLab-v3's image pooling gives its batch norm one value per channel per image: train with "
            f"--batch-size 2 or more (per process). Received: --batch-size {cfg.batch_size}"
        )
    if cfg.freeze_bn:  # the encoder's batch norms keep their statistics; the decoders' see 2x2 maps or more
        return
    if -(-side // stride) == 1:
        raise CnnkitError(
            f"a {side}-px crop is 1x1 px at stride {stride}, one value per channel for a trained batch norm "
            f"with one image a step: use --batch-size 2 or more, or --crop above {stride}. Received: "
            f"--batch-size {cfg.batch_size}"
        )

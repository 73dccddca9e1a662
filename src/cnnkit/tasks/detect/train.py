"""The detection recipe ``cnnkit detect train`` runs, through the one engine."""

from __future__ import annotations

import torch

from cnnkit.engine import Data, fit_run
from cnnkit.engine.config import use_threads
from cnnkit.errors import CnnkitError
from cnnkit.layers import keep_depthwise
from cnnkit.metrics.detection import require_pycocotools
from cnnkit.tasks.detect.config import DetectConfig, config_from_dict, validate
from cnnkit.tasks.detect.data import _to, load_split_data, photo_files
from cnnkit.tasks.detect.load import new_detector
from cnnkit.tasks.detect.task import DetectTask


def train(cfg: DetectConfig, out, resume: bool = False, quiet: bool = False):
    """Train a detector by ``cfg`` into the run folder ``out``: what ``cnnkit detect train`` runs.

    The data's split is written to ``out/split.json`` (and reused on resume); the detector (an
    anchor-free FCOS-style head on a backbone's pyramid) trains through :func:`cnnkit.engine.fit`,
    validated on a part carved from the training images, and the final model is scored once on the
    test split.

    Args:
        cfg: the settings; None fields take the data's defaults (:meth:`DetectConfig.resolved`).
        out: the run folder.
        resume: continue the run in ``out`` exactly; the run's own config replaces ``cfg``.
        quiet: no summary, progress bar or epoch lines.

    Returns:
        (the engine's :class:`~cnnkit.engine.FitResult`, the final test metrics ``{"AP", "AP50",
        "AP75", "AR100", "VOC_AP50"}``).

    Raises:
        CnnkitError: pycocotools not installed (the ``detect`` extra), a bad setting, data that
            cannot be found or read, a batch larger than the training set, a diverging loss, or
            nothing to resume in ``out``.

    Example:
        >>> run, test = train(DetectConfig(data="pennfudan", epochs=40), "runs/pennfudan")  # doctest: +SKIP
        >>> test["AP50"]                                                                  # doctest: +SKIP
    """
    from pathlib import Path

    from cnnkit.console import console as make_console
    from cnnkit.engine import Phase, Plan, Setup
    from cnnkit.engine.distributed import distributed
    from cnnkit.engine.optim import lr_at, make_optimizer

    require_pycocotools()  # validation scores COCO AP: say so before any data is read or written
    out = Path(out)
    cfg = run_config(cfg, out, resume, config_from_dict)
    with distributed(cfg.device) as d:
        train_set, val_set, test_set, split = run_data(cfg, out, resume, d, load_split_data, quiet)
        torch.manual_seed(cfg.seed)
        channels = train_set.images.shape[1]
        model, info = new_detector(
            cfg.model,
            train_set.classes,
            channels,
            cfg.test_side(),  # the side predict and export letterbox to
            cfg.weights,
            out_strides=cfg.strides,
            width=cfg.width,
            head_convs=cfg.head_convs,
            separate_towers=cfg.separate_towers,
        )
        frozen = model.freeze_backbone(cfg.freeze_to) if cfg.freeze_to > 0 else []  # BN kept in eval mode
        if cfg.keep_depthwise:
            keep_depthwise(model.features)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        info["config"] = cfg.to_dict()
        task = DetectTask(
            train_set.classes,
            cfg.batch_size,
            info=info,
            val_name="val",
            decode_args={"tta": cfg.tta} if cfg.tta == "flip" else {},
            fill=0.5 if channels == 3 else 0.0,
            flip=0.5 if cfg.data != "digits" else 0.0,
            scale=(0.7, 1.3) if cfg.data != "digits" else None,  # a cropped digit is another digit
            channels_last=cfg.channels_last,
            cls_loss=cfg.cls_loss,
            box_weight=cfg.box_weight,
        )
        plan = Plan(
            [
                Phase(
                    cfg.epochs,
                    lambda m: Setup(
                        make_optimizer(m, cfg), frozen=frozen, schedule=lambda step, total: lr_at(step, total, cfg)
                    ),
                )
            ],
            seed=cfg.seed,
            ema=cfg.ema,
            val_every=cfg.val_every,
        )
        run, final = fit_and_test(
            task, model, train_set, val_set, test_set, plan, cfg, out, resume, quiet, d, "detect", split
        )
        make_console(quiet=quiet or not d.main).print(
            f"done: test AP {final['AP']:.3f}, AP50 {final['AP50']:.3f}, AP75 {final['AP75']:.3f} in "
            f"{run.seconds:.1f} s -> {out}  (`cnnkit detect eval {out}`)"
        )
        return run, final


def fit_and_test(
    task, model, train_set, val_set, test_set, plan, cfg, out, resume: bool, quiet: bool, d, kind: str, split: dict
):
    """``engine.fit`` on the run's split (the validation part, carved from the training images,
    validates every ``cfg.val_every`` epochs), then the trained model scored once on the test split:
    ``(FitResult, metrics)``. Shared by ``cnnkit detect train`` and ``cnnkit instance train`` (``kind``).
    ``split`` (from :func:`run_data`) is written to ``out/split.json`` first: only once the model is
    built, so that a refused setting (weights, strides, model) leaves no run folder behind."""
    if d.main:
        from cnnkit.engine.runfolder import SPLIT_FILE, atomic_write_bytes, json_text
        from cnnkit.errors import output_folder

        output_folder(out, "--out")  # a file of that name, or no permission: one line, not a traceback
        atomic_write_bytes(out / SPLIT_FILE, json_text(split, indent=1).encode())
    task.info["data_files"] = parts_files(cfg, train_set, val_set, test_set)  # what --resume and eval check by
    test_set = _to(test_set, d.device)
    run = fit_run(
        task,
        model,
        Data(_to(train_set, d.device), _to(val_set, d.device)),
        plan,
        cfg,
        out,
        command=f"cnnkit {kind} train",
        resume=resume,
        quiet=quiet,
        dist=d,
    )
    return run, task.evaluate(run.model, test_set)


def run_config(cfg, out, resume: bool, from_dict, task: str = "detect"):
    """The config a run trains with, resolved and validated: on ``resume`` the run's own wins."""
    from cnnkit.engine.runfolder import check_new_run, resumed_config, with_free_settings

    check_new_run(out, resume)  # before split.json is written: a refused run leaves the folder as it was
    if resume:  # where, how fast and how long the run computes may change; what it computes may not
        cfg = with_free_settings(from_dict(resumed_config(out, task)), cfg)
    return validate(cfg.resolved())


def run_data(cfg, out, resume: bool, d, load, quiet: bool = False):
    """Threads, then ``load(cfg, split, classes=...)``'s train, validation and test sets on the run's
    split (the one in ``out/split.json`` on resume, read with the run's classes,
    :func:`~cnnkit.engine.runfolder.run_classes`: the photos of its split alone are decoded, and data
    whose classes are no longer the run's is refused), and that split, which :func:`fit_and_test`
    writes to the run. Where the split came from a VOC folder's official lists, a line ``split: ...``
    says which (unless ``quiet``). Shared by ``cnnkit detect train`` and ``cnnkit instance train``."""
    from cnnkit.engine.runfolder import check_resumed_data, run_classes, run_photos

    use_threads(cfg.threads)
    split = run_photos(out, cfg.data) if resume else None  # on resume: the run's own photos
    # the resumed run scores its test split at the end: every part of the split is read
    classes = run_classes(out) if split is not None else None
    train_set, val_set, test_set, split = load(cfg, split, classes=classes)
    if resume:  # the photos of each part as the run recorded them, else --resume would mix two data sets
        check_resumed_data(cfg.data, parts_files(cfg, train_set, val_set, test_set), out, "photos")
    if len(train_set) < cfg.batch_size:
        raise CnnkitError(
            f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_set)} images): "
            f"use --batch-size {len(train_set)} or less"
        )
    if not bool((train_set.labels >= 0).any()):  # before the run folder is written: nothing to learn from
        raise CnnkitError(
            f"{cfg.data} holds no (non-crowd) boxes to learn from: none of its {len(train_set)} training images "
            "has an object labelled; add boxes (COCO annotations without iscrowd, or YOLO label lines)"
        )
    if "source" in split and not quiet and d.main:
        print(f"split: {split['source']}")
    return train_set, val_set, test_set, split


def parts_files(cfg, train_set, val_set, test_set) -> dict:
    """What a detection or instance run records of the parts it read (``data_files``,
    :func:`~cnnkit.tasks.detect.data.photo_files`): each part's photos and annotations at their own size."""
    sets = {"train": train_set, "val": val_set, "test": test_set}
    return photo_files(cfg.data, {k: s.sha256 if s is not None else None for k, s in sets.items()})

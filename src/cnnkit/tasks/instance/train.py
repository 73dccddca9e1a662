"""The instance recipe ``cnnkit instance train`` runs, through the one engine."""

from __future__ import annotations

import torch

from cnnkit.layers import keep_depthwise
from cnnkit.metrics.detection import require_pycocotools
from cnnkit.models.instance import MaskDetector
from cnnkit.tasks.instance.config import InstanceConfig, config_from_dict
from cnnkit.tasks.instance.data import load_instance_data
from cnnkit.tasks.instance.load import new_mask_detector
from cnnkit.tasks.instance.task import InstanceTask


def train(cfg: InstanceConfig, out, resume: bool = False, quiet: bool = False):
    """Train a mask detector by ``cfg`` into the run folder ``out``: what ``cnnkit instance train`` runs.

    A detector with a Mask R-CNN-style mask head on RoIAligned features trains through
    :func:`cnnkit.engine.fit`; the split is written to ``out/split.json``; the final model is scored
    on the test split.

    Args:
        cfg: the settings; None fields take the data's defaults (:meth:`InstanceConfig.resolved`).
        out: the run folder.
        resume: continue the run in ``out`` exactly; the run's own config replaces ``cfg``.
        quiet: no summary, progress bar or epoch lines.

    Returns:
        (the engine's :class:`~cnnkit.engine.FitResult`, the final test metrics ``{"mask_AP",
        "mask_AP50", "mask_AP75", "mask_AR100", "box_AP", "box_AP50"}``).

    Raises:
        CnnkitError: pycocotools not installed (the ``detect`` extra), a bad setting, data that
            cannot be found or read, a diverging loss, or nothing to resume in ``out``.

    Example:
        >>> run, test = train(InstanceConfig(data="pennfudan"), "runs/inst")   # doctest: +SKIP
        >>> test["mask_AP"]                                                     # doctest: +SKIP
    """
    from pathlib import Path

    from cnnkit.console import console as make_console
    from cnnkit.engine import Phase, Plan, Setup
    from cnnkit.engine.config import check_values
    from cnnkit.engine.distributed import distributed
    from cnnkit.engine.optim import lr_at, make_optimizer
    from cnnkit.tasks.detect.train import fit_and_test, run_config, run_data

    require_pycocotools()  # validation scores COCO AP: say so before any data is read or written
    out = Path(out)
    cfg = run_config(cfg, out, resume, config_from_dict, "instance")
    # the bounds the command line checks, for a config built in Python: the first bad one named
    check_values(
        type(cfg), {k: getattr(cfg, k) for k in ("roi_jitter", "freeze_to", "mask_convs", "mask_width", "mask_weight")}
    )
    with distributed(cfg.device) as d:
        train_set, val_set, test_set, split = run_data(cfg, out, resume, d, load_instance_data, quiet)
        torch.manual_seed(cfg.seed)
        channels = train_set.images.shape[1]
        model, info = new_mask_detector(cfg, train_set.classes, channels)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        info["config"] = cfg.to_dict()
        task = InstanceTask(
            train_set.classes,
            cfg.batch_size,
            info=info,
            val_name="val",
            decode_args={"tta": cfg.tta} if cfg.tta == "flip" else {},
            fill=0.5 if channels == 3 else 0.0,
            flip=0.5 if cfg.data != "digits" else 0.0,
            roi_jitter=cfg.roi_jitter,
            mask_weight=cfg.mask_weight,
            cls_loss=cfg.cls_loss,
            box_weight=cfg.box_weight,
            channels_last=cfg.channels_last,
        )

        def begin(m: MaskDetector) -> Setup:
            frozen = m.detector.features.up_to_stride(cfg.freeze_to) if cfg.weights else []
            for module in frozen:
                module.requires_grad_(False)
            if cfg.keep_depthwise:
                keep_depthwise(m.detector.features)
            return Setup(make_optimizer(m, cfg), schedule=lambda step, total: lr_at(step, total, cfg), frozen=frozen)

        plan = Plan([Phase(cfg.epochs, begin)], seed=cfg.seed, ema=cfg.ema, val_every=cfg.val_every)
        run, final = fit_and_test(
            task, model, train_set, val_set, test_set, plan, cfg, out, resume, quiet, d, "instance", split
        )
        make_console(quiet=quiet or not d.main).print(
            f"done: test mask AP {final['mask_AP']:.3f} (AP50 {final['mask_AP50']:.3f}), box AP {final['box_AP']:.3f} "
            f"in {run.seconds:.1f} s -> {out}  (`cnnkit instance eval {out}`)"
        )
        return run, final

"""COCO AP of a trained detection run on its test split."""

from __future__ import annotations

from dataclasses import replace

from cnnkit.errors import CnnkitError
from cnnkit.metrics.detection import coco_evaluate, require_pycocotools, voc_evaluate
from cnnkit.tasks.detect.config import config_from_dict, validate
from cnnkit.tasks.detect.data import load_split_data
from cnnkit.tasks.detect.load import load_detector
from cnnkit.tasks.detect.predict import predict_set
from cnnkit.tasks.detect.task import DetectTask


def evaluate_run(run, data_dir: str | None = None, split: str = "test", test_scale: float | None = None) -> dict:
    """COCO AP of a detection run on its test split: what ``cnnkit detect eval`` reports.

    The split is the run's own (its ``split.json``), read with the run's stored settings.

    Args:
        run: a run folder or its ``model.safetensors``.
        data_dir: the folder holding the built-in data sets (default: the run's).
        split: ``"test"`` or ``"val"`` (the validation photos carved from the training ones).
        test_scale: instead of the run's: images letterboxed to its image size times this.

    Returns:
        ``{"AP", "AP50", "AP75", "AR100", "VOC_AP50", "per_class_AP", "images", "data", "split"}``.

    Raises:
        CnnkitError: pycocotools not installed (the ``detect`` extra), not a detection run, a
            damaged checkpoint, data that cannot be found, an unknown split or a bad test scale.

    Warns:
        CnnkitWarning: the part scored has other photos or boxes than the run recorded of it (its
            sha256, ``data_files``): it is scored as it is.

    Example:
        >>> evaluate_run("runs/pennfudan")["AP"]         # doctest: +SKIP
    """
    from cnnkit.engine.runfolder import resolve, run_photos, warn_if_changed

    require_pycocotools()  # before the model, the data and the predictions
    model = load_detector(run)
    cfg = eval_config(config_from_dict(model.info["config"]), data_dir, split, test_scale)
    names = run_photos(resolve(run), cfg.data)  # the run's own photos
    # the scored part's photos alone, their labels indexing the run's classes
    _, val_set, test_set, _ = load_split_data(cfg, names, parts=(split,), classes=model.info["classes"])
    data = val_set if split == "val" else test_set
    warn_if_changed(cfg.data, data.sha256, model.info, resolve(run).parent, split, "photos")  # changed since recorded
    task = DetectTask(model.info["classes"], info=model.info, decode_args=model.info.get("decode", {}))
    predictions = predict_set(model, data, task.eval_batch_size, **task.decode_args)
    targets = data.targets()
    m = coco_evaluate(predictions, targets, classes=data.classes)
    voc = voc_evaluate(predictions, targets, len(data.classes))
    return {
        "AP": m["AP"],
        "AP50": m["AP50"],
        "AP75": m["AP75"],
        "AR100": m["AR100"],
        "images": m["images"],
        "VOC_AP50": voc["mAP"],
        "per_class_AP": m["per_class_AP"],
        "data": cfg.data,
        "split": split,
    }


def eval_config(cfg, data_dir: str | None, split: str, test_scale: float | None):
    """A stored run config as ``eval`` reads it: the whole split (no ``subset``), another data folder,
    another test scale (checked); ``split`` must be ``"val"`` or ``"test"``. Shared by the detection
    and instance runs."""
    if split not in ("val", "test"):
        raise CnnkitError(f"--split must be val or test; received {split!r}")
    cfg = replace(cfg, subset=0)
    if data_dir and cfg.data not in ("pennfudan", "digits"):  # a COCO file, YOLO or VOC folder is found by its path
        raise CnnkitError(
            f"--data-dir is where the built-in data sets (pennfudan, digits) live; this run trained on {cfg.data}, "
            "which it reads from that path: leave --data-dir out (eval scores the run's own test photos)"
        )
    if data_dir:
        cfg = replace(cfg, data_dir=data_dir)
    if test_scale is not None:
        cfg = replace(cfg, test_scale=test_scale)
        validate(cfg)
    return cfg

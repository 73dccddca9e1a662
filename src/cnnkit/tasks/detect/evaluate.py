"""COCO AP of a trained detection run on its test split."""

from __future__ import annotations

from cnnkit.metrics.detection import coco_evaluate, voc_evaluate
from cnnkit.tasks.detect.config import config_from_dict, replace_subset
from cnnkit.tasks.detect.data import load_split_data
from cnnkit.tasks.detect.load import load_detector
from cnnkit.tasks.detect.predict import predict_set
from cnnkit.tasks.detect.task import DetectTask


def evaluate_run(run, data_dir: str | None = None) -> dict:
    """COCO AP of a detection run on its test split: what ``cnnkit detect eval`` reports.

    The test split is the run's own (its ``split.json``), read with the run's stored settings.

    Args:
        run: a run folder or its ``model.safetensors``.
        data_dir: the folder holding the built-in data sets (default: the run's).

    Returns:
        ``{"AP", "AP50", "AP75", "AR100", "VOC_AP50", "per_class_AP", "images", "data", "split"}``.

    Raises:
        CnnkitError: not a detection run, a damaged checkpoint, or data that cannot be found.

    Example:
        >>> evaluate_run("runs/pennfudan")["AP"]         # doctest: +SKIP
    """
    import json

    from cnnkit.engine.runfolder import resolve

    model = load_detector(run)
    cfg = config_from_dict(model.info["config"])
    if data_dir:
        from dataclasses import replace

        cfg = replace(cfg, data_dir=data_dir)
    split_file = resolve(run).parent / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() and cfg.data != "digits" else None
    _, _, test_set, _ = load_split_data(replace_subset(cfg), split)
    task = DetectTask(model.info["classes"], info=model.info, decode_args=model.info.get("decode", {}))
    predictions = predict_set(model, test_set, task.eval_batch_size, **task.decode_args)
    targets = test_set.targets()
    m = coco_evaluate(predictions, targets, classes=test_set.classes)
    voc = voc_evaluate(predictions, targets, len(test_set.classes))
    return {
        "AP": m["AP"],
        "AP50": m["AP50"],
        "AP75": m["AP75"],
        "AR100": m["AR100"],
        "images": m["images"],
        "VOC_AP50": voc["mAP"],
        "per_class_AP": m["per_class_AP"],
        "data": cfg.data,
        "split": "test",
    }

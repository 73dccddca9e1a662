"""Box and mask AP of a trained instance run on its test split."""

from __future__ import annotations

from cnnkit.metrics.detection import require_pycocotools
from cnnkit.tasks.detect.evaluate import eval_config
from cnnkit.tasks.instance.config import config_from_dict
from cnnkit.tasks.instance.data import load_instance_data
from cnnkit.tasks.instance.load import load_mask_detector
from cnnkit.tasks.instance.task import InstanceTask


def evaluate_run(run, data_dir: str | None = None, split: str = "test", test_scale: float | None = None) -> dict:
    """Mask and box AP of an instance run on its test split: what ``cnnkit instance eval`` reports.

    Args:
        run: a run folder or its ``model.safetensors``.
        data_dir: the folder holding the built-in data sets (default: the run's).
        split: ``"test"`` or ``"val"`` (the validation photos carved from the training ones).
        test_scale: instead of the run's: images letterboxed to its image size times this.

    Returns:
        ``{"mask_AP", "mask_AP50", "mask_AP75", "mask_AR100", "box_AP", "box_AP50", "images",
        "data", "split"}``.

    Raises:
        CnnkitError: pycocotools not installed (the ``detect`` extra), not an instance run, a
            damaged checkpoint, data that cannot be found, an unknown split or a bad test scale.

    Warns:
        CnnkitWarning: the part scored has other photos or masks than the run recorded of it (its
            sha256, ``data_files``): it is scored as it is.

    Example:
        >>> evaluate_run("runs/inst")["mask_AP"]         # doctest: +SKIP
    """
    from cnnkit.engine.runfolder import resolve, run_photos, warn_if_changed

    require_pycocotools()  # before the model, the data and the predictions
    model = load_mask_detector(run)
    cfg = eval_config(config_from_dict(model.info["config"]), data_dir, split, test_scale)
    names = run_photos(resolve(run), cfg.data)  # the run's own photos
    # the scored part's photos alone, a VOC folder's masks checked against the run's classes
    _, val_set, test_set, _ = load_instance_data(cfg, names, parts=(split,), classes=model.info["classes"])
    data = val_set if split == "val" else test_set
    warn_if_changed(cfg.data, data.sha256, model.info, resolve(run).parent, split, "photos")  # changed since recorded
    task = InstanceTask(model.info["classes"], info=model.info, decode_args=model.info.get("decode", {}))
    m = task.evaluate(model, data)
    return {**m, "images": len(data), "data": cfg.data, "split": split}

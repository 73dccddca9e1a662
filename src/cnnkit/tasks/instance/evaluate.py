"""Box and mask AP of a trained instance run on its test split."""

from __future__ import annotations

from dataclasses import replace

from cnnkit.tasks.instance.config import config_from_dict
from cnnkit.tasks.instance.data import load_instance_data
from cnnkit.tasks.instance.load import load_mask_detector
from cnnkit.tasks.instance.task import InstanceTask


def evaluate_run(run, data_dir: str | None = None) -> dict:
    """``cnnkit instance eval``: the run's model on its test split -> {"mask_AP", "mask_AP50", ..., "box_AP"}."""
    import json

    from cnnkit.engine.runfolder import resolve

    model = load_mask_detector(run)
    cfg = config_from_dict(model.info["config"])
    cfg = replace(cfg, subset=0, data_dir=data_dir or cfg.data_dir)
    split_file = resolve(run).parent / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() and cfg.data != "digits" else None
    _, test_set, _ = load_instance_data(cfg, split)
    task = InstanceTask(model.info["classes"], info=model.info, decode_args=model.info.get("decode", {}))
    m = task.evaluate(model, test_set)
    return {**m, "images": len(test_set), "data": cfg.data, "split": "test"}

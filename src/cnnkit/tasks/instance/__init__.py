"""instance: instance segmentation -- a box, a class and a mask for every object.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.evaluate import evaluate_run
    from cnnkit.tasks.instance.load import load_mask_detector
    from cnnkit.tasks.instance.predict import predict_files, predict_instances
    from cnnkit.tasks.instance.task import InstanceTask
    from cnnkit.tasks.instance.train import train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["InstanceConfig"],
        "evaluate": ["evaluate_run"],
        "load": ["load_mask_detector"],
        "predict": ["predict_files", "predict_instances"],
        "task": ["InstanceTask"],
        "train": ["train"],
    },
)

__all__ = [
    "InstanceConfig",
    "InstanceTask",
    "evaluate_run",
    "load_mask_detector",
    "predict_files",
    "predict_instances",
    "train",
]

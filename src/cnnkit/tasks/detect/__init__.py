"""detect: object detection -- boxes and classes from an anchor-free detector on an image backbone.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import DetectionSet
    from cnnkit.tasks.detect.evaluate import evaluate_run
    from cnnkit.tasks.detect.load import load_detector
    from cnnkit.tasks.detect.predict import draw_detections, predict_images, predict_set
    from cnnkit.tasks.detect.task import DetectTask
    from cnnkit.tasks.detect.train import train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["DetectConfig"],
        "data": ["DetectionSet"],
        "evaluate": ["evaluate_run"],
        "load": ["load_detector"],
        "predict": ["draw_detections", "predict_images", "predict_set"],
        "task": ["DetectTask"],
        "train": ["train"],
    },
)

__all__ = [
    "DetectConfig",
    "DetectTask",
    "DetectionSet",
    "draw_detections",
    "evaluate_run",
    "load_detector",
    "predict_images",
    "predict_set",
    "train",
]

"""detect: object detection -- boxes and classes from an anchor-free detector on an image backbone.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from cnnkit.tasks.detect.config import DetectConfig
from cnnkit.tasks.detect.data import DetectionSet
from cnnkit.tasks.detect.evaluate import evaluate_run
from cnnkit.tasks.detect.load import load_detector
from cnnkit.tasks.detect.predict import draw_detections, predict_images, predict_set
from cnnkit.tasks.detect.task import DetectTask
from cnnkit.tasks.detect.train import train

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

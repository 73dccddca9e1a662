"""video: clip classification -- which digits appear in a Moving MNIST clip, from a 3-D CNN.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from cnnkit.tasks.video.config import VideoConfig
from cnnkit.tasks.video.evaluate import evaluate, evaluate_run
from cnnkit.tasks.video.load import load_video_classifier
from cnnkit.tasks.video.predict import VideoClassifier, frame_strip, heat_overlay, predict_clips
from cnnkit.tasks.video.task import VideoTask
from cnnkit.tasks.video.train import train

__all__ = [
    "VideoClassifier",
    "VideoConfig",
    "VideoTask",
    "evaluate",
    "evaluate_run",
    "frame_strip",
    "heat_overlay",
    "load_video_classifier",
    "predict_clips",
    "train",
]

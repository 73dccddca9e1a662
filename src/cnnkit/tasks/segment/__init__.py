"""segment: semantic segmentation -- a class for every pixel, from an encoder-decoder network.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from cnnkit.tasks.segment.config import SegmentConfig
from cnnkit.tasks.segment.evaluate import evaluate, evaluate_run
from cnnkit.tasks.segment.load import load_segmenter
from cnnkit.tasks.segment.predict import Segmenter, predict_image, predict_masks, write_prediction
from cnnkit.tasks.segment.task import SegmentTask
from cnnkit.tasks.segment.train import train

__all__ = [
    "SegmentConfig",
    "SegmentTask",
    "Segmenter",
    "evaluate",
    "evaluate_run",
    "load_segmenter",
    "predict_image",
    "predict_masks",
    "train",
    "write_prediction",
]

"""sequence: time-series classification with 1-D CNNs (FCN, ResNet, InceptionTime) on UCR-style files.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from cnnkit.tasks.sequence.config import SequenceConfig
from cnnkit.tasks.sequence.evaluate import evaluate, evaluate_run, predict_proba
from cnnkit.tasks.sequence.load import SeriesModel, load_sequence
from cnnkit.tasks.sequence.predict import predict_file
from cnnkit.tasks.sequence.task import SequenceTask
from cnnkit.tasks.sequence.train import SequenceResult, train

__all__ = [
    "SequenceConfig",
    "SequenceResult",
    "SequenceTask",
    "SeriesModel",
    "evaluate",
    "evaluate_run",
    "load_sequence",
    "predict_file",
    "predict_proba",
    "train",
]

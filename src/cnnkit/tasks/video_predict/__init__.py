"""video_predict: frame prediction -- the next 10 frames of a clip from its first 10 (SimVP).

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from cnnkit.tasks.video_predict.config import PredictConfig
from cnnkit.tasks.video_predict.evaluate import evaluate, evaluate_run
from cnnkit.tasks.video_predict.load import load_predictor
from cnnkit.tasks.video_predict.predict import FramePredictor, predict_frames, write_prediction
from cnnkit.tasks.video_predict.task import PredictTask
from cnnkit.tasks.video_predict.train import train

__all__ = [
    "FramePredictor",
    "PredictConfig",
    "PredictTask",
    "evaluate",
    "evaluate_run",
    "load_predictor",
    "predict_frames",
    "train",
    "write_prediction",
]

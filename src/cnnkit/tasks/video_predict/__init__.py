"""video_predict: frame prediction -- the next 10 frames of a clip from its first 10 (SimVP).

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.video_predict.config import PredictConfig
    from cnnkit.tasks.video_predict.evaluate import evaluate, evaluate_run
    from cnnkit.tasks.video_predict.load import load_predictor
    from cnnkit.tasks.video_predict.predict import FramePredictor, predict_frames, write_prediction
    from cnnkit.tasks.video_predict.task import PredictTask
    from cnnkit.tasks.video_predict.train import train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["PredictConfig"],
        "evaluate": ["evaluate", "evaluate_run"],
        "load": ["load_predictor"],
        "predict": ["FramePredictor", "predict_frames", "write_prediction"],
        "task": ["PredictTask"],
        "train": ["train"],
    },
)

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

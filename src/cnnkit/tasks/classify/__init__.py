"""classify: image classification -- train from scratch, fine-tune a pretrained network, evaluate, predict.

The files have the same roles in every task (config, task, train, evaluate, predict, load); classify
adds fine-tuning (``finetune``), dense heads turned into convolutions (``fcn``) and Keras import
(``convert``).
"""

from cnnkit.tasks.classify.config import TrainConfig, preset
from cnnkit.tasks.classify.convert import convert_keras
from cnnkit.tasks.classify.evaluate import Evaluation, evaluate, evaluate_run
from cnnkit.tasks.classify.fcn import convert_to_fcn, load_fcn
from cnnkit.tasks.classify.finetune import FinetuneConfig, finetune, run_finetune
from cnnkit.tasks.classify.load import load_classifier
from cnnkit.tasks.classify.predict import predict_files, predictor
from cnnkit.tasks.classify.task import ClassifyTask
from cnnkit.tasks.classify.train import TrainResult, train

__all__ = [
    "ClassifyTask",
    "Evaluation",
    "FinetuneConfig",
    "TrainConfig",
    "TrainResult",
    "convert_keras",
    "convert_to_fcn",
    "evaluate",
    "evaluate_run",
    "finetune",
    "load_classifier",
    "load_fcn",
    "predict_files",
    "predictor",
    "preset",
    "run_finetune",
    "train",
]

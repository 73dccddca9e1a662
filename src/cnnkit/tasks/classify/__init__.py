"""classify: image classification -- train from scratch, fine-tune a pretrained network, evaluate, predict.

The files have the same roles in every task (config, task, train, evaluate, predict, load); classify
adds fine-tuning (``finetune``), dense heads turned into convolutions (``fcn``), Keras import
(``convert``), what ``cnnkit explain`` explains (``explain``) and a run's figures (``plot``).
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.classify.config import FinetuneConfig, TrainConfig, preset
    from cnnkit.tasks.classify.convert import convert_keras
    from cnnkit.tasks.classify.evaluate import Evaluation, evaluate, evaluate_run
    from cnnkit.tasks.classify.fcn import convert_to_fcn, load_fcn
    from cnnkit.tasks.classify.finetune import finetune, run_finetune
    from cnnkit.tasks.classify.load import load_classifier
    from cnnkit.tasks.classify.predict import predict_files, predictor
    from cnnkit.tasks.classify.task import ClassifyTask
    from cnnkit.tasks.classify.train import TrainResult, train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["FinetuneConfig", "TrainConfig", "preset"],
        "convert": ["convert_keras"],
        "evaluate": ["Evaluation", "evaluate", "evaluate_run"],
        "fcn": ["convert_to_fcn", "load_fcn"],
        "finetune": ["finetune", "run_finetune"],
        "load": ["load_classifier"],
        "predict": ["predict_files", "predictor"],
        "task": ["ClassifyTask"],
        "train": ["TrainResult", "train"],
    },
)

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

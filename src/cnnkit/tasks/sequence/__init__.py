"""sequence: time-series classification with 1-D CNNs (FCN, ResNet, InceptionTime) on UCR-style files.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load);
``rocket`` fits MultiRocket, and ``explain`` draws a class activation map over a series.
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.sequence.config import SequenceConfig
    from cnnkit.tasks.sequence.evaluate import evaluate, evaluate_run, predict_proba
    from cnnkit.tasks.sequence.load import SeriesModel, load_sequence
    from cnnkit.tasks.sequence.predict import predict_file
    from cnnkit.tasks.sequence.task import SequenceTask
    from cnnkit.tasks.sequence.train import SequenceResult, train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["SequenceConfig"],
        "evaluate": ["evaluate", "evaluate_run", "predict_proba"],
        "load": ["SeriesModel", "load_sequence"],
        "predict": ["predict_file"],
        "task": ["SequenceTask"],
        "train": ["SequenceResult", "train"],
    },
)

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

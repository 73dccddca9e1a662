"""video: clip classification -- which digits appear in a Moving MNIST clip, from a 3-D CNN.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.video.config import VideoConfig
    from cnnkit.tasks.video.evaluate import evaluate, evaluate_run
    from cnnkit.tasks.video.load import load_video_classifier
    from cnnkit.tasks.video.predict import VideoClassifier, frame_strip, heat_overlay, predict_clips
    from cnnkit.tasks.video.task import VideoTask
    from cnnkit.tasks.video.train import train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["VideoConfig"],
        "evaluate": ["evaluate", "evaluate_run"],
        "load": ["load_video_classifier"],
        "predict": ["VideoClassifier", "frame_strip", "heat_overlay", "predict_clips"],
        "task": ["VideoTask"],
        "train": ["train"],
    },
)

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

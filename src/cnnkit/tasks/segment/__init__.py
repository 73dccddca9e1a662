"""segment: semantic segmentation -- a class for every pixel, from an encoder-decoder network.

The files have the same roles in every task (config, data, task, train, evaluate, predict, load).
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.evaluate import evaluate, evaluate_run
    from cnnkit.tasks.segment.load import load_segmenter
    from cnnkit.tasks.segment.predict import Segmenter, image_logits, predict_image, predict_masks, write_prediction
    from cnnkit.tasks.segment.task import SegmentTask
    from cnnkit.tasks.segment.train import train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["SegmentConfig"],
        "evaluate": ["evaluate", "evaluate_run"],
        "load": ["load_segmenter"],
        "predict": ["Segmenter", "image_logits", "predict_image", "predict_masks", "write_prediction"],
        "task": ["SegmentTask"],
        "train": ["train"],
    },
)

__all__ = [
    "SegmentConfig",
    "SegmentTask",
    "Segmenter",
    "evaluate",
    "evaluate_run",
    "image_logits",
    "load_segmenter",
    "predict_image",
    "predict_masks",
    "train",
    "write_prediction",
]

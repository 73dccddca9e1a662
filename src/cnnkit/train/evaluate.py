"""Evaluate a classifier on an ImageSet: loss, accuracy, confusion matrix, per-class precision/recall.

The code lives with the classification task (:mod:`cnnkit.tasks.classify`), whose per-epoch
validation is this same function; ``cnnkit eval`` and older imports find it here.
"""

from cnnkit.tasks.classify import Evaluation, evaluate, predict_logits

__all__ = ["Evaluation", "evaluate", "predict_logits"]

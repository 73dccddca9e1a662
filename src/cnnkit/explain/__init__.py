"""Seeing inside a CNN: feature maps, filters, filter patterns, Grad-CAM and saliency, as tensors.

Each method lives in its own file over a small base (:mod:`.base`) and hooks that always clean up
(:mod:`.hooks`); the figures are drawn by :mod:`cnnkit.plots`.
"""

from cnnkit.explain.feature_maps import feature_maps
from cnnkit.explain.filters import filters
from cnnkit.explain.grad_cam import grad_cam
from cnnkit.explain.hooks import (
    frozen,
    guided_relus,
    last_conv_layer,
    layer_names,
    recording,
    resolve_layer,
)
from cnnkit.explain.patterns import filter_patterns, mean_activation
from cnnkit.explain.saliency import saliency
from cnnkit.explain.series_cam import class_activation_map
from cnnkit.metrics.classification import confusion_counts, most_confident_errors

__all__ = [
    "feature_maps",
    "filters",
    "filter_patterns",
    "mean_activation",
    "grad_cam",
    "saliency",
    "frozen",
    "guided_relus",
    "last_conv_layer",
    "layer_names",
    "recording",
    "resolve_layer",
    "confusion_counts",
    "most_confident_errors",
    "class_activation_map",
]

"""Seeing inside a CNN: feature maps, filters, filter patterns, Grad-CAM and saliency, as tensors.

Each method lives in its own file over a small base (:mod:`.base`) and hooks that always clean up
(:mod:`.hooks`); the figures are drawn by :mod:`cnnkit.plots`.
"""

from .feature_maps import feature_maps
from .filters import filters
from .grad_cam import grad_cam
from .hooks import frozen, guided_relus, last_conv_layer, layer_names, recording, resolve_layer
from .mistakes import confusion_counts, most_confident_errors
from .patterns import filter_patterns, mean_activation
from .saliency import saliency
from .series_cam import class_activation_map

__all__ = [
    "feature_maps", "filters", "filter_patterns", "mean_activation", "grad_cam", "saliency",
    "frozen", "guided_relus", "last_conv_layer", "layer_names", "recording", "resolve_layer",
    "confusion_counts", "most_confident_errors", "class_activation_map",
]

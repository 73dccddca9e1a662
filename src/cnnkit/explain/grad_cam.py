"""Grad-CAM: where in the image the evidence for a class lies.

Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", https://arxiv.org/abs/1610.02391. For the class score ``y_c`` and the activations
``A`` (K, h, w) of a convolutional layer::

    alpha_k = mean_{i,j} d y_c / d A_k[i, j]          # (K,) channel weights (global-average-pooled gradients)
    cam     = ReLU( sum_k alpha_k * A_k )             # (h, w)

then ``cam`` is upsampled (bilinear) to the image size and divided by its maximum.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.explain.base import (
    as_batch,
    forward_scores,
    normalise_max,
    selected_score,
    target_classes,
)
from cnnkit.explain.hooks import default_cam_layer, frozen, recording


def grad_cam(model: nn.Module, image: torch.Tensor, target_class: int | None = None, layer: str | None = None):
    """The Grad-CAM heatmap of ``target_class`` (default: the predicted class) at ``layer``.

    Args:
        model: any classifier ``nn.Module`` returning scores (N, K); it is run in eval mode.
        image: (C, H, W) or a batch (N, C, H, W) in the model's input range.
        target_class: the class to explain; ``None`` explains each image's top class.
        layer: a layer name (``model.named_modules()``); default the last convolution followed
            through the shape-preserving layers after it (its norm and ReLU), see
            :func:`~cnnkit.explain.hooks.default_cam_layer`.
    Returns:
        ``(heatmap, class)``: for one image a (H, W) tensor in [0, 1] and an int; for a batch
        (N, H, W) and an (N,) LongTensor. On CPU.
    """
    x, single = as_batch(model, image)
    with frozen(model):
        layer = layer or default_cam_layer(model, x[:1])
    x.requires_grad_(True)  # parameters are frozen: the input carries the graph to the activations
    with frozen(model), recording(model, [layer], grads=True) as rec, torch.enable_grad():
        scores = forward_scores(model, x)  # (N, K)
        classes = target_classes(scores, target_class)
        selected_score(scores, classes).backward()
    acts = rec["activations"].get(layer)
    if acts is None:
        raise CnnkitError(f"layer {layer!r} did not run in the forward pass; pick a layer the model uses")
    if acts.dim() != 4:
        raise CnnkitError(
            f"layer {layer!r} gives shape {tuple(acts.shape)}; Grad-CAM needs a layer with (N, K, h, w) "
            f"outputs: a convolution, or the norm or ReLU after it"
        )
    grads = rec["gradients"].get(layer)  # (N, K, h, w)
    if grads is None:
        raise CnnkitError(f"the class score does not depend on layer {layer!r}; pick a layer on the way to the output")
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = F.relu((alpha * acts).sum(dim=1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)  # (N, 1, H, W)
    cam = normalise_max(cam[:, 0]).cpu()
    classes = classes.cpu()
    return (cam[0], int(classes[0])) if single else (cam, classes)

"""Saliency maps: the gradient of a class score with respect to the input pixels.

- ``vanilla``: Simonyan et al. 2013, https://arxiv.org/abs/1312.6034 -- ``max_c |d y / d x_c|``.
- ``guided``: guided backpropagation, Springenberg et al. 2014, https://arxiv.org/abs/1412.6806 --
  the same, with only positive gradients let back through every rectifier (ReLU and ReLU6, modules
  or functional calls: :func:`~cnnkit.explain.hooks.guided_relus`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.explain.base import (
    as_batch,
    forward_scores,
    normalise_max,
    selected_score,
    target_classes,
)
from cnnkit.explain.hooks import frozen, guided_relus

METHODS = ("vanilla", "guided")


def saliency(model: nn.Module, image: torch.Tensor, target_class: int | None = None, method: str = "vanilla"):
    """The saliency map of ``target_class`` (default: the predicted class).

    Returns:
        ``(map, class)``: for one image a (H, W) tensor in [0, 1] (the largest absolute input
        gradient over channels, divided by its maximum) and an int; for a batch (N, H, W) and (N,).

    Raises:
        CnnkitError: an unknown method; ``guided`` on a model whose forward runs no rectifier to guide,
            or runs one inside TorchScript (:func:`~cnnkit.explain.hooks.guided_relus`); a class out of range.
    """
    if method not in METHODS:
        raise CnnkitError(f"unknown saliency method {method!r}; use one of: {', '.join(METHODS)}")
    x, single = as_batch(model, image)
    x.requires_grad_(True)
    with frozen(model), torch.enable_grad():
        if method == "guided":
            with guided_relus(model) as guided:
                scores = forward_scores(model, x)
                if not guided:  # nothing guided: the map would be vanilla saliency under another name
                    raise CnnkitError(
                        f"guided backpropagation guides the gradient at each rectifier (ReLU, ReLU6: a module or a "
                        f"functional call), and {type(model).__name__} runs none (tanh, SiLU, LeakyReLU and other "
                        "activations are not guided); explain it with vanilla saliency (drop --guided; "
                        "method='vanilla' in Python)"
                    )
                classes = target_classes(scores, target_class)
                (grad,) = torch.autograd.grad(selected_score(scores, classes), x)
        else:
            scores = forward_scores(model, x)
            classes = target_classes(scores, target_class)
            (grad,) = torch.autograd.grad(selected_score(scores, classes), x)
    sal = normalise_max(grad.abs().amax(dim=1)).cpu()  # (N, C, H, W) -> (N, H, W)
    classes = classes.cpu()
    return (sal[0], int(classes[0])) if single else (sal, classes)

"""Class activation map over a time series: which stretch of the signal decided the class.

Zhou et al. 2016, "Learning Deep Features for Discriminative Localization",
https://arxiv.org/abs/1512.04150, as Wang et al. 2017 (https://arxiv.org/abs/1611.06455) draw it
over GunPoint. For a network ending in global average pooling and one linear layer (the zoo's
``fcn1d``, ``resnet1d``, ``inception_time``), with last feature map ``A`` (K, L') and weights ``w``::

    logit_c = b_c + mean_t sum_k w_ck A_k(t)
    CAM_c(t) = sum_k w_ck A_k(t)                 # (L',): so mean_t CAM_c(t) + b_c = logit_c exactly

The map is not rectified or rescaled: its sign says for or against the class, its mean (plus the
bias) is the logit. Grad-CAM (:func:`cnnkit.explain.grad_cam`) is for 2-D feature maps.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.explain.base import model_device, target_classes
from cnnkit.explain.hooks import frozen


def class_activation_map(model: nn.Module, series: torch.Tensor, target_class: int | None = None) -> torch.Tensor:
    """The class activation map of ``target_class`` (default: the predicted class) over ``series``.

    Args:
        model: a series classifier with ``forward_features`` ((N, C, L) -> (N, K, L')) followed by
            global average pooling and a linear layer ``fc`` (K -> classes); run in eval mode.
        series: one series (C, L) or a batch (N, C, L), as the model takes it (z-normalised).
        target_class: the class to explain; ``None`` explains each series' top class.

    Returns:
        (L,) for one series, (N, L) for a batch: ``sum_k w_ck A_k(t)``, linearly interpolated to the
        input length when the features are shorter. On CPU.

    Raises:
        CnnkitError: a model without that head, a series of the wrong rank, a class out of range.

    Example:
        >>> from cnnkit import create_model
        >>> cam = class_activation_map(create_model("fcn1d"), torch.randn(1, 150))  # one series (C, L)
        >>> cam.shape
        torch.Size([150])
    """
    if not isinstance(series, torch.Tensor) or series.dim() not in (2, 3):
        shape = tuple(series.shape) if isinstance(series, torch.Tensor) else type(series).__name__
        raise CnnkitError(f"a series must be a tensor (C, L) or (N, C, L); received: {shape}")
    fc = getattr(model, "fc", None)
    if not hasattr(model, "forward_features") or not isinstance(fc, nn.Linear):
        raise CnnkitError(
            f"a class activation map needs a model with forward_features, global average "
            f"pooling and a linear layer fc (fcn1d, resnet1d, inception_time); received: "
            f"{type(model).__name__}"
        )
    single = series.dim() == 2
    x = (series[None] if single else series).float().to(model_device(model))
    with frozen(model), torch.no_grad():
        feats = model.forward_features(x)  # (N, K, L')
        if feats.dim() != 3 or feats.shape[1] != fc.in_features:
            raise CnnkitError(
                f"the model's features have shape {tuple(feats.shape)}; a class activation map "
                f"needs (N, {fc.in_features}, L) for its linear layer fc"
            )
        scores = model.forward_head(feats)  # (N, classes)
        classes = target_classes(scores, target_class)  # (N,)
        cam = torch.einsum("nk,nkt->nt", fc.weight[classes], feats)  # (N, L')
    if cam.shape[1] != x.shape[2]:
        cam = F.interpolate(cam[:, None], size=x.shape[2], mode="linear", align_corners=False)[:, 0]  # (N, L)
    cam = cam.cpu()
    return cam[0] if single else cam

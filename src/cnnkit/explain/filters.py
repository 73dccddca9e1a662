"""The learned kernels of a convolution."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.explain.hooks import conv_layer


def filters(model: nn.Module, layer: str) -> torch.Tensor:
    """A copy of the weights of the Conv2d called ``layer``: (out, in/groups, kh, kw), on CPU."""
    return conv_layer(model, layer).weight.detach().cpu().clone()

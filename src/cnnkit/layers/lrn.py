"""Local response normalisation across channels, with TensorFlow's parameters.

``b[c] = a[c] / (bias + alpha * sum_{c - r <= d <= c + r} a[d]^2) ^ beta``
(``tf.nn.local_response_normalization``). AlexNet (Krizhevsky et al. 2012,
https://papers.nips.cc/paper/4824) uses k=2, n=5, alpha=1e-4, beta=0.75, that is
``LocalResponseNorm(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)``.

Géron ("Hands-On Machine Learning", chapter 14) sums over maps ``i - r/2 .. i + r/2``: his depth
radius ``r`` is ``2 * depth_radius`` (his ``r = 2``, the two neighbouring maps, is ``depth_radius=1``).

``torch.nn.LocalResponseNorm(size, alpha, beta, k)`` divides ``alpha`` by ``size``: it equals
``LocalResponseNorm(depth_radius=(size - 1) // 2, bias=k, alpha=alpha / size, beta=beta)``
for odd ``size``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LocalResponseNorm(nn.Module):
    """TF-style LRN over channels (dim 1) of a (B, C, ...) tensor; no parameters.

    Args:
        depth_radius: r, the half-width of the channel window (2r + 1 channels).
        bias: k, added before the power.
        alpha: scale of the sum of squares (NOT divided by the window size).
        beta: exponent.
    """

    def __init__(self, depth_radius: int = 5, bias: float = 1.0, alpha: float = 1.0, beta: float = 0.5):
        super().__init__()
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = 2 * self.depth_radius + 1
        # torch averages the squares over `size` channels: alpha * size undoes the division
        return F.local_response_norm(x, size, alpha=self.alpha * size, beta=self.beta, k=self.bias)

    def extra_repr(self) -> str:
        return f"depth_radius={self.depth_radius}, bias={self.bias}, alpha={self.alpha}, beta={self.beta}"

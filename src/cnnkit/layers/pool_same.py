"""Max and average pooling with TensorFlow/Keras ``padding="same"`` for any stride.

Max pooling pads with ``-inf`` (a padded cell never wins); average pooling does not count
the padded cells, as TensorFlow: a border window of 2 real cells out of 3 averages 2 values.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.layers.padding import _ntuple, pad_for


class _PoolSame(nn.Module):
    n: int = 2

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _ntuple(kernel_size, self.n)
        self.stride = _ntuple(stride if stride is not None else kernel_size, self.n)  # Keras default

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=same"

    def _pad(self, x: torch.Tensor) -> list[int]:
        return pad_for(x.shape[-self.n :], self.kernel_size, self.stride, 1, "same")


class _MaxPoolSame(_PoolSame):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self._pad(x), value=float("-inf"))
        return _MAX[self.n](x, self.kernel_size, self.stride)


class _AvgPoolSame(_PoolSame):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self._pad(x)
        if all(isinstance(p, int) for p in pad) and not any(pad):  # sizes known: no padding at all
            return _AVG[self.n](x, self.kernel_size, self.stride)
        pool = _AVG[self.n]
        mean = pool(F.pad(x, pad), self.kernel_size, self.stride)  # sum / window size
        ones = torch.ones_like(x[:1, :1])  # (1, 1, *spatial), its size followed when exported
        frac = pool(F.pad(ones, pad), self.kernel_size, self.stride)  # real cells / window size
        return mean / frac  # sum / real cells


_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class MaxPool1dSame(_MaxPoolSame):
    """Keras ``MaxPooling1D(padding="same")``: ``L -> ceil(L / stride)``; stride defaults to the kernel."""

    n = 1


class MaxPool2dSame(_MaxPoolSame):
    """Keras ``MaxPooling2D(padding="same")``: ``(H, W) -> (ceil(H / s), ceil(W / s))``."""

    n = 2


class MaxPool3dSame(_MaxPoolSame):
    """Keras ``MaxPooling3D(padding="same")``."""

    n = 3


class AvgPool1dSame(_AvgPoolSame):
    """Keras ``AveragePooling1D(padding="same")``: padded cells are not counted."""

    n = 1


class AvgPool2dSame(_AvgPoolSame):
    """Keras ``AveragePooling2D(padding="same")``: padded cells are not counted."""

    n = 2


class AvgPool3dSame(_AvgPoolSame):
    """Keras ``AveragePooling3D(padding="same")``: padded cells are not counted."""

    n = 3

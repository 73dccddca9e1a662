"""Normalisation layers: ``GroupNorm`` for bf16 maps on the CPU, ``BatchNorm1d``/``2d``/``3d`` as Keras updates them.

``GroupNorm`` normalises a bf16 channels-last map in fp32 on the CPU (``nn.GroupNorm`` elsewhere).

Under CPU bf16 autocast a convolution's output is a bf16 channels-last map, and ``nn.GroupNorm``
then runs PyTorch's mixed-type kernel (bf16 input, fp32 weights). With torch 2.13 that kernel's
channels-last forward and backward take 2-5 times as long as the fp32 kernel on an fp32 copy of the
same map (detection heads' (8, 64, 20, 20) maps: 1.21 ms against 0.26 ms). The fp32 kernel sums in
fp32 as the mixed one does, and its result is rounded to bf16 once, so the output is the same.

``BatchNorm1d``/``2d``/``3d`` are PyTorch's, except for the running variance a training step leaves:
Keras' ``BatchNormalization`` averages in the batch's biased variance, PyTorch the unbiased one
(``n / (n - 1)`` times larger, ``n`` values per channel), so a network read from Keras or built from
a Keras-style spec and trained here keeps the statistics Keras would. Their state dicts are
``nn.BatchNorm*d``'s, and evaluation is the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_HALF = (torch.bfloat16, torch.float16)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm(num_groups, num_channels)`` (the same parameters and state dict); a bf16 or fp16
    channels-last map on the CPU is normalised in fp32 and returned in its own dtype and layout.
    Shape: (B, C, *) -> the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype in _HALF
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()
        ):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)
        return super().forward(x)


class _KerasRunningVariance:
    """Keras' update of the running variance: the batch's biased variance (PyTorch's is unbiased)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.running_var is not None):
            return super().forward(x)
        self._check_input_dim(x)
        n = x.numel() // x.size(1)  # the values per channel in this batch
        if n < 2:
            return super().forward(x)  # PyTorch's own refusal of one value per channel
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # the batch's mean and unbiased variance, into tensors of their own: autograd keeps the
        # running statistics it was given, so they are not the buffers updated below
        mean, var = torch.zeros_like(self.running_mean), torch.ones_like(self.running_var)
        y = F.batch_norm(x, mean, var, self.weight, self.bias, True, 1.0, self.eps)
        with torch.no_grad():
            self.running_mean.lerp_(mean, f)
            self.running_var.lerp_(var * ((n - 1) / n), f)
        return y


class BatchNorm1d(_KerasRunningVariance, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (the same arguments, parameters and state dict) whose running variance
    follows Keras' ``BatchNormalization``: it is updated with the batch's biased variance, not
    PyTorch's unbiased one. Training outputs and evaluation are ``nn.BatchNorm1d``'s.
    Shape: (B, C) or (B, C, L) -> the same."""


class BatchNorm2d(_KerasRunningVariance, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with Keras' running variance (see :class:`BatchNorm1d`).
    Shape: (B, C, H, W) -> the same."""


class BatchNorm3d(_KerasRunningVariance, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with Keras' running variance (see :class:`BatchNorm1d`).
    Shape: (B, C, T, H, W) -> the same."""


def batch_normalization(
    shape: tuple[int, ...], momentum: float = 0.99, epsilon: float = 1e-3, affine: bool = True
) -> nn.Module:
    """Keras' ``BatchNormalization(momentum, epsilon)`` over the channels of a (C,), (C, L),
    (C, H, W) or (C, T, H, W) input: :class:`BatchNorm1d`, ``2d`` or ``3d``.

    Keras' ``momentum`` keeps that share of the running value (0.99); PyTorch's weighs the batch's
    (``1 - momentum``, rounded to 12 places so 0.99 gives 0.01).
    """
    cls = {1: BatchNorm1d, 2: BatchNorm1d, 3: BatchNorm2d, 4: BatchNorm3d}[len(shape)]
    return cls(shape[0], eps=epsilon, momentum=round(1 - momentum, 12), affine=affine)

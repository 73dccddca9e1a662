"""``Dropout`` with a cheaper mask on the CPU: ``nn.Dropout`` everywhere else.

PyTorch's CPU dropout draws one Bernoulli sample per element (``bernoulli_``), which on the notes'
exercise-9 network (dropout on the 12,544 flattened features, batch 32) costs a large share of a
training step. This one draws one 64-bit random number per 4 elements and keeps an element when its
16 bits clear the threshold ``p * 65536``: a quarter of the random draws. The rate is exact when
``p * 65536`` is whole (0.1 becomes 0.100006), the draws come from PyTorch's default CPU generator (so ``torch.manual_seed`` and a saved RNG state
replay them), and what backward keeps is a bool mask, as PyTorch's own dropout keeps.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool tensor of ``shape``, each element True with probability 1 - p (to within 2**-17)."""
    n = shape.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    return bits.view(torch.int16)[:n].view(shape) >= -32768 + round(p * 65536)


class Dropout(nn.Dropout):
    """``nn.Dropout(p)``: zeroes elements with probability p in training and scales the rest by
    1 / (1 - p); the identity in eval mode. Shape: any -> the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p == 1 or x.device.type not in ("cpu", "meta"):
            return F.dropout(x, self.p, self.training, self.inplace)
        keep = keep_mask(x.shape, self.p, x.device)
        scale = 1.0 / (1.0 - self.p)
        return x.mul_(keep).mul_(scale) if self.inplace else x.mul(keep).mul_(scale)

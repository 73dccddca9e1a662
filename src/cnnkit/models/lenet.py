"""LeNet-5 (LeCun et al. 1998), "Gradient-Based Learning Applied to Document Recognition",
http://yann.lecun.com/exdb/publis/pdf/lecun-01a.pdf.

Input 1x32x32 (MNIST's 28x28 digits padded by 2, as in the paper). Layers keep the paper's names:
C1 (6@5x5) -> S2 -> C3 (16@5x5) -> S4 -> C5 (120@5x5, a convolution whose output is 1x1) -> F6 (84)
-> output (10). Choices, against the paper:

- activation: the paper's scaled ``1.7159 * tanh(2a/3)`` (:class:`ScaledTanh`);
- S2/S4: the paper's subsampling (:class:`Subsample`): each map's 2x2 average times a trainable
  coefficient plus a trainable bias (12 + 32 parameters), followed by the activation;
- initialisation: normal with standard deviation ``fan_in ** -0.5`` and zero biases (LeCun et al.
  1998b, "Efficient BackProp"), so the scaled tanh sees unit-variance inputs;
- C3: fully connected to S2 by default (2,416 parameters, as most re-implementations do);
  ``c3_table=True`` applies the paper's Table I connection table with a fixed mask (60 of 96
  map pairs; 1,516 effective parameters, the masked weights stay at zero);
- output: a Linear layer giving logits (the paper uses Euclidean RBF units with fixed codes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model

# Paper Table I: the S2 maps each C3 map reads. 0-5: three neighbours, 6-11: four neighbours,
# 12-14: four non-neighbours, 15: all six.
C3_TABLE = [
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (4, 5, 0),
    (5, 0, 1),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (3, 4, 5, 0),
    (4, 5, 0, 1),
    (5, 0, 1, 2),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
]


class TableConv2d(nn.Conv2d):
    """A convolution whose output map ``j`` reads only the input maps ``table[j]`` (a fixed 0/1 mask)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, table):
        super().__init__(in_channels, out_channels, kernel_size)
        mask = torch.zeros(out_channels, in_channels, 1, 1)
        for j, inputs in enumerate(table):
            mask[j, list(inputs)] = 1.0
        self.register_buffer("mask", mask, persistent=False)  # not in the state dict
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class Subsample(nn.Module):
    """The paper's subsampling: each map's 2x2 average times a trainable coefficient plus a trainable
    bias (two parameters per map)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) * self.weight.view(-1, 1, 1) + self.bias.view(-1, 1, 1)


class ScaledTanh(nn.Module):
    """The paper's squashing function ``1.7159 * tanh(2a / 3)`` (LeCun et al. 1998, appendix A):
    f(1) = 1 and f(-1) = -1, so unit-variance inputs keep unit variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class LeNet5(Classifier):
    """C1-S2-C3-S4-C5 trunk, F6 and output head. Shapes are for the default 1x32x32 input.

    ``num_features`` is 84, the width of F6 (``forward_head(x, pre_logits=True)``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, c3_table: bool = False):
        super().__init__()
        check_args(num_classes, in_channels)
        if c3_table and in_channels != 1:
            raise CnnkitError(
                f"the C3 connection table assumes 6 C1 maps from one channel; received: "
                f"in_channels={in_channels}; use c3_table=False"
            )
        self.c1 = nn.Conv2d(in_channels, 6, 5)  # (B, 1, 32, 32) -> (B, 6, 28, 28)
        self.s2 = Subsample(6)  # -> (B, 6, 14, 14)
        self.c3 = TableConv2d(6, 16, 5, C3_TABLE) if c3_table else nn.Conv2d(6, 16, 5)  # -> (B, 16, 10, 10)
        self.s4 = Subsample(16)  # -> (B, 16, 5, 5)
        self.c5 = nn.Conv2d(16, 120, 5)  # -> (B, 120, 1, 1)
        self.act = ScaledTanh()
        self.num_features = 84
        self.f6 = nn.Linear(120, 84)
        self.num_classes = num_classes
        self.output = _linear(84, num_classes)
        for m in self.modules():  # LeCun's initialisation (see the module's docstring)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, m.weight[0].numel() ** -0.5)
                nn.init.zeros_(m.bias)
        if isinstance(self.c3, TableConv2d):
            with torch.no_grad():
                self.c3.weight.mul_(self.c3.mask)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.s2(self.act(self.c1(x))))
        x = self.act(self.s4(self.act(self.c3(x))))
        return self.act(self.c5(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.f6(torch.flatten(x, 1)))  # (B, 120, 1, 1) -> (B, 84)
        return x if pre_logits else self.output(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh output layer with ``num_classes`` logits (0: Identity)."""
        check_args(num_classes, 1)
        self.output = _linear(84, num_classes).to(self.f6.weight.device, self.f6.weight.dtype)
        self.num_classes = num_classes


def _linear(in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model(input_size=(1, 32, 32), paper="LeCun et al. 1998", family="lenet")
def lenet5(num_classes: int = 10, in_channels: int = 1, **kw) -> LeNet5:
    return LeNet5(num_classes=num_classes, in_channels=in_channels, **kw)

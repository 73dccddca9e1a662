"""Keras-style ``Conv2D`` and ``Dense`` (activation inside, Keras initialisers) and a channels-last ``Reshape``.

They let a network from the notes read like its Keras source: one module per Keras layer, so a
summary shows ``conv2d_1 (Conv2D)  (B, 32, 26, 26)  320`` as ``model.summary()`` did. Weights are
Glorot-uniform and biases zero, as Keras initialises them; ``padding="same"`` is TensorFlow's for
any stride (:mod:`.padding`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.layers.act import get_activation
from cnnkit.layers.conv_same import _DynamicPad, resolve_padding


class Conv2D(_DynamicPad, nn.Conv2d):
    """``keras.layers.Conv2D(filters, kernel_size, strides, padding, activation)`` on (B, C, H, W).

    State dict ``weight`` (filters, in_channels, kH, kW) and ``bias``, as ``nn.Conv2d``.
    Shape: "valid": H -> (H - k) // s + 1; "same": H -> ceil(H / s).
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size,
        strides=1,
        padding: str | int = "valid",
        activation: str | None = None,
        dilation_rate=1,
        use_bias: bool = True,
    ):
        fixed, pad_mode = resolve_padding(padding, kernel_size, strides, dilation_rate, 2)
        super().__init__(
            in_channels, filters, kernel_size, stride=strides, padding=fixed, dilation=dilation_rate, bias=use_bias
        )
        self.pad_mode = pad_mode
        self.activation = get_activation(activation)
        _glorot(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


class Dense(nn.Linear):
    """``keras.layers.Dense(units, activation)`` on (B, in_features) -> (B, units)."""

    def __init__(self, in_features: int, units: int, activation: str | None = None, use_bias: bool = True):
        super().__init__(in_features, units, bias=use_bias)
        self.activation = get_activation(activation)
        _glorot(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


class Reshape(nn.Module):
    """``keras.layers.Reshape(target_shape)``: (B, N) -> (B, C, *spatial), channels first.

    With ``channels_last`` (Keras' own layout, the default) ``target_shape`` is (*spatial, C): the flat
    vector is read in Keras' order and returned channels first, so a Dense layer ported from Keras
    feeds the same pixels as in Keras. Without it, ``target_shape`` is (C, *spatial), PyTorch's order
    (what a network spec writes).
    """

    def __init__(self, target_shape, channels_last: bool = True):
        super().__init__()
        self.target_shape = tuple(int(d) for d in target_shape)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(x.shape[0], *self.target_shape)
        if self.channels_last and y.dim() >= 3:
            y = y.movedim(y.dim() - 1, 1)  # (B, *spatial, C) -> (B, C, *spatial); a positive axis for ONNX's Transpose
        return y

    def extra_repr(self) -> str:
        return f"target_shape={self.target_shape}" + (
            " (channels last, output channels first)" if self.channels_last else ""
        )


def _glorot(layer: nn.Module) -> None:
    # Keras: kernel_initializer="glorot_uniform" (fan_in = k*k*C_in, fan_out = k*k*C_out), bias zeros
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)

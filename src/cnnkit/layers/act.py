"""Activations by their Keras names: ``get_activation("relu")`` -> ``nn.ReLU()``."""

from __future__ import annotations

import torch.nn as nn

from cnnkit.errors import CnnkitError

# keras.activations.leaky_relu's slope (the LeakyReLU *layer* defaults to 0.3: build
# nn.LeakyReLU(0.3) yourself for that); the spec builder's "leaky_relu" uses it too
LEAKY_RELU_SLOPE = 0.2

# Keras name -> factory
_ACTIVATIONS = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),  # over channels / classes
    "log_softmax": lambda: nn.LogSoftmax(dim=1),
    "elu": nn.ELU,
    "selu": nn.SELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "hard_swish": nn.Hardswish,
    "hard_silu": nn.Hardswish,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
}


def activation_names() -> list[str]:
    """The names :func:`get_activation` accepts (``None`` means "linear")."""
    return sorted(_ACTIVATIONS)


def get_activation(name: str | None) -> nn.Module:
    """A fresh activation module for a Keras activation name; ``None``/"linear" is the identity."""
    if name is None:
        return nn.Identity()
    key = str(name).lower()
    if key not in _ACTIVATIONS:
        raise CnnkitError(
            f"unknown activation {name!r}; use one of {', '.join(activation_names())}. Received: {name!r}"
        )
    return _ACTIVATIONS[key]()

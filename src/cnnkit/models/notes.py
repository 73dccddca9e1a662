"""The small Keras networks of the study notes (Géron, "Hands-On Machine Learning", ch. 14, and
Chollet, "Deep Learning with Python", ch. 5), rebuilt layer for layer with Keras layer names.

- ``keras_mnist_convnet``: Chollet's first convnet (28x28x1 -> 26, 13, 11, 5, 3 -> 576 -> 64 -> 10),
  93,322 parameters.
- ``keras_cats_dogs_convnet``: Chollet's cats-vs-dogs net (150x150x3, Dense 512, one sigmoid unit:
  ``num_classes=1``), 3,453,121 parameters.
- ``exercise9_mnist``: Géron's chapter-14 exercise 9 (three "same" convs, dropout .25/.5, Dense 128).
- ``gan_generator``: the DCGAN-like generator of the notes (latent 100 -> Dense 1024 -> Dense 7*7*128 ->
  BN -> Reshape -> UpSampling2D -> Conv 64 5x5 -> UpSampling2D -> Conv 1 5x5, tanh throughout).

As in Keras: Glorot-uniform kernels, zero biases, BatchNormalization eps=1e-3 and momentum 0.99
(``momentum=0.01`` in PyTorch), its moving variance the batch's biased one
(:func:`cnnkit.layers.batch_normalization`). Unlike the notes, classifiers return logits: the final softmax /
sigmoid belongs to the loss (``CrossEntropyLoss``, ``BCEWithLogitsLoss``). Inputs are channels first.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.layers import Conv2D, Dense, Dropout, Reshape, batch_normalization
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model


class KerasNet(Classifier):
    """A Keras ``Sequential`` classifier: named trunk layers, then named head layers ending in a Dense.

    Children keep their Keras names (``conv2d_1``, ``max_pooling2d_1``, ``dense_1``), so a summary
    reads like ``model.summary()`` and state-dict keys are ``conv2d_1.weight``.

    Args:
        trunk: (name, layer) pairs up to the last feature map.
        head: (name, layer) pairs after it; the last one is the classifier, rebuilt by ``reset_classifier``.
        num_features: the input width of that last Dense (what ``forward_head(x, pre_logits=True)`` returns).
        num_classes: its output width.
    """

    def __init__(
        self, trunk: list[tuple[str, nn.Module]], head: list[tuple[str, nn.Module]], num_features: int, num_classes: int
    ):
        super().__init__()
        for name, layer in trunk + head:
            self.add_module(name, layer)
        self._trunk = [name for name, _ in trunk]
        self._head = [name for name, _ in head]
        self.num_features = num_features
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._trunk:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        for name in self._head[:-1]:
            x = getattr(self, name)(x)
        return x if pre_logits else getattr(self, self._head[-1])(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last Dense with ``num_classes`` logits (0: Identity)."""
        check_args(num_classes, 1)
        old = getattr(self, self._head[-1])
        new = Dense(self.num_features, num_classes) if num_classes else nn.Identity()
        setattr(self, self._head[-1], new.to(old.weight.device, old.weight.dtype) if num_classes else new)
        self.num_classes = num_classes


def _logits(in_features: int, num_classes: int) -> nn.Module:
    return Dense(in_features, num_classes) if num_classes else nn.Identity()


@register_model(input_size=(1, 28, 28), paper="Chollet 2017 (DLwP 5.1)", family="notes")
def keras_mnist_convnet(num_classes: int = 10, in_channels: int = 1) -> KerasNet:
    check_args(num_classes, in_channels)
    trunk = [
        ("conv2d_1", Conv2D(in_channels, 32, 3, activation="relu")),  # (B, 1, 28, 28) -> (B, 32, 26, 26)
        ("max_pooling2d_1", nn.MaxPool2d(2)),  # -> (B, 32, 13, 13)
        ("conv2d_2", Conv2D(32, 64, 3, activation="relu")),  # -> (B, 64, 11, 11)
        ("max_pooling2d_2", nn.MaxPool2d(2)),  # -> (B, 64, 5, 5)
        ("conv2d_3", Conv2D(64, 64, 3, activation="relu")),  # -> (B, 64, 3, 3)
    ]
    head = [
        ("flatten_1", nn.Flatten()),  # -> (B, 576)
        ("dense_1", Dense(576, 64, activation="relu")),  # -> (B, 64)
        ("dense_2", _logits(64, num_classes)),  # -> (B, 10), softmax in the loss
    ]
    return KerasNet(trunk, head, 64, num_classes)


@register_model(input_size=(3, 150, 150), paper="Chollet 2017 (DLwP 5.2)", family="notes")
def keras_cats_dogs_convnet(num_classes: int = 1, in_channels: int = 3) -> KerasNet:
    check_args(num_classes, in_channels)
    trunk = [
        ("conv2d_1", Conv2D(in_channels, 32, 3, activation="relu")),  # (B, 3, 150, 150) -> (B, 32, 148, 148)
        ("max_pooling2d_1", nn.MaxPool2d(2)),  # -> (B, 32, 74, 74)
        ("conv2d_2", Conv2D(32, 64, 3, activation="relu")),  # -> (B, 64, 72, 72)
        ("max_pooling2d_2", nn.MaxPool2d(2)),  # -> (B, 64, 36, 36)
        ("conv2d_3", Conv2D(64, 128, 3, activation="relu")),  # -> (B, 128, 34, 34)
        ("max_pooling2d_3", nn.MaxPool2d(2)),  # -> (B, 128, 17, 17)
        ("conv2d_4", Conv2D(128, 128, 3, activation="relu")),  # -> (B, 128, 15, 15)
        ("max_pooling2d_4", nn.MaxPool2d(2)),  # -> (B, 128, 7, 7)
    ]
    head = [
        ("flatten_1", nn.Flatten()),  # -> (B, 6272)
        ("dense_1", Dense(7 * 7 * 128, 512, activation="relu")),  # -> (B, 512)
        ("dense_2", _logits(512, num_classes)),  # -> (B, 1), sigmoid in the loss
    ]
    return KerasNet(trunk, head, 512, num_classes)


@register_model(input_size=(1, 28, 28), paper="Géron 2019 (ch. 14, ex. 9)", family="notes")
def exercise9_mnist(num_classes: int = 10, in_channels: int = 1) -> KerasNet:
    check_args(num_classes, in_channels)
    trunk = [
        ("conv2d_1", Conv2D(in_channels, 32, 3, padding="same", activation="relu")),  # -> (B, 32, 28, 28)
        ("max_pooling2d_1", nn.MaxPool2d(2)),  # -> (B, 32, 14, 14)
        ("conv2d_2", Conv2D(32, 64, 3, padding="same", activation="relu")),  # -> (B, 64, 14, 14)
        ("conv2d_3", Conv2D(64, 64, 3, padding="same", activation="relu")),  # -> (B, 64, 14, 14)
    ]
    head = [
        ("flatten_1", nn.Flatten()),  # -> (B, 12544)
        ("dropout_1", Dropout(0.25)),
        ("dense_1", Dense(14 * 14 * 64, 128, activation="relu")),  # -> (B, 128)
        ("dropout_2", Dropout(0.5)),
        ("dense_2", _logits(128, num_classes)),  # -> (B, 10), softmax in the loss
    ]
    return KerasNet(trunk, head, 128, num_classes)


class GanGenerator(nn.Sequential):
    """Latent vector -> 28x28 image in [-1, 1]; not a classifier (no ``num_classes``, no head).

    Input shape: (B, latent_dim). Output shape: (B, out_channels, 28, 28).
    """

    def __init__(self, latent_dim: int = 100, out_channels: int = 1):
        super().__init__(
            OrderedDict(
                [
                    ("dense_1", Dense(latent_dim, 1024)),  # (B, 100) -> (B, 1024)
                    ("activation_1", nn.Tanh()),
                    ("dense_2", Dense(1024, 128 * 7 * 7)),  # -> (B, 6272)
                    ("batch_normalization_1", batch_normalization((128 * 7 * 7,), momentum=0.99, epsilon=1e-3)),
                    ("activation_2", nn.Tanh()),
                    ("reshape_1", Reshape((7, 7, 128))),  # -> (B, 128, 7, 7), Keras's HWC order
                    ("up_sampling2d_1", nn.Upsample(scale_factor=2, mode="nearest")),  # -> (B, 128, 14, 14)
                    ("conv2d_1", Conv2D(128, 64, 5, padding="same")),  # -> (B, 64, 14, 14)
                    ("activation_3", nn.Tanh()),
                    ("up_sampling2d_2", nn.Upsample(scale_factor=2, mode="nearest")),  # -> (B, 64, 28, 28)
                    ("conv2d_2", Conv2D(64, out_channels, 5, padding="same")),  # -> (B, 1, 28, 28)
                    ("activation_4", nn.Tanh()),
                ]
            )
        )
        self.latent_dim = latent_dim
        self.out_channels = out_channels


@register_model(input_size=(100,), paper="DCGAN-like, study notes", family="gan")
def gan_generator(latent_dim: int = 100, out_channels: int = 1, num_classes=None, in_channels=None) -> GanGenerator:
    if num_classes is not None or in_channels is not None:
        raise CnnkitError(
            f"gan_generator is a generator: it takes a latent vector (latent_dim=100) and has "
            f"no classifier; received: num_classes={num_classes}, in_channels={in_channels}; "
            f"use latent_dim= and out_channels= instead"
        )
    for name, value in (("latent_dim", latent_dim), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CnnkitError(f"{name} must be an integer >= 1; received: {name}={value!r}")
    return GanGenerator(latent_dim, out_channels)

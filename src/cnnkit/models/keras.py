"""Keras models read from their files: ``.keras`` (Keras 3) and legacy HDF5 ``.h5`` (Keras 2 and 3).

A Keras file is data: a JSON description of the layers and an HDF5 file of weights. This module reads
both with ``json``, ``zipfile`` and ``h5py`` alone (no TensorFlow, no Keras) and rebuilds the network
on PyTorch with Keras' semantics, so the converted network gives Keras' outputs:

- inputs and feature maps are channels first, (N, C, H, W); kernels are transposed once at loading
  (Keras (kH, kW, C_in, C_out) -> PyTorch (C_out, C_in, kH, kW)); a ``Flatten`` or ``Reshape`` reads
  the feature map in Keras' (H, W, C) order, so a ``Dense`` after it keeps its weights unchanged;
- ``padding="same"`` pads as TensorFlow does (the odd extra pixel at the bottom/right, any stride);
- ``BatchNormalization`` keeps Keras' epsilon (1e-3 by default) and momentum (PyTorch's
  ``momentum = 1 - keras_momentum``), and a training step averages the batch's biased variance into
  the moving variance as Keras does (:func:`cnnkit.layers.batch_normalization`); activations are
  looked up by their Keras names.

Reading never runs code from the file: a layer outside :data:`LAYERS` (``Lambda``, custom objects,
anything unknown) is refused by name with a :class:`CnnkitError`. Each converted layer is a child
module named as in Keras (``conv2d_1``, ``dense``), so summaries and Grad-CAM layer names read like
``model.summary()``.

>>> net, input_size = load_keras("mnist_convnet.keras")   # doctest: +SKIP
>>> net(torch.rand(1, *input_size)).shape                 # doctest: +SKIP
torch.Size([1, 10])
"""

from __future__ import annotations

import contextvars
import copy
import json
import math
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import (
    CnnkitError,
    DatasetReader,
    check_fits,
    check_unzip,
    human_bytes,
    nested_deeper_than,
    short_error,
    unzip,
)
from cnnkit.layers import batch_normalization, get_activation
from cnnkit.layers.conv_same import KerasTransposed, _DynamicPad, resolve_padding, transpose_geometry
from cnnkit.layers.pool_same import (
    AvgPool1dSame,
    AvgPool2dSame,
    AvgPool3dSame,
    MaxPool1dSame,
    MaxPool2dSame,
    MaxPool3dSame,
)
from cnnkit.models.meta import on_meta

PROBE_SIDE = 224  # a spatial size the file leaves open (None) is taken as this
MAX_CONFIG_BYTES = 64 << 20
MAX_LAYERS = 10_000
MAX_NESTING = 100  # JSON levels of a model config (Keras' own: about 10, and 4 more per nested model)
MAX_WEIGHTS = 1 << 30  # weight values a network built from a config may hold (4 GB of float32)
MAX_ACTIVATION = 1 << 27  # values of one layer's output on one example (512 MB of float32)
# bytes of model.weights.h5 a weight value may account for: float64 (8 bytes) and up to 7 copies
# (an optimizer's slots, EMA, gradient accumulators); Keras' own files hold 4 to 14 (small models)
MAX_BYTES_PER_VALUE = 64
# what the layers being built may still allocate: [weight values left, why that is the limit]
_BUDGET: contextvars.ContextVar[list | None] = contextvars.ContextVar("keras_budget", default=None)
_MODELS = ("Sequential", "Functional", "Model")
# the file was written by Keras 2 (a legacy .h5's keras_version): activations with Keras 2's formulas
_KERAS2: contextvars.ContextVar[bool] = contextvars.ContextVar("keras2", default=False)


# ----------------------------------------------------------------------------- layers with Keras semantics


class _Activated:
    """Mixin: ``activation(layer(x))``, the activation a Keras layer carries inside."""

    activation: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


class Conv1D(_Activated, _DynamicPad, nn.Conv1d):
    """Keras ``Conv1D``: (N, C, L) -> (N, filters, L')."""


class _Causal:
    """Mixin for a 1-D convolution: Keras' ``padding="causal"``, ``dilation * (kernel - 1)`` zeros
    before the series, none after."""

    dilation: tuple[int, ...]
    kernel_size: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0)))


class CausalConv1D(_Causal, Conv1D):
    """Keras ``Conv1D(padding="causal")``."""


class Conv2D(_Activated, _DynamicPad, nn.Conv2d):
    """Keras ``Conv2D``: (N, C, H, W) -> (N, filters, H', W')."""


class Conv3D(_Activated, _DynamicPad, nn.Conv3d):
    """Keras ``Conv3D``: (N, C, D, H, W) -> (N, filters, D', H', W')."""


class DepthwiseConv2D(_Activated, _DynamicPad, nn.Conv2d):
    """Keras ``DepthwiseConv2D``: ``groups = C``; output channel ``c * depth_multiplier + m``."""


class DepthwiseConv1D(_Activated, _DynamicPad, nn.Conv1d):
    """Keras ``DepthwiseConv1D``: ``groups = C``; output channel ``c * depth_multiplier + m``."""


class CausalDepthwiseConv1D(_Causal, DepthwiseConv1D):
    """The depthwise part of a Keras 2 ``SeparableConv1D(padding="causal")`` (Keras 3 has no causal one)."""


class _Transposed(KerasTransposed):
    """Mixin for ``nn.ConvTranspose1d/2d/3d``: Keras' window of the output
    (:class:`~cnnkit.layers.conv_same.KerasTransposed`), then the activation."""

    activation: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


class Conv1DTranspose(_Transposed, nn.ConvTranspose1d):
    """Keras ``Conv1DTranspose``: (N, C, L) -> (N, filters, L'), L' as :func:`~cnnkit.layers.conv_same.transpose_crops` says."""


class Conv2DTranspose(_Transposed, nn.ConvTranspose2d):
    """Keras ``Conv2DTranspose``: (N, C, H, W) -> (N, filters, H', W'), each as :func:`~cnnkit.layers.conv_same.transpose_crops` says."""


class Conv3DTranspose(_Transposed, nn.ConvTranspose3d):
    """Keras ``Conv3DTranspose``: (N, C, D, H, W) -> (N, filters, D', H', W'), as :func:`~cnnkit.layers.conv_same.transpose_crops` says."""


class SeparableConv2D(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise k x k (no bias), a pointwise 1x1 (bias), the activation."""

    def __init__(self, depthwise: nn.Module, pointwise: nn.Module, activation: nn.Module):
        super().__init__()
        self.depthwise, self.pointwise, self.activation = depthwise, pointwise, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pointwise(self.depthwise(x)))


class SeparableConv1D(SeparableConv2D):
    """Keras ``SeparableConv1D``: a depthwise k (no bias), a pointwise 1 (bias), the activation."""


class Dense(_Activated, nn.Linear):
    """Keras ``Dense`` on the last Keras axis: the channels of a feature map (dim 1), else features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:  # (N, C, ...) -> (N, ..., C) -> Linear -> (N, units, ...), then the activation on
            # dim 1 as everywhere else (a softmax over the units, not over the first spatial axis)
            y = nn.Linear.forward(self, x.movedim(1, -1))
            return self.activation(y.movedim(y.dim() - 1, 1))  # a positive axis for ONNX's Transpose
        return super().forward(x)


class Flatten(nn.Module):
    """Keras ``Flatten``: (N, C, H, W) -> (N, H * W * C) in Keras' (H, W, C) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.movedim(1, -1) if x.dim() > 2 else x).flatten(1)


def _as_keras_sees_it(x: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` applied to ``x`` laid out channels last, as Keras sees it; the result channels first."""
    y = fn(x.movedim(1, -1) if x.dim() > 2 else x)
    return y.movedim(y.dim() - 1, 1) if y.dim() > 2 else y  # a positive axis for ONNX's Transpose


class Reshape(nn.Module):
    """Keras ``Reshape(target_shape)``: ``target_shape`` channels last, the result channels first."""

    def __init__(self, target_shape: tuple[int, ...]):
        super().__init__()
        self.target_shape = tuple(target_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _as_keras_sees_it(x, lambda y: y.reshape(y.shape[0], *self.target_shape))

    def extra_repr(self) -> str:
        return f"target_shape={self.target_shape} (channels last)"


class GlobalPool(nn.Module):
    """Keras ``GlobalAveragePooling*D`` / ``GlobalMaxPooling*D``: (N, C, ...) -> (N, C) (or keepdims)."""

    def __init__(self, mode: str, keepdims: bool = False):
        super().__init__()
        self.mode, self.keepdims = mode, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        if self.mode == "max":
            return x.amax(dim=dims, keepdim=self.keepdims)
        return x.mean(dim=dims, keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, keepdims={self.keepdims}"


class Scalar(nn.Module):
    """``keras.ops`` arithmetic between a tensor and a number, as Keras saves ``x + 3.0`` or
    ``x * (1 / 6)`` (MobileNetV3's hard sigmoid): ``op`` is add | subtract | multiply | divide, and
    ``tensor_first`` False for ``3.0 - x`` or ``1 / x``."""

    def __init__(self, op: str, value: float, tensor_first: bool = True):
        super().__init__()
        self.op, self.value, self.tensor_first = op, float(value), bool(tensor_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.value
        if self.op == "add":
            return x + c
        if self.op == "multiply":
            return x * c
        if self.op == "subtract":
            return x - c if self.tensor_first else c - x
        return x / c if self.tensor_first else c / x

    def extra_repr(self) -> str:
        return f"{self.op}, {self.value:g}, tensor_first={self.tensor_first}"


class Merge(nn.Module):
    """Keras ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``, ``Concatenate``."""

    def __init__(self, op: str, dim: int = 1):
        super().__init__()
        self.op, self.dim = op, dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if self.op == "concatenate":
            return torch.cat(xs, dim=self.dim)
        rank = max(x.dim() for x in xs)
        # Keras expands a lower-rank input at axis 1 ((N, C) -> (N, 1, 1, C)); channels first that is
        # after the channels: (N, C) -> (N, C, 1, 1), (N, C, L) -> (N, C, 1, L)
        xs = [x if x.dim() == rank else x.reshape(*x.shape[:2], *[1] * (rank - x.dim()), *x.shape[2:]) for x in xs]
        if self.op == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            out = {
                "add": torch.add,
                "average": torch.add,
                "multiply": torch.mul,
                "maximum": torch.maximum,
                "minimum": torch.minimum,
            }[self.op](out, x)
        return out / len(xs) if self.op == "average" else out

    def extra_repr(self) -> str:
        return f"op={self.op}" + (f", dim={self.dim}" if self.op == "concatenate" else "")


class CustomScaleLayer(Merge):
    """``CustomScaleLayer`` of Keras' InceptionResNetV2 (``keras.applications``): ``x + r * scale``, the
    shortcut ``x`` plus the scaled residual ``r``."""

    def __init__(self, scale: float):
        super().__init__("add")
        self.scale = scale

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return xs[0] + xs[1] * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def _config_numbers(value) -> float | list:
    """A config's number (a Python float) or nested list of numbers (Python floats), its precision kept;
    a NumPy array as Keras saves one in a config (``{"class_name": "__numpy__", "config": {"value": ...}}``)
    is its value."""
    if isinstance(value, dict) and value.get("class_name") == "__numpy__":
        config = value.get("config")
        value = config.get("value") if isinstance(config, dict) else None
    # text, None, a mapping: refused here, not at the first call (on the CPU: read inside on_meta too)
    t = torch.tensor(value, dtype=torch.float64, device="cpu")
    return float(t) if t.dim() == 0 else t.tolist()


class Rescaling(nn.Module):
    """Keras ``Rescaling``: ``x * scale + offset`` (per channel when they are lists).

    ``scale`` and ``offset`` stay the config's numbers (Python floats) and are cast to the input's
    dtype at each call, as Keras casts them to its compute dtype: a float64 network scales by 1/255
    in float64, as Keras in float64 does. A NumPy array Keras saved (``{"class_name": "__numpy__",
    "config": {"value": ...}}``) is read as its values; anything but numbers raises ``TypeError``,
    ``ValueError`` or ``RuntimeError`` here, not at the first call."""

    def __init__(self, scale, offset):
        super().__init__()
        self.scale, self.offset = (_config_numbers(v) for v in (scale, offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, offset = (
            v if isinstance(v, float) else _per_channel(x.new_tensor(v), x) for v in (self.scale, self.offset)
        )
        return x * scale + offset

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class LayerScale(nn.Module):
    """``LayerScale`` of Keras' ConvNeXt (``keras.applications``): ``x * gamma``, one learnt scale per channel."""

    def __init__(self, channels: int, init_value: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _per_channel(self.gamma, x)


class Normalization(nn.Module):
    """Keras ``Normalization`` on the channels: ``(x - mean) / max(sqrt(variance), 1e-7)``, or its inverse."""

    def __init__(self, channels: int, invert: bool = False, mean=None, variance=None):
        super().__init__()
        self.invert = invert
        # adapted statistics are weights in Keras (mean, variance, count); given ones live in the config
        given = mean is not None
        self.register_buffer(
            "mean",
            torch.tensor(mean, dtype=torch.float32).reshape(-1).expand(channels).clone()
            if given
            else torch.zeros(channels),
            persistent=not given,
        )
        self.register_buffer(
            "variance",
            torch.tensor(variance, dtype=torch.float32).reshape(-1).expand(channels).clone()
            if given
            else torch.ones(channels),
            persistent=not given,
        )
        if not given:
            self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = _per_channel(self.mean, x), _per_channel(self.variance.sqrt().clamp_min(1e-7), x)
        return mean + x * std if self.invert else (x - mean) / std


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or a (C,) vector shaped to broadcast over the channels (dim 1) of ``x``."""
    return v if v.dim() == 0 or x.dim() == 2 else v.view(1, -1, *([1] * (x.dim() - 2)))


class LayerNormalization(nn.Module):
    """Keras ``LayerNormalization`` over ``dims`` (channels first): ``(x - mean) / sqrt(var + eps)``, then
    ``* weight + bias`` (Keras' gamma and beta, shaped to broadcast over the input, no batch); with
    ``rms_scaling``, ``x / sqrt(var + eps) * weight``."""

    def __init__(
        self,
        dims: tuple[int, ...],
        shape: tuple[int, ...],
        eps: float,
        scale: bool = True,
        center: bool = True,
        rms_scaling: bool = False,
    ):
        super().__init__()
        self.dims, self.eps, self.rms_scaling = tuple(dims), float(eps), bool(rms_scaling)
        self.weight = nn.Parameter(torch.ones(shape)) if scale or rms_scaling else None
        self.bias = nn.Parameter(torch.zeros(shape)) if center and not rms_scaling else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=self.dims, correction=0, keepdim=True)
        y = (x if self.rms_scaling else x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"dims={self.dims}, eps={self.eps:g}" + (", rms_scaling=True" if self.rms_scaling else "")


class ReLU(nn.Module):
    """Keras ``ReLU(max_value, negative_slope, threshold)``, Keras' formula: ``x`` above ``threshold``
    (else 0) clipped to ``[0, max_value]``, minus ``negative_slope * relu(threshold - x)``."""

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0):
        super().__init__()
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope, self.threshold = float(negative_slope), float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.threshold
        y = torch.where(x > t, x, 0.0) if t else F.relu(x)
        if self.max_value is not None:
            y = y.clamp(0.0, self.max_value)
        if self.negative_slope:
            y = y - self.negative_slope * F.relu(t - x if t else -x)
        return y

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, negative_slope={self.negative_slope:g}, threshold={self.threshold:g}"

    @property
    def leaky_rectifier(self) -> bool:
        """With a negative slope it is leaky, though computed from relu calls: guided backpropagation
        (:func:`cnnkit.explain.hooks.guided_relus`) leaves its gradient as it is."""
        return bool(self.negative_slope)


class PReLU(nn.Module):
    """Keras ``PReLU``: ``relu(x) - alpha * relu(-x)``; ``alpha`` has the input's shape (channels first,
    no batch) with 1 on the ``shared_axes``."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(shape))

    leaky_rectifier = True  # guided backpropagation leaves its gradient as it is (see ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) - self.alpha * F.relu(-x)


class _Spatial(nn.Module):
    """A (before, after) pair of sizes per spatial axis, in Keras' order: ((top, bottom), (left, right))."""

    key = "sizes"  # the Keras argument they come from

    def __init__(self, sizes: tuple[tuple[int, int], ...]):
        super().__init__()
        self.sizes = tuple((int(a), int(b)) for a, b in sizes)

    def extra_repr(self) -> str:
        return f"{self.key}={self.sizes}"


class ZeroPadding(_Spatial):
    """Zeros before and after each spatial axis: ``sizes`` ((before, after) per axis)."""

    key = "padding"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, [p for pair in reversed(self.sizes) for p in pair])


class ZeroPadding1D(ZeroPadding):
    """Keras ``ZeroPadding1D((left, right))``: (N, C, L) -> (N, C, left + L + right)."""


class ZeroPadding2D(ZeroPadding):
    """Keras ``ZeroPadding2D(((top, bottom), (left, right)))``."""


class ZeroPadding3D(ZeroPadding):
    """Keras ``ZeroPadding3D``: (before, after) zeros on each of (D, H, W)."""


class Cropping(_Spatial):
    """``sizes`` ((before, after) per spatial axis) removed from each spatial axis."""

    key = "cropping"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dim, (a, b) in enumerate(self.sizes, start=2):
            x = x.narrow(dim, a, x.shape[dim] - a - b)
        return x


class Cropping1D(Cropping):
    """Keras ``Cropping1D((left, right))``: (N, C, L) -> (N, C, L - left - right)."""


class Cropping2D(Cropping):
    """Keras ``Cropping2D(((top, bottom), (left, right)))``."""


class Cropping3D(Cropping):
    """Keras ``Cropping3D``: (before, after) positions removed from each of (D, H, W)."""


class UpSampling1D(nn.Module):
    """Keras ``UpSampling1D(size)``: each step repeated ``size`` times, (N, C, L) -> (N, C, L * size)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.size, dim=2)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Permute(nn.Module):
    """Keras ``Permute(dims)``: ``dims`` orders Keras' axes (1-based, channels last); the result channels first."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _as_keras_sees_it(x, lambda y: y.permute(0, *self.dims))

    def extra_repr(self) -> str:
        return f"dims={self.dims} (channels last)"


class UpSampling2D(nn.Module):
    """Keras ``UpSampling2D(size, interpolation)``: (H, W) -> (H * sh, W * sw), half-pixel bilinear."""

    def __init__(self, size: tuple[int, int], interpolation: str = "nearest"):
        super().__init__()
        self.size, self.interpolation = tuple(size), interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.shape[-2] * self.size[0], x.shape[-1] * self.size[1])
        if self.interpolation == "nearest":
            return F.interpolate(x, size=out, mode="nearest")
        return F.interpolate(x, size=out, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation}"


class KerasNetwork(nn.Module):
    """A Keras model's graph over PyTorch modules named as the Keras layers.

    ``nodes`` are (output key, layer name, input keys) in an order where every input exists when a
    node runs; keys are ``"layer_name:node_index"``. Called with one tensor per Keras input
    (channels first); returns one tensor, or a tuple when the model has several outputs.

    A chain (one input, each layer fed by the one before, as a Sequential) that ends in
    ``Flatten``/global pooling and ``Dense`` layers also has timm's interface: ``forward_features``
    (up to the last feature map), ``forward_head(x, pre_logits)`` and ``reset_classifier(n)``; the
    top-level network keeps its Keras config in ``keras_config`` (what a checkpoint stores), updated
    when the classifier is replaced.
    """

    def __init__(
        self,
        name: str,
        inputs: list[str],
        nodes: list[tuple[str, str, list[str]]],
        outputs: list[str],
        layers: dict[str, nn.Module],
        keras_names: dict[str, str] | None = None,
    ):
        super().__init__()
        self.keras_name = name
        for layer_name, module in layers.items():
            self.add_module(layer_name, module)
        self.inputs, self.nodes, self.outputs = list(inputs), [tuple(n) for n in nodes], list(outputs)
        self.keras_names = dict(keras_names or {n: n for n in layers})  # child name -> Keras layer name
        self.keras_config: dict | None = None
        self._merging = {n for n, m in layers.items() if isinstance(m, Merge)}

    def forward(self, *xs: torch.Tensor):
        if len(xs) != len(self.inputs):
            raise CnnkitError(f"{self.keras_name} takes {len(self.inputs)} input(s). Received: {len(xs)}")
        values = dict(zip(self.inputs, xs))
        for key, layer, args in self.nodes:
            module = getattr(self, layer)
            if layer in self._merging:
                values[key] = module([values[a] for a in args])
            else:
                values[key] = module(*[values[a] for a in args])
        out = [values[k] for k in self.outputs]
        return out[0] if len(out) == 1 else tuple(out)

    def _head_start(self) -> int:
        """Index of the node where the head begins (the last Flatten / global pooling of a chain)."""
        chain = (
            len(self.inputs) == 1
            and len(self.outputs) == 1
            and self.outputs[0] == self.nodes[-1][0]
            and all(
                args == [prev[0] if prev else self.inputs[0]]
                for prev, (_, _, args) in zip([None, *self.nodes[:-1]], self.nodes)
            )
        )
        starts = [
            i for i, (_, layer, _) in enumerate(self.nodes) if isinstance(getattr(self, layer), (Flatten, GlobalPool))
        ]
        if not chain or not starts or not isinstance(getattr(self, self.nodes[-1][1]), Dense):
            raise CnnkitError(
                f"the Keras model {self.keras_name!r} is not a chain of layers ending in Flatten or "
                "global pooling and Dense; its head cannot be told apart"
            )
        return starts[-1]

    def _run(self, x: torch.Tensor, nodes) -> torch.Tensor:
        for _, layer, _ in nodes:
            x = getattr(self, layer)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before the head's Flatten / global pooling."""
        return self._run(x, self.nodes[: self._head_start()])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The head on a feature map; ``pre_logits``: the input of the last Dense."""
        x = self._run(x, self.nodes[self._head_start() : -1])
        return x if pre_logits else self._run(x, self.nodes[-1:])

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last Dense of ``num_classes`` logits (Keras' Glorot init, zero bias), no activation."""
        self._head_start()
        child = self.nodes[-1][1]
        old = getattr(self, child)
        new = Dense(
            old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
        )
        new.activation = nn.Identity()
        nn.init.xavier_uniform_(new.weight)
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        setattr(self, child, new)
        if self.keras_config is not None:  # the stored description follows: the same network rebuilds
            for layer in self.keras_config["config"]["layers"]:
                if (layer.get("name") or layer["config"].get("name")) == self.keras_names[child]:
                    layer["config"].update(units=num_classes, activation="linear")


# ----------------------------------------------------------------------------- the table of layers


@dataclass
class _Layer:
    """A converted layer: its module, the output shape (channels first, no batch) and its weight loader."""

    module: nn.Module
    shape: tuple[int, ...]
    load: Callable[[nn.Module, list[np.ndarray]], None] | None = None
    children: list = field(default_factory=list)  # a nested model's records


def _ints(v, n: int, what: str, positive: bool = False) -> tuple[int, ...]:
    """``n`` non-negative integers (one integer: ``n`` times), ``positive`` ones for the sizes of a kernel,
    stride, dilation or pool window (the meta device builds a dilation of 0 that fails at the first call)."""
    v = [v] * n if isinstance(v, int) else list(v)
    if len(v) != n or not all(isinstance(i, int) and not isinstance(i, bool) and i >= positive for i in v):
        raise CnnkitError(f"{what} must be {n} {'positive' if positive else 'non-negative'} integers. Received: {v!r}")
    return tuple(v)


def _check_channels_last(cfg: dict, kind: str) -> None:
    fmt = cfg.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise CnnkitError(
            f"{kind} {cfg.get('name')!r} has data_format={fmt!r}; only channels_last Keras models "
            "are read (the Keras default)"
        )


class HardSigmoidKeras2(nn.Module):
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` (Keras 3's is ``relu6(x + 3) / 6``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.2 * x + 0.5).clamp(0.0, 1.0)


def _act(cfg: dict) -> nn.Module:
    name = cfg.get("activation")
    if name is not None and not isinstance(name, str):  # a serialised function or object: code
        raise CnnkitError(
            f"layer {cfg.get('name')!r} has a custom activation {str(name)[:60]}; only Keras' "
            "named activations are read"
        )
    if _KERAS2.get() and str(name).lower() == "hard_sigmoid":
        return HardSigmoidKeras2()
    return get_activation(name)


def _conv(cfg: dict, shape: tuple[int, ...], n: int, kind: str) -> _Layer:
    _check_channels_last(cfg, kind)
    causal = kind in ("Conv1D", "SeparableConv1D") and cfg.get("padding") == "causal"
    if cfg.get("padding") not in ("valid", "same") and not causal:
        raise CnnkitError(f"{kind} {cfg.get('name')!r} has padding={cfg.get('padding')!r}; 'valid' and 'same' are read")
    c_in, layer = shape[0], f"{kind} {cfg.get('name')!r}"
    k = _ints(cfg["kernel_size"], n, f"{layer}: kernel_size", True)
    s = _ints(cfg.get("strides", 1), n, f"{layer}: strides", True)
    d = _ints(cfg.get("dilation_rate", 1), n, f"{layer}: dilation_rate", True)
    bias = bool(cfg.get("use_bias", True))
    if kind.endswith("Transpose"):
        return _transpose(cfg, shape, n, kind, k, s, d, bias)
    separable = kind.startswith("Separable")
    if kind.startswith(("Depthwise", "Separable")):  # one filter per input channel and multiplier
        cls, out, groups = {1: DepthwiseConv1D, 2: DepthwiseConv2D}[n], c_in * cfg.get("depth_multiplier", 1), c_in
    else:
        cls, out, groups = {1: Conv1D, 2: Conv2D, 3: Conv3D}[n], cfg["filters"], cfg.get("groups", 1)
    fixed, pad_mode = resolve_padding("valid" if causal else cfg["padding"], k, s, d, n)
    if causal:
        cls = CausalDepthwiseConv1D if separable else CausalConv1D
    conv = cls(c_in, out, k, stride=s, padding=fixed, dilation=d, groups=groups, bias=bias and not separable)
    conv.pad_mode = pad_mode
    if separable:
        conv.activation = nn.Identity()
        pointwise = {1: nn.Conv1d, 2: nn.Conv2d}[n](out, cfg["filters"], 1, bias=bias)
        m = {1: SeparableConv1D, 2: SeparableConv2D}[n](conv, pointwise, _act(cfg))
        return _Layer(m, _probe(m, shape), _load_separable)
    conv.activation = _act(cfg)
    return _Layer(conv, _probe(conv, shape), _load_depthwise if kind.startswith("Depthwise") else _load_conv)


def _transpose(cfg: dict, shape, n: int, kind: str, k, s, d, bias: bool) -> _Layer:
    op = cfg.get("output_padding")
    op = (None,) * n if op is None else _ints(op, n, f"{kind} {cfg.get('name')!r}: output_padding")
    if any(o is not None and o >= si for o, si in zip(op, s)):
        raise CnnkitError(
            f"{kind} {cfg.get('name')!r} has output_padding={list(op)} with strides={list(s)}; Keras requires "
            "each output_padding below its stride (the config is damaged or edited)"
        )
    cls = {1: Conv1DTranspose, 2: Conv2DTranspose, 3: Conv3DTranspose}[n]
    m = cls(shape[0], cfg["filters"], k, s, bias=bias, dilation=d)  # Keras 2 wrote groups, never used it
    m.padding, m.output_padding, m.trim = transpose_geometry(k, s, d, cfg["padding"], op)
    m.activation = _act(cfg)
    return _Layer(m, _probe(m, shape), _load_conv)


def _pool(cfg: dict, shape: tuple[int, ...], n: int, kind: str) -> _Layer:
    _check_channels_last(cfg, kind)
    k = _ints(cfg.get("pool_size", 2), n, f"{kind} {cfg.get('name')!r}: pool_size", True)
    s = _ints(cfg.get("strides") or k, n, f"{kind} {cfg.get('name')!r}: strides", True)
    is_max = kind.startswith("Max")
    if cfg.get("padding", "valid") == "same":
        m = {
            (1, True): MaxPool1dSame,
            (2, True): MaxPool2dSame,
            (3, True): MaxPool3dSame,
            (1, False): AvgPool1dSame,
            (2, False): AvgPool2dSame,
            (3, False): AvgPool3dSame,
        }[n, is_max](k, s)
    elif cfg.get("padding", "valid") == "valid":
        m = getattr(nn, f"{'Max' if is_max else 'Avg'}Pool{n}d")(k, s)
    else:
        raise CnnkitError(f"{kind} {cfg.get('name')!r} has padding={cfg.get('padding')!r}; 'valid' and 'same' are read")
    return _Layer(m, _probe(m, shape))


def _batchnorm(cfg: dict, shape: tuple[int, ...]) -> _Layer:
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, len(shape)):
        raise CnnkitError(
            f"BatchNormalization {cfg.get('name')!r} normalises axis {axis!r}; only the channels (axis=-1) are read"
        )
    if cfg.get("renorm") or cfg.get("synchronized") or cfg.get("virtual_batch_size"):
        raise CnnkitError(f"BatchNormalization {cfg.get('name')!r} uses renorm/virtual batches; not read")
    scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
    bn = batch_normalization(
        shape, cfg.get("momentum", 0.99), _epsilon(cfg, "BatchNormalization"), affine=scale and center
    )
    if not (scale and center):  # Keras dropped gamma (scale=False) or beta (center=False): only the others learn
        bn.weight = nn.Parameter(torch.ones(shape[0])) if scale else None
        bn.bias = nn.Parameter(torch.zeros(shape[0])) if center else None
    return _Layer(bn, shape, _load_batchnorm)


def _dense(cfg: dict, shape: tuple[int, ...]) -> _Layer:
    m = Dense(shape[0], cfg["units"], bias=bool(cfg.get("use_bias", True)))
    m.activation = _act(cfg)
    nn.init.xavier_uniform_(m.weight)  # Keras' glorot_uniform and zero bias, for a network built untrained
    if m.bias is not None:
        nn.init.zeros_(m.bias)
    return _Layer(m, (cfg["units"], *shape[1:]), _load_dense)


def _reshape(cfg: dict, shape: tuple[int, ...]) -> _Layer:
    target = list(cfg["target_shape"])
    if not all(isinstance(t, int) for t in target):
        raise CnnkitError(f"Reshape {cfg.get('name')!r} has target_shape={target!r}; integers are read")
    keras_shape = shape[1:] + shape[:1] if len(shape) > 1 else shape
    total = math.prod(keras_shape)
    if target.count(-1) == 1:
        known = math.prod(t for t in target if t != -1)
        target[target.index(-1)] = total // known if known else 0
    if math.prod(target) != total:
        raise CnnkitError(
            f"Reshape {cfg.get('name')!r}: target_shape {tuple(cfg['target_shape'])} does not hold "
            f"the {total} values of its input"
        )
    out = tuple(target[-1:] + target[:-1]) if len(target) > 1 else tuple(target)
    return _Layer(Reshape(tuple(target)), out)


def _merge(cfg: dict, shapes: list[tuple[int, ...]], kind: str) -> _Layer:
    op = {
        "Add": "add",
        "Subtract": "subtract",
        "Multiply": "multiply",
        "Average": "average",
        "Maximum": "maximum",
        "Minimum": "minimum",
        "Concatenate": "concatenate",
    }[kind]
    rank = len(shapes[0]) + 1
    dim = 1
    if op == "concatenate":
        axis = cfg.get("axis", -1) % rank
        if axis == 0:
            raise CnnkitError(f"Concatenate {cfg.get('name')!r} joins along the batch axis; not read")
        dim = 1 if axis == rank - 1 or rank == 2 else axis + 1  # Keras (N, H, W, C) -> (N, C, H, W)
    m = Merge(op, dim)
    return _Layer(m, _probe(m, shapes))


def _custom_scale(cfg: dict, shapes: list[tuple[int, ...]]) -> _Layer:
    scale = cfg.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise CnnkitError(f"CustomScaleLayer {cfg.get('name')!r} has scale={scale!r}; a finite number is read")
    if len(shapes) != 2 or shapes[0] != shapes[1]:
        raise CnnkitError(
            f"CustomScaleLayer {cfg.get('name')!r} takes two inputs of one shape (shortcut, residual); "
            f"it gets {len(shapes)} of shapes {shapes}"
        )
    return _Layer(CustomScaleLayer(float(scale)), shapes[0])


def _activation_layer(cfg: dict, shape, kind: str) -> _Layer:
    if kind == "Activation":
        m = _act(cfg)
    elif kind == "ReLU":
        top, slope, threshold = cfg.get("max_value"), cfg.get("negative_slope", 0.0), cfg.get("threshold", 0.0)
        for key, v in (("max_value", top), ("negative_slope", slope), ("threshold", threshold)):
            if v is None and key == "max_value":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise CnnkitError(f"ReLU {cfg.get('name')!r} has {key}={v!r}; a finite number >= 0 is read")
        if slope == 0 and threshold == 0 and top in (None, 6):
            m = nn.ReLU() if top is None else nn.ReLU6()
        elif top is None and threshold == 0:
            m = nn.LeakyReLU(float(slope))
        else:
            m = ReLU(top, slope, threshold)
    elif kind == "LeakyReLU":  # Keras 3 names the slope negative_slope, Keras 2 alpha; both default 0.3
        m = nn.LeakyReLU(cfg.get("negative_slope", cfg.get("alpha", 0.3)))
    elif kind == "ELU":
        m = nn.ELU(cfg.get("alpha", 1.0))
    else:  # Softmax
        if cfg.get("axis", -1) != -1:
            raise CnnkitError(f"Softmax {cfg.get('name')!r} has axis={cfg.get('axis')!r}; only axis=-1 is read")
        m = nn.Softmax(dim=1)
    return _Layer(m, shape)


def _keras_axes(cfg: dict, shape, kind: str) -> list[int]:
    """A config's ``axis`` (an int or a list; negative from the end) as positive Keras axes, the batch
    axis 0 refused: ``shape`` is the input channels first without the batch."""
    axis = cfg.get("axis", -1)
    axes = [axis] if isinstance(axis, int) else axis
    rank = len(shape) + 1
    ok = isinstance(axes, (list, tuple)) and all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
    if not ok or not axes or not all(-rank <= a < rank for a in axes):
        raise CnnkitError(f"{kind} {cfg.get('name')!r} has axis={axis!r}; axes of its {rank}-D input are read")
    out = [a % rank for a in axes]
    if 0 in out:
        raise CnnkitError(f"{kind} {cfg.get('name')!r} has axis={axis!r}, the batch axis; it is not read")
    if len(set(out)) != len(out):
        raise CnnkitError(f"{kind} {cfg.get('name')!r} has axis={axis!r}, one axis twice; it is not read")
    return out


def _cf_dim(axis: int, rank: int) -> int:
    """A positive Keras axis (channels last, batch included) as the channels-first dimension."""
    return 1 if axis == rank - 1 else axis + 1


def _shared_axes(shared, rank: int) -> set[int] | None:
    """PReLU's ``shared_axes`` as positive Keras axes; None when one is not an axis of the input (or is the batch).

    Keras sets ``alpha_shape[axis - 1] = 1`` (the input's shape without the batch), so a negative axis
    counts from the end one place further than elsewhere: -1 shares the axis before the channels.
    """
    axes = [] if shared is None else [shared] if isinstance(shared, int) else shared
    if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        return None
    if not all(0 < a < rank or -rank < a - 1 < -1 for a in axes):
        return None
    return {a if a > 0 else rank + a - 1 for a in axes}


def _prelu(cfg: dict, shape) -> _Layer:
    rank = len(shape) + 1
    axes = _shared_axes(cfg.get("shared_axes"), rank)
    if axes is None:
        raise CnnkitError(
            f"PReLU {cfg.get('name')!r} has shared_axes={cfg.get('shared_axes')!r}; axes 1 to {rank - 1} of "
            "its input (not the batch) are read"
        )
    dims = {_cf_dim(a, rank) for a in axes}
    m = PReLU(tuple(1 if i in dims else size for i, size in enumerate(shape, start=1)))
    return _Layer(m, shape, _load_prelu)


def _epsilon(cfg: dict, kind: str, default: float = 1e-3) -> float:
    eps = cfg.get("epsilon", default)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise CnnkitError(f"{kind} {cfg.get('name')!r} has epsilon={eps!r}; a finite number >= 0 is read")
    return float(eps)


def _layerscale(cfg: dict, shape) -> _Layer:
    dim, init = cfg.get("projection_dim"), cfg.get("init_values", 1.0)
    if dim != shape[0] or isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
        raise CnnkitError(
            f"LayerScale {cfg.get('name')!r} has projection_dim={dim!r}, init_values={init!r}; the {shape[0]} "
            "channels of its input and a finite number are read"
        )
    return _Layer(LayerScale(dim, init), shape, _load_layerscale)


def _layernorm(cfg: dict, shape) -> _Layer:
    axes = _keras_axes(cfg, shape, "LayerNormalization")
    rank = len(shape) + 1
    dims = sorted(_cf_dim(a, rank) for a in axes)
    scale, center, rms = bool(cfg.get("scale", True)), bool(cfg.get("center", True)), bool(cfg.get("rms_scaling"))
    param = tuple(size if i in dims else 1 for i, size in enumerate(shape, start=1))
    m = LayerNormalization(tuple(dims), param, _epsilon(cfg, "LayerNormalization"), scale, center, rms)
    return _Layer(m, shape, _load_layernorm if m.weight is not None or m.bias is not None else None)


def _groupnorm(cfg: dict, shape) -> _Layer:
    if _keras_axes(cfg, shape, "GroupNormalization") != [len(shape)]:
        raise CnnkitError(
            f"GroupNormalization {cfg.get('name')!r} has axis={cfg.get('axis')!r}; only the channels (axis=-1) are read"
        )
    groups, c = cfg.get("groups", 32), shape[0]
    groups = c if groups == -1 else groups
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c % groups:
        raise CnnkitError(
            f"GroupNormalization {cfg.get('name')!r} has groups={cfg.get('groups')!r}; a divisor of its {c} "
            "channels (or -1) is read"
        )
    scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
    gn = nn.GroupNorm(groups, c, eps=_epsilon(cfg, "GroupNormalization"))
    if not scale:  # Keras drops gamma (scale=False) or beta (center=False)
        gn.weight = None
    if not center:
        gn.bias = None
    return _Layer(gn, shape, _load_groupnorm if scale or center else None)


def _normalization(cfg: dict, shape) -> _Layer:
    axis = cfg.get("axis", -1)
    if axis not in (-1, [-1], (-1,), len(shape), [len(shape)]):
        raise CnnkitError(f"Normalization {cfg.get('name')!r} normalises axis {axis!r}; only the channels are read")
    m = Normalization(shape[0], bool(cfg.get("invert", False)), cfg.get("mean"), cfg.get("variance"))
    return _Layer(m, shape, None if cfg.get("mean") is not None else _load_normalization)


def _upsampling(cfg: dict, shape) -> _Layer:
    _check_channels_last(cfg, "UpSampling2D")
    mode = cfg.get("interpolation", "nearest")
    if mode not in ("nearest", "bilinear"):
        raise CnnkitError(f"UpSampling2D {cfg.get('name')!r} has interpolation={mode!r}; nearest and bilinear are read")
    m = UpSampling2D(_ints(cfg.get("size", 2), 2, f"UpSampling2D {cfg.get('name')!r}: size", True), mode)
    return _Layer(m, _probe(m, shape))


def _pairs(v, n: int, what: str) -> tuple[tuple[int, int], ...]:
    """Keras' padding/cropping argument as (before, after) per axis: an int for all, one int per axis
    (both sides), or a pair per axis; for one axis, one pair."""
    if n == 1:
        return (_ints(v, 2, what),)
    if isinstance(v, int):
        return ((v, v),) * n
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise CnnkitError(f"{what} must be an int, {n} ints or {n} pairs of ints. Received: {v!r}")
    return tuple(_ints(p, 2, what) for p in v)


def _spatial_sizes(cfg: dict, shape, n: int, kind: str) -> _Layer:
    """``ZeroPadding{n}D`` and ``Cropping{n}D``: (before, after) sizes per spatial axis."""
    if kind != "Cropping1D":  # Cropping1D takes no data_format: it is channels last
        _check_channels_last(cfg, kind)
    key = "cropping" if kind.startswith("Cropping") else "padding"
    what = f"{kind} {cfg.get('name')!r}: {key}"
    sizes = _pairs(cfg.get(key, 0 if kind == "Cropping2D" else 1), n, what)
    if len(shape) != n + 1:
        raise CnnkitError(f"{kind} {cfg.get('name')!r} takes {n} spatial axes; its input has shape {shape}")
    if key == "cropping":
        small = [(size, pair) for size, pair in zip(shape[1:], sizes) if sum(pair) >= size]
        if small:
            raise CnnkitError(f"{what} {small[0][1]} leaves nothing of an axis of size {small[0][0]}")
        m = {1: Cropping1D, 2: Cropping2D, 3: Cropping3D}[n](sizes)
    else:
        m = {1: ZeroPadding1D, 2: ZeroPadding2D, 3: ZeroPadding3D}[n](sizes)
    return _Layer(m, _probe(m, shape))


def _upsampling1d(cfg: dict, shape) -> _Layer:
    size = cfg.get("size", 2)
    if isinstance(size, (list, tuple)) and len(size) == 1:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CnnkitError(f"UpSampling1D {cfg.get('name')!r} has size={size!r}; a positive integer is read")
    m = UpSampling1D(size)
    return _Layer(m, _probe(m, shape))


def _permute(cfg: dict, shape) -> _Layer:
    dims = cfg.get("dims")
    axes = list(range(1, len(shape) + 1))
    if (
        not isinstance(dims, (list, tuple))
        or sorted(d if isinstance(d, int) and not isinstance(d, bool) else -1 for d in dims) != axes
    ):
        raise CnnkitError(
            f"Permute {cfg.get('name')!r} has dims={dims!r}; a permutation of the axes {axes} (not the batch) is read"
        )
    m = Permute(tuple(dims))
    return _Layer(m, _probe(m, shape))


# layers that pass their input through at inference: noise, regularisation and augmentation
# (finetuning trains without them: the augmentation is the run's own)
_INFERENCE_IDENTITY = (
    "Identity",
    "ActivityRegularization",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
)


def _simple(cfg: dict, shape, kind: str) -> _Layer:
    if kind == "Dropout":
        return _Layer(nn.Dropout(float(cfg.get("rate", 0.5))), shape)
    if kind.startswith("SpatialDropout"):  # whole channels dropped while training, nothing at inference
        return _Layer(getattr(nn, f"Dropout{kind[-2]}d")(float(cfg.get("rate", 0.5))), shape)
    if kind in _INFERENCE_IDENTITY:
        return _Layer(nn.Identity(), shape)
    if kind == "Flatten":
        return _Layer(Flatten(), (math.prod(shape),))
    if kind == "Rescaling":
        return _Layer(Rescaling(cfg.get("scale", 1.0), cfg.get("offset", 0.0)), shape)
    if kind.startswith("Global"):
        _check_channels_last(cfg, kind)
        keep = bool(cfg.get("keepdims", False))
        m = GlobalPool("max" if "Max" in kind else "avg", keep)
        return _Layer(m, (shape[0],) + ((1,) * (len(shape) - 1) if keep else ()))
    raise AssertionError(kind)


# Keras class name -> builder(config, input shape(s) channels first without the batch) -> _Layer.
# The allow-list: nothing else is built, and nothing here runs code named by the file.
LAYERS: dict[str, Callable[[dict, object], _Layer]] = {
    **{f"Conv{n}D": partial(_conv, n=n, kind=f"Conv{n}D") for n in (1, 2, 3)},
    **{k: partial(_conv, n=2, kind=k) for k in ("Conv2DTranspose", "SeparableConv2D", "DepthwiseConv2D")},
    "Conv3DTranspose": partial(_conv, n=3, kind="Conv3DTranspose"),
    **{k: partial(_conv, n=1, kind=k) for k in ("Conv1DTranspose", "SeparableConv1D", "DepthwiseConv1D")},
    **{f"{p}Pooling{n}D": partial(_pool, n=n, kind=f"{p}Pooling{n}D") for p in ("Max", "Average") for n in (1, 2, 3)},
    **{
        f"Global{p}Pooling{n}D": partial(_simple, kind=f"Global{p}Pooling{n}D")
        for p in ("Average", "Max")
        for n in (1, 2, 3)
    },
    **{k: partial(_simple, kind=k) for k in ("Dropout", "Flatten", "Rescaling")},
    **{k: partial(_simple, kind=k) for k in ("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")},
    **{k: partial(_simple, kind=k) for k in _INFERENCE_IDENTITY},
    **{
        k: partial(_merge, kind=k)
        for k in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
    },
    **{k: partial(_activation_layer, kind=k) for k in ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax")},
    "BatchNormalization": _batchnorm,
    "Dense": _dense,
    "Normalization": _normalization,
    "PReLU": _prelu,
    "LayerNormalization": _layernorm,
    "LayerScale": _layerscale,
    "CustomScaleLayer": _custom_scale,
    "GroupNormalization": _groupnorm,
    **{f"ZeroPadding{n}D": partial(_spatial_sizes, n=n, kind=f"ZeroPadding{n}D") for n in (1, 2, 3)},
    **{f"Cropping{n}D": partial(_spatial_sizes, n=n, kind=f"Cropping{n}D") for n in (1, 2, 3)},
    "UpSampling1D": _upsampling1d,
    "UpSampling2D": _upsampling,
    "Permute": _permute,
    "Reshape": _reshape,
}
# the names older Keras versions wrote for the same layers
_ALIASES = {
    "MaxPool1D": "MaxPooling1D",
    "MaxPool2D": "MaxPooling2D",
    "MaxPool3D": "MaxPooling3D",
    "AvgPool1D": "AveragePooling1D",
    "AvgPool2D": "AveragePooling2D",
    "AvgPool3D": "AveragePooling3D",
    "GlobalAvgPool1D": "GlobalAveragePooling1D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
    "GlobalAvgPool3D": "GlobalAveragePooling3D",
    "GlobalMaxPool1D": "GlobalMaxPooling1D",
    "GlobalMaxPool2D": "GlobalMaxPooling2D",
    "GlobalMaxPool3D": "GlobalMaxPooling3D",
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "Deconvolution2D": "Conv2DTranspose",
    "SeparableConvolution2D": "SeparableConv2D",
    "SeparableConvolution1D": "SeparableConv1D",
    "Convolution1DTranspose": "Conv1DTranspose",
    "Convolution2DTranspose": "Conv2DTranspose",
    "Convolution3DTranspose": "Conv3DTranspose",
}
# layers Keras' own applications define (and register) in their modules, read as Keras' layers are
_APPLICATION_LAYERS = {
    "LayerScale": "keras.src.applications.convnext",
    "CustomScaleLayer": "keras.src.applications.inception_resnet_v2",
}
# the layers that take several inputs
_MERGING = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "CustomScaleLayer")


def _probe(module: nn.Module, shape) -> tuple[int, ...]:
    """The output shape (no batch) of ``module`` on inputs of ``shape`` (one shape, or a list of them).

    Run on the meta device (shapes only, nothing allocated), so a config that makes a layer's output
    huge is refused before any memory is used; a layer the meta device cannot run is run for real.
    """
    out = None
    tensors = [*module.named_parameters(), *module.named_buffers()]
    state = {k: torch.empty_like(v, device="meta") for k, v in tensors}
    module.eval()
    with torch.no_grad():
        try:
            xs = [torch.zeros(1, *s, device="meta") for s in shape] if isinstance(shape, list) else None
            args = (xs,) if xs is not None else (torch.zeros(1, *shape, device="meta"),)
            out = torch.func.functional_call(module, state, args)
        except Exception:  # noqa: BLE001 -- a layer the meta device cannot run: run for real (its own errors)
            out = (
                module([torch.zeros(1, *s) for s in shape])
                if isinstance(shape, list)
                else module(torch.zeros(1, *shape))
            )
    if isinstance(out, tuple):
        raise CnnkitError(f"the nested model {getattr(module, 'keras_name', '')!r} has several outputs; not read")
    size = math.prod(out.shape[1:])
    if size > MAX_ACTIVATION:
        raise CnnkitError(
            f"its output would be {tuple(out.shape[1:])} = {size:,} values per example (at most "
            f"{MAX_ACTIVATION:,} are built); the config's sizes are damaged or edited"
        )
    return tuple(out.shape[1:])


def _int(v, default: int = 0) -> int:
    v = default if v is None else v
    return max(v, 0) if isinstance(v, int) and not isinstance(v, bool) else 0


def _ints_prod(v, n: int) -> int:
    v = [v] * n if isinstance(v, int) else v
    return math.prod(_int(i, 1) for i in v) if isinstance(v, (list, tuple)) else 1


def _weights_needed(kind: str, cfg: dict, shape) -> int:
    """How many weight values the layer a config describes holds, read off the config before building it."""
    c = _int(shape[0]) if isinstance(shape, tuple) and shape else 0
    n = 1 if "1D" in kind else 3 if "3D" in kind else 2
    k = _ints_prod(cfg.get("kernel_size", 1), n)
    bias = bool(cfg.get("use_bias", True))  # as the builders read it
    if kind == "Dense":
        units = _int(cfg.get("units"))
        return c * units + units * bias
    if kind in ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        filters = _int(cfg.get("filters"))
        return c * filters * k // max(_int(cfg.get("groups"), 1), 1) + filters * bias
    if kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        mid = c * _int(cfg.get("depth_multiplier"), 1)
        return mid * k + mid * bias
    if kind in ("SeparableConv1D", "SeparableConv2D"):  # the depthwise part has no bias
        mid, filters = c * _int(cfg.get("depth_multiplier"), 1), _int(cfg.get("filters"))
        return mid * k + mid * filters + filters * bias
    if kind in ("BatchNormalization", "Normalization"):
        return 4 * c
    if kind == "LayerScale":
        return c
    scale, center, rms = bool(cfg.get("scale", True)), bool(cfg.get("center", True)), bool(cfg.get("rms_scaling"))
    if kind == "GroupNormalization":  # gamma (scale), beta (center)
        return (scale + center) * c
    if kind in ("LayerNormalization", "PReLU") and isinstance(shape, tuple):
        # Keras' sizes (channels last, no batch): the normalised axes' (gamma, beta), or the input's
        # with 1 on the shared axes (alpha)
        sizes = [_int(d) for d in (*shape[1:], *shape[:1])]
        if kind == "PReLU":
            shared = _shared_axes(cfg.get("shared_axes"), len(sizes) + 1) or set()
            return math.prod(size for i, size in enumerate(sizes, start=1) if i not in shared)
        axes = cfg.get("axis", -1)
        axes = [axes] if isinstance(axes, int) else axes if isinstance(axes, (list, tuple)) else []
        picked = {a % (len(sizes) + 1) for a in axes if isinstance(a, int)}
        arrays = (scale or rms) + (center and not rms)  # gamma, beta
        return arrays * math.prod(size for i, size in enumerate(sizes, start=1) if i in picked)
    return 0


def _spend(kind: str, cfg: dict, shape, lname: str) -> None:
    """Refuse a layer whose config asks for more weights than the file stores (before allocating them)."""
    budget = _BUDGET.get()
    if budget is None:
        budget = [MAX_WEIGHTS, f"at most {MAX_WEIGHTS:,} are built"]
    need = _weights_needed(kind, cfg, shape)
    if need > budget[0]:
        raise CnnkitError(
            f"layer {lname!r} ({kind}) would hold {need:,} weight values; {budget[1]}: the config's "
            "sizes are damaged or edited"
        )
    budget[0] -= need


# ----------------------------------------------------------------------------- weights: Keras -> PyTorch


def _take(arrays: list[np.ndarray], n: int) -> list[torch.Tensor]:
    if len(arrays) != n:
        raise CnnkitError(
            f"it has {n} weight arrays, the file holds {len(arrays)}; the weights do not fit the model's description"
        )
    return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]


def _set(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise CnnkitError(
            f"{what}: the file holds shape {tuple(value.shape)}, the layer needs {tuple(param.shape)}; "
            "the weights do not fit the model's description"
        )
    with torch.no_grad():
        param.copy_(value)


def _kernel(k: torch.Tensor) -> torch.Tensor:
    """(*spatial, C_in, C_out) -> (C_out, C_in, *spatial): Keras' kernel in PyTorch's layout.

    For a transposed convolution Keras stores (*spatial, C_out, C_in) and PyTorch wants
    (C_in, C_out, *spatial): the same permutation.
    """
    n = k.dim() - 2
    return k.permute(n + 1, n, *range(n))


def _load_conv(m: nn.Module, arrays) -> None:
    ts = _take(arrays, 1 + (m.bias is not None))
    _set(m.weight, _kernel(ts[0]), "kernel")
    if m.bias is not None:
        _set(m.bias, ts[1], "bias")


def _depthwise(k: torch.Tensor) -> torch.Tensor:
    # (*spatial, C, M) -> (C * M, 1, *spatial): output channel c * M + m filters input channel c
    *spatial, c, mult = k.shape
    n = len(spatial)
    return k.reshape(*spatial, c * mult).permute(n, *range(n)).unsqueeze(1)


def _load_depthwise(m: nn.Module, arrays) -> None:
    ts = _take(arrays, 1 + (m.bias is not None))
    _set(m.weight, _depthwise(ts[0]), "depthwise kernel")
    if m.bias is not None:
        _set(m.bias, ts[1], "bias")


def _load_separable(m: SeparableConv2D, arrays) -> None:
    ts = _take(arrays, 2 + (m.pointwise.bias is not None))
    _set(m.depthwise.weight, _depthwise(ts[0]), "depthwise kernel")
    _set(m.pointwise.weight, _kernel(ts[1]), "pointwise kernel")
    if m.pointwise.bias is not None:
        _set(m.pointwise.bias, ts[2], "bias")


def _load_dense(m: Dense, arrays) -> None:
    ts = _take(arrays, 1 + (m.bias is not None))
    _set(m.weight, ts[0].t(), "kernel")
    if m.bias is not None:
        _set(m.bias, ts[1], "bias")


def _load_batchnorm(m: nn.Module, arrays) -> None:
    # Keras' order: gamma (if scale), beta (if center), moving_mean, moving_variance
    targets = [p for p in (m.weight, m.bias) if p is not None] + [m.running_mean, m.running_var]
    for t, v in zip(targets, _take(arrays, len(targets))):
        _set(t, v, "batch normalization")


def _load_prelu(m: PReLU, arrays) -> None:
    (alpha,) = _take(arrays, 1)
    _set(m.alpha, alpha.movedim(-1, 0) if alpha.dim() > 1 else alpha, "alpha")


def _load_layerscale(m: LayerScale, arrays) -> None:
    (gamma,) = _take(arrays, 1)
    _set(m.gamma, gamma, "layer scale")


def _load_layernorm(m: LayerNormalization, arrays) -> None:
    # gamma and beta hold the normalised axes' sizes in the order Keras sorts the axes as written (-1
    # before 1); Keras lays their values out over the input's axes in order, as a reshape does
    targets = [p for p in (m.weight, m.bias) if p is not None]
    for t, v in zip(targets, _take(arrays, len(targets))):
        keras_shape = (*t.shape[1:], t.shape[0]) if t.dim() > 1 else tuple(t.shape)
        if v.numel() != t.numel():
            raise CnnkitError(
                f"layer normalization: the file holds shape {tuple(v.shape)}, the layer needs the sizes "
                f"{keras_shape}; the weights do not fit the model's description"
            )
        v = v.reshape(keras_shape)
        _set(t, v.movedim(-1, 0) if v.dim() > 1 else v, "layer normalization")


def _load_groupnorm(m: nn.GroupNorm, arrays) -> None:
    targets = [p for p in (m.weight, m.bias) if p is not None]
    for t, v in zip(targets, _take(arrays, len(targets))):
        _set(t, v, "group normalization")


def _load_normalization(m: Normalization, arrays) -> None:
    if len(arrays) != 3:
        raise CnnkitError(f"it has mean, variance and count, the file holds {len(arrays)} arrays")
    c = m.mean.numel()
    for t, v in ((m.mean, arrays[0]), (m.variance, arrays[1])):
        v = np.asarray(v, np.float32).ravel()
        _set(t, torch.from_numpy(np.array(np.broadcast_to(v, (c,)))), "normalization")
    m.count.fill_(int(np.asarray(arrays[2]).ravel()[0]) if np.asarray(arrays[2]).size else 0)


def _num_vars(rec: _Layer) -> int:
    """How many arrays the file holds for this layer (what :func:`_assign` hands its loader)."""
    if rec.load is None:
        return 0
    m = rec.module
    if isinstance(m, SeparableConv2D):
        return 2 + (m.pointwise.bias is not None)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return (m.weight is not None) + (m.bias is not None) + 2
    if isinstance(m, Normalization):
        return 3
    if isinstance(m, (PReLU, LayerScale)):
        return 1
    if isinstance(m, (LayerNormalization, nn.GroupNorm)):
        return (m.weight is not None) + (m.bias is not None)
    return 1 + (m.bias is not None)


# ----------------------------------------------------------------------------- the graph


def _sequential_as_dict(entry):
    """A model entry whose Sequential config is a list of layers (Keras 2.2.2 and older wrote it so, as
    Keras' ``Sequential.from_config`` still reads it) as ``{"name", "layers"}``; any other entry as it is."""
    if isinstance(entry, dict) and entry.get("class_name") == "Sequential" and isinstance(entry.get("config"), list):
        return {**entry, "config": {"name": entry.get("name") or "sequential", "layers": entry["config"]}}
    return entry


def _unwrap(layer: dict) -> tuple[str, dict, str]:
    """(class name, its config, its name) of one entry of a model's ``layers``."""
    layer = _sequential_as_dict(layer)
    if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
        raise CnnkitError("a layer entry in the model's config is not a JSON object with a 'config'")
    kind = str(layer.get("class_name"))
    cfg = layer["config"]
    name = layer.get("name") or cfg.get("name")
    if not isinstance(name, str) or not name:
        raise CnnkitError(f"a {kind} layer in the model's config has no name")
    _check_origin(layer, kind, name)
    return _ALIASES.get(kind, kind), cfg, name


# keras.ops on two tensors (``x + y``) that compute what the merge layer of that name computes
_OPS_AS_MERGE = ("Add", "Subtract", "Multiply", "Maximum", "Minimum")
# keras.ops between a tensor and a number that cnnkit reads (class name -> Scalar's op)
_SCALAR_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "TrueDivide": "divide", "Divide": "divide"}


def _check_origin(entry: dict, kind: str, name: str) -> None:
    """Only Keras' own layers and models: Keras 3 configs name each class's module and registration.

    A custom class keeps its own name (``class MyConv(Conv2D)``, or a subclass called ``Conv2D``) and
    an operation on a Keras tensor (``x + 3.0``) is saved as ``keras.src.ops`` ``Add``: built from the
    name alone they would compute something else than in Keras. Keras 2 and legacy ``.h5`` entries
    say neither (nothing to check).
    """
    if "module" not in entry:
        return
    module, registered = entry.get("module"), entry.get("registered_name")
    where = module if isinstance(module, str) else ""
    if where.startswith(("keras.src.ops", "keras.ops")):
        if kind in _OPS_AS_MERGE or kind in _SCALAR_OPS:
            return  # its arguments are read where its call is: two tensors, or a tensor and a number
        raise CnnkitError(
            f"layer {name!r} is the keras.ops operation {kind} ({where}), recorded by applying an op to a "
            "Keras tensor in a functional model; cnnkit reads Keras layers only: write it with layers "
            "(Rescaling, ReLU, Add, Multiply...) and save the model again"
        )
    own = registered is None and (where == "keras" or where.startswith("keras."))
    model = kind in _MODELS and where.startswith("keras.") and registered == kind
    application = _APPLICATION_LAYERS.get(kind) == where and registered == kind
    if not (own or model or application):
        same_name = f", not Keras' own {kind}" if kind in LAYERS or kind in _MODELS else ""
        raise CnnkitError(
            f"layer {name!r} is a custom class {kind} (module {module!r}, registered as {registered!r})"
            f"{same_name}: cnnkit reads Keras' layers only and never runs code from a file; "
            "rebuild the model from keras.layers without it"
        )


def _constants(node) -> list:
    """The values other than Keras tensors among a Keras 3 call's positional arguments (``x + 3.0``: [3.0])."""
    if not isinstance(node, dict):
        return []  # Keras 2: tensors only (an op with a constant is a TFOpLambda, refused by name)

    def walk(x):
        if isinstance(x, dict) and x.get("class_name") == "__keras_tensor__":
            return []
        if isinstance(x, (list, tuple)):
            return [v for item in x for v in walk(item)]
        return [x]

    return walk(node.get("args", []))


def _scalar_call(kind: str, node, constants: list, args: list, lname: str) -> dict:
    """Scalar's settings for a keras.ops call of a tensor and one number (``x + 3.0``, ``1 / x``)."""
    value = constants[0] if len(constants) == 1 else None
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind not in _SCALAR_OPS or len(args) != 1 or not number:
        raise CnnkitError(
            f"layer {lname!r} ({kind}) is keras.ops arithmetic on {len(args)} tensor(s) and "
            f"{str(constants)[:40]}; cnnkit reads a tensor with one number by +, -, * or /, and merge layers "
            "of tensors: write it with layers (Rescaling, Add, Multiply...) and save the model again"
        )
    first = node.get("args", [None])[0] if isinstance(node, dict) else None
    tensor_first = isinstance(first, dict) and first.get("class_name") == "__keras_tensor__"
    return {"op": _SCALAR_OPS[kind], "value": float(value), "tensor_first": tensor_first}


def _refuse(kind: str, name: str) -> CnnkitError:
    if kind == "Lambda":
        why = "it holds Python code, which cnnkit never runs from a file"
    elif kind == "TFOpLambda" or kind.startswith(("__", "TF")):
        why = "it is a TensorFlow operation recorded as code"
    else:
        why = "it is not in the table of layers cnnkit reads"
    kind = kind[:60]
    # an acronym is read letter by letter ("an LSTM", "an RNN", "a GRU"), "Uni" as "you" ("a UnitNormalization")
    acronym = kind[:2].isupper()
    vowel = kind[:1] in ("AEFHILMNORSX" if acronym else "AEIOUaeiou") and not kind.lower().startswith("uni")
    article = "an" if vowel else "a"
    return CnnkitError(
        f"layer {name!r} is {article} {kind}: {why}; rebuild the model without it (the "
        f"{len(LAYERS) + len(_MODELS) + 1} Keras classes cnnkit reads: cnnkit.models.keras.LAYERS, models and InputLayer)"
    )


def _input_shape(cfg) -> tuple | None:
    """The Keras input shape (no batch) stated by an InputLayer's or a first layer's config."""
    for key in ("batch_shape", "batch_input_shape"):
        if isinstance(cfg, dict) and cfg.get(key) is not None:
            return _after_batch(cfg[key], key)
    return None


def _after_batch(shape, key: str) -> tuple:
    """A shape with its batch axis (``[None, 28, 28, 1]``) as the sizes after it: ``(28, 28, 1)``."""
    if not isinstance(shape, (list, tuple)) or not shape:
        raise CnnkitError(f"the config's {key} is {str(shape)[:60]}, not a list of sizes; the config is malformed")
    return tuple(shape[1:])


def _channels_first(keras_shape, where: str) -> tuple[int, ...]:
    """Keras (H, W, C) (None allowed for the spatial sizes) -> PyTorch (C, H, W)."""
    shape = [PROBE_SIDE if d is None else d for d in keras_shape]
    if not shape or keras_shape[-1] is None or not all(isinstance(d, int) and 0 < d <= 1 << 16 for d in shape):
        raise CnnkitError(
            f"{where}: the input shape {tuple(keras_shape)} is not a list of positive sizes "
            "with a known number of channels"
        )
    if math.prod(shape) > MAX_ACTIVATION:
        raise CnnkitError(
            f"{where}: the input shape {tuple(keras_shape)} holds {math.prod(shape):,} values per example "
            f"(at most {MAX_ACTIVATION:,} are built); the config's sizes are damaged or edited"
        )
    return tuple(shape[-1:] + shape[:-1]) if len(shape) > 1 else tuple(shape)


def _safe_name(name: str, taken: set[str]) -> str:
    """A Keras layer name usable as a PyTorch child name (no dots; not an nn.Module attribute)."""
    base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    if base[0].isdigit() or hasattr(nn.Module, base) or base in ("inputs", "nodes", "outputs", "keras_name"):
        base = f"layer_{base}"
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def _history(x) -> list[tuple[str, int]]:
    """The (layer name, node index) of every tensor named in a node's arguments, in order.

    Keras 3: ``{"class_name": "__keras_tensor__", "config": {"keras_history": [name, node, tensor]}}``
    nested in lists; Keras 2: ``[name, node, tensor, kwargs]`` lists.
    """
    if isinstance(x, dict):
        if x.get("class_name") == "__keras_tensor__":
            h = x["config"].get("keras_history") if isinstance(x.get("config"), dict) else None
            if not _is_reference(h):
                raise CnnkitError(f"a tensor's keras_history is {str(h)[:60]}, not [layer, node, tensor]")
            return [(h[0], h[1])]
        return [t for v in x.values() for t in _history(v)]
    if isinstance(x, list):
        if _is_reference(x):
            return [(x[0], x[1])]
        return [t for v in x for t in _history(v)]
    return []


def _is_reference(x) -> bool:
    """Whether ``x`` names a tensor as Keras does: ``[layer name, node index, tensor index, ...]``."""
    return (
        isinstance(x, list)
        and len(x) >= 3
        and isinstance(x[0], str)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x[1:3])
    )


def _node_inputs(node) -> list[tuple[str, int]]:
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}; tensors in kwargs are ignored
        return _history(node.get("args", []))
    return _history(node)  # Keras 2: [[name, node, tensor, kwargs], ...]


def _endpoints(spec) -> list[tuple[str, int]]:
    """``input_layers`` / ``output_layers``: one [name, node, tensor] or a list of them (or a dict)."""
    if isinstance(spec, dict):
        spec = list(spec.values())
    if isinstance(spec, list) and len(spec) >= 3 and isinstance(spec[0], str):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise CnnkitError("the model's config names no inputs or outputs")
    bad = [s for s in spec if not _is_reference(s)]
    if bad:
        raise CnnkitError(
            f"the model's config names an input or output as {str(bad[0])[:60]}, not [layer, node, tensor]; "
            "the config is malformed"
        )
    return [(s[0], s[1]) for s in spec]


def _build_model(
    config: dict, input_shapes: list[tuple[int, ...]] | None, depth: int = 0
) -> tuple[KerasNetwork, list[tuple[int, ...]], list[tuple[str, str, _Layer]]]:
    """A Keras model config -> (network, its input shapes channels first, records in config order).

    A record is (Keras class name, layer name, _Layer); a nested model's record holds its own records.
    ``input_shapes`` is given for a nested model (what its caller feeds it).
    """
    if depth > 8:
        raise CnnkitError("the Keras model nests models more than 8 deep")
    config = _sequential_as_dict(config)
    kind = config.get("class_name")
    cfg = config.get("config")
    if kind not in _MODELS or not isinstance(cfg, dict):
        raise CnnkitError(f"the file describes a {str(kind)[:40]!r}, not a Keras Sequential or functional model")
    _check_origin(config, kind, str(cfg.get("name", "model")))
    layers = cfg.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise CnnkitError(f"the model's config has no list of layers (or more than {MAX_LAYERS})")
    name = str(cfg.get("name", "model"))
    if kind == "Sequential":
        return _build_sequential(name, cfg, layers, input_shapes, depth)
    return _build_functional(name, cfg, layers, input_shapes, depth)


def _build_layer(kind: str, cfg: dict, lname: str, layer: dict, shape, depth: int) -> _Layer:
    if kind in _MODELS:
        net, _, records = _build_model(layer, shape if isinstance(shape, list) else [shape], depth + 1)
        out = _probe_net(net, shape if isinstance(shape, list) else [shape])
        return _Layer(net, out, None, records)
    if kind not in LAYERS:
        raise _refuse(kind, lname)
    if (kind in _MERGING) != isinstance(shape, list):
        got = "several inputs" if isinstance(shape, list) else "one input"
        raise CnnkitError(
            f"layer {lname!r} ({kind}) gets {got}"
            f"; {'a merge layer takes several' if kind in _MERGING else 'it takes one'}"
        )
    _spend(kind, cfg, shape, lname)
    try:
        rec = LAYERS[kind](cfg, shape)
        # every layer runs once (on the meta device): a config value of the wrong type or size (an
        # epsilon below 0, a slope that is text, a Rescaling of 2 values for 4 channels) is refused
        # here, not by a traceback at the first prediction
        _probe(rec.module, shape)
        return rec
    except CnnkitError as exc:
        text = str(exc)
        raise CnnkitError(f"layer {lname!r} ({kind}): {text}" if text.startswith("its output") else text) from None
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError) as exc:
        text = short_error(exc)
        raise CnnkitError(
            f"layer {lname!r} ({kind}) cannot be built from its config on input {shape} (channels first): {text}"
        ) from None


def _probe_net(net: KerasNetwork, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    with torch.no_grad():
        out = net.eval()(*[torch.zeros(1, *s) for s in shapes])
    if isinstance(out, tuple):
        raise CnnkitError(f"the nested model {net.keras_name!r} has several outputs; not read")
    return tuple(out.shape[1:])


def _build_sequential(name, cfg, layers, input_shapes, depth):
    if input_shapes is None:
        first = layers[0] if layers and isinstance(layers[0], dict) else {}
        keras_shape = _input_shape(first.get("config") or {})
        if keras_shape is None and cfg.get("build_input_shape"):
            keras_shape = _after_batch(cfg["build_input_shape"], "build_input_shape")
        if keras_shape is None:
            build = first.get("build_config")
            build = build if isinstance(build, dict) else {}
            keras_shape = _after_batch(build["input_shape"], "input_shape") if build.get("input_shape") else None
        if keras_shape is None:
            raise CnnkitError(
                f"the Sequential model {name!r} states no input shape; build it in Keras "
                "(keras.Input(shape) as its first layer) before saving"
            )
        input_shapes = [_channels_first(keras_shape, name)]
    shape = input_shapes[0]
    taken: set[str] = set()
    modules, nodes, records, names = {}, [], [], {}
    prev = "input:0"
    for layer in layers:
        kind, lcfg, lname = _unwrap(layer)
        if kind == "InputLayer":
            continue
        rec = _build_layer(kind, lcfg, lname, layer, shape, depth)
        child = _safe_name(lname, taken)
        modules[child], names[child] = rec.module, lname
        nodes.append((f"{child}:0", child, [prev]))
        records.append((kind, lname, rec))
        prev, shape = f"{child}:0", rec.shape
    return KerasNetwork(name, ["input:0"], nodes, [prev], modules, names), input_shapes, records


def _build_functional(name, cfg, layers, input_shapes, depth):
    entries = [_unwrap(layer) + (layer,) for layer in layers]
    by_name = {e[2]: e for e in entries}
    if len(by_name) != len(entries):
        raise CnnkitError(f"the model {name!r} names two layers alike")
    inputs = _endpoints(cfg.get("input_layers"))
    outputs = _endpoints(cfg.get("output_layers"))
    taken: set[str] = set()
    child_of = {e[2]: _safe_name(e[2], taken) for e in entries}
    shapes: dict[str, tuple[int, ...]] = {}
    input_keys = []
    for i, (lname, node) in enumerate(inputs):
        if lname not in by_name or by_name[lname][0] != "InputLayer":
            raise CnnkitError(f"the model {name!r} takes input from {lname!r}, which is not one of its InputLayers")
        key = f"{child_of[lname]}:{node}"
        if input_shapes is not None:
            if i >= len(input_shapes):
                raise CnnkitError(f"the nested model {name!r} takes more inputs than it is given")
            shapes[key] = input_shapes[i]
        else:
            keras_shape = _input_shape(by_name[lname][1])
            if keras_shape is None:
                raise CnnkitError(f"the input {lname!r} of {name!r} states no shape")
            shapes[key] = _channels_first(keras_shape, lname)
        input_keys.append(key)
    # every call of every layer, run once all its inputs exist (the config's order, then retries)
    pending = []
    for kind, lcfg, lname, layer in entries:
        if kind == "InputLayer":
            continue
        calls = layer.get("inbound_nodes") or []
        if not isinstance(calls, list):
            raise CnnkitError(f"layer {lname!r} has malformed inbound_nodes")
        for idx, node in enumerate(calls):
            try:
                args = [f"{child_of.get(n, n)}:{k}" for n, k in _node_inputs(node)]
            except CnnkitError as exc:
                raise CnnkitError(f"layer {lname!r} has malformed inbound_nodes: {exc}") from None
            if not args:
                raise CnnkitError(f"layer {lname!r} is called on no tensor; the config is malformed")
            constants = _constants(node)
            if constants or kind in ("TrueDivide", "Divide"):
                scalar = _scalar_call(kind, node, constants, args, lname)
                pending.append(("Scalar", scalar, lname, layer, idx, args))
                continue
            pending.append((kind, lcfg, lname, layer, idx, args))
    modules, nodes, records, built = {}, [], [], {}
    while pending:
        ready = [p for p in pending if all(a in shapes for a in p[5])]
        if not ready:
            missing = sorted({a for p in pending for a in p[5] if a not in shapes})[:3]
            raise CnnkitError(
                f"the model {name!r} has layers fed by tensors no layer makes ({', '.join(missing)}); "
                "the config is malformed"
            )
        for p in ready:
            kind, lcfg, lname, layer, idx, args = p
            in_shape = [shapes[a] for a in args] if kind in _MERGING or len(args) > 1 else shapes[args[0]]
            child = child_of[lname]
            if kind == "Scalar":  # keras.ops arithmetic with a number: no weights, one module per call
                module = Scalar(**lcfg)
                rec = built.setdefault(lname, _Layer(module, _probe(module, in_shape)))
                modules[child] = rec.module
                out = rec.shape
            elif lname in built:  # a shared layer called again: same module, same weights
                rec = built[lname]
                out = (
                    _probe(rec.module, in_shape)
                    if not isinstance(rec.module, KerasNetwork)
                    else _probe_net(rec.module, in_shape if isinstance(in_shape, list) else [in_shape])
                )
            else:
                rec = _build_layer(kind, lcfg, lname, layer, in_shape, depth)
                built[lname] = rec
                modules[child] = rec.module
                out = rec.shape
            shapes[f"{child}:{idx}"] = out
            nodes.append((f"{child}:{idx}", child, args))
        pending = [p for p in pending if p not in ready]
    # records in the config's order: the order Keras saves the weights in
    records = [(kind, lname, built[lname]) for kind, _, lname, _ in entries if lname in built]
    out_keys = [f"{child_of.get(n, n)}:{k}" for n, k in outputs]
    for k in out_keys:
        if k not in shapes:
            raise CnnkitError(f"the model {name!r} outputs {k}, which no layer makes")
    net = KerasNetwork(name, input_keys, nodes, out_keys, modules, {c: n for n, c in child_of.items() if c in modules})
    return net, [shapes[k] for k in input_keys], records


# ----------------------------------------------------------------------------- the files


def _snake(name: str) -> str:
    """Keras' ``to_snake_case``: ``MaxPooling2D`` -> ``max_pooling2d`` (the group names in .keras files)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _assign_keras_v3(h5, records, prefix: str, reads: DatasetReader) -> None:
    """Load weights from a ``model.weights.h5`` (groups ``layers/<class_snake>[_i]/vars/<n>``), each
    array read by ``reads``.

    The groups are named after each layer's class, numbered in the order of the model's layers
    (InputLayer included), not after the layer's name.
    """
    used: dict[str, int] = {}

    def group_name(kind: str) -> str:
        base = _snake(kind)
        if base in used:
            used[base] += 1
            return f"{base}_{used[base]}"
        used[base] = 0
        return base

    for kind, lname, rec in records:
        path = f"{prefix}/{group_name(kind)}"
        if rec.children:
            _assign_keras_v3(h5, rec.children, f"{path}/layers", reads)
            continue
        n = _num_vars(rec)
        if n == 0:
            continue
        group = h5.get(f"{path}/vars")
        if group is None:
            raise CnnkitError(f"{reads.source}: no weights for layer {lname!r} ({kind}) at {path}/vars")
        _load(rec, _read_arrays(group, [str(i) for i in range(len(group))], rec.module, lname, reads), lname, kind)


def _read_arrays(group, names: list[str], module: nn.Module, lname: str, reads: DatasetReader) -> list[np.ndarray]:
    """The datasets ``names`` of an HDF5 group for the layer (or nested model) ``module``, finite.

    Each dataset's size is checked before it is read: a layer takes no array larger than all its
    weights together, and a dataset that declares more (gigabytes of an unwritten fill value, or
    compressed zeros, in a file of kilobytes) is refused unread. ``reads`` then reads it, refusing
    first an array that declares more bytes than its stored ones inflate to (one element of a
    gigabyte-sized array type) and a file whose arrays, as they are read, add up to that (one
    compressed array read many times: hard links, a name listed again).
    """
    source = reads.source
    room = sum(t.numel() for t in (*module.parameters(), *module.buffers()))
    arrays = []
    for name in names:
        data = group[name]
        size = getattr(data, "size", None)
        if isinstance(size, int) and size > room:
            raise CnnkitError(
                f"{source}: layer {lname!r}: the file's array {name} holds {tuple(data.shape)} = {size:,} values, "
                f"more than the layer's {room:,} weights; the weights do not fit the model's description"
            )
        arrays.append(reads.read(data, f"{group.name}/{name}"))
    _check_finite(arrays, lname, source)
    return arrays


def _load(rec: _Layer, arrays: list, lname: str, kind: str) -> None:
    """The layer's weights from the file's ``arrays``; arrays that do not fit are refused naming the layer."""
    try:
        rec.load(rec.module, arrays)
    except CnnkitError as exc:
        raise CnnkitError(f"layer {lname!r} ({kind}): {exc}") from None


def _arrays_v2(h5, lname: str, module: nn.Module, reads: DatasetReader, with_names: bool = False) -> list:
    """A legacy ``.h5`` layer group's arrays in its ``weight_names`` order (with their names if asked),
    for the layer (or nested model) ``module``, each read by ``reads``."""
    source = reads.source
    group = h5.get(lname)
    if group is None:
        raise CnnkitError(f"{source}: no weights for layer {lname!r} in model_weights")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    try:
        arrays = _read_arrays(group, names, module, lname, reads)
    except KeyError as exc:
        raise CnnkitError(f"{source}: layer {lname!r} lists a weight the file lacks ({short_error(exc)})") from None
    return list(zip(names, arrays)) if with_names else arrays


def _check_finite(arrays: list, lname: str, source) -> None:
    """A weight that is nan or inf makes every prediction nan: refused, naming the layer.

    The values are checked as the network holds them, in float32: a float64 value beyond float32's
    range (3.4e38) is inf there. Complex numbers (Keras' weights are real) are refused too: float32
    would keep their real part alone.
    """
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if a.dtype.kind == "c":
            raise CnnkitError(
                f"{source}: layer {lname!r} holds complex numbers ({a.dtype}, array {i}); Keras' weights are "
                "real: the model is damaged: save it again from a working Keras model"
            )
        if a.dtype.kind != "f":
            continue
        with np.errstate(over="ignore"):
            finite = np.isfinite(a.astype(np.float32, copy=False))
        if not finite.all():
            bad = int(finite.size - finite.sum())
            raise CnnkitError(
                f"{source}: layer {lname!r} holds {bad:,} non-finite weight value{'s' if bad != 1 else ''} "
                f"(nan or inf in float32, array {i}); the model is damaged: save it again from a working Keras model"
            )


def _check_hdf5(h5, source) -> int:
    """Refuse what would read data from outside the file; the bytes of weight data it stores.

    External links, soft links (Keras writes neither), virtual datasets and datasets whose data lies in
    external files would make cnnkit read another file than the one given.
    """
    h5py = _h5py()

    def link(name, lk):
        if isinstance(lk, h5py.ExternalLink):
            return f"{name!r} is an external link to {lk.filename}:{lk.path}"
        if isinstance(lk, h5py.SoftLink):
            return f"{name!r} is a soft link to {lk.path}"
        return None

    stored = [0]

    def dataset(name, obj):
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                return f"{name!r} is a virtual dataset (its data lies in other files)"
            if obj.external:
                return f"{name!r} stores its data in an external file ({obj.external[0][0]!s})"
            stored[0] += int(obj.id.get_storage_size())
        return None

    why = h5.visititems_links(link) or h5.visititems(dataset)
    if why:
        raise CnnkitError(
            f"{source}: HDF5 entry {why}; cnnkit reads weights only from the file given (Keras never "
            "writes these): save the model again with model.save()"
        )
    return stored[0]


def _assign_legacy(h5, records, reads: DatasetReader) -> None:
    source = reads.source
    for kind, lname, rec in records:
        if h5.get(lname) is None and not rec.children and not _num_vars(rec):
            continue  # no weights, no group: Keras 3 writes none for an operation such as x * y
        if rec.children:  # a nested model: one group with all its layers' weights
            named = _arrays_v2(h5, lname, rec.module, reads, with_names=True)
            if not _assign_nested_by_name(named, rec.children, lname):
                _distribute([a for _, a in named], rec.children, lname, source)
            continue
        arrays = _arrays_v2(h5, lname, rec.module, reads)
        if _num_vars(rec):
            _load(rec, arrays, lname, kind)
        elif arrays:
            raise CnnkitError(f"{source}: layer {lname!r} ({kind}) has weights in the file but none in Keras' table")


def _leaves(records, parent: str):
    """(name of the model holding it, layer name, record, class name) of every layer of a nested model,
    depth first."""
    for kind, lname, rec in records:
        if rec.children:
            yield from _leaves(rec.children, lname)
        else:
            yield parent, lname, rec, kind


def _assign_nested_by_name(named: list, records, lname: str) -> bool:
    """Load a nested model's weights from its group by their names; False if the names do not say.

    Keras lists a model's weights trainable first, then the others (``layer.trainable_weights +
    layer.non_trainable_weights``): a BatchNormalization's moving statistics come after every
    trainable weight of the model, not after its gamma and beta. The names (``inner/bn/gamma`` in
    Keras 3, ``bn/gamma:0`` in Keras 2) give each array its layer; within a layer the order is kept.
    """
    leaves = [leaf for leaf in _leaves(records, lname) if _num_vars(leaf[2])]
    by_layer: dict[str, list] = {}
    for leaf in leaves:
        by_layer.setdefault(leaf[1], []).append(leaf)
    got: dict[int, list] = {id(leaf[2]): [] for leaf in leaves}
    for name, array in named:
        parts = name.split(":")[0].split("/")
        if len(parts) < 2:
            return False
        found = by_layer.get(parts[-2], [])
        if len(found) > 1 and len(parts) > 2:  # one name in two nested models: the model says which
            found = [leaf for leaf in found if leaf[0] == parts[-3]]
        if len(found) != 1:
            return False
        got[id(found[0][2])].append(array)
    if any(len(got[id(rec)]) != _num_vars(rec) for _, _, rec, _ in leaves):
        return False
    for _, name, rec, kind in leaves:
        _load(rec, got[id(rec)], name, kind)
    return True


def _distribute(arrays: list, records, lname: str, source: str) -> None:
    for kind, inner, rec in records:
        if rec.children:
            n = sum(_num_vars(r) for _, _, r in _flatten(rec.children))
            _distribute(arrays[:n], rec.children, inner, source)
        else:
            n = _num_vars(rec)
            if n:
                _load(rec, arrays[:n], inner, kind)
        arrays = arrays[n:]
    if arrays:
        raise CnnkitError(f"{source}: the nested model {lname!r} has {len(arrays)} more weight arrays than its layers")


def _flatten(records):
    for r in records:
        yield from (_flatten(r[2].children) if r[2].children else [r])


def _read_json(text: bytes, what: str, source) -> dict:
    if len(text) > MAX_CONFIG_BYTES:
        raise CnnkitError(f"{source}: {what} is larger than {MAX_CONFIG_BYTES >> 20} MB; not a Keras model config")
    try:
        out = json.loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        msg = short_error(exc)
        raise CnnkitError(
            f"{source}: {what} is not valid JSON ({msg}); the file is damaged or not a Keras model"
        ) from None
    if not isinstance(out, dict):
        raise CnnkitError(f"{source}: {what} is not a JSON object; the file is not a Keras model")
    return out


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CnnkitError("reading Keras files needs h5py: pip install 'cnnkit[keras]'") from None
    return h5py


def read_keras_config(path: str | Path) -> dict:
    """The model config (``{"class_name": ..., "config": ...}``) of a ``.keras`` or ``.h5`` file, unread weights.

    Raises:
        CnnkitError: the file is missing, not a Keras model, or damaged.
    """
    return _open(Path(path), weights=False)[0]


# the fix for a .keras member that declares more than it can hold (Keras stores members uncompressed)
_RESAVE = "save the model again from Keras"


def _weights_bound(config: dict, info) -> tuple[int, str] | None:
    """The most bytes a .keras file's model.weights.h5 can need for ``config``'s layers, for
    :func:`~cnnkit.errors.check_unzip`: :data:`MAX_BYTES_PER_VALUE` per weight value of the network
    built on the meta device (shapes only), each array counted as at least 1,024 values (HDF5's
    records of it), and 1 MB more (an optimizer's counters, metrics). ``None`` where the meta device
    cannot build it: the ratio check stands alone, and the real build says what is wrong."""
    if info.filename != "model.weights.h5":
        return None
    try:
        with on_meta():
            state = _network(config, False)[0].state_dict()
    except CnnkitError:
        return None
    values = sum(t.numel() for t in state.values())
    most = MAX_BYTES_PER_VALUE * (values + 1024 * len(state)) + (1 << 20)
    return most, f"its config's {values:,} weight values can need"


def _open(path: Path, weights: bool):
    """(config, weight reader or None) for a .keras zip or a legacy .h5 file."""
    if not path.is_file():
        raise CnnkitError(f"no Keras model at {path}: give a .keras or .h5 file saved by model.save()")
    with open(path, "rb") as f:
        magic = f.read(8)
    if not magic:
        raise CnnkitError(f"{path} is empty (0 bytes); give a .keras or .h5 file saved by Keras' model.save()")
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "config.json" not in names:
                    raise CnnkitError(f"{path} is a zip without config.json; not a .keras model file")
                if z.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                    raise CnnkitError(f"{path}: config.json is larger than {MAX_CONFIG_BYTES >> 20} MB")
                config = _read_json(unzip(z, "config.json", _RESAVE, path), "config.json", path)
                if weights and "model.weights.h5" not in names:
                    raise CnnkitError(f"{path} holds no model.weights.h5; save the model with its weights")
                blob = None
                if weights:  # the size its zip entry states bounds what it inflates to (unzip stops there);
                    # reading holds it twice at the peak: a zip bomb is refused before it inflates
                    check_unzip(z, ["model.weights.h5"], _RESAVE, path, partial(_weights_bound, config))
                    size = z.getinfo("model.weights.h5").file_size
                    check_fits(
                        2 * size,
                        f"{path}: unpacking its model.weights.h5 ({human_bytes(size)})",
                        "a model's weights are rarely that large: save the model again from Keras, or free memory",
                    )
                    blob = unzip(z, "model.weights.h5", _RESAVE, path)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            msg = short_error(exc)
            raise CnnkitError(f"{path} is a damaged .keras file ({msg}); save the model again") from None
        return config, ("v3", blob)
    if magic == b"\x89HDF\r\n\x1a\n":
        h5py = _h5py()
        try:
            with h5py.File(path, "r") as h5:
                text = h5.attrs.get("model_config")
                if text is None:
                    raise CnnkitError(
                        f"{path} is an HDF5 file without model_config: weights only? save the whole "
                        "model with model.save()"
                    )
                config = _read_json(text if isinstance(text, bytes) else str(text).encode(), "model_config", path)
                version = h5.attrs.get("keras_version")
                version = version.decode(errors="replace") if isinstance(version, bytes) else version
                if isinstance(version, str) and version[:2] in ("1.", "2."):
                    # Keras 2's formulas differ (hard_sigmoid); kept in the config a run stores
                    config["keras_version"] = version[:40]
        except CnnkitError:
            raise
        except Exception as exc:  # noqa: BLE001 -- h5py raises OSError/KeyError/RuntimeError on damaged files
            msg = short_error(exc)
            raise CnnkitError(f"{path} is a damaged HDF5 file ({msg}); save the model again") from None
        return config, ("h5", None)
    raise CnnkitError(
        f"{path} is neither a .keras (zip) nor an HDF5 .h5 file; give a file saved by Keras' model.save()"
    )


def build_from_keras_config(config: dict, logits: bool = False) -> nn.Module:
    """The PyTorch network a Keras model config describes, with fresh weights; no code is run.

    Args:
        config: ``{"class_name": "Sequential" | "Functional", "config": {...}}`` as in a
            ``.keras`` file's ``config.json`` or a ``.h5`` file's ``model_config``.
        logits: drop a final softmax/sigmoid activation, so the network returns logits
            (cnnkit's classifiers do; the loss applies the softmax).

    Returns:
        An eval-mode :class:`KerasNetwork` (attribute ``input_size``, channels first).

    Raises:
        CnnkitError: a layer is not in :data:`LAYERS` (``Lambda``, custom objects), or the config is malformed.
    """
    return _network(config, logits)[0]


def _check_nesting(config: dict) -> None:
    """Refuse a config nested deeper than :data:`MAX_NESTING` levels: reading it (and copying it into a
    run's metadata) recurses once per level, and Python's stack ends near 1,000."""
    if nested_deeper_than(config, MAX_NESTING):
        raise CnnkitError(
            f"the model's config nests lists and objects more than {MAX_NESTING} deep (a Keras model's is "
            "about 10, and 4 more per nested model); the config is damaged or edited"
        )


def _network(config: dict, logits: bool, budget: list | None = None):
    if not isinstance(config, dict):
        raise CnnkitError("a Keras model config is a JSON object with 'class_name' and 'config'")
    _check_nesting(config)
    config = _sequential_as_dict(config)  # the stored description too: reset_classifier edits its layers
    token = _BUDGET.set(budget)
    version = str(config.get("keras_version", ""))
    token2 = _KERAS2.set(version.split(".")[0] in ("1", "2"))
    try:
        net, input_shapes, records = _build_model(config, None)
    finally:
        _BUDGET.reset(token)
        _KERAS2.reset(token2)
    net.keras_config = copy.deepcopy(config)
    if logits:
        _drop_final_activation(net)
    net.input_size = input_shapes[0] if len(input_shapes) == 1 else tuple(input_shapes)
    return net.eval(), records


def _drop_final_activation(net: KerasNetwork) -> None:
    """Replace a softmax/sigmoid that ends the (single) output by the identity."""
    if len(net.outputs) != 1:
        return
    layer = net.outputs[0].rpartition(":")[0]
    m = net._modules.get(layer)  # None where the model returns its input
    if isinstance(getattr(m, "activation", None), (nn.Softmax, nn.Sigmoid)):
        m.activation = nn.Identity()
    elif isinstance(m, (nn.Softmax, nn.Sigmoid)):
        setattr(net, layer, nn.Identity())


def load_keras(path: str | Path, logits: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """A Keras ``.keras`` or legacy ``.h5`` model file as an eval-mode PyTorch network, and its input size.

    Reads only JSON and HDF5 (``json``, ``zipfile``, ``h5py``); never imports Keras or runs code from
    the file. The network takes channels-first inputs (N, C, H, W) and returns what Keras returns
    for the same (N, H, W, C) input.

    Args:
        path: a file written by ``model.save("x.keras")`` or ``model.save("x.h5")`` (Keras 2 or 3).
        logits: drop a final softmax/sigmoid, for a cnnkit classifier that returns logits.

    Returns:
        ``(network, input_size)``: a :class:`KerasNetwork` and its input size channels first, e.g. (1, 28, 28).

    Raises:
        CnnkitError: the file is missing, damaged or not a Keras model; a layer is not one cnnkit reads
            (``Lambda``, custom objects); the weights do not fit the layers.

    Example:
        >>> net, size = load_keras("mnist.keras")      # doctest: +SKIP
        >>> net(torch.rand(8, *size)).shape             # doctest: +SKIP
        torch.Size([8, 10])
    """
    import io

    path = Path(path)
    config, (kind, blob) = _open(path, weights=True)
    h5py = _h5py()
    try:  # before anything is built: no data from outside the file, and as many weights as it stores
        with h5py.File(io.BytesIO(blob) if kind == "v3" else path, "r") as h5:
            stored = _check_hdf5(h5, path)
    except CnnkitError:
        raise
    except Exception as exc:  # noqa: BLE001 -- damaged HDF5 data: OSError, KeyError, ValueError from h5py
        msg = short_error(exc)
        raise CnnkitError(
            f"{path}: its weights cannot be read ({msg}); the file is damaged: save the model again"
        ) from None
    limit = min(MAX_WEIGHTS, max(stored, 1 << 16))  # a byte per value: float32 and compression up to 4x fit
    net, records = _network(config, logits, [limit, f"the file stores {stored:,} bytes of weights"])
    # the HDF5 file's bytes: what its compressed arrays may inflate from, each and together
    reads = DatasetReader(path, len(blob) if kind == "v3" else path.stat().st_size, _RESAVE)
    try:
        if kind == "v3":
            with h5py.File(io.BytesIO(blob), "r") as h5:
                _assign_keras_v3(h5, records, "layers", reads)
        else:
            with h5py.File(path, "r") as h5:
                group = h5.get("model_weights", h5)
                _assign_legacy(group, records, reads)
    except CnnkitError as exc:
        msg = str(exc)
        raise CnnkitError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except Exception as exc:  # noqa: BLE001 -- damaged HDF5 data: OSError, KeyError, ValueError from h5py
        msg = short_error(exc)
        raise CnnkitError(
            f"{path}: its weights cannot be read ({msg}); the file is damaged: save the model again"
        ) from None
    return net.eval(), tuple(net.input_size)

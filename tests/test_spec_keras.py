"""Network-spec layers against Keras itself (PyTorch backend): same weights, same input, same output."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="the Keras reference needs keras (pip install 'cnnkit[test]')")
if keras.backend.backend() != "torch":
    pytest.skip("the Keras reference runs on the PyTorch backend (KERAS_BACKEND=torch)", allow_module_level=True)

from cnnkit.models.spec import build_from_spec  # noqa: E402


def _compare(layer: dict, klayer, input_size: tuple[int, ...], copy_weights=None) -> None:
    """The spec's one-layer network and ``klayer`` on the same random input: equal shapes and values."""
    model, _ = build_from_spec({"input": list(input_size), "layers": [layer]})
    model.eval()
    x = torch.randn(2, *input_size)
    klayer.build((2, *input_size[1:], input_size[0]))
    if copy_weights is not None:
        copy_weights(next(iter(model.children())), klayer)
    with torch.no_grad():
        ours = model(x).numpy()
    theirs = np.moveaxis(np.asarray(klayer(x.movedim(1, -1).numpy()).detach().cpu()), -1, 1)
    assert ours.shape == theirs.shape, (layer, input_size)
    assert np.abs(ours - theirs).max() < 1e-4, (layer, input_size)


def _kernel(module, klayer) -> None:
    """PyTorch's (in, out, *k) transposed-convolution weight as Keras' (*k, out, in), and the bias."""
    w = module.weight.detach().numpy()
    klayer.kernel.assign(np.transpose(w, (*range(2, w.ndim), 1, 0)))
    klayer.bias.assign(module.bias.detach().numpy())


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv2d_transpose_equals_keras(padding):
    # a stride above the kernel's span is where Keras' "valid" output is longest: (L - 1) s + max(k, s)
    for kernel, strides in itertools.product([1, 2, 3, [2, 3], [1, 4]], [1, 2, 3, [3, 2]]):
        layer = {"conv2d_transpose": {"filters": 3, "kernel_size": kernel, "strides": strides, "padding": padding}}
        klayer = keras.layers.Conv2DTranspose(3, kernel, strides=strides, padding=padding)
        _compare(layer, klayer, (2, 4, 5), _kernel)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_upsampling2d_equals_keras(interpolation):
    for size, input_size in itertools.product([1, 3, [2, 3], [3, 1]], [(2, 3, 5), (2, 4, 4)]):
        layer = {"upsampling2d": {"size": size, "interpolation": interpolation}}
        _compare(layer, keras.layers.UpSampling2D(size, interpolation=interpolation), input_size)


@pytest.mark.parametrize("input_size", [(4,), (3, 7), (3, 5, 4), (2, 3, 4, 4)], ids=["vector", "1D", "2D", "3D"])
def test_batch_normalization_trains_its_statistics_as_keras(input_size):
    # Keras averages the batch's biased variance into its moving variance, PyTorch the unbiased one
    model, _ = build_from_spec({"input": list(input_size), "layers": [{"batch_normalization": {"momentum": 0.8}}]})
    klayer = keras.layers.BatchNormalization(momentum=0.8)
    channels_last = (lambda t: t.movedim(1, -1)) if len(input_size) > 1 else (lambda t: t)
    klayer.build((4, *channels_last(torch.zeros(1, *input_size)).shape[1:]))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, *input_size, generator=g) * 2 + 1
        model.train()(x)
        klayer(channels_last(x).numpy(), training=True)
    bn = next(iter(model.children()))
    for ours, theirs in ((bn.running_mean, klayer.moving_mean), (bn.running_var, klayer.moving_variance)):
        assert np.abs(ours.numpy() - keras.ops.convert_to_numpy(theirs)).max() < 1e-5
    x = torch.randn(2, *input_size, generator=g)
    with torch.no_grad():
        ours = channels_last(model.eval()(x)).numpy()
    assert np.abs(ours - keras.ops.convert_to_numpy(klayer(channels_last(x).numpy(), training=False))).max() < 1e-5

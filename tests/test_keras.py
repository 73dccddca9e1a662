"""Keras files read without Keras: every converted network against Keras itself (PyTorch backend).

Each fixture model is built in Keras 3 with random weights (BatchNorm statistics included), saved as
``.keras`` and as legacy ``.h5`` (and rewritten as a Keras 2 ``.h5``, variables named ``.../kernel:0``),
converted by :func:`cnnkit.models.keras.load_keras`, and run on the same input: outputs must agree to
1e-5 and the parameter count must equal Keras' ``count_params()``.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="the Keras reference needs keras (pip install 'cnnkit[keras]')")
h5py = pytest.importorskip("h5py", reason="reading Keras files needs h5py")
if keras.backend.backend() != "torch":
    pytest.skip("the Keras reference runs on the PyTorch backend (KERAS_BACKEND=torch)", allow_module_level=True)

from keras import layers  # noqa: E402

from cnnkit.errors import CnnkitError  # noqa: E402
from cnnkit.models.keras import build_from_keras_config, load_keras, read_keras_config  # noqa: E402

# ----------------------------------------------------------------------------- the Keras fixtures


def exercise9():
    """Géron ch. 14, exercise 9 (the notes' Keras code)."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, kernel_size=3, padding="same", activation="relu"),
            layers.MaxPool2D(),
            layers.Conv2D(64, kernel_size=3, padding="same", activation="relu"),
            layers.Conv2D(64, kernel_size=3, padding="same", activation="relu"),
            layers.Flatten(),
            layers.Dropout(0.25),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )


def mnist_convnet():
    """Chollet's first convnet (seed 004): 93,322 parameters."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )


def residual():
    """Functional: a residual Add, a Concatenate, BatchNorm, global pooling, two Dense."""
    x_in = keras.Input((12, 10, 3))
    x = layers.Conv2D(8, 3, padding="same")(x_in)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    y = layers.Conv2D(8, 3, padding="same", activation="elu")(x)
    y = layers.Add()([x, y])
    z = layers.Conv2D(4, 1, activation="swish")(y)
    c = layers.Concatenate()([y, z, x_in])
    p = layers.GlobalAveragePooling2D()(c)
    q = layers.GlobalMaxPooling2D()(c)
    h = layers.Concatenate()([p, q])
    return keras.Model(x_in, layers.Dense(5, activation="softmax")(layers.Dense(16, activation="gelu")(h)))


def vgg_block():
    """A VGG-style block with padding="same" and stride 2 on odd sizes (TF's asymmetric padding)."""
    return keras.Sequential(
        [
            keras.Input((15, 17, 3)),
            layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(8, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(3, strides=2, padding="same"),
            layers.Conv2D(16, 4, strides=2, padding="same", activation="relu"),
            layers.AveragePooling2D(2, padding="same"),
            layers.Flatten(),
            layers.Dense(6),
        ]
    )


def conv1d():
    """A Conv1D net on a (length 50, 2 channels) series."""
    return keras.Sequential(
        [
            keras.Input((50, 2)),
            layers.Conv1D(8, 5, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling1D(2),
            layers.Conv1D(8, 3, activation="tanh"),
            layers.AveragePooling1D(2, padding="same"),
            layers.Flatten(),
            layers.Dense(3, activation="softmax"),
        ]
    )


def the_rest():
    """Every other layer in the table: separable, depthwise, transposed convs, padding, upsampling..."""
    x_in = keras.Input((9, 11, 3))
    x = layers.Rescaling(1 / 255.0, offset=-0.5)(x_in)
    x = layers.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 0.5])(x)
    x = layers.ZeroPadding2D(((1, 2), (0, 1)))(x)
    x = layers.SeparableConv2D(6, 3, strides=2, padding="same", depth_multiplier=2, activation="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = layers.LeakyReLU()(x)
    x = layers.BatchNormalization(scale=False)(x)
    a = layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="leaky_relu")(x)
    b = layers.Conv2DTranspose(4, 2, strides=3, padding="valid")(x)
    b = layers.UpSampling2D(interpolation="bilinear")(b)
    u = layers.UpSampling2D((2, 1))(x)
    s = layers.Multiply()([layers.Activation("sigmoid")(a), a])
    r = layers.Reshape((-1, 4))(s)
    d = layers.Dense(3)(r)
    return keras.Model(x_in, [layers.Flatten()(d), layers.GlobalAveragePooling2D()(b), layers.Flatten()(u)])


def conv3d():
    return keras.Sequential(
        [
            keras.Input((5, 6, 7, 2)),
            layers.Conv3D(4, 3, strides=2, padding="same"),
            layers.MaxPooling3D(2, padding="same"),
            layers.GlobalAveragePooling3D(),
            layers.Dense(2),
        ]
    )


FIXTURES = {
    "exercise9": exercise9,
    "mnist_convnet": mnist_convnet,
    "residual": residual,
    "vgg_block": vgg_block,
    "conv1d": conv1d,
    "the_rest": the_rest,
    "conv3d": conv3d,
}


def _randomise(model, seed: int) -> None:
    """Random weights everywhere (BatchNorm variances positive), so a misplaced tensor shows."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape = tuple(w.shape)
        v = rng.normal(0, 0.3, shape).astype(np.float32)
        if "variance" in w.path:
            v = np.abs(v) + 0.5
        if "count" in w.path:
            v = np.array(7, dtype=w.dtype)
        values.append(v)
    model.set_weights(values)


def _keras2(src, dst) -> None:
    """Rewrite a Keras 3 legacy .h5 as Keras 2 wrote it: ``batch_input_shape`` and ``name/var:0`` weights."""
    with h5py.File(src, "r") as f_in, h5py.File(dst, "w") as f_out:
        config = json.loads(f_in.attrs["model_config"])
        for layer in config["config"]["layers"]:
            cfg = layer["config"]
            if "batch_shape" in cfg:
                cfg["batch_input_shape"] = cfg.pop("batch_shape")
            if "inbound_nodes" in layer:  # Keras 2: [[[name, node, tensor, kwargs], ...], ...]
                layer["inbound_nodes"] = [
                    [[*t["config"]["keras_history"], {}] for t in _tensors(node["args"])]
                    for node in layer["inbound_nodes"]
                ]
        f_out.attrs["model_config"] = json.dumps(config)
        out = f_out.create_group("model_weights")
        for lname, group in f_in["model_weights"].items():
            g = out.create_group(lname)
            names = []
            for n in group.attrs.get("weight_names", []):
                n = n.decode() if isinstance(n, bytes) else str(n)
                new = n.split("/", 1)[1] + ":0" if n.count("/") > 1 else n + ":0"
                g.create_dataset(new, data=group[n][()])
                names.append(new.encode())
            g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.array([], dtype="S1")


def _tensors(x) -> list[dict]:
    if isinstance(x, dict):
        return [x] if x.get("class_name") == "__keras_tensor__" else []
    return [t for v in x for t in _tensors(v)] if isinstance(x, list) else []


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (keras model, {format: path})."""
    root = tmp_path_factory.mktemp("keras")
    out = {}
    for i, (name, make) in enumerate(FIXTURES.items()):
        model = make()
        _randomise(model, i)
        paths = {"keras": root / f"{name}.keras", "h5": root / f"{name}.h5", "keras2": root / f"{name}_k2.h5"}
        model.save(paths["keras"])
        model.save(paths["h5"])
        _keras2(paths["h5"], paths["keras2"])
        out[name] = (model, paths)
    return out


def _keras_out(model, x: torch.Tensor) -> list[np.ndarray]:
    """Keras' outputs on ``x`` given channels first (Keras sees it channels last)."""
    xk = x.movedim(1, -1).numpy()
    out = model(xk, training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [keras.ops.convert_to_numpy(o) for o in out]


def _ours(net, x) -> list[np.ndarray]:
    with torch.no_grad():
        out = net(x)
    out = out if isinstance(out, tuple) else (out,)
    res = []
    for o in out:
        o = o.movedim(1, -1) if o.dim() > 2 else o  # channels last again, to compare with Keras
        res.append(o.numpy())
    return res


@pytest.mark.parametrize("fmt", ["keras", "h5", "keras2"])
@pytest.mark.parametrize("name", list(FIXTURES))
def test_outputs_and_parameters_equal_keras(saved, name, fmt):
    model, paths = saved[name]
    net, size = load_keras(paths[fmt])
    assert size == tuple(model.inputs[0].shape[-1:] + model.inputs[0].shape[1:-1])
    assert not net.training
    x = torch.rand(3, *size, generator=torch.Generator().manual_seed(1)) * 2
    if name == "the_rest":
        x = x * 255
    for ours, ref in zip(_ours(net, x), _keras_out(model, x), strict=True):
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), name
    state = net.state_dict()
    count = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert count == model.count_params()


def test_layer_names_mirror_keras(saved):
    model, paths = saved["mnist_convnet"]
    net, _ = load_keras(paths["keras"])
    assert [n for n, _ in net.named_children()] == [layer.name for layer in model.layers]
    assert net.get_submodule(model.layers[0].name).weight.shape == (32, 1, 3, 3)


def test_mnist_convnet_has_the_notes_parameter_count(saved):
    net, size = load_keras(saved["mnist_convnet"][1]["keras"])
    assert size == (1, 28, 28)
    assert sum(p.numel() for p in net.parameters()) == 93_322


def test_logits_drop_the_final_softmax(saved):
    _, paths = saved["exercise9"]
    probs_net, size = load_keras(paths["keras"])
    logit_net, _ = load_keras(paths["keras"], logits=True)
    x = torch.rand(2, *size)
    with torch.no_grad():
        assert torch.allclose(logit_net(x).softmax(1), probs_net(x), atol=1e-6)
        assert not torch.allclose(logit_net(x), probs_net(x))


def test_rebuilt_from_config_has_the_same_structure(saved):
    _, paths = saved["residual"]
    config = read_keras_config(paths["keras"])
    fresh = build_from_keras_config(config)
    loaded, _ = load_keras(paths["keras"])
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in loaded.state_dict().items()}
    fresh.load_state_dict(loaded.state_dict())
    x = torch.rand(2, *loaded.input_size)
    with torch.no_grad():
        assert torch.equal(fresh(x), loaded(x))


def test_nested_model(tmp_path):
    """A Sequential holding a functional base (the notes' VGG16 fine-tune shape): both formats."""
    base_in = keras.Input((10, 10, 3))
    conv = layers.Conv2D(4, 3, padding="same", name="block1_conv1")(base_in)
    base = keras.Model(base_in, layers.MaxPooling2D()(conv), name="base")
    model = keras.Sequential([keras.Input((10, 10, 3)), base, layers.Flatten(), layers.Dense(2)])
    _randomise(model, 9)
    x = torch.rand(2, 3, 10, 10)
    for suffix in ("keras", "h5"):
        model.save(tmp_path / f"m.{suffix}")
        net, _ = load_keras(tmp_path / f"m.{suffix}")
        assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-5
        assert net.base.block1_conv1.weight.shape == (4, 3, 3, 3)


# ----------------------------------------------------------------------------- refusals


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_lambda_layer_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((4,)), layers.Lambda(lambda t: t * 2), layers.Dense(2)])
    model.save(tmp_path / "lam.keras")
    with pytest.raises(CnnkitError) as exc:
        load_keras(tmp_path / "lam.keras")
    assert "Lambda" in _one_line(exc) and "never runs" in str(exc.value)


def _edit_config(src, dst, edit) -> None:
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dst, "w") as z_out:
        for item in z_in.namelist():
            data = z_in.read(item)
            if item == "config.json":
                data = edit(data)
            z_out.writestr(item, data)


def test_unknown_layer_is_refused(saved, tmp_path):
    def edit(data):
        config = json.loads(data)
        config["config"]["layers"][1]["class_name"] = "MyCustomLayer"
        return json.dumps(config).encode()

    _edit_config(saved["mnist_convnet"][1]["keras"], tmp_path / "custom.keras", edit)
    with pytest.raises(CnnkitError) as exc:
        load_keras(tmp_path / "custom.keras")
    assert "MyCustomLayer" in _one_line(exc)


def test_config_that_is_not_json_is_refused(saved, tmp_path):
    _edit_config(saved["mnist_convnet"][1]["keras"], tmp_path / "bad.keras", lambda d: b"{not json")
    with pytest.raises(CnnkitError) as exc:
        load_keras(tmp_path / "bad.keras")
    assert "not valid JSON" in _one_line(exc)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_truncated_file_is_refused(saved, tmp_path, fmt):
    data = saved["mnist_convnet"][1][fmt].read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CnnkitError) as exc:
        load_keras(cut)
    assert "cut." in _one_line(exc)


def test_not_a_keras_file_is_refused(tmp_path):
    (tmp_path / "x.keras").write_text("hello")
    with pytest.raises(CnnkitError, match="neither"):
        load_keras(tmp_path / "x.keras")
    with pytest.raises(CnnkitError, match="no Keras model"):
        load_keras(tmp_path / "missing.keras")


def test_reading_needs_neither_keras_nor_tensorflow(saved, monkeypatch):
    """The reader is json + zipfile + h5py: with Keras and TensorFlow unimportable it still reads both formats."""
    import sys

    for name in ("keras", "tensorflow", "tf_keras"):
        monkeypatch.setitem(sys.modules, name, None)  # `import keras` now raises ImportError
    _, paths = saved["residual"]
    for fmt in ("keras", "h5"):
        net, size = load_keras(paths[fmt])
        assert size == (3, 12, 10) and net(torch.rand(1, *size)).shape == (1, 5)

"""Keras files read without Keras: every converted network against Keras itself (PyTorch backend).

Each fixture model is built in Keras 3 with random weights (BatchNorm statistics included), saved as
``.keras`` and as legacy ``.h5`` (and rewritten as a Keras 2 ``.h5``, variables named ``.../kernel:0``),
converted by :func:`cnnkit.models.keras.load_keras`, and run on the same input: outputs must agree to
1e-5 and the parameter count must equal Keras' ``count_params()``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import zipfile

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="the Keras reference needs keras (pip install 'cnnkit[test]')")
h5py = pytest.importorskip("h5py", reason="reading Keras files needs h5py")
if keras.backend.backend() != "torch":
    pytest.skip("the Keras reference runs on the PyTorch backend (KERAS_BACKEND=torch)", allow_module_level=True)

from keras import layers  # noqa: E402

# Before Keras 3.15 the PyTorch backend put a transposed convolution's output one position off
# TensorFlow's and JAX's for "same" padding with a stride above 1 (keras-team/keras#22876); cnnkit
# reads the files as TensorFlow runs them, so those comparisons need Keras 3.15 (Python 3.11+)
KERAS_TRANSPOSE_AS_TF = tuple(int(p) for p in re.findall(r"\d+", keras.__version__)[:2]) >= (3, 15)


def _needs_keras_transpose_as_tf() -> None:
    if not KERAS_TRANSPOSE_AS_TF:
        pytest.skip(
            f"Keras {keras.__version__}'s transposed convolutions differ from TensorFlow's; the reference needs 3.15+"
        )


from cnnkit.errors import CnnkitError  # noqa: E402
from cnnkit.models.keras import build_from_keras_config, load_keras, read_keras_config  # noqa: E402
from cnnkit.models.meta import on_meta  # noqa: E402

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


def _saved_and_compared(model, x: torch.Tensor, folder, names) -> None:
    """Save ``model`` under each name (the suffix picks the format); cnnkit's reading of each answers as Keras."""
    for name in names:
        model.save(folder / name)
        net, _ = load_keras(folder / name)
        assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-5, name


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
    if name == "the_rest":  # it holds Conv2DTranspose layers
        _needs_keras_transpose_as_tf()
        x = x * 255
    for ours, ref in zip(_ours(net, x), _keras_out(model, x), strict=True):
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), name
    state = net.state_dict()
    count = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert count == model.count_params()


def _gzipped(src, dst) -> tuple[int, int]:
    """Copy the HDF5 file ``src`` to ``dst`` with every array of more than one value compressed by
    HDF5's gzip filter (h5py, level 9), attributes kept; (bytes its arrays declare, bytes they store)."""
    sizes = [0, 0]
    with h5py.File(src, "r") as f_in, h5py.File(dst, "w") as f_out:
        f_out.attrs.update(f_in.attrs)

        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                f_out.require_group(name).attrs.update(obj.attrs)
                return
            big = obj.size > 1
            ds = f_out.create_dataset(
                name, data=obj[()], compression="gzip" if big else None, chunks=True if big else None
            )
            ds.attrs.update(obj.attrs)
            sizes[0] += ds.size * ds.dtype.itemsize
            sizes[1] += ds.id.get_storage_size()

        f_in.visititems(copy)
    return sizes[0], sizes[1]


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("randomised", [True, False], ids=["random", "keras_init"])
def test_weights_compressed_by_hdf5_at_a_real_ratio_are_read(tmp_path, monkeypatch, fmt, randomised):
    """A real Keras file whose arrays are gzip-compressed by HDF5 (h5py) reads as Keras runs it. With
    random weights the ratio rule is applied to every array and to their total, whatever their size
    (RATIO_FLOOR 0); with Keras' own initialisation (zero biases, which inflate far more) at the real
    floor."""
    model = mnist_convnet()
    if randomised:
        _randomise(model, 0)
        monkeypatch.setattr("cnnkit.errors.RATIO_FLOOR", 0)
    plain = tmp_path / f"plain.{fmt}"
    model.save(plain)
    path = tmp_path / f"gzip.{fmt}"
    if fmt == "h5":
        declared, stored = _gzipped(plain, path)
    else:
        with zipfile.ZipFile(plain) as z:
            parts = {n: z.read(n) for n in z.namelist()}
        (tmp_path / "w.h5").write_bytes(parts["model.weights.h5"])
        declared, stored = _gzipped(tmp_path / "w.h5", tmp_path / "wz.h5")
        parts["model.weights.h5"] = (tmp_path / "wz.h5").read_bytes()
        with zipfile.ZipFile(path, "w") as z:
            for n, data in parts.items():
                z.writestr(n, data)
    assert declared > stored  # compressed: a little (random values) or much (zero biases)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    net, _ = load_keras(path)
    assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-5


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


@pytest.mark.slow
def test_chollet_vgg16_feature_extractor_summary(tmp_path, capsys):
    """Seed 004's transfer model, saved by Keras and read by `cnnkit summary`: VGG16's base at 150x150
    ends in 4x4x512 with 14,714,688 parameters, Flatten gives 8,192, Dense(256) has 2,097,408 and
    Dense(1) 257 parameters: 16,812,353 in all, as its Keras summary prints."""
    from keras.applications import VGG16

    from cnnkit.cli import main

    base = VGG16(weights=None, include_top=False, input_shape=(150, 150, 3))
    model = keras.Sequential(
        [
            keras.Input((150, 150, 3)),
            base,
            layers.Flatten(name="flatten"),  # named: Keras numbers unnamed layers per process
            layers.Dense(256, activation="relu", name="dense"),
            layers.Dense(1, activation="sigmoid", name="dense_1"),
        ]
    )
    assert model.count_params() == 16_812_353
    model.save(tmp_path / "cats_and_dogs.keras")
    assert main(["summary", str(tmp_path / "cats_and_dogs.keras"), "--optimizer", "none", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in d["layers"]}
    assert sum(r["params"] for name, r in rows.items() if name.startswith("vgg16.")) == 14_714_688
    assert rows["vgg16.block5_pool"]["output_shape"] == [512, 4, 4]
    assert rows["flatten"]["output_shape"] == [8192]
    assert (rows["dense"]["params"], rows["dense_1"]["params"]) == (2_097_408, 257)
    assert d["totals"]["params"] == 16_812_353


def test_the_guide_lists_exactly_the_layers_read():
    """docs/guides/export.md's list of the Keras layers read names each class of LAYERS once, and no other."""
    from pathlib import Path

    from cnnkit.models.keras import LAYERS

    page = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "export.md").read_text(encoding="utf-8")
    listed = page.split("The Keras layers read", 1)[1].split("\n\n", 2)[1]  # the list after its lead paragraph
    assert sorted(re.findall(r"`([A-Z]\w*)`", listed)) == sorted(LAYERS)


# ----------------------------------------------------------------------------- refusals


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def _refusal(model, path) -> str:
    """The one-line error of reading ``model`` saved at ``path``."""
    model.save(path)
    with pytest.raises(CnnkitError) as exc:
        load_keras(path)
    return _one_line(exc)


def test_lambda_layer_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((4,)), layers.Lambda(lambda t: t * 2), layers.Dense(2)])
    msg = _refusal(model, tmp_path / "lam.keras")
    assert "Lambda" in msg and "never runs" in msg


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
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(CnnkitError, match=r"empty.h5 is empty \(0 bytes\)"):
        load_keras(tmp_path / "empty.h5")


def test_reading_needs_neither_keras_nor_tensorflow(saved, monkeypatch):
    """The reader is json + zipfile + h5py: with Keras and TensorFlow unimportable it still reads both formats."""
    import sys

    for name in ("keras", "tensorflow", "tf_keras"):
        monkeypatch.setitem(sys.modules, name, None)  # `import keras` now raises ImportError
    _, paths = saved["residual"]
    for fmt in ("keras", "h5"):
        net, size = load_keras(paths[fmt])
        assert size == (3, 12, 10) and net(torch.rand(1, *size)).shape == (1, 5)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras_ops_with_a_number_are_read(tmp_path, fmt):
    """``x + 3.0`` is saved as a keras.ops ``Add`` of one tensor and the number (not the Add merge
    layer, which would drop the 3.0): MobileNetV3's hard sigmoid, ``3 - x`` and ``1 / x`` compute as in
    Keras; another op with a number (``maximum(x, 0.5)``) is refused by name."""
    x_in = keras.Input((5, 5, 3))
    x = layers.Conv2D(3, 3, padding="same")(x_in)
    y = layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard_sigmoid
    y = (3.0 - y) / 2.0 + 1.0 / (layers.ReLU()(x) + 1.0)
    model = keras.Model(x_in, layers.Flatten()(y))
    model.save(tmp_path / f"ops.{fmt}")
    net, size = load_keras(tmp_path / f"ops.{fmt}")
    x = torch.rand(2, *size)
    assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() < 1e-5
    assert sum(type(m).__name__ == "Scalar" for m in net.modules()) == 6
    other = keras.Model(x_in, layers.Flatten()(keras.ops.maximum(x_in, 0.5)))
    assert "keras.ops" in _refusal(other, tmp_path / f"max.{fmt}")


def test_custom_subclass_named_like_a_keras_layer_is_refused(tmp_path):
    """A custom class keeps its name (here Conv2D): built as Keras' Conv2D it would skip the custom call()."""

    class Conv2D(layers.Conv2D):
        def call(self, x):
            return super().call(x) * 2.0

    model = keras.Sequential([keras.Input((5, 5, 3)), Conv2D(2, 3)])
    assert "custom class Conv2D" in _refusal(model, tmp_path / "custom.keras")


def test_convnext_layer_scale(tmp_path):
    """ConvNeXt's LayerScale (keras.applications' own registered class): x * gamma per channel, as in
    the ConvNeXt block (Dense on a feature map, then the scale, then the residual Add); a user's class of
    the same name in another module is refused."""
    from keras.src.applications.convnext import LayerScale

    x_in = keras.Input((5, 4, 3))
    y = LayerScale(1e-6, 3)(layers.Dense(3)(layers.LayerNormalization(epsilon=1e-6)(x_in)))
    model = keras.Model(x_in, layers.Add()([x_in, y]))
    _against_keras(model, _x((5, 4, 3)), tmp_path)

    @keras.saving.register_keras_serializable(package="mine")
    class Scale(LayerScale):  # registered as mine>Scale, named LayerScale in the file
        pass

    Scale.__name__ = "LayerScale"
    other = keras.Sequential([keras.Input((5, 4, 3)), Scale(0.5, 3)])
    assert "custom class LayerScale" in _refusal(other, tmp_path / "mine.keras")


def test_inception_resnet_custom_scale_layer(tmp_path):
    """InceptionResNetV2's CustomScaleLayer (keras.applications' own registered class): shortcut plus
    the residual times ``scale``, as the Inception-ResNet block calls it."""
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    x_in = keras.Input((5, 4, 3))
    r = layers.Conv2D(3, 1)(x_in)
    model = keras.Model(x_in, layers.Activation("relu")(CustomScaleLayer(0.17)([x_in, r])))
    _against_keras(model, _x((5, 4, 3)), tmp_path)


def test_nested_model_with_batchnorm_in_h5(tmp_path):
    """A legacy .h5 lists a nested model's weights trainable first: BatchNorm statistics come last.

    Two BatchNormalization layers of one width in a row, two levels of nesting, a frozen layer: read in
    list order, the second BN's gamma and beta became the first one's moving mean and variance.
    """
    lvl2 = keras.Sequential(
        [keras.Input((6, 6, 3)), layers.Conv2D(4, 3), layers.BatchNormalization(), layers.BatchNormalization()],
        name="lvl2",
    )
    lvl1 = keras.Sequential(
        [keras.Input((6, 6, 3)), lvl2, layers.Conv2D(4, 1), layers.BatchNormalization()], name="lvl1"
    )
    lvl1.layers[1].trainable = False
    x_in = keras.Input((6, 6, 3))
    model = keras.Model(x_in, layers.Dense(2)(layers.Flatten()(lvl1(x_in))))
    _randomise(model, 11)
    _saved_and_compared(model, torch.rand(2, 3, 6, 6), tmp_path, ("m.h5", "m.keras"))


@pytest.mark.parametrize("shape", [(5,), (7, 3), (5, 4, 3), (3, 4, 4, 2)], ids=["vector", "1D", "2D", "3D"])
def test_training_keeps_keras_moving_statistics(tmp_path, shape):
    """A read network trained a few SGD steps here and in Keras on the same batches: the same moving
    mean and variance (Keras averages in the batch's biased variance, PyTorch the unbiased one), the
    same weights and the same outputs at inference."""
    model = _model(shape, layers.BatchNormalization(momentum=0.8, name="bn"), layers.Flatten(), layers.Dense(2))
    _randomise(model, 3)
    model.save(tmp_path / "m.keras")
    net, _ = load_keras(tmp_path / "m.keras")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(4, *shape, generator=g) * 2 + 1, torch.randn(4, 2, generator=g)
        model.train_on_batch(x.numpy(), y.numpy())
        opt.zero_grad()
        torch.nn.functional.mse_loss(net.train()(x.movedim(-1, 1) if x.dim() > 2 else x), y).backward()
        opt.step()
    bn = net.get_submodule("bn")
    for ours, theirs in ((bn.running_mean, "moving_mean"), (bn.running_var, "moving_variance")):
        ref = keras.ops.convert_to_numpy(getattr(model.get_layer("bn"), theirs))
        assert np.abs(ours.numpy() - ref).max() <= 1e-5 * np.abs(ref).max(), theirs
    x = _x(shape, seed=1)
    assert np.abs(_ours(net.eval(), x)[0] - _keras_out(model, x)[0]).max() <= 1e-5


@pytest.mark.parametrize("activation", ["softmax", "log_softmax"])
def test_dense_softmax_on_a_feature_map(tmp_path, activation):
    """Dense on (N, L, C) or (N, H, W, C) maps: the softmax runs over the units, as in Keras."""
    for shape in ((7, 3), (4, 5, 3)):
        model = keras.Sequential([keras.Input(shape), layers.Dense(6, activation=activation)])
        _randomise(model, 3)
        model.save(tmp_path / "d.keras")
        net, size = load_keras(tmp_path / "d.keras")
        x = torch.rand(2, *size) * 3
        assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-5, shape


@pytest.mark.parametrize("op", ["Multiply", "Add"])
def test_merge_of_inputs_of_different_ranks(tmp_path, op):
    """Keras expands the lower-rank input at axis 1: (N, C) against (N, H, W, C) is (N, 1, 1, C).

    Width 4 = channels 4 is where torch's own broadcasting ran silently (on the wrong axis).
    """
    for shape in ((4, 4, 4), (5, 6, 4), (7, 4)):
        x_in = keras.Input(shape)
        conv = layers.Conv2D(4, 3, padding="same") if len(shape) == 3 else layers.Conv1D(4, 3, padding="same")
        pool = layers.GlobalAveragePooling2D() if len(shape) == 3 else layers.GlobalAveragePooling1D()
        x = conv(x_in)
        model = keras.Model(x_in, getattr(layers, op)()([x, layers.Dense(4)(pool(x))]))
        _randomise(model, 5)
        model.save(tmp_path / "m.keras")
        net, size = load_keras(tmp_path / "m.keras")
        x = torch.rand(4, *size)
        assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-5, shape


@pytest.fixture
def keras_in_float64(monkeypatch):
    """Keras running a float64 model in float64 throughout.

    On every backend but TensorFlow's, Keras' type promotion (``keras.backend.result_type``) turns
    float64 into float32, so a float64 model computes BatchNormalization, the mean and variance and
    ``maximum`` in float32; its table is changed for the test."""
    from keras.src.backend.common import dtypes

    monkeypatch.setitem(dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
    assert keras.backend.result_type("float64", "float32") == "float64"


def test_float64_reading_is_exact(tmp_path, keras_in_float64):
    """The read network in float64 gives Keras' float64 output to rounding: the config's constants
    (Rescaling's 1/255, per-channel scales and offsets, epsilons) keep their precision."""
    x_in = keras.Input((5, 6, 3))
    x = layers.Rescaling(1 / 255.0, offset=-1 / 3)(x_in)
    x = layers.Rescaling([1 / 3, 1 / 7, 1 / 11], offset=[0.1, -0.2, 1 / 9])(x)
    x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2])(x)
    x = layers.Conv2D(8, 3, padding="same")(x)
    x = layers.BatchNormalization(epsilon=1.001e-3)(x)
    x = layers.Activation("swish")(x)
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    x = layers.Activation("gelu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(x_in, layers.Dense(4)(x))
    _randomise(model, 2)
    model.save(tmp_path / "m.keras")
    _edit_config(tmp_path / "m.keras", tmp_path / "m64.keras", lambda d: d.replace(b'"float32"', b'"float64"'))
    wide = keras.saving.load_model(tmp_path / "m64.keras", compile=False)
    net, size = load_keras(tmp_path / "m.keras")
    x = torch.rand(3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    ref = _keras_out(wide, x)[0]
    assert ref.dtype == np.float64
    assert np.abs(_ours(net.double(), x)[0] - ref).max() <= 1e-13 * np.abs(ref).max()


def test_a_converted_raw_pixel_run_in_float64_gives_keras_float64_output(tmp_path, keras_in_float64):
    """A run converted with --raw-pixels divides [0, 1] pixels by a std of 1/255: in float64 it divides
    by 1/255 itself (not by its float32 rounding, a relative 6e-8 off), so it gives Keras' float64
    output to rounding; in float32 it keeps its float32 buffers, and its file stores them."""
    from safetensors import safe_open

    import cnnkit
    from cnnkit.tasks.classify.convert import convert_keras

    x_in = keras.Input((6, 5, 3))
    x = layers.Conv2D(4, 3, padding="same")(x_in)
    model = keras.Model(x_in, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    _randomise(model, 3)
    model.save(tmp_path / "m.keras")
    _edit_config(tmp_path / "m.keras", tmp_path / "m64.keras", lambda d: d.replace(b'"float32"', b'"float64"'))
    wide = keras.saving.load_model(tmp_path / "m64.keras", compile=False)
    convert_keras(tmp_path / "m.keras", tmp_path / "run", raw_pixels=True)
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        assert f.get_slice("std").get_dtype() == f.get_slice("mean").get_dtype() == "F32"
    x = torch.rand(3, 3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _keras_out(wide, x * 255)[0]
    clf = cnnkit.load(tmp_path / "run")
    std32 = torch.tensor(1 / 255, dtype=torch.float32)
    assert clf.std.dtype == torch.float32 and torch.equal(clf.std.flatten(), std32.repeat(3))
    with torch.no_grad():
        want32 = clf.net(x.float() / std32)
        assert torch.equal(clf(x.float()), want32)  # float32: the same operations on the same buffers
        clf.double()
        assert clf.std.flatten().tolist() == [1 / 255] * 3
        assert np.abs(clf(x).numpy() - ref).max() <= 1e-13 * np.abs(ref).max()
        clf.float()  # float32 again: the same float32 buffers and answers
        assert clf.std.dtype == torch.float32 and torch.equal(clf(x.float()), want32)


def test_rescaling_by_numpy_arrays_is_read(tmp_path):
    """Keras saves a Rescaling's NumPy scale or offset as ``{"class_name": "__numpy__", ...}``: read as its values."""
    x_in = keras.Input((4, 5, 3))
    x = layers.Rescaling(np.array([1 / 255, 2 / 255, 3 / 255]), offset=np.array(-0.5))(x_in)
    model = keras.Model(x_in, layers.Conv2D(2, 3)(x))
    _randomise(model, 1)
    model.save(tmp_path / "m.keras")
    assert b"__numpy__" in zipfile.ZipFile(tmp_path / "m.keras").read("config.json")
    net, size = load_keras(tmp_path / "m.keras")
    x = torch.rand(2, *size, generator=torch.Generator().manual_seed(0)) * 255
    assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-5
    with on_meta():  # as cnnkit.load sizes a converted run's network
        build_from_keras_config(net.keras_config)


def test_keras2_hard_sigmoid(saved, tmp_path):
    """Keras 2 computed hard_sigmoid as clip(0.2 x + 0.5, 0, 1), Keras 3 as relu6(x + 3) / 6.

    A Keras 2 .h5 (its keras_version attribute says 2.x) keeps Keras 2's formula, also in the
    config a run stores; a Keras 3 file keeps Keras 3's.
    """
    model = keras.Sequential(
        [keras.Input((4,)), layers.Dense(3, activation="hard_sigmoid"), layers.Activation("hard_sigmoid")]
    )
    _randomise(model, 2)
    model.save(tmp_path / "k3.h5")
    _keras2(tmp_path / "k3.h5", tmp_path / "k2.h5")
    with h5py.File(tmp_path / "k2.h5", "a") as f:
        f.attrs["keras_version"] = "2.15.0"
    x = torch.linspace(-4, 4, 12).reshape(3, 4)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.layers[0].weights)
    hs2 = lambda v: np.clip(0.2 * v + 0.5, 0, 1)  # noqa: E731
    want = hs2(hs2(x.numpy() @ kernel + bias))
    net, _ = load_keras(tmp_path / "k2.h5")
    rebuilt = build_from_keras_config(net.keras_config)
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert np.abs(net(x).numpy() - want).max() <= 1e-6
        assert np.abs(rebuilt(x).numpy() - want).max() <= 1e-6
    net3, _ = load_keras(tmp_path / "k3.h5")
    assert np.abs(_ours(net3, x)[0] - _keras_out(model, x)[0]).max() <= 1e-6


@pytest.mark.parametrize(
    "layer",
    [
        {"class_name": "BatchNormalization", "config": {"epsilon": -1}},
        {"class_name": "BatchNormalization", "config": {"epsilon": float("nan")}},
        {"class_name": "BatchNormalization", "config": {"epsilon": "x"}},
        {"class_name": "LeakyReLU", "config": {"name": "bad", "negative_slope": "x"}},
        {"class_name": "ELU", "config": {"name": "bad", "alpha": "x"}},
        {"class_name": "Rescaling", "config": {"name": "bad", "scale": [1.0, 2.0]}},
        {"class_name": "Rescaling", "config": {"name": "bad", "scale": None}},
        {"class_name": "Rescaling", "config": {"name": "bad", "scale": 1.0, "offset": {"value": 1.0}}},
        {"class_name": "Rescaling", "config": {"name": "bad", "scale": {"class_name": "__numpy__", "config": {}}}},
    ],
)
def test_edited_layer_values_are_refused_when_read(saved, tmp_path, layer):
    """Values of the wrong type or size are refused by load_keras, not by a traceback at the first prediction."""
    name = "conv1d" if layer["class_name"] == "BatchNormalization" else "mnist_convnet"

    def edit(data):
        config = json.loads(data)
        layers_ = config["config"]["layers"]
        if name == "conv1d":  # the fixture's own BatchNormalization (its weights are in the file)
            layers_[2]["config"].update(layer["config"], name="bad")
        else:
            layers_.insert(2, layer)  # after the first Conv2D (32 channels)
        return json.dumps(config).encode()

    _edit_config(saved[name][1]["keras"], tmp_path / "edited.keras", edit)
    with pytest.raises(CnnkitError) as exc:
        load_keras(tmp_path / "edited.keras")
    assert "'bad'" in _one_line(exc)


def test_refusal_is_short(tmp_path):
    model = keras.Sequential([keras.Input((4,)), layers.Embedding(10, 2)])
    model.save(tmp_path / "emb.keras")
    with pytest.raises(CnnkitError) as exc:
        load_keras(tmp_path / "emb.keras")
    msg = _one_line(exc)
    assert "layer 'embedding' is an Embedding" in msg and "cnnkit.models.keras.LAYERS" in msg and len(msg) < 250


@pytest.mark.parametrize(
    "kind, said",
    [("LSTM", "an LSTM"), ("GRU", "a GRU"), ("SimpleRNN", "a SimpleRNN"), ("UnitNormalization", "a UnitNormalization")],
)
def test_a_refused_layers_class_takes_the_article_it_is_read_with(kind, said):
    from cnnkit.models.keras import _refuse

    assert f"layer 'x' is {said}: " in str(_refuse(kind, "x"))


def test_layers_that_pass_through_at_inference(tmp_path):
    """Augmentation (the Keras tutorials' nested ``data_augmentation``), noise and spatial dropout: identities."""
    augmentation = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)], name="augmentation")
    x_in = keras.Input((8, 8, 3))
    x = layers.SpatialDropout2D(0.3)(layers.Conv2D(4, 3)(augmentation(x_in)))
    x = layers.GaussianDropout(0.2)(layers.GaussianNoise(0.1)(layers.Flatten()(x)))
    model = keras.Model(x_in, layers.Dense(2)(layers.Identity()(layers.AlphaDropout(0.1)(x))))
    _randomise(model, 4)
    _saved_and_compared(model, torch.rand(2, 3, 8, 8), tmp_path, ("m.keras", "m.h5"))


@pytest.mark.parametrize("strides, dilation", [(1, 1), (2, 1), (1, 3)])
def test_causal_conv1d(tmp_path, strides, dilation):
    model = keras.Sequential(
        [keras.Input((21, 3)), layers.Conv1D(4, 3, strides=strides, dilation_rate=dilation, padding="causal")]
    )
    _randomise(model, 6)
    model.save(tmp_path / "c.keras")
    net, size = load_keras(tmp_path / "c.keras")
    x = torch.rand(2, *size)
    assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-5


# ----------------------------------------------------------------------------- more layers, each against Keras


def _against_keras(model, x: torch.Tensor, folder, suffixes=("keras", "h5")) -> float:
    """Save ``model`` in each format, read it back: outputs within 1e-5 of the output's scale, Keras'
    parameter count; the largest difference seen."""
    _randomise(model, 7)
    ref = _keras_out(model, x)[0]
    worst = 0.0
    for suffix in suffixes:
        model.save(folder / f"m.{suffix}")
        net, size = load_keras(folder / f"m.{suffix}")
        assert size == tuple(x.shape[1:])
        ours = _ours(net, x)[0]
        assert ours.shape == ref.shape, suffix
        diff = float(np.abs(ours - ref).max())
        assert diff <= 1e-5 * max(1.0, float(np.abs(ref).max())), (suffix, diff)
        assert sum(v.numel() for v in net.state_dict().values()) == model.count_params(), suffix
        worst = max(worst, diff)
    return worst


def _model(shape, *stack):
    return keras.Sequential([keras.Input(shape), *stack])


def _x(shape, seed: int = 0) -> torch.Tensor:
    """Three examples of Keras' ``shape`` (channels last), channels first, values around +-2."""
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed)) * 2
    return x.movedim(-1, 1) if x.dim() > 2 else x


@pytest.mark.parametrize(
    "stack",
    [
        [
            layers.SeparableConv1D(5, 3, strides=2, padding="same", depth_multiplier=2, activation="relu"),
            layers.SeparableConv1D(4, 2, dilation_rate=2, use_bias=False),
        ],
        [
            layers.DepthwiseConv1D(3, strides=2, padding="same", depth_multiplier=3),
            layers.DepthwiseConv1D(4, padding="same", use_bias=False, activation="tanh"),
        ],
        [
            layers.Conv1DTranspose(4, 3, strides=2, padding="same"),
            layers.Conv1DTranspose(3, 2, strides=3, activation="relu"),
            layers.Conv1DTranspose(2, 4, strides=2, padding="same", use_bias=False),
            layers.Conv1DTranspose(2, 5, dilation_rate=2),
        ],
    ],
    ids=["SeparableConv1D", "DepthwiseConv1D", "Conv1DTranspose"],
)
def test_1d_depthwise_separable_and_transposed_convolutions(tmp_path, stack):
    """Strides and "same" on odd lengths (TensorFlow's extra position at the end), multipliers, dilation."""
    if any(isinstance(layer, layers.Conv1DTranspose) for layer in stack):
        _needs_keras_transpose_as_tf()
    _against_keras(_model((17, 3), *stack), _x((17, 3)), tmp_path)


def _transpose_grid(n: int) -> list[dict]:
    """Settings of a Keras ``Conv{n}DTranspose`` that Keras builds (output_padding below the stride, no
    stride with dilation): kernels 1-4, strides 1-3, both paddings, output_padding None or each value
    below the stride, dilation 1-2; on 2-D and 3-D each axis takes the next kernel and stride."""
    settings = []
    for k, s, pad, op, d in itertools.product((1, 2, 3, 4), (1, 2, 3), ("valid", "same"), (None, 0, 1, 2), (1, 2)):
        if (op is not None and op >= s) or (s > 1 and d > 1) or (k + s + d) % n:
            continue
        ks = tuple((k + i - 1) % 4 + 1 for i in range(n))
        ss = tuple((s + i - 1) % 3 + 1 if d == 1 else 1 for i in range(n))
        ops = None if op is None else tuple(min(op, si - 1) for si in ss)
        settings.append(dict(kernel_size=ks, strides=ss, padding=pad, output_padding=ops, dilation_rate=d))
    return settings


@pytest.mark.parametrize("n, shape", [(1, (5, 2)), (2, (4, 5, 2)), (3, (3, 4, 2, 2))], ids=["1D", "2D", "3D"])
def test_transposed_convolutions_with_output_padding(tmp_path, n, shape):
    """Conv1DTranspose, Conv2DTranspose and Conv3DTranspose against Keras over a grid of kernel, stride,
    padding, output_padding and dilation: one model of parallel branches, each output compared."""
    _needs_keras_transpose_as_tf()
    cls = {1: layers.Conv1DTranspose, 2: layers.Conv2DTranspose, 3: layers.Conv3DTranspose}[n]
    x_in = keras.Input(shape)
    outs = [cls(2, activation="tanh" if i % 2 else None, **kw)(x_in) for i, kw in enumerate(_transpose_grid(n))]
    model = keras.Model(x_in, outs)
    _randomise(model, 3)
    x = _x(shape)
    refs = _keras_out(model, x)
    for suffix in ("keras", "h5"):
        model.save(tmp_path / f"m.{suffix}")
        net, _ = load_keras(tmp_path / f"m.{suffix}")
        ours = _ours(net, x)
        assert len(ours) == len(refs) > 20
        for kw, o, r in zip(_transpose_grid(n), ours, refs, strict=True):
            assert o.shape == r.shape, (suffix, kw)
            assert np.abs(o - r).max() <= 1e-5 * max(1.0, float(np.abs(r).max())), (suffix, kw)
        assert sum(v.numel() for v in net.state_dict().values()) == model.count_params()


def test_cropping_zero_padding_upsampling_and_permute(tmp_path):
    """Each axis cropped and padded by its own (before, after), so a swapped axis or side shows."""
    maps = _model(
        (9, 8, 3),
        layers.Cropping2D(((1, 2), (0, 3))),
        layers.Conv2D(4, 2),
        layers.Permute((3, 1, 2)),
        layers.Permute((2, 3, 1)),
        layers.Reshape((5 * 4, 4)),
        layers.Cropping1D((2, 1)),
        layers.ZeroPadding1D((2, 1)),
        layers.UpSampling1D(3),
        layers.Conv1D(2, 3),
        layers.Permute((2, 1)),
    )
    _against_keras(maps, _x((9, 8, 3)), tmp_path)
    volumes = _model(
        (5, 6, 7, 2),
        layers.Cropping3D(((1, 0), (2, 1), 1)),
        layers.ZeroPadding3D(((1, 0), (0, 2), (1, 1))),
        layers.Conv3D(3, 2),
        layers.Cropping3D(1),
        layers.ZeroPadding3D(2),
    )
    _against_keras(volumes, _x((5, 6, 7, 2)), tmp_path)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_value": 1.5},
        {"max_value": 0.0},
        {"negative_slope": 0.2},
        {"threshold": 0.5},
        {"max_value": 6.0, "negative_slope": 0.3},
        {"max_value": 1.5, "negative_slope": 0.1, "threshold": 0.5},
        {"negative_slope": 0.25, "threshold": 0.8},
        {"max_value": 0.5, "threshold": 1.0},
    ],
)
def test_relu_with_any_settings(tmp_path, settings):
    model = _model((5, 4, 3), layers.Conv2D(4, 1), layers.ReLU(**settings), layers.Conv2D(2, 1))
    _against_keras(model, _x((5, 4, 3)), tmp_path)


def test_prelu_with_and_without_shared_axes(tmp_path):
    """alpha per value (H, W, C), per channel (shared over H and W), shared over one axis (a negative one
    as Keras counts it); on a series and on features."""
    maps = _model(
        (6, 5, 3),
        layers.PReLU(),
        layers.Conv2D(4, 1),
        layers.PReLU(shared_axes=[1, 2]),
        layers.Conv2D(4, 1),
        layers.PReLU(shared_axes=2),
        layers.PReLU(shared_axes=-1),  # Keras: alpha_shape[-1 - 1] = 1, the axis before the channels
        layers.Flatten(),
        layers.PReLU(),
    )
    _against_keras(maps, _x((6, 5, 3)), tmp_path)
    series = _model((7, 3), layers.PReLU(shared_axes=1), layers.Conv1D(4, 2), layers.PReLU(shared_axes=[2]))
    _against_keras(series, _x((7, 3)), tmp_path)


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
def test_layer_normalization(tmp_path):
    """The channels, lists of axes (also as Keras sorts them: [-1, 1]), without centre or scale, epsilon
    and the deprecated rms_scaling."""
    model = _model(
        (6, 5, 3),
        layers.LayerNormalization(),
        layers.LayerNormalization(axis=[1, 2, 3], epsilon=0.1),
        layers.LayerNormalization(axis=[-1, 1], center=False),
        layers.LayerNormalization(axis=[1, 3], scale=False, center=False),
        layers.LayerNormalization(axis=[-1, -3], epsilon=1e-5, scale=False),
        layers.LayerNormalization(axis=[2, 3], rms_scaling=True),
    )
    _against_keras(model, _x((6, 5, 3)), tmp_path)
    flat = _model((7, 3), layers.LayerNormalization(axis=[1, 2]), layers.Flatten(), layers.LayerNormalization())
    _against_keras(flat, _x((7, 3)), tmp_path)


def test_group_normalization(tmp_path):
    model = _model(
        (6, 5, 4),
        layers.GroupNormalization(groups=2),
        layers.GroupNormalization(groups=-1, epsilon=0.1, center=False),
        layers.GroupNormalization(groups=1, scale=False),
        layers.GroupNormalization(groups=4, scale=False, center=False),
        layers.Flatten(),
        layers.Dense(6),
        layers.GroupNormalization(groups=3),
    )
    _against_keras(model, _x((6, 5, 4)), tmp_path)
    series = _model((7, 6), layers.GroupNormalization(groups=3, axis=2))
    _against_keras(series, _x((7, 6)), tmp_path)


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
def test_weight_limits_count_layers_as_keras_does():
    """What the budget charges for a layer, read off its config, is Keras' parameter count."""
    from cnnkit.models.keras import _weights_needed

    stacks = {
        (17, 3): [
            layers.SeparableConv1D(5, 3, depth_multiplier=2),
            layers.DepthwiseConv1D(3, depth_multiplier=3, use_bias=False),
            layers.Conv1DTranspose(4, 3, strides=2),
            layers.PReLU(),
            layers.GroupNormalization(groups=2),
            layers.LayerNormalization(axis=[1, 2], center=False),
        ],
        (6, 5, 4): [
            layers.PReLU(shared_axes=[1, 2]),
            layers.PReLU(shared_axes=-1),
            layers.LayerNormalization(),
            layers.LayerNormalization(axis=[-1, 1], scale=False),
            layers.LayerNormalization(axis=[1, 2, 3], rms_scaling=True),
            layers.GroupNormalization(groups=-1, scale=False),
        ],
    }
    for shape, stack in stacks.items():
        model = _model(shape, *stack)
        for layer in model.layers:
            keras_shape = tuple(layer.input.shape[1:])
            shape_cf = keras_shape[-1:] + keras_shape[:-1]
            config = json.loads(json.dumps(layer.get_config()))
            assert _weights_needed(type(layer).__name__, config, shape_cf) == layer.count_params(), layer.name


def test_a_layer_asking_for_more_weights_than_the_file_holds_is_refused(tmp_path):
    """A PReLU whose input is edited to 1000x1000 would hold 3,000,000 alphas; the file stores 600 bytes."""
    model = _model((10, 20, 3), layers.PReLU(name="big"))
    model.save(tmp_path / "p.keras")

    def edit(data):
        config = json.loads(data)
        config["config"]["layers"][0]["config"]["batch_shape"] = [None, 1000, 1000, 3]
        return json.dumps(config).encode()

    _edit_config(tmp_path / "p.keras", tmp_path / "edited.keras", edit)
    with pytest.raises(CnnkitError) as exc:
        load_keras(tmp_path / "edited.keras")
    assert "'big'" in _one_line(exc) and "3,000,000 weight values" in str(exc.value)


@pytest.fixture(scope="module")
def refusable(tmp_path_factory):
    """.keras files whose layer configs the refusals edit: one model on maps, one on a series."""
    root = tmp_path_factory.mktemp("refusable")
    models = {
        "maps": _model(
            (6, 5, 4),
            layers.LayerNormalization(name="ln"),
            layers.GroupNormalization(groups=2, name="gn"),
            layers.PReLU(name="prelu"),
            layers.ReLU(name="relu"),
            layers.Cropping2D(1, name="crop"),
            layers.ZeroPadding2D(name="pad"),
            layers.Permute((2, 1, 3), name="perm"),
        ),
        "series": _model(
            (7, 4),
            layers.Cropping1D((1, 1), name="crop1"),
            layers.ZeroPadding1D(1, name="pad1"),
            layers.UpSampling1D(2, name="up1"),
            layers.Conv1DTranspose(3, 2, name="tr1"),
        ),
    }
    out = {}
    for name, model in models.items():
        model.save(root / f"{name}.keras")
        out[name] = root / f"{name}.keras"
    return out


@pytest.mark.parametrize(
    "which, layer, change, words",
    [
        ("maps", "ln", {"axis": 0}, "batch axis"),
        ("maps", "ln", {"axis": [1, -4]}, "batch axis"),
        ("maps", "ln", {"axis": [3, -1]}, "one axis twice"),
        ("maps", "ln", {"axis": 4}, "axes of its 4-D input"),
        ("maps", "ln", {"epsilon": -1.0}, "epsilon"),
        ("maps", "gn", {"groups": 3}, "a divisor of its 4 channels"),
        ("maps", "gn", {"axis": 1}, "only the channels"),
        ("maps", "prelu", {"shared_axes": [0]}, "shared_axes"),
        ("maps", "prelu", {"shared_axes": [4]}, "shared_axes"),
        ("maps", "prelu", {"shared_axes": [1, -3]}, "shared_axes"),
        ("maps", "relu", {"threshold": -1.0}, "threshold"),
        ("maps", "relu", {"max_value": "6"}, "max_value"),
        ("maps", "relu", {"negative_slope": float("nan")}, "negative_slope"),
        ("maps", "crop", {"cropping": [[-1, 0], [0, 0]]}, "non-negative"),
        ("maps", "crop", {"cropping": [[3, 3], [0, 0]]}, "leaves nothing"),
        ("maps", "crop", {"cropping": [1, 2, 3]}, "cropping"),
        ("maps", "pad", {"padding": [[0, -2], [1, 1]]}, "non-negative"),
        ("maps", "perm", {"dims": [1, 1, 2]}, "a permutation"),
        ("maps", "perm", {"dims": [0, 1, 2]}, "a permutation"),
        ("series", "crop1", {"cropping": [-1, 0]}, "non-negative"),
        ("series", "crop1", {"cropping": [4, 3]}, "leaves nothing"),
        ("series", "pad1", {"padding": [-1, 1]}, "non-negative"),
        ("series", "up1", {"size": 0}, "positive integer"),
        ("series", "tr1", {"output_padding": [1]}, "output_padding"),
    ],
)
def test_bad_layer_configs_are_refused_in_one_line(refusable, tmp_path, which, layer, change, words):
    def edit(data):
        config = json.loads(data)
        for entry in config["config"]["layers"]:
            if entry["config"].get("name") == layer:
                entry["config"].update(change)
        return json.dumps(config).encode()

    _edit_config(refusable[which], tmp_path / "edited.keras", edit)
    with pytest.raises(CnnkitError) as exc:
        load_keras(tmp_path / "edited.keras")
    msg = _one_line(exc)
    assert f"'{layer}'" in msg and words in msg, msg


# ----------------------------------------------------------------------------- Keras 2 files of the layers added last
# tf.keras 2.x wrote a legacy .h5 this way: each layer's get_config() with every argument (Keras 2's
# names and defaults), no "module", dtype a string, tuples as lists, axes as build() left them; the
# weights under model_weights/<layer>/<layer>/<var>:0, listed by the weight_names attribute. The
# files here are written so with h5py, the weights taken from a Keras 3 model of the same layers:
# the expected outputs are that model's.

_K2_ZEROS = {"class_name": "Zeros", "config": {}}
_K2_ONES = {"class_name": "Ones", "config": {}}
_K2_GLOROT = {"class_name": "GlorotUniform", "config": {"seed": None}}


def _k2_f32(v):
    """A number as Keras 2's ``backend.cast_to_floatx`` leaves it in a config (float32, written as a float)."""
    return None if v is None else float(np.float32(v))


def _k2_pairs(v, n: int) -> list:
    """Keras 2's cropping / padding argument normalised as its layers store it: (before, after) per axis."""
    if n == 1:
        return [v, v] if isinstance(v, int) else list(v)
    if isinstance(v, int):
        return [[v, v]] * n
    return [[p, p] if isinstance(p, int) else list(p) for p in v]


def _k2_conv(kwargs: dict, n: int, transpose: bool = False) -> dict:
    k = kwargs["kernel_size"]
    out = {
        "kernel_size": [k] * n if isinstance(k, int) else list(k),
        "strides": [kwargs.get("strides", 1)] * n,
        "padding": kwargs.get("padding", "valid"),
        "data_format": "channels_last",
        "dilation_rate": [kwargs.get("dilation_rate", 1)] * n,
        "groups": 1,
        "activation": kwargs.get("activation") or "linear",
        "use_bias": kwargs.get("use_bias", True),
        "bias_initializer": _K2_ZEROS,
        "bias_regularizer": None,
        "activity_regularizer": None,
        "bias_constraint": None,
    }
    if "filters" in kwargs:
        out["filters"] = kwargs["filters"]
    if transpose:
        out["output_padding"] = None
    return out


def _k2_config(kind: str, kwargs: dict, keras_shape: tuple) -> tuple[dict, list[str]]:
    """(config without name/trainable/dtype, weight names) of ``kind(**kwargs)`` on ``keras_shape``
    (channels last, batch included) as tf.keras 2.15 saves it."""
    rank = len(keras_shape)
    if kind == "PReLU":
        shared = kwargs.get("shared_axes")
        shared = None if shared is None else [shared] if isinstance(shared, int) else list(shared)
        cfg = {"alpha_initializer": _K2_ZEROS, "alpha_regularizer": None, "alpha_constraint": None}
        return {**cfg, "shared_axes": shared}, ["alpha"]
    if kind in ("LayerNormalization", "GroupNormalization"):
        center, scale = kwargs.get("center", True), kwargs.get("scale", True)
        cfg = {"epsilon": kwargs.get("epsilon", 1e-3), "center": center, "scale": scale}
        cfg.update(beta_initializer=_K2_ZEROS, gamma_initializer=_K2_ONES, beta_regularizer=None)
        cfg.update(gamma_regularizer=None, beta_constraint=None, gamma_constraint=None)
        axis = kwargs.get("axis", -1)
        if kind == "LayerNormalization":  # build() left the axes positive, in the order written
            cfg["axis"] = [a % rank for a in ([axis] if isinstance(axis, int) else axis)]
        else:  # build() set groups=-1 to the channels; the axis stays as written
            groups = kwargs.get("groups", 32)
            cfg.update(groups=keras_shape[axis] if groups == -1 else groups, axis=axis)
        return cfg, ["gamma"] * scale + ["beta"] * center
    if kind == "ReLU":
        slope, threshold = kwargs.get("negative_slope", 0.0), kwargs.get("threshold", 0.0)
        cfg = {"max_value": _k2_f32(kwargs.get("max_value")), "negative_slope": _k2_f32(slope)}
        return {**cfg, "threshold": _k2_f32(threshold)}, []
    if kind == "Permute":
        return {"dims": list(kwargs["dims"])}, []
    if kind.startswith(("Cropping", "ZeroPadding")):
        n = int(kind[-2])
        key = "cropping" if kind.startswith("Cropping") else "padding"
        cfg = {key: _k2_pairs(kwargs.get(key, 0 if kind == "Cropping2D" else 1), n)}
        return cfg if kind == "Cropping1D" else {**cfg, "data_format": "channels_last"}, []
    if kind == "UpSampling1D":
        return {"size": kwargs.get("size", 2)}, []
    if kind == "Reshape":
        return {"target_shape": list(kwargs["target_shape"])}, []
    if kind == "Flatten":
        return {"data_format": "channels_last"}, []
    if kind == "Dense":
        cfg = {"units": kwargs["units"], "activation": kwargs.get("activation") or "linear", "use_bias": True}
        cfg.update(kernel_initializer=_K2_GLOROT, bias_initializer=_K2_ZEROS, kernel_regularizer=None)
        cfg.update(bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None)
        return cfg, ["kernel", "bias"]
    if kind in ("Conv1D", "Conv2D", "Conv1DTranspose"):
        cfg = _k2_conv(kwargs, rank - 2, transpose=kind.endswith("Transpose"))
        cfg.update(kernel_initializer=_K2_GLOROT, kernel_regularizer=None, kernel_constraint=None)
        return cfg, ["kernel", "bias"][: 1 + cfg["use_bias"]]
    if kind in ("SeparableConv1D", "DepthwiseConv1D"):
        cfg = _k2_conv(kwargs, 1)
        cfg.update(depth_multiplier=kwargs.get("depth_multiplier", 1), depthwise_initializer=_K2_GLOROT)
        cfg.update(depthwise_regularizer=None, depthwise_constraint=None)
        names = ["depthwise_kernel"]
        if kind == "SeparableConv1D":
            del cfg["groups"]
            cfg.update(pointwise_initializer=_K2_GLOROT, pointwise_regularizer=None, pointwise_constraint=None)
            names.append("pointwise_kernel")
        return cfg, names + ["bias"] * cfg["use_bias"]
    raise AssertionError(kind)


def _k2_name(kind: str, taken: dict) -> str:
    """Keras 2's automatic layer name: the class in snake case, numbered from the second one."""
    from cnnkit.models.keras import _snake

    base = _snake(kind)
    taken[base] = taken.get(base, -1) + 1
    return base if not taken[base] else f"{base}_{taken[base]}"


def _keras2_file(path, shape, stack, seed: int = 7, functional: bool = False):
    """A Keras 3 model of ``stack`` ([(class name, kwargs)]) on ``shape`` with random weights, and the
    same model written to ``path`` as tf.keras 2.15 saved it; returns the Keras 3 model.

    An item (class name, kwargs, changes) has ``changes`` in its Keras 2 config only (a Keras 2 setting
    Keras 3 lacks); changes None: the layer is in the Keras 3 model only (what Keras 2 does inside the next).
    """
    model = _model(shape, *[getattr(layers, kind)(**kwargs) for kind, kwargs, *_ in stack])
    _randomise(model, seed)
    taken: dict = {}
    entries, weights = [], []
    input_name = "input_1"
    prev = input_name
    for (kind, kwargs, *changes), layer in zip(stack, model.layers, strict=True):
        if changes and changes[0] is None:
            continue
        name = _k2_name(kind, taken)
        cfg, names = _k2_config(kind, {**kwargs, **(changes[0] if changes else {})}, (None, *layer.input.shape[1:]))
        entry = {"class_name": kind, "config": {"name": name, "trainable": True, "dtype": "float32", **cfg}}
        if functional:
            entry.update(name=name, inbound_nodes=[[[prev, 0, 0, {}]]])
        entries.append(entry)
        arrays = [keras.ops.convert_to_numpy(w) for w in layer.weights]
        if kind == "LayerNormalization":  # gamma and beta over the axes in Keras 2's order, as reshaped
            arrays = [a.reshape([layer.input.shape[d] for d in cfg["axis"]]) for a in arrays]
        assert len(arrays) == len(names), (kind, [w.name for w in layer.weights], names)
        weights.append((name, [(f"{name}/{n}:0", a) for n, a in zip(names, arrays)]))
        prev = name
    first = {"batch_input_shape": [None, *shape], "dtype": "float32", "sparse": False, "ragged": False}
    first = {"class_name": "InputLayer", "config": {**first, "name": input_name}}
    if functional:
        first.update(name=input_name, inbound_nodes=[])
        weights.insert(0, (input_name, []))
        config = {"name": "model", "layers": [first, *entries]}
        config.update(input_layers=[[input_name, 0, 0]], output_layers=[[prev, 0, 0]])
        config = {"class_name": "Functional", "config": config}
    else:
        config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [first, *entries]}}
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.15.0"
        f.attrs["model_config"] = json.dumps(config).encode()
        group = f.create_group("model_weights")
        group.attrs["backend"], group.attrs["keras_version"] = b"tensorflow", b"2.15.0"
        group.attrs["layer_names"] = np.array([n.encode() for n, _ in weights])
        for name, named in weights:
            g = group.create_group(name)
            g.attrs["weight_names"] = np.array([n.encode() for n, _ in named]) if named else np.asarray([])
            for n, a in named:
                g.create_dataset(n, data=a)
    return model


def _keras2_equals_keras(tmp_path, shape, stack, functional: bool = False) -> None:
    """The Keras 2 file of ``stack`` read by cnnkit answers as Keras does, with Keras' parameter count."""
    path = tmp_path / "k2.h5"
    model = _keras2_file(path, shape, stack, functional=functional)
    x = _x(shape)
    net, size = load_keras(path)
    assert size == tuple(x.shape[1:])
    ours, ref = _ours(net, x)[0], _keras_out(model, x)[0]
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    assert sum(v.numel() for v in net.state_dict().values()) == model.count_params()


@pytest.mark.parametrize("functional", [False, True], ids=["Sequential", "Functional"])
def test_keras2_1d_depthwise_separable_and_transposed_convolutions(tmp_path, functional):
    _needs_keras_transpose_as_tf()
    stack = [
        ("SeparableConv1D", dict(filters=5, kernel_size=3, strides=2, padding="same", depth_multiplier=2)),
        ("SeparableConv1D", dict(filters=4, kernel_size=2, dilation_rate=2, use_bias=False, activation="relu")),
        ("DepthwiseConv1D", dict(kernel_size=3, strides=2, padding="same", depth_multiplier=3)),
        ("DepthwiseConv1D", dict(kernel_size=2, padding="same", use_bias=False, activation="tanh")),
        ("Conv1DTranspose", dict(filters=4, kernel_size=3, strides=2, padding="same")),
        ("Conv1DTranspose", dict(filters=3, kernel_size=2, strides=3, activation="relu")),
        ("Conv1DTranspose", dict(filters=2, kernel_size=4, strides=2, padding="same", use_bias=False)),
        ("Conv1DTranspose", dict(filters=2, kernel_size=5, dilation_rate=2)),
    ]
    _keras2_equals_keras(tmp_path, (17, 3), stack, functional)


def test_keras2_causal_separable_conv1d(tmp_path):
    """Keras 2's SeparableConv1D(padding="causal") pads dilation * (kernel - 1) zeros before the series
    and runs the "valid" convolution (Keras 3 has no causal one): Keras 3's ZeroPadding1D and the same
    valid SeparableConv1D compute it."""
    stack = [
        ("ZeroPadding1D", dict(padding=(4, 0)), None),
        ("SeparableConv1D", dict(filters=4, kernel_size=3, dilation_rate=2, depth_multiplier=2), {"padding": "causal"}),
        ("ZeroPadding1D", dict(padding=(2, 0)), None),
        ("SeparableConv1D", dict(filters=3, kernel_size=3, strides=2, activation="relu"), {"padding": "causal"}),
        ("ZeroPadding1D", dict(padding=(1, 0)), None),
        ("SeparableConv1D", dict(filters=2, kernel_size=2, use_bias=False), {"padding": "causal"}),
    ]
    _keras2_equals_keras(tmp_path, (11, 3), stack)


def test_keras2_cropping_zero_padding_upsampling_and_permute(tmp_path):
    maps = [
        ("Cropping2D", dict(cropping=((1, 2), (0, 3)))),
        ("Conv2D", dict(filters=4, kernel_size=2)),
        ("Permute", dict(dims=(3, 1, 2))),
        ("Permute", dict(dims=(2, 3, 1))),
        ("Reshape", dict(target_shape=(5 * 4, 4))),
        ("Cropping1D", dict(cropping=(2, 1))),
        ("Cropping1D", dict()),
        ("ZeroPadding1D", dict(padding=(2, 1))),
        ("ZeroPadding1D", dict()),
        ("UpSampling1D", dict(size=3)),
        ("UpSampling1D", dict()),
        ("Conv1D", dict(filters=2, kernel_size=3)),
        ("Permute", dict(dims=(2, 1))),
    ]
    _keras2_equals_keras(tmp_path, (9, 8, 3), maps)
    volumes = [
        ("Cropping3D", dict(cropping=((1, 0), (2, 1), 1))),
        ("ZeroPadding3D", dict(padding=((1, 0), (0, 2), (1, 1)))),
        ("ZeroPadding3D", dict()),
        ("Cropping3D", dict()),
        ("ZeroPadding3D", dict(padding=2)),
    ]
    _keras2_equals_keras(tmp_path, (5, 6, 7, 2), volumes)


def test_keras2_activations_and_normalisations(tmp_path):
    """PReLU (Keras 2's alpha_* arguments), ReLU's float32 settings, LayerNormalization's axes as build()
    left them (positive, unsorted), GroupNormalization's groups=-1 stored as the channels."""
    maps = [
        ("PReLU", dict()),
        ("Conv2D", dict(filters=4, kernel_size=1)),
        ("PReLU", dict(shared_axes=[1, 2])),
        ("PReLU", dict(shared_axes=2)),
        ("PReLU", dict(shared_axes=-1)),
        ("ReLU", dict(max_value=1.5, negative_slope=0.1, threshold=0.5)),
        ("ReLU", dict(negative_slope=0.2)),
        ("ReLU", dict(max_value=6.0)),
        ("ReLU", dict(negative_slope=0.25, threshold=0.8)),
        ("LayerNormalization", dict()),
        ("LayerNormalization", dict(axis=[1, 2, 3], epsilon=0.1)),
        ("LayerNormalization", dict(axis=[-1, 1], center=False)),
        ("LayerNormalization", dict(axis=[1, -1], epsilon=0.01)),
        ("LayerNormalization", dict(axis=[3, 1], scale=False)),
        ("LayerNormalization", dict(axis=[1, 3], scale=False, center=False)),
        ("GroupNormalization", dict(groups=2)),
        ("GroupNormalization", dict(groups=-1, epsilon=0.1, center=False)),
        ("GroupNormalization", dict(groups=1, scale=False)),
        ("GroupNormalization", dict(groups=4, axis=3, scale=False, center=False)),
    ]
    _keras2_equals_keras(tmp_path, (6, 5, 4), maps)
    series = [
        ("PReLU", dict(shared_axes=1)),
        ("LayerNormalization", dict(axis=[1, 2])),
        ("Flatten", dict()),
        ("LayerNormalization", dict()),
        ("PReLU", dict()),
    ]
    _keras2_equals_keras(tmp_path, (7, 3), series)


def test_keras2_sequential_config_as_a_list_of_layers(tmp_path):
    """Keras 2.2.2 and older saved a Sequential's config as the list of its layers, the first with its
    batch_input_shape (Keras' Sequential.from_config reads it still): read as the same model, alone,
    nested in a functional model, and with its classifier replaced."""
    stack = [
        ("Cropping1D", dict(cropping=(1, 0))),
        ("SeparableConv1D", dict(filters=4, kernel_size=3, padding="same", depth_multiplier=2)),
        ("PReLU", dict(shared_axes=[1])),
        ("ZeroPadding1D", dict(padding=(0, 2))),
        ("UpSampling1D", dict(size=2)),
        ("ReLU", dict(max_value=1.5)),
        ("Permute", dict(dims=(2, 1))),
        ("Flatten", dict()),
        ("Dense", dict(units=3, activation="softmax")),
    ]
    model = _keras2_file(tmp_path / "k2.h5", (9, 3), stack)
    with h5py.File(tmp_path / "k2.h5", "a") as f:
        config = json.loads(f.attrs["model_config"])
        inputs, *entries = config["config"]["layers"]
        entries[0]["config"]["batch_input_shape"] = inputs["config"]["batch_input_shape"]
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": entries}).encode()
        f.attrs["keras_version"] = b"2.2.2"
    x = _x((9, 3))
    net, size = load_keras(tmp_path / "k2.h5")
    assert size == (3, 9)
    assert np.abs(_ours(net, x)[0] - _keras_out(model, x)[0]).max() <= 1e-6
    nested = {
        "class_name": "Model",
        "config": {
            "name": "model_1",
            "layers": [
                {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [], "config": inputs["config"]},
                {
                    "class_name": "Sequential",
                    "name": "sequential_1",
                    "config": entries,
                    "inbound_nodes": [[["input_1", 0, 0, {}]]],
                },
            ],
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["sequential_1", 0, 0]],
        },
    }
    outer = build_from_keras_config(nested)
    outer.sequential_1.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(outer(x), net(x))
    net.reset_classifier(5)
    assert net(x).shape == (3, 5)
    assert build_from_keras_config(net.keras_config)(x).shape == (3, 5)

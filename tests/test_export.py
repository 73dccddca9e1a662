"""ONNX export: ONNX Runtime must reproduce PyTorch (1e-4 of the output scale) at any batch size.

Also the two CLI doors: ``cnnkit convert`` (a Keras config written by hand: no Keras needed) and
``cnnkit export`` on the run it writes.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn as nn

ort = pytest.importorskip("onnxruntime", reason="ONNX export checks need onnxruntime (pip install 'cnnkit[onnx]')")
pytest.importorskip("onnx", reason="ONNX export needs onnx")

from cnnkit.errors import CnnkitError  # noqa: E402
from cnnkit.export import OnnxModel, export_onnx  # noqa: E402
from cnnkit.models import create_model  # noqa: E402
from cnnkit.models.keras import build_from_keras_config  # noqa: E402


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    return (a - b).abs().max().item() <= 1e-6 + rtol * b.abs().max().item()


def _no_temporaries(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_zoo_model_with_the_dynamo_exporter(tmp_path):
    torch.manual_seed(0)
    model = create_model("mnist_fast").eval()
    x = torch.rand(1, 1, 28, 28)
    report = export_onnx(model, x, tmp_path / "mnist.onnx")
    assert report.exporter == "dynamo" and report.fallback is None
    assert report.checked and report.batch_sizes == (1, 2) and report.max_diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.onnx"]  # one file: no .onnx.data
    onnx_model = OnnxModel(tmp_path / "mnist.onnx")
    batch = torch.rand(5, 1, 28, 28)  # a batch size never traced
    with torch.no_grad():
        assert _close(onnx_model(batch), model(batch))


def test_efficientnet_any_image_size(tmp_path):
    """TF "same" padding (stride 2) computed from the traced size: the file takes any image size."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=7).eval()
    x = torch.rand(2, 3, 32, 32)
    report = export_onnx(model, x, tmp_path / "effnet.onnx", exporter="torchscript", dynamic_size=True)
    assert report.exporter == "torchscript" and report.batch_sizes == (2, 3, 2, 2)
    assert report.input_shapes[2:] == ((2, 3, 64, 64), (2, 3, 65, 65)) and report.size_axes == (2, 3)
    y = torch.rand(1, 3, 45, 70)  # odd and even sides: the pads differ from the example's
    with torch.no_grad():
        assert _close(OnnxModel(tmp_path / "effnet.onnx", threads=1)(y), model(y))


class TwoHeads(nn.Module):
    """A dict of two outputs, as a detector's raw maps, one without the batch axis."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.cls = nn.Conv2d(4, 2, 1)
        self.box = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        f = self.body(x).relu()
        return {"cls": self.cls(f).flatten(2), "box": self.box(f).flatten(2), "grid": torch.ones(3, 2) * 0.5}


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_dict_outputs_become_named_outputs(tmp_path, exporter):
    model = TwoHeads().eval()
    x = torch.rand(1, 3, 8, 8)
    report = export_onnx(model, x, tmp_path / "two.onnx", exporter=exporter)
    assert report.outputs == ["cls", "box", "grid"]
    out = OnnxModel(tmp_path / "two.onnx")(torch.rand(3, 3, 8, 8))
    assert list(out) == ["cls", "box", "grid"]
    assert out["cls"].shape == (3, 2, 64) and out["box"].shape == (3, 4, 64) and out["grid"].shape == (3, 2)


def test_dynamic_image_size(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    report = export_onnx(model, torch.rand(1, 3, 20, 20), tmp_path / "any.onnx", dynamic_size=True)
    assert report.input_shapes == ((1, 3, 20, 20), (2, 3, 20, 20), (1, 3, 52, 52), (1, 3, 53, 53))
    x = torch.rand(2, 3, 75, 50)
    with torch.no_grad():
        assert _close(OnnxModel(tmp_path / "any.onnx")(x), model(x))


def test_dynamic_size_refused_by_a_fixed_size_network(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    with pytest.raises(CnnkitError, match="runs only at its example's size .1, 8, 8. along axes .2, 3."):
        export_onnx(model, torch.rand(1, 1, 8, 8), tmp_path / "fixed.onnx", dynamic_size=True, exporter="torchscript")
    assert not (tmp_path / "fixed.onnx").exists() and _no_temporaries(tmp_path)


def test_tuple_outputs(tmp_path):
    class Pair(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x.amax((2, 3))

    export_onnx(Pair(), torch.rand(2, 3, 5, 5), tmp_path / "pair.onnx", exporter="torchscript")
    a, b = OnnxModel(tmp_path / "pair.onnx")(torch.ones(4, 3, 5, 5))
    assert torch.allclose(a, torch.ones(4, 3)) and torch.allclose(b, torch.ones(4, 3))


class Drifting(nn.Module):
    """Its output depends on how often it was called: the exported graph cannot reproduce it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


def test_failing_check_leaves_no_file(tmp_path):
    target = tmp_path / "drift.onnx"
    with pytest.raises(CnnkitError, match="differs from PyTorch") as exc:
        export_onnx(Drifting(), torch.rand(2, 3), target, exporter="torchscript")
    assert "\n" not in str(exc.value)
    assert not target.exists() and _no_temporaries(tmp_path)


def test_a_previous_file_survives_a_failed_export(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(CnnkitError):
        export_onnx(Drifting(), torch.rand(2, 3), target, exporter="torchscript")
    assert target.read_bytes() == b"previous" and _no_temporaries(tmp_path)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(CnnkitError, match="exporter"):
        export_onnx(nn.Identity(), torch.rand(1, 3), tmp_path / "x.onnx", exporter="tf")

    class Words(nn.Module):
        def forward(self, x):
            return "no tensor"

    with pytest.raises(CnnkitError, match="returns str"):
        export_onnx(Words(), torch.rand(1, 3), tmp_path / "x.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(CnnkitError, match="not an ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for opset in (6, newest + 1, 17.0, "17", True):  # before the oldest PyTorch writes, past what onnx knows, not ints
        with pytest.raises(CnnkitError, match=rf"from 7 to {newest}, or none .* Received: opset={opset!r}$"):
            export_onnx(nn.Identity(), torch.rand(1, 3), tmp_path / "x.onnx", opset=opset)
    assert not list(tmp_path.glob("x.onnx*"))


class _Warp(nn.Module):
    """grid_sample: the TorchScript exporter writes it from opset 16."""

    def forward(self, x):
        return nn.functional.grid_sample(x, torch.zeros(x.shape[0], 4, 4, 2), align_corners=False)


def test_the_exporters_whole_reason_reaches_the_user(tmp_path):
    # the reason and the fix the exporter names, both sentences (not cut at the first one)
    for exporter in ("torchscript", "auto"):
        with pytest.raises(CnnkitError) as exc:
            export_onnx(_Warp(), torch.rand(1, 1, 8, 8), tmp_path / "w.onnx", opset=15, exporter=exporter)
        text = str(exc.value)
        assert text.endswith(
            "TorchScript exporter: Exporting the operator 'aten::grid_sampler' to ONNX opset version 15 is not "
            "supported. Support for this operator was added in version 16, try exporting with this version"
        )
        assert "\n" not in text and not list(tmp_path.iterdir())


def test_the_dynamo_exporters_page_is_its_first_line_and_the_error_behind_it(tmp_path):
    class Eig(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x[:, 0]).real

    with pytest.raises(CnnkitError) as exc:
        export_onnx(Eig(), torch.rand(1, 1, 4, 4), tmp_path / "e.onnx", exporter="dynamo")
    text = str(exc.value)
    assert text.startswith(
        "the dynamo ONNX exporter failed: Failed to convert the exported program to an ONNX model: No ONNX "
        "function found for <OpOverload(op='aten.linalg_eig', overload='default')>."
    )
    assert text.endswith("; try exporter='torchscript'") and "\x1b" not in text and "Next steps" not in text


# ----------------------------------------------------------------------------- a converted Keras model, then the CLI

KERAS_CONFIG = {
    "class_name": "Sequential",
    "config": {
        "name": "seq",
        "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 13, 12, 3], "name": "input_layer"}},
            {
                "class_name": "Conv2D",
                "config": {
                    "name": "conv2d",
                    "filters": 4,
                    "kernel_size": [3, 3],
                    "strides": [2, 2],
                    "padding": "same",
                    "activation": "relu",
                },
            },
            {"class_name": "BatchNormalization", "config": {"name": "batch_normalization"}},
            {"class_name": "Flatten", "config": {"name": "flatten"}},
            {"class_name": "Dense", "config": {"name": "dense", "units": 5, "activation": "softmax"}},
        ],
    },
}


def test_keras_network_from_config_exports(tmp_path):
    torch.manual_seed(0)
    net = build_from_keras_config(KERAS_CONFIG)
    assert net.input_size == (3, 13, 12)
    assert [n for n, _ in net.named_children()] == ["conv2d", "batch_normalization", "flatten", "dense"]
    with torch.no_grad():
        net.batch_normalization.running_mean.uniform_(-1, 1)
    x = torch.rand(1, 3, 13, 12)
    report = export_onnx(net, x, tmp_path / "k.onnx")
    assert report.checked
    batch = torch.rand(4, 3, 13, 12)
    with torch.no_grad():
        assert _close(OnnxModel(tmp_path / "k.onnx")(batch), net(batch))


def test_keras_network_head_interface():
    torch.manual_seed(0)
    net = build_from_keras_config(KERAS_CONFIG, logits=True)
    x = torch.rand(2, 3, 13, 12)
    with torch.no_grad():
        features = net.forward_features(x)
        assert features.shape == (2, 4, 7, 6)  # ceil(13 / 2), ceil(12 / 2)
        assert torch.equal(net.forward_head(features), net(x))
        assert net.forward_head(features, pre_logits=True).shape == (2, 4 * 7 * 6)
    net.reset_classifier(3)
    assert net(x).shape == (2, 3) and float(net.dense.bias.abs().sum()) == 0.0
    dense = next(layer for layer in net.keras_config["config"]["layers"] if layer["config"]["name"] == "dense")
    assert dense["config"]["units"] == 3 and dense["config"]["activation"] == "linear"
    assert KERAS_CONFIG["config"]["layers"][-1]["config"]["units"] == 5  # the caller's dict is untouched
    rebuilt = build_from_keras_config(net.keras_config)
    rebuilt.load_state_dict(net.state_dict())  # the description follows the net
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def _parser():
    from cnnkit.cli import convert, export

    parser = argparse.ArgumentParser(prog="cnnkit")
    sub = parser.add_subparsers(dest="command")
    convert.register(sub)
    export.register(sub)
    return parser


def test_cnnkit_export_writes_the_opset_asked_for(tmp_path, capsys):
    import onnx

    from cnnkit.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", "mnist_fast", "--out", str(out), "--opset", "13", "--exporter", "torchscript"]) == 0
    assert [o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")] == [13]
    capsys.readouterr()
    assert main(["export", "mnist_fast", "--out", str(tmp_path / "o.onnx"), "--opset", "6"]) == 2
    err = capsys.readouterr().err
    assert "a whole number from 7 to" in err and "Received: opset=6" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_convert_then_load_then_export(tmp_path, capsys):
    h5py = pytest.importorskip("h5py", reason="writing the Keras fixture file needs h5py")
    import zipfile

    import numpy as np

    # a .keras file written by hand: the config above and random weights in Keras' layout
    rng = np.random.default_rng(0)
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as f:
        for group, arrays in {
            "conv2d": [(3, 3, 3, 4), (4,)],
            "batch_normalization": [(4,)] * 4,
            "dense": [(7 * 6 * 4, 5), (5,)],
        }.items():
            for i, shape in enumerate(arrays):
                f.create_dataset(f"layers/{group}/vars/{i}", data=np.abs(rng.normal(0.5, 0.3, shape)).astype("f4"))
    keras_file = tmp_path / "net.keras"
    with zipfile.ZipFile(keras_file, "w") as z:
        z.writestr("config.json", json.dumps(KERAS_CONFIG))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.write(weights, "model.weights.h5")

    parser = _parser()
    args = parser.parse_args(["convert", str(keras_file), "--out", str(tmp_path / "run"), "--classes", "a,b,c,d,e"])
    assert args.func(args) == 0
    assert "5 classes" in capsys.readouterr().out

    import cnnkit
    from cnnkit.models.keras import load_keras

    run = cnnkit.load(tmp_path / "run")
    assert run.classes == ["a", "b", "c", "d", "e"] and run.input_size == (3, 13, 12)
    net, _ = load_keras(keras_file)
    x = torch.rand(3, 3, 13, 12)
    with torch.no_grad():
        assert torch.allclose(run(x).softmax(1), net(x), atol=1e-6)  # logits in the run, Keras' softmax in net

    args = parser.parse_args(
        ["export", str(tmp_path / "run"), "--out", str(tmp_path / "run.onnx"), "--exporter", "torchscript"]
    )
    assert args.func(args) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    onnx_model = OnnxModel(tmp_path / "run.onnx")
    assert json.loads(onnx_model.metadata["cnnkit.classes"]) == ["a", "b", "c", "d", "e"]
    with torch.no_grad():
        assert _close(onnx_model(x), run(x))


@pytest.mark.slow  # two dynamo exports
def test_an_opset_asked_for_is_the_files(tmp_path):
    """The dynamo exporter writes its own opset where it cannot convert down: the file must have the one asked for."""
    import onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    path = tmp_path / "m.onnx"
    report = export_onnx(net, torch.rand(1, 3, 8, 8), path, opset=13)
    assert [o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")] == [13]
    if report.exporter == "torchscript":  # dynamo wrote another opset: the TorchScript exporter wrote this one
        assert "opset 13" in report.fallback
        with pytest.raises(CnnkitError, match="not the opset 13 asked for"):
            export_onnx(net, torch.rand(1, 3, 8, 8), tmp_path / "d.onnx", opset=13, exporter="dynamo")

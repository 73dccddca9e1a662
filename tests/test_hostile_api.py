"""Hostile input to the analysis commands and the public model API: one line, exit 2, nothing allocated."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import CnnkitError


def _cli(capsys, argv, tmp_path) -> str:
    before = sorted(os.listdir(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    return err


def _spec(tmp_path, layers: str, inp: str = "3x32x32") -> str:
    p = tmp_path / "net.yaml"
    p.write_text(f"input: {inp}\nlayers:\n{layers}")
    return str(p)


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "layers, message",
    [
        ("  - conv2d: [1, 2]\n", "must be a mapping"),
        ("  - conv2d: 5\n", "must be a mapping"),
        ("  - {type: relu, name: graph}\n", "taken by the network"),
        ("  - {type: relu, name: forward}\n", "taken by the network"),
        ("  - {type: relu, name: training}\n", "taken by the network"),
        ("  - {type: conv2d, filters: 8, kernel_size: [3, 3, 3, 3, 3]}\n", "list of 2"),
        ("  - {type: conv2d, filters: 8, kernel_size: 3, padding: [1, 2, 3, 4, 5]}\n", "list of 2"),
        ("  - {type: conv2d, filters: 8, kernel_size: 3, use_bias: 'no'}\n", "use_bias must be true or false"),
        ("  - {type: conv2d_transpose, filters: 8, kernel_size: 3, padding: caffe}\n", "conv2d_transpose's padding"),
    ],
)
def test_spec_layers_refused_in_one_line(capsys, tmp_path, layers, message):
    err = _cli(capsys, ["summary", _spec(tmp_path, layers)], tmp_path)
    assert message in err


@pytest.mark.parametrize("inp", ["[3, 32, a]", "[3, 32, 32.7]", "[3, 32, .inf]", "[3, 32, .nan]", "[3, 32, null]"])
def test_spec_input_must_be_whole_numbers(capsys, tmp_path, inp):
    err = _cli(capsys, ["summary", _spec(tmp_path, "  - relu\n", inp)], tmp_path)
    assert "whole positive numbers" in err


_TWO_BRANCHES = (
    "  - {type: conv2d, filters: 4, kernel_size: 1, name: a}\n"
    "  - {type: conv2d, filters: 4, kernel_size: 1, name: b, inputs: input}\n"
)


@pytest.mark.parametrize(
    "layers, message",
    [
        # axis 0 stacked the batch (2 images in, 4 out) and -1 the width, both without a word
        (_TWO_BRANCHES + "  - {type: concatenate, axis: 0, inputs: [a, b]}\n", "received axis=0"),
        (_TWO_BRANCHES + "  - {type: concatenate, axis: -1, inputs: [a, b]}\n", "1 is the channels (Keras' -1)"),
        (_TWO_BRANCHES + "  - {type: concatenate, axis: 4, inputs: [a, b]}\n", "from 1 to 3"),
        (_TWO_BRANCHES + "  - {type: concatenate, axis: x, inputs: [a, b]}\n", "received axis=x"),
        # a momentum above 1 was taken (PyTorch's momentum -1); text or a negative epsilon failed unnamed
        ("  - {type: batch_normalization, momentum: 2}\n", "momentum must be a number in [0, 1]"),
        ("  - {type: batch_normalization, momentum: x}\n", "momentum must be a number in [0, 1]"),
        ("  - {type: batch_normalization, epsilon: -1}\n", "epsilon must be a number >= 0"),
        ("  - {type: batch_normalization, epsilon: .nan}\n", "epsilon must be a number >= 0"),
        ("  - {type: lrn, alpha: x}\n", "alpha must be a number"),
        ("  - {type: lrn, beta: [1]}\n", "beta must be a number"),
    ],
)
def test_spec_arguments_refused_by_name(capsys, tmp_path, layers, message):
    err = _cli(capsys, ["summary", _spec(tmp_path, layers)], tmp_path)
    assert message in err and ("concatenate_1" in err or "_1 (" in err)


def test_spec_concatenates_along_the_axis_given(tmp_path):
    """axis 2 joins rows: the channels must agree, the heights may differ."""
    from cnnkit.models.spec import build_from_spec

    layers = [
        {"conv2d": {"filters": 4, "kernel_size": 1, "name": "a"}},
        {"conv2d": {"filters": 4, "kernel_size": [3, 1], "name": "b", "inputs": "input"}},
        {"concatenate": {"axis": 2, "inputs": ["a", "b"]}},
    ]
    model, size = build_from_spec({"input": "3x8x5", "layers": layers})
    assert model(torch.randn(2, *size)).shape == (2, 4, 14, 5)
    layers[1]["conv2d"]["filters"] = 5
    with pytest.raises(CnnkitError, match="sizes other than axis 2 differ: 4x8x5, 5x6x5"):
        build_from_spec({"input": "3x8x5", "layers": layers})


def test_a_spec_layers_reason_on_its_second_line_is_quoted(monkeypatch):
    # a stand-in for flatten: none of the layers a spec names gives its reason on a later line
    from cnnkit.models import spec

    class Pairs(torch.nn.Module):
        def forward(self, x):
            raise ValueError(
                f"pairs cannot take this input.\n  its {x.shape[1]} channels are odd: give it an even number"
            )

    monkeypatch.setitem(spec._BUILDERS, "flatten", (lambda s: Pairs(), "flatten"))
    with pytest.raises(CnnkitError) as exc:
        spec.build_from_spec({"input": "3x8x8", "layers": ["flatten"]})
    assert str(exc.value) == (
        "layer flatten_1 (flatten) fails on input 3x8x8: pairs cannot take this input. its 3 channels are odd: "
        "give it an even number; check its arguments"
    )


def test_conv_transpose_integer_padding_is_applied(tmp_path):
    s = cnnkit.summary(_spec(tmp_path, "  - {type: conv2d_transpose, filters: 4, kernel_size: 3, padding: 1}\n"))
    assert s.layers[-1]["output_shape"] == [4, 32, 32]  # padding 1 keeps 32 (it was ignored: 34)


def test_huge_spec_layers_analysed_without_allocating(tmp_path):
    """16 M filters (1.7 GB of weights), padding 99999: the spec is analysed on the meta device and the
    backend measures no copy larger than its cap."""
    import resource

    spec = _spec(
        tmp_path,
        "  - {type: conv2d, filters: 16000000, kernel_size: 3}\n",
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = cnnkit.summary(spec, optimizer="none")
    assert s.totals["params"] == 16_000_000 * 28
    pad = cnnkit.summary(_spec(tmp_path, "  - {type: conv2d, filters: 8, kernel_size: 3, padding: 99999}\n"))
    assert pad.memory["inference_peak_bytes"] > 0
    assert any("too large" in n for n in pad.notes)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 1_000_000  # far below the 1.7 GB of the weights and the 2.5 TB of the padded copies


def test_spec_mapping_of_wrong_type():
    from cnnkit.models.spec import build_from_spec

    with pytest.raises(CnnkitError, match="a network spec is"):
        build_from_spec([1, 2])


# ----------------------------------------------------------------------------- summary / memory options


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "lenet5", "--input", "1x99999999999999999999999x32"], "at most 2,147,483,647"),
        (["summary", "lenet5", "--batch", "99999999999999999999"], "--batch must be an integer from 1"),
        (["summary", "lenet5", "--batch", "100000000000", "--input", "1x100000x100000"], "--batch must be"),
        (["summary", "lenet5", "--batch", "1000000", "--input", "1x100000x100000"], "the analyser can index"),
        (["memory", "lenet5", "--memory", "1.2.3GB"], "--memory must look like"),
        (["memory", "lenet5", "--memory", "8GiB", "--devices", "0", "--batch", "100000"], "--devices must be"),
        (["memory", "lenet5", "--memory", "8GiB", "--devices", "-2"], "--devices must be"),
        (["zoo", "--task", "nope"], "unknown task 'nope'"),
    ],
)
def test_cli_options_refused_in_one_line(capsys, tmp_path, argv, message):
    assert message in _cli(capsys, argv, tmp_path)


def test_zoo_names_once(capsys):
    assert main(["zoo", "lenet5", "lenet5", "--format", "json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["lenet5"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_size": ("a", 32, 32)},
        {"input_size": (1, 32.5, 32)},
        {"input_size": (True, 32, 32)},
        {"input_size": (1, float("nan"), 32)},
        {"input_size": (1, float("inf"), 32)},
        {"input_size": [None]},
        {"dtype": ["float32"]},
    ],
)
def test_summary_api_refuses(kwargs):
    with pytest.raises(CnnkitError):
        cnnkit.summary("lenet5", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory": float("nan")},
        {"memory": float("inf")},
        {"memory": True},
        {"memory": "1.2.3GB"},
        {"batch_size": "8"},
        {"memory": "1MB", "batch_size": 100, "devices": 0},
        {"memory": "1MB", "batch_size": 100, "devices": -1},
        {"memory": "1MB", "batch_size": 100, "devices": "2"},
    ],
)
def test_memory_plan_api_refuses(kwargs):
    with pytest.raises(CnnkitError):
        cnnkit.memory_plan("lenet5", **kwargs)


# ----------------------------------------------------------------------------- the zoo's API


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((None,), {}),
        ((5,), {}),
        ((["resnet18"],), {}),
        (("lenet5",), {"num_classes": 10**12}),  # 336 TB of classifier: refused, not allocated
        (("lenet5",), {"weights": 5}),
        (("lenet5",), {"strict": "no"}),
    ],
)
def test_create_model_refuses(args, kwargs):
    with pytest.raises(CnnkitError):
        cnnkit.create_model(*args, **kwargs)


@pytest.mark.parametrize("task", ["nope", 5, ["classify"]])
def test_list_models_unknown_task(task):
    with pytest.raises(CnnkitError, match="unknown task"):
        cnnkit.list_models(task)


def test_register_model_misuse():
    from cnnkit.models._registry import _REGISTRY

    with pytest.raises(CnnkitError, match="registered twice"):
        cnnkit.register_model("lenet5")(lambda **k: None)
    with pytest.raises(CnnkitError, match="model's name"):
        cnnkit.register_model(lambda **k: None)
    with pytest.raises(CnnkitError):
        cnnkit.register_model(5)
    with pytest.raises(CnnkitError):
        cnnkit.register_model("hostile_bad_size", input_size="abc")
    with pytest.raises(CnnkitError, match="builder function"):
        cnnkit.register_model("hostile_not_callable")(5)
    assert not [k for k in _REGISTRY if k.startswith("hostile_")]
    try:
        cnnkit.register_model("hostile_returns_int", input_size=(1, 8, 8))(lambda **k: 5)
        with pytest.raises(CnnkitError, match="not a torch.nn.Module"):
            cnnkit.create_model("hostile_returns_int")
        with pytest.raises(CnnkitError):
            cnnkit.summary("hostile_returns_int")
    finally:
        _REGISTRY.pop("hostile_returns_int", None)


def test_create_model_quotes_what_the_builders_type_error_expected():
    from cnnkit.models._registry import _REGISTRY

    @cnnkit.register_model("hostile_seeded", input_size=(1, 8, 8))
    def hostile_seeded(num_classes=10, in_channels=1, generator=None):
        net = torch.nn.Linear(in_channels * 64, num_classes)
        with torch.no_grad():  # fixed random weights from the caller's generator
            net.weight.copy_(torch.randn(num_classes, in_channels * 64, generator=generator))
        return net

    try:
        with pytest.raises(CnnkitError) as exc:
            cnnkit.create_model("hostile_seeded", generator=3)  # a seed where torch wants a torch.Generator
    finally:
        _REGISTRY.pop("hostile_seeded", None)
    msg = str(exc.value)
    # torch lists the signatures it takes on the lines after "but expected one of:"
    assert "\n" not in msg and msg.startswith(
        "model 'hostile_seeded' does not take these arguments: randn() received an invalid combination of "
        "arguments - got (int, int, generator=int), but expected one of: * (tuple of ints size, *, "
        "torch.Generator generator, "
    )


@pytest.mark.parametrize(
    "name, args, expected",
    [
        ("frames2d_small", {"frames": 2.5}, "takes frames as an integer (default 10); received: frames=2.5"),
        ("mask_fcos", {"mask_width": 7.5}, "takes mask_width as an integer (default 64); received: mask_width=7.5"),
        ("multirocket", {"seed": 1.5}, "takes seed as an integer (default 0); received: seed=1.5"),
        ("multirocket_hydra", {"seed": "1"}, "takes seed as an integer (default 0); received: seed='1'"),
        ("frames2d_small", {"dropout": True}, "takes dropout as a number (default 0.0); received: dropout=True"),
        (
            "mask_fcos",
            {"backbone_weights": 3},
            "takes backbone_weights as a string or None (default None); received: backbone_weights=3",
        ),
    ],
)
def test_create_model_refuses_an_argument_of_another_type_than_the_builders_signature(name, args, expected):
    """Builders fail deep in PyTorch on such a value ("in_channels must be divisible by groups", "manual_seed
    expected a long"): the signature's type is checked before the builder runs."""
    with pytest.raises(CnnkitError) as exc:
        cnnkit.create_model(name, **args)
    assert str(exc.value) == f"model {name!r} {expected}"


def test_create_model_takes_the_types_the_signature_allows():
    import numpy as np

    net = cnnkit.create_model("frames2d_small", frames=np.int64(4), dropout=0)  # an int is a float too
    assert net(torch.zeros(2, 1, 4, 32, 32)).shape == (2, 10)


def test_create_model_takes_a_path_for_a_builders_weights_file(tmp_path):
    """backbone_weights is annotated ``str``, and a path is read as create_model's own weights are
    (os.fspath): the backbone of the model built holds the file's tensors."""
    from pathlib import Path

    torch.manual_seed(0)
    state = cnnkit.create_model("efficientnet_lite0").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "lite0.safetensors"))
    net = cnnkit.create_model("fcos", num_classes=2, backbone_weights=Path(tmp_path / "lite0.safetensors"))
    first = next(v for k, v in state.items() if k.endswith("weight") and v.dim() == 4)  # the stem's kernel
    assert any(v.shape == first.shape and torch.equal(v, first) for v in net.state_dict().values())


# ----------------------------------------------------------------------------- cnnkit.load


_BASE = {
    "format": "cnnkit.checkpoint/1",
    "num_classes": 2,
    "input_size": [1, 8, 8],
    "classes": ["a", "b"],
    "mean": [0.5],
    "std": [0.5],
}


def _checkpoint(tmp_path, network) -> str:
    path = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"cnnkit": json.dumps({**_BASE, "network": network})})
    return str(path)


@pytest.mark.parametrize(
    "path, message",
    [(None, "takes a run folder"), (5, "takes a run folder"), ("a" * 5000, "cannot read")],
)
def test_load_odd_paths(path, message):
    with pytest.raises(CnnkitError, match=message):
        cnnkit.load(path)


def test_load_bad_device(tmp_path):
    with pytest.raises(CnnkitError, match="device must be"):
        cnnkit.load(tmp_path, device="bogus")


@pytest.mark.parametrize(
    "network, message",
    [
        ({"kind": "spec", "spec": {"input": [1, 8, 8], "layers": [{"type": "relu", "name": "forward"}]}}, "taken"),
        ({"kind": "spec", "spec": {"input": [1, 8, 8], "layers": [{"conv2d": [1, 2]}]}}, "must be a mapping"),
        ({"kind": "spec", "spec": {"input": [1, 8, "a"], "layers": ["relu"]}}, "whole positive numbers"),
        ({"kind": "spec", "spec": [1, 2]}, "a network spec is"),
        # 640 MB of weights claimed by a file of a few hundred bytes: refused before anything is allocated
        (
            {
                "kind": "spec",
                "spec": {"input": [1, 8, 8], "layers": [{"conv2d": {"filters": 16000000, "kernel_size": 3}}]},
            },
            "the file holds only",
        ),
    ],
)
def test_load_tampered_description(tmp_path, network, message):
    path = _checkpoint(tmp_path, network)
    with pytest.raises(CnnkitError, match=message):
        cnnkit.load(path)


@pytest.mark.parametrize("version", [3, 0, "2", True, None, [2]])
def test_load_refuses_a_spec_version_it_does_not_build(tmp_path, version):
    network = {"kind": "spec", "spec": {"input": [1, 8, 8], "layers": ["flatten", {"dense": {"units": 2}}]}}
    path = _checkpoint(tmp_path, {**network, "version": version})
    with pytest.raises(CnnkitError, match="spec version .* is not one this cnnkit builds"):
        cnnkit.load(path)


@pytest.mark.parametrize("head", ["flatten", "global_average_pooling2d"])
def test_a_spec_run_is_rebuilt_with_the_spec_version_it_was_trained_with(tmp_path, head):
    # a "valid" conv2d_transpose whose stride exceeds its kernel: (L - 1) s + k long in version 1
    # (cnnkit 0.1.0, whose runs name no version), (L - 1) s + max(k, s) in version 2 (Keras')
    from torch import nn

    from cnnkit.engine.runfolder import read_info, save_model
    from cnnkit.models.deploy import Classifier
    from cnnkit.models.spec import SPEC_VERSION, build_from_spec

    spec = {
        "input": [1, 5, 5],
        "layers": [{"conv2d_transpose": {"filters": 2, "kernel_size": 1, "strides": 2}}, head, {"dense": {"units": 2}}],
    }
    (tmp_path / "net.yaml").write_text(json.dumps(spec))
    x = torch.rand(3, 1, 5, 5)
    for version, network, side in [(1, {"kind": "spec", "spec": spec}, 9), (SPEC_VERSION, None, 10)]:
        torch.manual_seed(0)
        net, _ = build_from_spec(spec, logits=True, version=version)
        nn.init.uniform_(net.conv2d_transpose_1.bias, 1, 2)  # the positions past the kernel hold the bias alone
        assert net.conv2d_transpose_1(x).shape[-2:] == (side, side)
        clf = Classifier(net, [0.5], [0.5], ["a", "b"], (1, 5, 5))
        info = {**_BASE, "input_size": [1, 5, 5], "model": str(tmp_path / "net.yaml")}
        info.update({"network": network} if network else {})
        run = tmp_path / f"v{version}"
        run.mkdir()
        save_model(run / "model.safetensors", clf, info)
        assert read_info(run / "model.safetensors")["network"].get("version") == (None if network else SPEC_VERSION)
        with torch.no_grad():
            assert torch.equal(cnnkit.load(run).eval()(x), clf.eval()(x))


def test_a_spec_run_built_otherwise_than_this_spec_version_is_not_resumed(tmp_path):
    from cnnkit.models.network import check_resumable

    longer = {"conv2d_transpose": {"filters": 2, "kernel_size": 1, "strides": 2}}  # version 1 builds it shorter
    same = {"conv2d_transpose": {"filters": 2, "kernel_size": 3, "strides": 2}}
    spec = {"input": [1, 5, 5], "layers": [longer, "flatten", {"dense": {"units": 2}}]}
    with pytest.raises(CnnkitError, match="trained with spec version 1, .* it cannot be resumed"):
        check_resumable({"kind": "spec", "spec": spec}, "run")
    check_resumable({"kind": "spec", "spec": spec, "version": 2}, "run")
    check_resumable({"kind": "spec", "spec": {**spec, "layers": [same, "flatten", {"dense": {"units": 2}}]}}, "run")

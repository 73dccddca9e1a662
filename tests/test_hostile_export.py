"""Bad input to ``cnnkit export``, ``cnnkit convert`` and the workbench upload: one line, exit 2,
nothing written or replaced, no file read that the user did not name (audit round 3 and images)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnkit.cli import main
from cnnkit.errors import CnnkitError

h5py = pytest.importorskip("h5py", reason="the Keras fixture files need h5py")
COFFEE = Path("/work/shared/data/ucr/Coffee_TRAIN.tsv")


def _layer(kind: str, **config) -> dict:
    return {"class_name": kind, "config": {"name": config.pop("name"), **config}}


def _config(units: int = 3) -> dict:
    return {
        "class_name": "Sequential",
        "config": {
            "name": "small",
            "layers": [
                _layer("InputLayer", name="in", batch_shape=[None, 16, 16, 3]),
                _layer("Conv2D", name="conv", filters=4, kernel_size=[3, 3], padding="valid", activation="relu"),
                _layer("GlobalAveragePooling2D", name="gap"),
                _layer("Dense", name="fc", units=units, activation="softmax"),
            ],
        },
    }


WEIGHTS = {"conv2d": [(3, 3, 3, 4), (4,)], "dense": [(4, 3), (3,)]}


def keras_file(folder: Path, name: str = "ok.keras", config: dict | None = None, bad: float | None = None) -> Path:
    """A .keras file written by hand (Keras' layout); ``bad`` is written into the conv kernel."""
    rng = np.random.default_rng(0)
    weights = folder / f"{name}.weights.h5"
    with h5py.File(weights, "w") as f:
        for group, shapes in WEIGHTS.items():
            for i, shape in enumerate(shapes):
                data = rng.normal(0, 0.3, shape).astype("f4")
                if bad is not None and group == "conv2d" and i == 0:
                    data.flat[5] = bad
                f.create_dataset(f"layers/{group}/vars/{i}", data=data)
    path = folder / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config or _config()))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.write(weights, "model.weights.h5")
    weights.unlink()
    return path


def _md5(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, argv: list[str], *words: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not COFFEE.is_file():
        pytest.skip("needs the UCR Coffee set in /work/shared/data")
    root = tmp_path_factory.mktemp("runs")
    common = ["--data", str(COFFEE), "--threads", "1", "--quiet"]
    assert main(["sequence", "train", *common, "--out", str(root / "rocket")]) == 0
    assert main(["sequence", "train", *common, "--model", "fcn1d", "--steps", "2", "--epochs", "1",
                 "--out", str(root / "fcn")]) == 0  # fmt: skip
    assert main(["convert", str(keras_file(root)), "--out", str(root / "kr")]) == 0
    return root


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("out", ["fcn/model.safetensors", "fcn/other.onnx", "fcn/sub/x.onnx"])
def test_export_never_writes_into_the_run(runs, capsys, out):
    before = _md5(runs / "fcn")
    _refused(capsys, ["export", str(runs / "fcn"), "--out", str(runs / out)], "inside the run", "nothing was written")
    assert _md5(runs / "fcn") == before and not (runs / "fcn" / "sub").exists()
    # the checkpoint named as the input is protected the same way
    _refused(capsys, ["export", str(runs / "fcn" / "model.safetensors"), "--out", str(runs / out)], "inside the run")
    assert _md5(runs / "fcn") == before


def test_export_asks_for_the_onnx_suffix(runs, capsys, tmp_path):
    _refused(capsys, ["export", str(runs / "fcn"), "--out", str(tmp_path / "b.txt")], ".onnx suffix")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_multirocket_at_once(runs, capsys, tmp_path):
    import time

    start = time.perf_counter()
    _refused(capsys, ["export", str(runs / "rocket"), "--out", str(tmp_path / "a.onnx")], "MultiRocket", "fcn1d")
    assert time.perf_counter() - start < 10 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("run", "size", "words"),
    [
        ("fcn", "3x100", ("takes 1 channel", "gives 3")),
        ("fcn", "1x8x8", ("2 axes",)),
        ("kr", "1x16x16", ("takes 3 channels", "gives 1")),  # broadcast silently before
        ("kr", "5x16x16", ("takes 3 channels", "gives 5")),
        ("kr", "3x1x1", ("fails on an input of size 3x1x1",)),
    ],
)
def test_export_input_must_fit_the_run(runs, capsys, tmp_path, run, size, words):
    argv = ["export", str(runs / run), "--out", str(tmp_path / "x.onnx"), "--input", size, "--exporter", "torchscript"]
    _refused(capsys, argv, *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rtol", ["nan", "-1", "0", "inf"])
def test_export_rtol_must_be_finite_and_positive(runs, capsys, tmp_path, rtol):
    _refused(capsys, ["export", str(runs / "fcn"), "--out", str(tmp_path / "x.onnx"), "--rtol", rtol], "--rtol")
    assert list(tmp_path.iterdir()) == []


def test_export_onnx_atol_must_be_finite_and_positive(tmp_path):
    from cnnkit.export import export_onnx

    for atol in (float("nan"), -1.0, 0.0):
        with pytest.raises(CnnkitError, match="atol"):
            export_onnx(torch.nn.Linear(3, 2), torch.rand(1, 3), tmp_path / "x.onnx", atol=atol)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- convert


def test_convert_to_a_safetensors_name_writes_that_file(capsys, tmp_path):
    """`--out net.safetensors` wrote a folder of that name holding model.safetensors; it writes the
    checkpoint file itself, as `classify fcn` does, and refuses one that exists."""
    import cnnkit

    out = tmp_path / "net.safetensors"
    assert main(["convert", str(keras_file(tmp_path)), "--out", str(out)]) == 0
    assert out.is_file() and cnnkit.load(out).input_size == (3, 16, 16)
    _refused(capsys, ["convert", str(keras_file(tmp_path)), "--out", str(out)], "already exists")


@pytest.mark.parametrize("run", ["fcn", "rocket", "kr"])
def test_convert_never_replaces_a_run(runs, capsys, tmp_path, run):
    before = _md5(runs / run)
    _refused(capsys, ["convert", str(keras_file(tmp_path)), "--out", str(runs / run)], "already holds a run")
    assert _md5(runs / run) == before


def test_convert_refuses_a_run_with_only_resume_state(capsys, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "resume.safetensors").write_bytes(b"state")
    _refused(capsys, ["convert", str(keras_file(tmp_path)), "--out", str(tmp_path / "r")], "already holds a run")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["resume.safetensors"]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--std", "0,0,0"], ("--std", "above 0")),
        (["--std", "-1"], ("--std", "above 0")),
        (["--std", "nan,1,1"], ("--std", "finite")),
        (["--mean", "inf,0,0"], ("--mean", "finite")),
        (["--classes", "a,a,b"], ("--classes", "'a'", "more than once")),
    ],
)
def test_convert_checks_its_flags(capsys, tmp_path, flags, words):
    _refused(capsys, ["convert", str(keras_file(tmp_path)), "--out", str(tmp_path / "run"), *flags], *words)
    assert not (tmp_path / "run").exists()


def test_a_classes_file_is_read_as_utf8_whatever_the_locale(tmp_path):
    """Under an ASCII locale (no UTF-8 mode, no locale coercion), a UTF-8 class list with a byte-order
    mark (as Notepad saves it) and Windows line ends names the outputs as written: no decoding error,
    no BOM in the first name."""
    import os
    import subprocess
    import sys

    from cnnkit.engine.runfolder import read_metadata

    names = tmp_path / "names.txt"
    names.write_bytes("\ufeffcafé\r\nnaïve\r\n  bird \r\n\r\n".encode())
    env = {**os.environ, "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    cmd = [sys.executable, "-m", "cnnkit", "convert", str(keras_file(tmp_path)), "--out", str(tmp_path / "run")]
    p = subprocess.run([*cmd, "--classes", str(names)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert read_metadata(tmp_path / "run" / "model.safetensors")["classes"] == ["café", "naïve", "bird"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"cat\n\ndog\nbird\n", ("names.txt: line 2 is blank, so class 1 has no name", "or remove the line")),
        (  # the byte counted from the file's start, its byte-order mark included
            b"\xef\xbb\xbfcat\ndog\nbird\xe9\n",
            ("names.txt: not UTF-8 text (byte 15, line 3); save the class names as UTF-8",),
        ),
        (b"cat\ndog\n", ("names.txt gives 2 names for the model's 3 outputs; give one name per output",)),
        ("a,,b", ("--classes a,,b: name 2 is empty, so output 1 has no name",)),
    ],
    ids=["blank_line", "not_utf8", "two_names", "empty_in_text"],
)
def test_a_class_list_that_does_not_name_each_output_in_order_is_refused(capsys, tmp_path, content, words):
    """A blank line is refused as a YOLO folder's classes.txt refuses it (skipped, every later output
    would take the next one's name), bytes that are not UTF-8 are named by place, and the count must
    be the model's outputs'."""
    spec = content
    if isinstance(content, bytes):
        spec = str(tmp_path / "names.txt")
        (tmp_path / "names.txt").write_bytes(content)
    path = keras_file(tmp_path)
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run"), "--classes", spec], *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(std=[0.0]), "above 0"),
        (dict(mean=[float("nan")]), "finite numbers"),
        (dict(classes="a,a,b"), "more than once"),
    ],
)
def test_the_python_convert_checks_as_the_command_does(tmp_path, kwargs, words):
    from cnnkit.tasks.classify.convert import convert_keras

    with pytest.raises(CnnkitError, match=words):
        convert_keras(keras_file(tmp_path), tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()
    path, _ = convert_keras(keras_file(tmp_path), tmp_path / "run")
    before = path.read_bytes()
    with pytest.raises(CnnkitError, match="already holds a run"):
        convert_keras(keras_file(tmp_path), tmp_path / "run")
    assert path.read_bytes() == before


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_convert_refuses_non_finite_weights(capsys, tmp_path, value):
    path = keras_file(tmp_path, "bad.keras", bad=value)
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "'conv'", "non-finite")
    assert not (tmp_path / "run").exists()


def test_convert_refuses_non_finite_weights_in_a_legacy_h5(capsys, tmp_path):
    path = _h5(tmp_path / "nan.h5")
    with h5py.File(path, "r+") as f:
        f["model_weights/fc/fc/kernel:0"][0, 0] = np.nan
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "'fc'", "non-finite")


def _h5(path: Path) -> Path:
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(_config())
        f.require_group("model_weights/gap").attrs["weight_names"] = []
        for layer, shapes in (("conv", WEIGHTS["conv2d"]), ("fc", WEIGHTS["dense"])):
            names = [f"{layer}/kernel:0", f"{layer}/bias:0"]
            group = f.require_group(f"model_weights/{layer}")
            group.attrs["weight_names"] = names
            for n, shape in zip(names, shapes):
                group.create_dataset(n, data=rng.normal(0, 0.3, shape).astype("f4"))
    return path


def test_a_handwritten_legacy_h5_converts(capsys, tmp_path):
    assert main(["convert", str(_h5(tmp_path / "ok.h5")), "--out", str(tmp_path / "run")]) == 0, capsys.readouterr()


@pytest.mark.parametrize("kind", ["external", "soft", "virtual", "external_storage"])
def test_convert_reads_nothing_from_outside_the_file(capsys, tmp_path, kind):
    other = tmp_path / "ext.h5"
    with h5py.File(other, "w") as e:
        e["k"] = np.ones((4, 3), np.float32)
    path = _h5(tmp_path / f"{kind}.h5")
    name = "model_weights/fc/fc/kernel:0"
    with h5py.File(path, "r+") as f:
        del f[name]
        if kind == "external":
            f[name] = h5py.ExternalLink(str(other), "/k")
        elif kind == "soft":
            f["model_weights/spare"] = np.ones((4, 3), np.float32)
            f[name] = h5py.SoftLink("/model_weights/spare")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(4, 3), dtype="f4")
            layout[:] = h5py.VirtualSource(str(other), "k", shape=(4, 3))
            f.create_virtual_dataset(name, layout)
        else:
            raw = tmp_path / "raw.bin"
            raw.write_bytes(np.ones((4, 3), np.float32).tobytes())
            f.create_dataset(name, shape=(4, 3), dtype="f4", external=[(str(raw), 0, 48)])
    words = {"external": "external link", "soft": "soft link", "virtual": "virtual dataset"}
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], words.get(kind, "external file"))
    assert not (tmp_path / "run").exists()


def test_convert_checks_config_sizes_before_allocating(capsys, tmp_path, monkeypatch):
    """Dense units of 10**9 would allocate 16 GB before the weight shapes are compared."""
    allocated = []
    real = torch.nn.Linear.__init__

    def watch(self, i, o, *a, **k):
        allocated.append(i * o)
        real(self, i, o, *a, **k)

    monkeypatch.setattr(torch.nn.Linear, "__init__", watch)
    path = keras_file(tmp_path, "huge.keras", config=_config(units=10**9))
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "'fc'", "weight values")
    assert max(allocated, default=0) < 10**6 and not (tmp_path / "run").exists()


def test_convert_refuses_a_huge_layer_output(capsys, tmp_path):
    config = _config()
    config["config"]["layers"].insert(2, _layer("UpSampling2D", name="up", size=[4000, 4000]))
    path = keras_file(tmp_path, "up.keras", config=config)
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "'up'", "values per example")


def _functional() -> dict:
    """``_config()``'s layers as a Keras 3 functional model: each layer's call names its input tensor."""
    layers = [dict(layer) for layer in _config()["config"]["layers"]]
    for prev, layer in zip(layers, layers[1:]):
        tensor = {"class_name": "__keras_tensor__", "config": {"keras_history": [prev["config"]["name"], 0, 0]}}
        layer["inbound_nodes"] = [{"args": [tensor], "kwargs": {}}]
    return {
        "class_name": "Functional",
        "config": {"name": "f", "layers": layers, "input_layers": [["in", 0, 0]], "output_layers": [["fc", 0, 0]]},
    }


def _edited(edit) -> dict:
    config = _functional()
    edit(config["config"])
    return config


def _deep(config: dict) -> None:
    nested: list = []
    for _ in range(900):
        nested = [nested]
    config["layers"][1]["config"]["note"] = nested


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: None, None),  # the file as written converts
        (lambda c: c["layers"][1]["inbound_nodes"][0]["args"][0].update(config={}), ("'conv'", "keras_history")),
        (
            lambda c: c["layers"][2]["inbound_nodes"][0]["args"][0]["config"].update(keras_history=["conv", "x", 0]),
            ("'gap'", "keras_history"),
        ),  # fmt: skip
        (lambda c: c.update(output_layers=[1.5]), ("input or output", "1.5")),
        (lambda c: c.update(input_layers={"a": {"b": 1}}), ("input or output",)),
        (lambda c: c["layers"][0]["config"].update(batch_shape=5), ("batch_shape", "not a list")),
        (lambda c: c["layers"][1]["config"].update(dilation_rate=[0, 1]), ("'conv'", "dilation_rate", "positive")),
        (_deep, ("nests", "100 deep")),
    ],
)
def test_convert_refuses_a_malformed_graph_in_one_line(capsys, tmp_path, edit, words):
    """An edited config where the graph is described (a call's tensor, the model's inputs and outputs, the
    input shape, a dilation of 0 that builds but fails at the first call, nesting deep enough to exhaust
    Python's stack) is one line naming what is wrong, not a traceback."""
    path = keras_file(tmp_path, "f.keras", config=_edited(edit))
    if words is None:
        assert main(["convert", str(path), "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
        return
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], *words)
    assert not (tmp_path / "run").exists()


def test_a_sequential_of_its_input_alone_is_refused_as_no_classifier(capsys, tmp_path):
    config = _config()
    config["config"]["layers"] = config["config"]["layers"][:1]
    path = keras_file(tmp_path, "id.keras", config=config)
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "(N, classes)", "(1, 3, 16, 16)")


def _legacy_array(path: Path, name: str, **dataset) -> Path:
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, **dataset)
    return path


@pytest.mark.parametrize(
    ("dataset", "words"),
    [
        (dict(data=np.zeros(5, "f4")), ("'conv' (Conv2D)", "bias", "(5,)", "needs (4,)")),
        (dict(data=np.zeros((3, 3, 4, 3), "f4")), ("'conv' (Conv2D)", "kernel", "(3, 4, 3, 3)")),
    ],
)
def test_misfit_weights_name_their_layer(capsys, tmp_path, dataset, words):
    name = "model_weights/conv/conv/bias:0" if dataset["data"].ndim == 1 else "model_weights/conv/conv/kernel:0"
    path = _legacy_array(_h5(tmp_path / "m.h5"), name, **dataset)
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], *words)


def test_a_missing_weight_array_names_its_layer(capsys, tmp_path):
    path = _h5(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        f["model_weights/conv"].attrs["weight_names"] = ["conv/kernel:0"]
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "'conv' (Conv2D)", "2 weight arrays")


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_a_weight_array_larger_than_its_layer_is_refused_unread(capsys, tmp_path, monkeypatch, fmt):
    """A dataset declaring 12 M values that were never written (the fill value: a file of kilobytes) is
    refused by its declared size; the file cannot make cnnkit allocate what it declares."""
    big = dict(shape=(4000, 3000), dtype="f4", chunks=(500, 500), compression="gzip")
    if fmt == "h5":
        path = _legacy_array(_h5(tmp_path / "big.h5"), "model_weights/fc/fc/kernel:0", **big)
    else:
        path = keras_file(tmp_path, "big.keras")
        with zipfile.ZipFile(path) as z:
            parts = {n: z.read(n) for n in z.namelist()}
        (tmp_path / "w.h5").write_bytes(parts["model.weights.h5"])
        _legacy_array(tmp_path / "w.h5", "layers/dense/vars/0", **big)
        parts["model.weights.h5"] = (tmp_path / "w.h5").read_bytes()
        with zipfile.ZipFile(path, "w") as z:
            for n, data in parts.items():
                z.writestr(n, data)
    assert path.stat().st_size < 100_000
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda d, key: read.append(d.size) or real(d, key))
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "'fc'", "12,000,000 values", "15")
    assert read == [108, 4]  # the conv's kernel and bias; the dense kernel is refused unread


def _weights_edited(tmp_path: Path, fmt: str, edit, config: dict | None = None) -> Path:
    """A small Keras file (legacy .h5 or .keras) whose weights file ``edit(h5, kernel, group)`` changes:
    ``kernel`` is the path of the Dense layer's kernel, ``group`` the path of its group."""
    if fmt == "h5":
        path = _h5(tmp_path / "m.h5")
        with h5py.File(path, "r+", libver="latest") as f:
            if config is not None:
                f.attrs["model_config"] = json.dumps(config)
            edit(f, "model_weights/fc/fc/kernel:0", "model_weights/fc")
        return path
    path = keras_file(tmp_path, "m.keras", config=config)
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    (tmp_path / "w.h5").write_bytes(parts["model.weights.h5"])
    with h5py.File(tmp_path / "w.h5", "r+", libver="latest") as f:
        edit(f, "layers/dense/vars/0", "layers/dense/vars")
    parts["model.weights.h5"] = (tmp_path / "w.h5").read_bytes()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    return path


def _count_reads(monkeypatch) -> list[int]:
    """The size of each h5py dataset read from now on (``ds[...]``), in the order read."""
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda d, key: read.append(d.size) or real(d, key))
    return read


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_an_array_type_that_inflates_past_the_ratio_is_refused_unread(capsys, tmp_path, monkeypatch, fmt):
    """A kernel of one element of a 1000 x 1000 float32 array type, zeros compressed by HDF5's gzip:
    1 value, within the layer's 15, but 4 MB declared in about 4 KB stored. It is refused by the
    zip members' ratio rule before h5py inflates it (RATIO_FLOOR lowered to 1 MB here: a real bomb
    declares gigabytes, as a 4 GB array type can)."""

    def edit(f, kernel, group):
        del f[kernel]
        ds = f.create_dataset(kernel, shape=(1,), dtype=np.dtype(("f4", (1000, 1000))), chunks=(1,), compression="gzip")
        ds[0] = np.zeros((1000, 1000), "f4")

    path = _weights_edited(tmp_path, fmt, edit)
    assert path.stat().st_size < 100_000
    monkeypatch.setattr("cnnkit.errors.RATIO_FLOOR", 1 << 20)
    read = _count_reads(monkeypatch)
    kernel = "/model_weights/fc/fc/kernel:0" if fmt == "h5" else "/layers/dense/vars/0"
    _refused(
        capsys,
        ["convert", str(path), "--out", str(tmp_path / "run")],
        f"{path}: its HDF5 dataset {kernel} declares 4.0 MB inflated from ",
        "a compression bomb",
        "save the model again from Keras",
    )
    assert read == [108, 4]  # the conv's kernel and bias; the dense kernel is refused unread
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_one_compressed_array_read_many_times_is_refused_by_the_total(capsys, tmp_path, monkeypatch, fmt):
    """A Dense kernel of 4 x 4,096 zeros (64 KB, about 200 bytes gzip-compressed) listed 300 times: in
    a legacy .h5 its name repeated in weight_names, in a .keras 300 hard links in the layer's vars
    group. Each read passes alone (64 KB is under the floor); their total is refused as soon as it
    passes the ratio against the file's bytes (RATIO_FLOOR lowered to 1 MB: the real floor needs
    1,000 such reads), not after the 300 reads (19 MB; 300,000 would be 19 GB)."""
    units = 4096

    def edit(f, kernel, group):
        del f[kernel]
        f.create_dataset(kernel, data=np.zeros((4, units), "f4"), chunks=True, compression="gzip")
        bias = kernel.replace("kernel", "bias") if fmt == "h5" else f"{group}/1"
        del f[bias]
        f[bias] = np.zeros(units, "f4")
        if fmt == "h5":
            f[group].attrs["weight_names"] = ["fc/kernel:0"] * 300 + ["fc/bias:0"]
        else:
            for i in range(2, 301):
                f[f"{group}/{i}"] = f[kernel]

    path = _weights_edited(tmp_path, fmt, edit, _config(units))
    held = path.stat().st_size if fmt == "h5" else zipfile.ZipFile(path).getinfo("model.weights.h5").file_size
    assert held < 100_000
    monkeypatch.setattr("cnnkit.errors.RATIO_FLOOR", 1 << 20)
    read = _count_reads(monkeypatch)
    err = _refused(
        capsys,
        ["convert", str(path), "--out", str(tmp_path / "run")],
        f"{path}: its HDF5 datasets, up to ",
        "together, inflated from the file's",
        "an array read many times",
        "save the model again from Keras",
    )
    listed = [108, 4] + ([4 * units] * 300 + [units] if fmt == "h5" else [4 * units, units] + [4 * units] * 299)
    total = np.cumsum(listed) * 4  # float32 bytes
    refused = int(np.argmax(total > max(1 << 20, 100 * held)))  # the first read whose total passes the limit
    assert 50 < refused < 200 and read == listed[:refused], err  # that one is refused unread
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("data", "words"),
    [(np.full((4, 3), 1e300), ("'fc'", "non-finite", "float32")), (np.ones((4, 3), "c8"), ("'fc'", "complex"))],
)
def test_weights_float32_cannot_hold_are_refused(capsys, tmp_path, data, words):
    path = _legacy_array(_h5(tmp_path / "x.h5"), "model_weights/fc/fc/kernel:0", data=data)
    _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], *words)
    assert not (tmp_path / "run").exists()


def test_a_zip_bomb_of_weights_is_refused_before_it_inflates(capsys, tmp_path, monkeypatch):
    """model.weights.h5 stated as 100 MB (100 KB of deflated zeros) with 64 MB of memory free: refused by
    the size its zip entry states, not inflated (a real bomb would exhaust the memory). The ratio check,
    which refuses this file first (tests/test_hostile_zip.py), is lifted: this is the memory check."""
    path = keras_file(tmp_path, "bomb.keras")
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist() if n != "model.weights.h5"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in parts.items():
            z.writestr(n, data)
        z.writestr("model.weights.h5", bytes(100 << 20))
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr("cnnkit.errors.memory_available", lambda: 64 << 20)
    monkeypatch.setattr("cnnkit.errors.RATIO_FLOOR", 1 << 40)
    _refused(
        capsys,
        ["convert", str(path), "--out", str(tmp_path / "run")],
        "model.weights.h5",
        "104.9 MB",
        "memory",
        "save the model again from Keras",
    )
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- serve


def test_a_truncated_upload_is_named(tmp_path):
    from PIL import Image

    from cnnkit.serve.predict import _image_tensor, parse_multipart

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()[:-40]
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="trunc.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--B--\r\n"
    )
    fields = parse_multipart("multipart/form-data; boundary=B", body)

    class Target:
        input_size, dark_background = (3, 16, 16), False

    with pytest.raises(CnnkitError) as exc:
        _image_tensor(Target(), fields["file"])
    assert "the upload 'trunc.png'" in str(exc.value) and "BytesIO" not in str(exc.value)


def test_a_missing_weight_with_a_long_name_is_quoted_short(capsys, tmp_path):
    """h5py's KeyError quotes the missing weight's name whole (3,000 characters): the message keeps
    ``short_error``'s first 400 characters of it."""
    path = _h5(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        f["model_weights/conv"].attrs["weight_names"] = ["conv/kernel:0", "conv/" + "b" * 3000 + ":0"]
    err = _refused(capsys, ["convert", str(path), "--out", str(tmp_path / "run")], "lists a weight the file lacks")
    assert err.startswith(f"cnnkit convert: error: {path}: layer 'conv' lists a weight the file lacks (")
    assert err.strip().endswith("bb ...)") and len(err) < 600 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_full_disk_during_export_is_said_as_such(tmp_path, monkeypatch, wrapped):
    """Both exporters failing with ENOSPC (raw, or wrapped in the exporter's own error) read as a
    model ONNX cannot express; the refusal says the disk is full, and no file is left behind."""
    import errno

    from cnnkit.export import export_onnx

    def full(*args, **kwargs):
        cause = OSError(errno.ENOSPC, "No space left on device")
        if not wrapped:
            raise cause
        raise RuntimeError("Failed to save the ONNX model") from cause

    monkeypatch.setattr(torch.onnx, "export", full)
    out = tmp_path / "m.onnx"
    with pytest.raises(CnnkitError) as info:
        export_onnx(torch.nn.Linear(3, 2), torch.rand(1, 3), out)
    assert str(info.value).startswith(f"disk full writing {out}: the file did not fit"), info.value
    assert list(tmp_path.iterdir()) == []

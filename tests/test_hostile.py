"""Hostile input: crafted checkpoints never run code, bad files and values are one-line CnnkitErrors."""

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save as st_save

import cnnkit
from cnnkit.cli import main
from cnnkit.engine.runfolder import FORMAT, atomic_write_bytes, read_info
from cnnkit.errors import CnnkitError
from cnnkit.models.deploy import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

# what an attacker ships: importing it writes the marker file
EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("pwned")
import torch.nn as nn
def build(num_classes=2, in_channels=1):
    pathlib.Path({marker!r}).write_text("pwned")
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, num_classes))
"""
# what the person loading trusts (the same architecture, a file of their own)
MINE = """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self, k, c):
        super().__init__()
        self.fc = nn.Linear(c * 8 * 8, k)
    def forward(self, x):
        return self.fc(x.flatten(1))
def build(num_classes=2, in_channels=1):
    return Net(num_classes, in_channels)
"""


def _info(**kw) -> dict:
    info = {
        "format": FORMAT,
        "model": "mnist_fast",
        "num_classes": 2,
        "input_size": [1, 8, 8],
        "classes": ["a", "b"],
        "mean": [0.5],
        "std": [0.25],
        "tta": "",
        "dataset": {"name": "mnist"},
        "config": {"dataset": "mnist", "data_dir": None, "seed": 0},
    }
    return {**info, **kw}


def _write(path, info: dict, tensors: dict | None = None):
    if tensors is None:
        net = nn.Sequential()
        net.fc = nn.Linear(64, 2)
        clf = Classifier(net, [0.5], [0.25], ["a", "b"], (1, 8, 8))
        tensors = {k.replace("net.fc", "net.fc"): v for k, v in clf.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(st_save(tensors, metadata={"cnnkit": json.dumps(info)}))
    return path


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A run folder whose metadata names a Python file -- new style (absolute) and old style (relative)."""
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "net.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.chdir(run)  # the downloaded folder is the current directory: net.py resolves here
    tensors = {
        "mean": torch.full((1, 1, 1, 1), 0.5),
        "std": torch.full((1, 1, 1, 1), 0.25),
        "net.1.weight": torch.zeros(2, 64),
        "net.1.bias": torch.zeros(2),
    }
    _write(
        run / "model.safetensors",
        _info(model=f"{evil}:build", network={"kind": "factory", "factory": f"{evil}:build"}),
        tensors,
    )
    _write(tmp_path / "old" / "model.safetensors", _info(model="net.py:build"), tensors)  # no "network"
    _write(
        tmp_path / "mod" / "model.safetensors",
        _info(network={"kind": "modules", "tree": {"type": "system", "command": "touch x"}}),
        tensors,
    )
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    return tmp_path, marker


@pytest.mark.parametrize("which", ["run", "old", "mod"])
def test_a_crafted_checkpoint_runs_no_code_through_any_door(crafted, which, capsys):
    tmp, marker = crafted
    run = str(tmp / which)
    with pytest.raises(CnnkitError, match="trust_code=True|not one of the plain torch.nn layers"):
        cnnkit.load(run)
    commands = [
        ["predict", run, str(tmp / "x.png")],
        ["eval", run],
        ["explain", run, str(tmp / "x.png")],
        ["classify", "fcn", run, "--out", str(tmp / "fcn")],
        ["plot", run],
        ["classify", "finetune", "--weights", run, "--data", str(tmp)],
    ]
    (tmp / which / "metrics.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n1,1,0.5,1,0.5,0.1,1\n"
    )
    for argv in commands:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == (0 if argv[0] == "plot" else 2), (argv, err)  # plot draws the curves only
        if argv[0] in ("predict", "eval", "explain") or argv[:2] == ["classify", "fcn"]:
            assert err.count("\n") == 1 and ("--trust-code" in err or "torch.nn layers" in err), err
    assert not marker.exists()
    assert not (tmp / "fcn").exists()


def test_trust_code_runs_the_file_the_user_names(crafted, tmp_path, capsys):
    tmp, marker = crafted
    with pytest.raises(CnnkitError, match="needs factory='FILE.py:FN'"):
        cnnkit.load(tmp / "run", trust_code=True)  # the checkpoint's own path: never
    (tmp_path / "mine.py").write_text(MINE.replace("self.fc", "self.fc"))
    # my file builds a different module tree: its keys are fc.*, the checkpoint's 1.*
    with pytest.raises(CnnkitError, match="weights do not fit"):
        cnnkit.load(tmp / "run", trust_code=True, factory=f"{tmp_path / 'mine.py'}:build")
    (tmp_path / "seq.py").write_text(
        "import torch.nn as nn\ndef build(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))\n"
    )
    model = cnnkit.load(tmp / "run", trust_code=True, factory=f"{tmp_path / 'seq.py'}:build")
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 2)
    assert (
        main(
            [
                "predict",
                str(tmp / "run"),
                str(tmp / "x.png"),
                "--trust-code",
                f"{tmp_path / 'seq.py'}:build",
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)[0]["top"][0][1] == pytest.approx(0.5)
    assert not marker.exists()


def test_a_factory_returning_plain_layers_is_saved_as_data(tmp_path, capsys):
    from cnnkit.tasks.classify.finetune import save_finetuned

    (tmp_path / "net.py").write_text("raise SystemExit('never imported')\n")
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(4 * 4 * 4, 3),
    )
    path = save_finetuned(
        tmp_path / "r",
        net,
        f"{tmp_path / 'net.py'}:build",
        ["a", "b", "c"],
        (1, 8, 8),
        (0.5,),
        (0.25,),
        [],
        {"stages": []},
    )
    info = read_info(path)
    assert info["network"]["kind"] == "modules"
    assert [n["type"] for n in info["network"]["tree"]["layers"]] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Dropout",
        "Linear",
    ]
    model = cnnkit.load(tmp_path / "r")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), net.eval()((x - 0.5) / 0.25))
    # it records no training config: eval asks for the dataset in one line instead of a KeyError
    assert main(["eval", str(tmp_path / "r")]) == 2
    assert "does not record the dataset it was trained on" in capsys.readouterr().err


def test_a_spec_is_embedded_so_the_checkpoint_loads_without_its_file(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text(
        "input: 1x8x8\nlayers:\n  - conv2d: {filters: 4, kernel_size: 3}\n  - flatten: {}\n  - dense: {units: 2}\n"
    )
    from cnnkit.engine.runfolder import save_model
    from cnnkit.models.deploy import Classifier
    from cnnkit.models.network import build_network, model_reference

    net = build_network(str(spec), 2, 1)
    save_model(
        tmp_path / "m.safetensors",
        Classifier(net, [0.5], [0.25], ["a", "b"], (1, 8, 8)),
        _info(model=model_reference(str(spec))),
    )
    spec.unlink()
    model = cnnkit.load(tmp_path / "m.safetensors")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25))


def test_old_zoo_checkpoints_still_load(tmp_path):
    net = cnnkit.create_model("lenet5", num_classes=2, in_channels=1)
    clf = Classifier(net, [0.5], [0.25], ["a", "b"], (1, 32, 32))
    _write(
        tmp_path / "old.safetensors",
        _info(model="lenet5", input_size=[1, 32, 32]),  # no "network"
        {k: v.contiguous() for k, v in clf.state_dict().items()},
    )
    assert cnnkit.load(tmp_path / "old.safetensors")(torch.rand(1, 1, 32, 32)).shape == (1, 2)


# ----------------------------------------------------------------------------- damaged files


def _good_checkpoint(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    from cnnkit.tasks.classify.finetune import save_finetuned

    return save_finetuned(
        tmp_path / "good", net, "x.py:build", ["a", "b"], (1, 8, 8), (0.5,), (0.25,), [], {"stages": []}
    )


@pytest.mark.parametrize(
    "damage",
    [
        "empty",
        "truncated",
        "header_length",
        "not_safetensors",
        "pickle",
        "plain_weights",
        "bad_json",
        "huge_input",
        "odd_input",
        "huge_classes",
        "wrong_shapes",
        "resume_file",
    ],
)
def test_damaged_checkpoints_are_one_line_errors(tmp_path, damage, capsys):
    good = _good_checkpoint(tmp_path).read_bytes()
    bad = tmp_path / "bad" / "model.safetensors"
    bad.parent.mkdir()
    n = int.from_bytes(good[:8], "little")
    data = {
        "empty": b"",
        "truncated": good[: len(good) - 40],
        "not_safetensors": b"hello world" * 10,
        "header_length": (10**12).to_bytes(8, "little") + good[8:],
        "pickle": b"\x80\x04\x95" + b"\x00" * 64,
    }.get(damage)
    if data is not None:
        bad.write_bytes(data)
    elif damage == "plain_weights":
        bad.write_bytes(st_save({"w": torch.zeros(2)}))
    elif damage == "bad_json":
        bad.write_bytes(st_save({"w": torch.zeros(2)}, metadata={"cnnkit": "{not json"}))
    elif damage == "resume_file":
        bad.write_bytes(st_save({"w": torch.zeros(2)}, metadata={"cnnkit": json.dumps({"format": FORMAT, "epoch": 1})}))
    else:
        info = json.loads(good[8 : 8 + n])["__metadata__"]["cnnkit"]
        info = json.loads(info)
        if damage == "huge_input":
            info["input_size"] = [3, 60000, 60000]
        elif damage == "odd_input":
            info["input_size"] = ["ab" * 1000, 10**9]
        elif damage == "huge_classes":
            info["num_classes"], info["classes"] = 10**9, ["a"]
        else:
            info["network"]["tree"]["layers"][1]["in_features"] = 65
        _write(bad, info, {"w": torch.zeros(1)} if damage != "wrong_shapes" else None)
    with pytest.raises(CnnkitError) as err:
        cnnkit.load(bad)
    assert str(bad) in str(err.value)
    for argv in (
        ["predict", str(bad), "x.png"],
        ["eval", str(bad)],
        ["classify", "fcn", str(bad), "--out", str(tmp_path / "f")],
        ["explain", str(bad), "x.png"],
    ):
        assert main(argv) == 2
        err_text = capsys.readouterr().err
        assert err_text.count("\n") == 1 and "Traceback" not in err_text, err_text


def test_a_runs_resume_state_given_as_its_model_names_the_model(tmp_path, capsys):
    """``RUN/resume.safetensors`` where the model is asked for: the message says what the file is and
    which to give instead, for every task's reader."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "resume.safetensors").write_bytes(
        st_save({"w": torch.zeros(2)}, metadata={"cnnkit": json.dumps({"format": FORMAT, "epoch": 1})})
    )
    for argv in (["eval"], ["segment", "eval"], ["detect", "eval"], ["sequence", "eval"], ["video", "eval"]):
        assert main([*argv, str(run / "resume.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a run's resume state (what --resume reads), not its model" in err, err
        assert f"give the run folder {run} or its model.safetensors" in err


def test_images_are_capped_before_decoding(tmp_path):
    from cnnkit.data.images import read_image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (8, 8)).save(bomb)
    png = bytearray(bomb.read_bytes())
    png[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")  # IHDR claims 100000x100000
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # with a valid CRC
    bomb.write_bytes(bytes(png))
    with pytest.raises(CnnkitError, match="is 10,000,000,000 pixels, more than the 89,478,485 cnnkit decodes"):
        read_image(bomb, 3, (8, 8))
    Image.new("L", (10000, 9000)).save(bomb)  # 90 M: ours strikes first
    with pytest.raises(CnnkitError, match="10000x9000 = 90,000,000 pixels, more than the 89,478,485"):
        read_image(bomb, 3, (8, 8))
    big = tmp_path / "big.png"
    Image.new("L", (5000, 4000)).save(big)
    with pytest.raises(CnnkitError, match="5000x4000 = 20,000,000 pixels; at its own size at most 16,777,216"):
        read_image(big, 3)
    assert read_image(big, 1, (4, 5)).shape == (1, 4, 5)  # resized: fine
    (tmp_path / "t.png").write_bytes(big.read_bytes()[:2000])
    with pytest.raises(CnnkitError, match="truncated or damaged"):
        read_image(tmp_path / "t.png", 1, (4, 5))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_images_are_scaled_to_8_bits_not_clipped(tmp_path, suffix):
    from cnnkit.data.images import read_image, read_pixels

    wide = (np.arange(16 * 24, dtype=np.uint32) * 171 % 65536).astype(np.uint16).reshape(16, 24)
    path = tmp_path / f"grey16{suffix}"
    Image.fromarray(wide).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
    want = torch.from_numpy(((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))
    assert torch.equal(read_pixels(path, 1)[0], want)
    assert torch.equal(read_pixels(path, 3), want.expand(3, -1, -1))
    assert torch.equal((read_image(path, 1)[0] * 255).round().byte(), want)
    assert torch.equal((read_image(path, 3) * 255).round().byte(), want.expand(3, -1, -1))
    # an image folder decodes through its own path (JPEG drafts, its cache): the same scaling
    from cnnkit.data.imagefolder import load_image_folder

    for c in ("a", "b"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        Image.fromarray(wide).save(tmp_path / "folder" / c / f"g{suffix}")
    data = load_image_folder(tmp_path / "folder", image_size=(16, 24), channels=1, val_fraction=0.0, cache=False)
    assert torch.equal(data.images[0, 0], want)


def test_idx_gzip_and_header_damage(tmp_path):
    import gzip

    from cnnkit.data.idx import read_idx

    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") * 3))
    with pytest.raises(CnnkitError, match="corrupt or truncated IDX"):
        read_idx(p)
    p.write_bytes(b"\x1f\x8b" + b"\x00" * 30)
    with pytest.raises(CnnkitError, match="gzip stream is broken"):
        read_idx(p)


def test_atomic_save_cleans_stale_tmp_and_reports_a_full_disk(tmp_path, monkeypatch):
    (tmp_path / ".m.safetensors.abc123.tmp").write_bytes(b"x" * 100)  # a save killed midway
    (tmp_path / ".other.bin.abc.tmp").write_bytes(b"x")  # another file's: kept
    atomic_write_bytes(tmp_path / "m.safetensors", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.bin.abc.tmp", "m.safetensors"]
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        CnnkitError,
        match=r"disk full writing .*m.safetensors: 3.0 MB were to be written; "
        "the previous version is kept",
    ):
        atomic_write_bytes(tmp_path / "m.safetensors", b"\0" * 3_000_000)
    assert (tmp_path / "m.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.bin.abc.tmp", "m.safetensors"]


# ----------------------------------------------------------------------------- values where they enter


@pytest.mark.parametrize(
    "layer, match",
    [
        ("{conv2d: {filters: abc, kernel_size: 3}}", "filters must be an integer >= 1 .*received filters=abc"),
        ("{conv2d: {filters: 3.7, kernel_size: 3}}", "filters must be an integer >= 1 .*received filters=3.7"),
        ("{conv2d: {filters: 8, kernel_size: 0}}", "kernel_size must be an integer >= 1"),
        ("{conv2d: {filters: 8, kernel_size: 3, strides: 0}}", "strides must be an integer >= 1"),
        ("{conv2d: {filters: 8, kernel_size: 3, dilation_rate: -1}}", "dilation_rate must be"),
        ("{conv2d: {filters: 8, kernel_size: 3, padding: -2}}", "padding must be 'valid', 'same' or a non-negative"),
        ("{conv2d: {filters: 100000000, kernel_size: 3}}", "at most 16,777,216"),
        ("{dense: {units: 0}}", "units must be an integer >= 1"),
        ("{dropout: {rate: 1.5}}", "rate must be a number in"),
    ],
)
def test_spec_values_are_checked_where_they_enter(tmp_path, layer, match):
    from cnnkit.models.spec import build_from_spec

    spec = tmp_path / "s.yaml"
    spec.write_text(f"input: 3x16x16\nlayers:\n  - {layer}\n  - flatten\n")
    with pytest.raises(CnnkitError, match=match):
        build_from_spec(spec)


def test_spec_shapes_that_become_vectors_or_too_large(tmp_path, monkeypatch):
    from cnnkit.models.spec import build_from_spec

    for after in (
        "batch_normalization",
        "conv2d: {filters: 4, kernel_size: 1}",
        "global_average_pooling2d",
        "max_pooling2d",
    ):
        spec = {
            "input": "3x16x16",
            "layers": [
                {"global_average_pooling2d": {}},
                after.split(":")[0] if ":" not in after else {"conv2d": {"filters": 4, "kernel_size": 1}},
            ],
        }
        if after == "batch_normalization":  # a vector is fine for batch-norm (BatchNorm1d)
            assert build_from_spec(spec)[0](torch.rand(2, 3, 16, 16)).shape == (2, 3)
            continue
        with pytest.raises(CnnkitError, match="receives a vector 3: a global pooling"):
            build_from_spec(spec)
    # parameters that would not fit are reported with their size, never allocated
    import cnnkit.errors as errors

    monkeypatch.setattr(errors, "memory_available", lambda: 10**8)
    spec = {"input": "3x16x16", "layers": ["flatten", {"dense": {"units": 100000}}]}
    with pytest.raises(CnnkitError, match=r"needs 307.6 MB, more than the 100.0 MB of memory available"):
        build_from_spec(spec)


def test_billion_laughs_is_refused_without_echoing_it(tmp_path, capsys):
    lol = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        lol.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 10)}]")
    (tmp_path / "lol.yaml").write_text("\n".join(lol) + "\ninput: 3x8x8\nlayers: *i\n")
    assert main(["summary", str(tmp_path / "lol.yaml")]) == 2
    err = capsys.readouterr().err
    assert "expands (through YAML aliases &/*) to more than 200,000 values" in err and len(err) < 400


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--subset", "0"], "--subset must be a positive integer; received 0"),
        (["train", "--subset", "-5"], "--subset must be a positive integer; received -5"),
        (["predict", "run", "x.png", "--top", "0"], "--top must be a positive integer"),
    ],
)
def test_absurd_cli_values(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_mistyped_data_dir_is_not_created(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "daat"), "--out", str(tmp_path / "r")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert not (tmp_path / "daat").exists() and not (tmp_path / "r").exists()


def test_image_folders_need_two_non_empty_classes(tmp_path):
    from cnnkit.data.imagefolder import load_image_folder

    for c in ("cat", "dog"):
        (tmp_path / "f" / c).mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "f" / "cat" / f"{i}.png")
    (tmp_path / "f" / "dog" / "notes.txt").write_text("no images here")
    with pytest.warns(UserWarning), pytest.raises(CnnkitError, match="'dog' hold no readable image"):
        load_image_folder(tmp_path / "f", image_size=(8, 8), cache=False)
    (tmp_path / "f" / "dog" / "notes.txt").unlink()
    (tmp_path / "f" / "dog").rmdir()
    with pytest.raises(CnnkitError, match="1 class folder \\('cat'\\); a classifier needs at least two"):
        load_image_folder(tmp_path / "f", image_size=(8, 8), cache=False)


def test_tables_in_a_pipe_are_not_wrapped_at_80_columns(monkeypatch):
    import io

    from rich.table import Table

    from cnnkit.console import console

    monkeypatch.delenv("COLUMNS", raising=False)
    table = Table("layer", "output shape", "note")
    table.add_row("layer4.1.conv2", "512x7x7", "x" * 120)
    out = io.StringIO()  # a file or CI log: not a terminal
    console(file=out).print(table)
    rows = [line for line in out.getvalue().splitlines() if "layer4.1.conv2" in line]
    assert len(rows) == 1 and "x" * 120 in rows[0]  # one row, not wrapped at 80 columns


def test_resume_of_a_crafted_run_runs_no_code(crafted, capsys):
    from cnnkit.tasks.classify.config import TrainConfig

    tmp, marker = crafted
    cfg = TrainConfig(model=f"{tmp / 'evil.py'}:build").to_dict()
    _write(tmp / "run" / "resume.safetensors", {"format": FORMAT, "epoch": 1, "config": cfg}, {"w": torch.zeros(1)})
    assert main(["train", "--resume", "--out", str(tmp / "run")]) == 2
    err = capsys.readouterr().err
    assert "resuming would run it" in err and f"--model {tmp / 'evil.py'}:build" in err
    _write(
        tmp / "run" / "resume.safetensors",
        {"format": FORMAT, "config": {**cfg, "epochs": "abc"}},
        {"w": torch.zeros(1)},
    )
    assert main(["train", "--resume", "--out", str(tmp / "run")]) == 2
    assert err.count("\n") == 1 and not marker.exists()


def test_a_small_input_is_checked_by_a_real_pass_and_a_huge_one_on_the_meta_device(tmp_path):
    """Loading checks that the network runs at its own input size. A meta-device pass imports about
    a second of PyTorch's modules, so a small input runs through the real network instead; a huge
    one still goes to the meta device, where nothing is allocated."""
    good = _good_checkpoint(tmp_path)
    code = (
        "import sys, cnnkit, torch; from cnnkit.models import network; "
        "seen = []; real = torch.nn.Linear.forward; "
        "torch.nn.Linear.forward = lambda self, x: seen.append(x.device.type) or real(self, x)\n"
        "for limit in map(int, sys.argv[1:]):\n"
        f"    seen.clear(); network.REAL_CHECK_NUMBERS = limit; m = cnnkit.load({str(good)!r})\n"
        "    print(seen, 'sympy' in sys.modules)"
    )
    # one process, the real pass first: sympy is not imported until the meta-device pass imports it
    out = subprocess.run([sys.executable, "-c", code, "64", "63"], capture_output=True, text=True, check=True)
    # the input: 1 x 8 x 8 = 64 numbers
    assert out.stdout.strip().splitlines() == ["['cpu'] False", "['meta'] True"], out.stderr[-2000:]

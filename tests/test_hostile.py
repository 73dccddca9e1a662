"""Hostile input: crafted checkpoints never run code, bad files and values are one-line CnnkitErrors."""

import json
import os

import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save as st_save

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import CnnkitError
from cnnkit.train import checkpoint as ckpt

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
    info = {"format": ckpt.FORMAT, "model": "mnist_fast", "num_classes": 2, "input_size": [1, 8, 8],
            "classes": ["a", "b"], "mean": [0.5], "std": [0.25], "tta": "",
            "dataset": {"name": "mnist"}, "config": {"dataset": "mnist", "data_dir": None, "seed": 0}}
    return {**info, **kw}


def _write(path, info: dict, tensors: dict | None = None):
    if tensors is None:
        net = nn.Sequential()
        net.fc = nn.Linear(64, 2)
        clf = ckpt.Classifier(net, [0.5], [0.25], ["a", "b"], (1, 8, 8))
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
    monkeypatch.chdir(run)        # the downloaded folder is the current directory: net.py resolves here
    tensors = {"mean": torch.full((1, 1, 1, 1), 0.5), "std": torch.full((1, 1, 1, 1), 0.25),
               "net.1.weight": torch.zeros(2, 64), "net.1.bias": torch.zeros(2)}
    _write(run / "model.safetensors",
           _info(model=f"{evil}:build", network={"kind": "factory", "factory": f"{evil}:build"}), tensors)
    _write(tmp_path / "old" / "model.safetensors", _info(model="net.py:build"), tensors)  # no "network"
    _write(tmp_path / "mod" / "model.safetensors",
           _info(network={"kind": "modules", "tree": {"type": "system", "command": "touch x"}}), tensors)
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    return tmp_path, marker


@pytest.mark.parametrize("which", ["run", "old", "mod"])
def test_a_crafted_checkpoint_runs_no_code_through_any_door(crafted, which, capsys):
    tmp, marker = crafted
    run = str(tmp / which)
    with pytest.raises(CnnkitError, match="trust_code=True|not one of the plain torch.nn layers"):
        cnnkit.load(run)
    commands = [["predict", run, str(tmp / "x.png")], ["eval", run], ["explain", run, str(tmp / "x.png")],
                ["fcn", run, "--out", str(tmp / "fcn")], ["plot", run],
                ["finetune", "--weights", run, "--data", str(tmp)]]
    (tmp / which / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
                                             "1,1,0.5,1,0.5,0.1,1\n")
    for argv in commands:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == (0 if argv[0] == "plot" else 2), (argv, err)   # plot draws the curves only
        if argv[0] in ("predict", "eval", "explain", "fcn"):
            assert err.count("\n") == 1 and ("--trust-code" in err or "torch.nn layers" in err), err
    assert not marker.exists()
    assert not (tmp / "fcn").exists()


def test_trust_code_runs_the_file_the_user_names(crafted, tmp_path, capsys):
    tmp, marker = crafted
    with pytest.raises(CnnkitError, match="needs factory='FILE.py:FN'"):
        cnnkit.load(tmp / "run", trust_code=True)                  # the checkpoint's own path: never
    (tmp_path / "mine.py").write_text(MINE.replace("self.fc", "self.fc"))
    # my file builds a different module tree: its keys are fc.*, the checkpoint's 1.*
    with pytest.raises(CnnkitError, match="weights do not fit"):
        cnnkit.load(tmp / "run", trust_code=True, factory=f"{tmp_path / 'mine.py'}:build")
    (tmp_path / "seq.py").write_text("import torch.nn as nn\ndef build(num_classes, in_channels):\n"
                                     "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))\n")
    model = cnnkit.load(tmp / "run", trust_code=True, factory=f"{tmp_path / 'seq.py'}:build")
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 2)
    assert main(["predict", str(tmp / "run"), str(tmp / "x.png"), "--trust-code",
                 f"{tmp_path / 'seq.py'}:build", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0][1] == pytest.approx(0.5)
    assert not marker.exists()


def test_a_factory_returning_plain_layers_is_saved_as_data(tmp_path):
    from cnnkit.transfer.checkpoint import save_finetuned

    (tmp_path / "net.py").write_text("raise SystemExit('never imported')\n")
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Dropout(0.1), nn.Linear(4 * 4 * 4, 3))
    path = save_finetuned(tmp_path / "r", net, f"{tmp_path / 'net.py'}:build", ["a", "b", "c"], (1, 8, 8),
                          (0.5,), (0.25,), [], {"stages": []})
    info = ckpt.read_info(path)
    assert info["network"]["kind"] == "modules"
    assert [n["type"] for n in info["network"]["tree"]["layers"]] == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten", "Dropout", "Linear"]
    model = cnnkit.load(tmp_path / "r")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), net.eval()((x - 0.5) / 0.25))


def test_a_spec_is_embedded_so_the_checkpoint_loads_without_its_file(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("input: 1x8x8\nlayers:\n  - conv2d: {filters: 4, kernel_size: 3}\n"
                    "  - flatten: {}\n  - dense: {units: 2}\n")
    from cnnkit.train.checkpoint import Classifier, build_network, model_reference, save_model

    net = build_network(str(spec), 2, 1)
    save_model(tmp_path / "m.safetensors", Classifier(net, [0.5], [0.25], ["a", "b"], (1, 8, 8)),
               _info(model=model_reference(str(spec))))
    spec.unlink()
    model = cnnkit.load(tmp_path / "m.safetensors")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25))


def test_old_zoo_checkpoints_still_load(tmp_path):
    net = cnnkit.create_model("lenet5", num_classes=2, in_channels=1)
    clf = ckpt.Classifier(net, [0.5], [0.25], ["a", "b"], (1, 32, 32))
    _write(tmp_path / "old.safetensors", _info(model="lenet5", input_size=[1, 32, 32]),   # no "network"
           {k: v.contiguous() for k, v in clf.state_dict().items()})
    assert cnnkit.load(tmp_path / "old.safetensors")(torch.rand(1, 1, 32, 32)).shape == (1, 2)

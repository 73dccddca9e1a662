"""The whole registry against the reference state dicts, plus a forward/backward of every model."""

import json

import pytest
import torch

from cnnkit import create_model, list_models
from cnnkit.cli import main
from cnnkit.errors import CnnkitError
from cnnkit.models import model_info

_MIN_SIDE = {"alexnet": 63, "inception_v3": 75}  # the smallest input their strides and pools accept
# zoo names whose reference has another name (timm's TF ports carry a "tf_" prefix)
_REFERENCE_NAME = {f"efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)}
_BIG = 5_000_000  # parameters of one tensor above which the test skips its gradient (VGG's 25088x4096)


pytestmark = pytest.mark.usefixtures("one_thread")


def _small_input(name: str) -> tuple[int, ...]:
    """Batch 2 at the default size for the small nets (their Flatten fixes it), else 32x32 or the minimum."""
    size = model_info(name).input_size
    if len(size) == 1 or size[-1] <= 150:
        return (2, *size)
    side = _MIN_SIDE.get(name, 32)
    return (2, size[0], side, side)


POOLED = {
    "multirocket",
    "multirocket_hydra",
}  # features are per-bias statistics of the whole series (PPV, MPV, MIPV, LSPV)


def _outputs(y) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (tuple, list)) else [y]  # GoogLeNet/Inception: aux logits in training


@pytest.mark.parametrize(
    "name", [n for n in list_models(None) if model_info(n).task not in ("detect", "segment", "instance")]
)
def test_model(name, reference_state_dicts):
    model = create_model(name)

    ref = reference_state_dicts.get(_REFERENCE_NAME.get(name, name))
    if ref is not None:  # every key and shape of the reference implementation, and its parameter count
        ours = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert ours == ref["state_dict"], f"{name}: state dict differs from {ref['source']}"
        assert sum(p.numel() for p in model.parameters()) == ref["params"]

    x = torch.randn(_small_input(name))
    for p in model.parameters():  # gradients still flow through them; only their own grad is skipped
        p.requires_grad_(p.numel() <= _BIG)
    model.train()
    outs = _outputs(model(x))
    assert all(o.shape[0] == 2 and torch.isfinite(o).all() for o in outs)
    sum(o.float().square().mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    if model_info(name).family == "gan":  # a generator: no classifier to reset
        assert outs[0].shape[1:] == (1, 28, 28)
        return
    if model_info(name).task in ("video_predict", "style"):  # frames or an image out, no classifier
        assert outs[0].shape == x.shape
        return
    assert model.num_classes == outs[0].shape[1]
    model.reset_classifier(7)
    model.eval()
    with torch.no_grad():
        y = _outputs(model(x))[0]
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    assert y.shape == (2, 7) and model.num_classes == 7
    if name in POOLED:  # fixed convolutions pooled to statistics: no map to draw a CAM on
        assert feats.shape == (2, model.num_features)
    else:
        assert feats.dim() in (3, 4, 5)  # a feature map, for Grad-CAM and feature extraction
    assert pre.shape == (2, model.num_features)  # what a new classifier takes


def test_in_channels_changes_only_the_first_conv():
    for name in ("mobilenet_v1", "mobilenet_v3_small", "xception", "seresnet50", "lenet5", "exercise9_mnist"):
        a, b = create_model(name), create_model(name, in_channels=4)
        sa, sb = a.state_dict(), b.state_dict()
        diff = [k for k in sa if sa[k].shape != sb[k].shape]
        assert len(diff) == 1 and sb[diff[0]].shape[1] == 4, (name, diff)
    with pytest.raises(CnnkitError, match="in_channels must be an integer from 1 to"):
        create_model("mobilenet_v2", in_channels=0)
    with pytest.raises(CnnkitError, match="gan_generator is a generator"):
        create_model("gan_generator", num_classes=10)


def test_unknown_name_lists_close_matches():
    with pytest.raises(CnnkitError, match=r"unknown model name 'mobilenet_v4'; did you mean .*mobilenet_v"):
        create_model("mobilenet_v4")


def test_notes_networks_read_like_their_keras_summaries():
    m = create_model("keras_mnist_convnet")
    shapes, x = [], torch.zeros(1, 1, 28, 28)
    for name in ("conv2d_1", "max_pooling2d_1", "conv2d_2", "max_pooling2d_2", "conv2d_3", "flatten_1"):
        x = getattr(m, name)(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(32, 26, 26), (32, 13, 13), (64, 11, 11), (64, 5, 5), (64, 3, 3), (576,)]
    params = {n: sum(p.numel() for p in c.parameters()) for n, c in m.named_children()}
    assert params == {
        "conv2d_1": 320,
        "max_pooling2d_1": 0,
        "conv2d_2": 18496,
        "max_pooling2d_2": 0,
        "conv2d_3": 36928,
        "flatten_1": 0,
        "dense_1": 36928,
        "dense_2": 650,
    }
    assert sum(p.numel() for p in create_model("keras_cats_dogs_convnet").parameters()) == 3_453_121
    lenet = create_model("lenet5", c3_table=True)
    assert int((lenet.c3.weight != 0).sum()) == 60 * 25  # the paper's 60 connections of 5x5


def test_cli_zoo_json(capsys):
    assert main(["zoo", "mobilenet_v3_small", "lenet5", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mobilenet_v3_small"]["params"] == 2_542_856
    assert 50e6 < rows["mobilenet_v3_small"]["macs"] < 60e6  # 56M in the paper
    assert rows["lenet5"]["input_size"] == [1, 32, 32] and rows["lenet5"]["weights"] is None
    assert main(["zoo", "mobilenet_v4"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_dense_models_are_in_the_registry_with_their_task(capsys):
    import torch

    from cnnkit.cli import main

    assert list_models("detect") == ["fcos"] and list_models("instance") == ["mask_fcos"]
    assert list_models("segment") == ["deeplabv3", "fcn16s", "fcn32s", "fcn8s", "unet"]
    assert not set(list_models("segment")) & set(list_models())  # the default lists classifiers
    seg = create_model("fcn8s", num_classes=3, backbone="resnet18").eval()
    assert seg(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)  # a class map at the input's size
    det = create_model("fcos", num_classes=2, backbone="tiny", in_channels=1, out_strides=(8,)).eval()
    out = det(torch.zeros(1, 1, 64, 64))
    assert out["cls"].shape[-1] == 2
    assert main(["zoo", "--task", "detect", "--format", "json"]) == 0
    assert [r["name"] for r in __import__("json").loads(capsys.readouterr().out)] == ["fcos"]

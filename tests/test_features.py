"""Feature pyramids of the zoo: every supported backbone's maps, strides and channels at 64x64."""

import math

import pytest
import torch

from cnnkit import create_model, list_models
from cnnkit.errors import CnnkitError
from cnnkit.models import model_info
from cnnkit.models.features import create_features

pytestmark = pytest.mark.usefixtures("one_thread")

_FAMILIES = ("resnet", "resnext", "wide_resnet", "seresnet", "vgg", "densenet", "mobilenet", "efficientnet")
SUPPORTED = [n for n in list_models() if n.startswith(_FAMILIES) and len(model_info(n).input_size) == 3]  # images
# the deepest variants of a family add nothing the shallow ones do not test, and take seconds each
# (VGG's 100M-parameter classifier alone takes 0.5 s to initialise)
_SLOW = {
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "densenet169",
    "densenet201",
    "efficientnet_lite3",
    "efficientnet_lite4",
    "efficientnet_b2",
    "efficientnet_b3",
}

# channels at strides 4, 8, 16, 32 (timm's feature_info for the same networks)
KNOWN = {
    "resnet18": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "vgg11": [256, 512, 512, 512],
    "mobilenet_v2": [24, 32, 96, 320],
    "mobilenet_v3_large": [24, 40, 112, 160],
    "densenet121": [256, 512, 1024, 1024],
    "efficientnet_lite0": [24, 40, 112, 320],
    "efficientnet_b0": [24, 40, 112, 320],
}


@pytest.mark.parametrize("name", [n for n in SUPPORTED if n not in _SLOW])
def test_every_supported_backbone(name):
    fx = create_features(name, out_strides=(2, 4, 8, 16, 32)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = fx(x)
    assert fx.strides == [2, 4, 8, 16, 32]
    assert [m.shape for m in maps] == [(2, c, 64 // s, 96 // s) for c, s in zip(fx.channels, fx.strides)]
    assert [i["channels"] for i in fx.feature_info] == fx.channels
    for info in fx.feature_info:  # the named module exists in the backbone
        fx.backbone.get_submodule(info["module"])
    if name in KNOWN:
        assert fx.channels[1:] == KNOWN[name]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "mobilenet_v1", "efficientnet_lite0"])
def test_odd_sizes_round_up(name):
    """Padded strided convs give ceil(H / s); VGG's and DenseNet's 2x2 pools floor odd sizes instead."""
    fx = create_features(name, out_strides=(4, 8, 16, 32)).eval()
    with torch.no_grad():
        maps = fx(torch.randn(1, 3, 50, 37))
    assert [tuple(m.shape[2:]) for m in maps] == [(math.ceil(50 / s), math.ceil(37 / s)) for s in fx.strides]


def test_state_dict_names_stay_those_of_the_zoo_model():
    fx = create_features("resnet18", out_strides=(8, 16, 32), output_stride=8)
    zoo = {k for k in create_model("resnet18").state_dict() if not k.startswith("fc.")}
    assert set(fx.backbone.state_dict()) == zoo


def test_later_stages_are_not_kept():
    fx = create_features("resnet18", out_strides=(4, 8))
    assert not hasattr(fx.backbone, "layer3") and not hasattr(fx.backbone, "layer4")
    assert fx.feature_info[-1]["module"] == "layer2"
    zoo = set(create_model("resnet18").state_dict())
    assert set(fx.dropped_keys) == {k for k in zoo if k.startswith(("layer3.", "layer4."))}
    assert [m.shape[1] for m in fx(torch.zeros(1, 3, 64, 64))] == [64, 128]


def _used_and_total(module, x):
    """Parameters that get a gradient from one forward and backward of ``x``, and all of them."""
    out = module.train()(x)
    sum(o.float().mean() for o in (out if isinstance(out, list) else [out])).backward()
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.grad is not None), sum(p.numel() for p in params)


@pytest.mark.parametrize(
    "name,dropped",
    [
        ("mobilenet_v2", 412_160),  # the 1x1 head conv to 1280 and its batch norm
        ("efficientnet_lite0", 412_160),  # the same head
        ("mobilenet_v3_large", 1_385_600),  # the head conv to 960 and the pre-logits Linear to 1280
        pytest.param("vgg11", 119_545_856, marks=pytest.mark.slow),  # fc6 and fc7 of the classifier
        ("resnet18", 0),  # the classifier (fc) only, already nothing
    ],
)
def test_modules_never_run_are_no_parameters(name, dropped):
    """Every parameter gets a gradient; the dropped keys are exactly what the whole zoo model holds
    besides (its classifier reset), so a checkpoint saved with them loads (see test_segmentation_models)."""
    fx = create_features(name, out_strides=(8, 16, 32))
    used, total = _used_and_total(fx, torch.rand(2, 3, 64, 64))
    assert used == total
    zoo = create_model(name)
    zoo.reset_classifier(0)
    whole = zoo.state_dict()
    kept = fx.backbone.state_dict()
    assert set(kept) | set(fx.dropped_keys) == set(whole) and not set(kept) & set(fx.dropped_keys)
    assert sum(p.numel() for n, p in zoo.named_parameters() if n in fx.dropped_keys) == dropped


def test_weights_load_into_the_whole_model_before_the_unused_modules_go(tmp_path):
    """A published file holds the classifier too: it loads strictly into the whole model, and the
    kept weights are the file's, under their own names."""
    from safetensors.torch import save_file

    zoo = create_model("mobilenet_v2")
    with torch.no_grad():
        for p in zoo.parameters():
            p.normal_()
    path = tmp_path / "mobilenet_v2.safetensors"
    save_file({k: v.contiguous() for k, v in zoo.state_dict().items()}, path)
    fx = create_features("mobilenet_v2", weights=str(path), out_strides=(8, 16, 32))
    whole = zoo.state_dict()
    assert all(torch.equal(v, whole[k]) for k, v in fx.backbone.state_dict().items())
    assert "features.18.0.weight" in fx.dropped_keys and "features.18.0.weight" not in fx.backbone.state_dict()


@pytest.mark.parametrize(
    "name,output_stride",
    [("resnet18", 16), ("resnet50", 8), ("mobilenet_v2", 16), ("efficientnet_lite0", 8), ("efficientnet_b0", 16)],
)
def test_output_stride_dilates(name, output_stride):
    fx = create_features(name, out_strides=(8, 16, 32), output_stride=output_stride).eval()
    plain = create_features(name, out_strides=(8, 16, 32)).eval()
    plain.load_state_dict(fx.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, ref = fx(x), plain(x)
    assert fx.strides == [8, min(16, output_stride), min(32, output_stride)]
    assert [m.shape[-1] for m in maps] == [64 // s for s in fx.strides]
    assert fx.channels == plain.channels
    if output_stride == 16:  # the stages before the dilated ones compute the same numbers
        torch.testing.assert_close(maps[0], ref[0]) and torch.testing.assert_close(maps[1], ref[1])
    # the dilated map is not just the strided one upsampled
    assert maps[-1].shape != ref[-1].shape


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(CnnkitError, match="increasing subset"):
        create_features("resnet18", out_strides=(32, 8))
    with pytest.raises(CnnkitError, match="output_stride must be 8, 16 or 32"):
        create_features("resnet18", output_stride=4)
    with pytest.raises(CnnkitError, match="has no feature pyramid in cnnkit"):
        create_features("lenet5")
    with pytest.raises(CnnkitError, match="cannot dilate to output stride 16: give a ResNet") as err:
        create_features("densenet121", output_stride=16)
    assert "output_stride=32" not in str(err.value)  # DeepLab, which dilates, refuses 32: not offered

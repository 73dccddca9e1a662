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


# reference entries of networks the zoo does not have: nothing to compare them with
_NOT_IN_ZOO = {"convnext_tiny", "mnasnet1_0", "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_0"}


def test_every_reference_entry_is_compared(reference_state_dicts):
    """test_model compares a zoo model with the reference of its name: each entry must name a zoo
    model (or be one the zoo does not have), and each model with published weights must have an
    entry, so that no comparison is skipped by a name that does not match."""
    from cnnkit.models.weights import PRETRAINED

    by_reference = {_REFERENCE_NAME.get(n, n): n for n in list_models(None)}
    assert {name for name in reference_state_dicts if name not in by_reference} == _NOT_IN_ZOO
    # vgg13_bn: torchvision publishes weights, the file holds no entry (test_vgg13_bn_by_construction)
    assert {n for n in PRETRAINED if _REFERENCE_NAME.get(n, n) not in reference_state_dicts} == {"vgg13_bn"}


def _vgg_bn_keys(cfg: list, classifier: dict) -> dict:
    """torchvision's VGG-with-batch-norm state dict: Conv2d, BatchNorm2d, ReLU per number, MaxPool per M."""
    keys, i, c_in = {}, 0, 3
    for v in cfg:
        if v == "M":
            i += 1
            continue
        keys |= {f"features.{i}.weight": [v, c_in, 3, 3], f"features.{i}.bias": [v]}
        keys |= {f"features.{i + 1}.{s}": [v] for s in ("weight", "bias", "running_mean", "running_var")}
        keys[f"features.{i + 1}.num_batches_tracked"] = []
        i, c_in = i + 3, v
    return keys | {k: v for k, v in classifier.items() if k.startswith("classifier.")}


def test_vgg13_bn_by_construction(reference_state_dicts):
    """The rule that rebuilds vgg11_bn, vgg16_bn and vgg19_bn from their configurations gives vgg13_bn,
    with torchvision's published 133,053,736 parameters."""
    cfgs = {
        "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "vgg13_bn": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
        "vgg19_bn": [64, 64, "M", 128, 128, "M"] + [256] * 4 + ["M"] + ([512] * 4 + ["M"]) * 2,
    }
    classifier = reference_state_dicts["vgg13"]["state_dict"]
    for name in ("vgg11_bn", "vgg16_bn", "vgg19_bn"):
        assert _vgg_bn_keys(cfgs[name], classifier) == reference_state_dicts[name]["state_dict"], name
    with torch.device("meta"):
        model = create_model("vgg13_bn")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == _vgg_bn_keys(cfgs["vgg13_bn"], classifier)
    assert sum(p.numel() for p in model.parameters()) == 133_053_736


def test_exercise9_and_the_notes_gan_generator_as_keras_counts_them():
    """Géron's exercise 9 net: 320 + 18,496 + 36,928 + 14x14x64 -> 128 (1,605,760) + 1,290 parameters.
    The notes' generator: 100 -> 1024 -> 7*7*128 -> (7, 7, 128) -> 14x14x128 -> 14x14x64 -> 28x28x64
    -> 28x28x1 (the notes' comments say 14*14*128 and 28*28*124 after the 64-filter convolution;
    Keras gives 64); Keras' summary: 6,751,233 trainable parameters and 12,544 non-trainable (the
    batch norm's moving mean and variance, buffers here)."""
    ex9 = create_model("exercise9_mnist")
    assert sum(p.numel() for p in ex9.parameters()) == 320 + 18_496 + 36_928 + 1_605_760 + 1_290 == 1_662_794
    gen = create_model("gan_generator").eval()
    x, shapes = torch.zeros(2, 100), {}
    with torch.no_grad():
        for name, layer in gen.named_children():
            x = layer(x)
            shapes[name] = tuple(x.shape[1:])
    assert [shapes[n] for n in ("dense_1", "dense_2", "reshape_1", "up_sampling2d_1", "conv2d_1")] == [
        (1024,),
        (6272,),
        (128, 7, 7),
        (128, 14, 14),
        (64, 14, 14),
    ]
    assert shapes["up_sampling2d_2"] == (64, 28, 28) and shapes["activation_4"] == (1, 28, 28)
    assert sum(p.numel() for p in gen.parameters()) == 103_424 + 6_428_800 + 12_544 + 204_864 + 1_601 == 6_751_233
    assert gen.batch_normalization_1.running_mean.numel() + gen.batch_normalization_1.running_var.numel() == 12_544


@pytest.mark.parametrize("name, blocks", [("densenet121", (6, 12, 24, 16)), ("densenet201", (6, 12, 48, 32))])
def test_densenet_growth_rate_bottleneck_and_transitions(name, blocks):
    """Huang et al. 2017 (seed 003): layer l of a block sees k0 + k(l - 1) maps (k = 32), a 1x1
    bottleneck to 4k maps precedes each 3x3, and a transition (BN, 1x1 convolution halving the maps,
    2x2 average pooling) follows each block but the last."""
    with torch.device("meta"):
        features = create_model(name).features
    k0 = 64
    for b, layers in enumerate(blocks, start=1):
        block = getattr(features, f"denseblock{b}")
        for l in range(1, layers + 1):  # noqa: E741
            layer = getattr(block, f"denselayer{l}")
            assert (layer.conv1.in_channels, layer.conv1.out_channels) == (k0 + 32 * (l - 1), 128)
            assert (layer.conv2.kernel_size, layer.conv2.out_channels) == ((3, 3), 32)
        k0 += 32 * layers
        if b < len(blocks):
            t = getattr(features, f"transition{b}")
            assert [type(m).__name__ for m in t] == ["BatchNorm2d", "ReLU", "Conv2d", "AvgPool2d"]
            assert (t.conv.kernel_size, t.conv.out_channels, t.pool.kernel_size) == ((1, 1), k0 // 2, 2)
            k0 //= 2
    assert k0 == features.norm5.num_features


def test_the_notes_gan_generators_batch_norm_keeps_keras_statistics():
    # Keras' BatchNormalization(momentum=0.99, epsilon=1e-3): a step moves the moving variance by 1% of
    # the batch's biased variance
    bn = create_model("gan_generator").batch_normalization_1.train()
    x = torch.randn(8, 6272) * 3
    bn(x)
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)
    torch.testing.assert_close(bn.running_var, 0.99 + 0.01 * x.var(0, unbiased=False))

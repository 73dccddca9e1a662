"""The torchvision families of the zoo: exact state dicts, blocks on their own, heads, small inputs.

State-dict checks build the models on the meta device (no memory, no initialisation cost), so
checking every variant of VGG and ResNet against the reference takes a few seconds.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.models import alexnet, densenet, googlenet, inception, resnet, vgg
from cnnkit.models._registry import model_info

BUILDERS = {
    "alexnet": alexnet.alexnet,
    **{
        n: getattr(vgg, n) for n in ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    },
    "googlenet": googlenet.googlenet,
    "inception_v3": inception.inception_v3,
    **{
        n: getattr(resnet, n)
        for n in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]
    },
    **{n: getattr(densenet, n) for n in ["densenet121", "densenet169", "densenet201"]},
}
# the smallest family member, and the smallest square input it accepts
SMALLEST = {"alexnet": 63, "vgg11": 32, "googlenet": 15, "inception_v3": 75, "resnet18": 1, "densenet121": 29}


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return BUILDERS[name](**kw)


def _uninitialised(name: str, **kw) -> nn.Module:
    """The model on the CPU with zero weights and unit running variances, in eval mode.

    For tests of shapes only: the reference initialisation of the big models costs seconds.
    """
    model = _meta(name, **kw).to_empty(device="cpu")
    with torch.no_grad():
        for key, t in model.state_dict().items():
            t.fill_(1 if key.endswith("running_var") else 0)
    return model.eval()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_equals_reference(name, reference_state_dicts):
    model = _meta(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    if name not in reference_state_dicts:
        assert name == "vgg13_bn"  # torchvision has it, the reference file does not
        # vgg13 plus a BatchNorm (weight and bias) after each of its 10 convolutions
        widths = [v for v in vgg.CFGS["vgg13"] if v != "M"]
        assert n_params == reference_state_dicts["vgg13"]["params"] + 2 * sum(widths) == 133_053_736
        return
    ref = reference_state_dicts[name]
    assert n_params == ref["params"]
    assert shapes == ref["state_dict"]  # every key, and every shape


def test_registry_entries():
    assert model_info("inception_v3").input_size == (3, 299, 299)
    assert model_info("vgg16_bn").family == "vgg"
    assert model_info("wide_resnet50_2").family == "resnet"
    assert model_info("densenet201").input_size == (3, 224, 224)


def test_in_channels_changes_only_the_first_conv():
    ref = {k: v.shape for k, v in _meta("densenet121").state_dict().items()}
    one = {k: v.shape for k, v in _meta("densenet121", in_channels=1).state_dict().items()}
    assert [k for k in ref if ref[k] != one[k]] == ["features.conv0.weight"]
    assert one["features.conv0.weight"] == (64, 1, 7, 7)


# --- the blocks on their own ---------------------------------------------------------------


def test_basic_block_against_functional_reference():
    block = resnet.BasicBlock(8, 16, stride=2, downsample=nn.Sequential(resnet.conv1x1(8, 16, 2), nn.BatchNorm2d(16)))
    for bn in (block.bn1, block.bn2, block.downsample[1]):  # non-trivial eval-mode statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(2, 8, 9, 9)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    out = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
    out = bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
    expected = F.relu(out + bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1]))
    with torch.no_grad():
        got = block(x)
    assert got.shape == (2, 16, 5, 5)
    torch.testing.assert_close(got, expected)


def test_bottleneck_with_zeroed_last_bn_is_relu_of_input():
    block = resnet.Bottleneck(64, 16)  # 64 in, 16 * 4 out: identity shortcut
    nn.init.zeros_(block.bn3.weight)
    x = torch.randn(2, 64, 7, 7)
    for mode in (block.train, block.eval):
        mode()
        torch.testing.assert_close(block(x.clone()), F.relu(x), rtol=0, atol=0)


def test_bottleneck_shapes_and_resnext_width():
    down = nn.Sequential(resnet.conv1x1(256, 512, 2), nn.BatchNorm2d(512))
    block = resnet.Bottleneck(256, 128, stride=2, downsample=down, groups=32, base_width=4)
    assert block.conv2.weight.shape == (256, 8, 3, 3)  # width int(128 * 4 / 64) * 32 = 256, in 32 groups
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)  # v1.5: stride on the 3x3
    assert block(torch.randn(1, 256, 14, 14)).shape == (1, 512, 7, 7)
    with pytest.raises(CnnkitError, match="groups=32"):
        resnet.BasicBlock(64, 64, groups=32)


def test_zero_init_residual_zeroes_every_last_bn():
    model = resnet.resnet18(zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for layer in (model.layer1, model.layer4) for b in layer)


def test_googlenet_inception_module():
    block = googlenet.Inception(192, 64, 96, 128, 16, 32, 32)
    assert block.branch3[1].conv.kernel_size == (3, 3)  # torchvision's "5x5" branch is 3x3
    assert block.branch1.bn.eps == 0.001
    assert block(torch.randn(1, 192, 7, 7)).shape == (1, 256, 7, 7)


@pytest.mark.parametrize(
    "block, c_in, out_shape",
    [
        (lambda: inception.InceptionA(192, pool_features=32), 192, (1, 256, 9, 9)),
        (lambda: inception.InceptionB(288), 288, (1, 768, 4, 4)),
        (lambda: inception.InceptionC(768, channels_7x7=128), 768, (1, 768, 9, 9)),
        (lambda: inception.InceptionD(768), 768, (1, 1280, 4, 4)),
        (lambda: inception.InceptionE(1280), 1280, (1, 2048, 9, 9)),
    ],
)
def test_inception_v3_modules(block, c_in, out_shape):
    with torch.no_grad():
        assert block()(torch.randn(1, c_in, 9, 9)).shape == out_shape


def test_dense_layer_block_transition():
    layer = densenet._DenseLayer(64, growth_rate=32, bn_size=4)
    parts = [torch.randn(2, 40, 8, 8), torch.randn(2, 24, 8, 8)]
    out = layer(parts)
    assert out.shape == (2, 32, 8, 8)
    torch.testing.assert_close(layer(torch.cat(parts, 1)), out)  # a list is concatenated first

    block = densenet._DenseBlock(3, 64, bn_size=4, growth_rate=32)
    x = torch.randn(2, 64, 8, 8)
    y = block(x)
    assert y.shape == (2, 64 + 3 * 32, 8, 8)
    torch.testing.assert_close(y[:, :64], x)  # the input is passed through, concatenated
    assert list(block.keys()) == ["denselayer1", "denselayer2", "denselayer3"]

    assert densenet._Transition(160, 80)(y).shape == (2, 80, 4, 4)


# --- whole models: forward, heads, small inputs ---------------------------------------------


@pytest.mark.parametrize("name, size", [("googlenet", 224), ("inception_v3", 299)])
def test_forward_at_default_size(name, size):
    model = BUILDERS[name]().eval()  # the reference initialisation, really run
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all() and float(out.std()) > 0


def test_forward_is_head_of_features():
    model = resnet.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 2, 2)
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, feats.mean((2, 3)))
        torch.testing.assert_close(model(x), model.fc(pooled))


@pytest.mark.parametrize(
    "name, feats, pooled",
    [
        ("alexnet", (256, 6, 6), 4096),
        ("vgg16_bn", (512, 7, 7), 4096),
        ("googlenet", (1024, 7, 7), 1024),
        ("inception_v3", (2048, 5, 5), 2048),
        ("resnet50", (2048, 7, 7), 2048),
        ("densenet169", (1664, 7, 7), 1664),
    ],
)
def test_features_and_pre_logits_shapes(name, feats, pooled):
    model = _meta(name)  # shapes propagate on the meta device without computing anything
    f = model.forward_features(torch.empty(2, 3, 224, 224, device="meta"))  # inception: 5x5 at 224
    assert f.shape == (2, *feats)
    assert model.forward_head(f, pre_logits=True).shape == (2, pooled) and model.num_features == pooled
    assert model.forward_head(f).shape == (2, 1000)


def test_googlenet_transform_input_matches_torchvision_formula():
    x = torch.randn(2, 3, 5, 5)
    chans = [
        x[:, c : c + 1] * (s / 0.5) + (m - 0.5) / 0.5
        for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    ]
    torch.testing.assert_close(googlenet.inception_input_transform(x), torch.cat(chans, 1), rtol=0, atol=0)
    model = _meta("googlenet", transform_input=True)
    assert model.transform_input and not _meta("googlenet").transform_input
    y = model.forward_features(torch.empty(1, 3, 224, 224, device="meta"))
    assert y.shape == (1, 1024, 7, 7)
    for name in ("googlenet", "inception_v3"):
        with pytest.raises(CnnkitError, match="in_channels=1"):
            _meta(name, in_channels=1, transform_input=True)


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "googlenet", "inception_v3", "resnet18", "densenet121"])
def test_reset_classifier(name):
    model = _meta(name, num_classes=10)
    assert model.num_classes == 10
    x = torch.empty(1, 3, 299, 299, device="meta")
    assert model(x).shape == (1, 10)
    model.reset_classifier(7)
    assert model(x).shape == (1, 7) and model.num_classes == 7
    model.reset_classifier(0)  # no classifier: the pre-logits features
    assert model(x).shape == (1, model.num_features)
    with pytest.raises(CnnkitError, match="num_classes=-1"):
        model.reset_classifier(-1)


def test_reset_classifier_initialises_as_the_reference():
    model = vgg.VGG([8, "M"], num_classes=4)  # a variant is a row of data; a tiny one here
    model.reset_classifier(500)
    fc = model.classifier[-1]
    assert fc.weight.shape == (500, 4096) and float(fc.bias.detach().abs().sum()) == 0
    assert abs(float(fc.weight.detach().std()) - 0.01) < 0.001  # torchvision: normal(0, 0.01)


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_grayscale_at_smallest_size(name):
    size = SMALLEST[name]
    model = _uninitialised(name, num_classes=5, in_channels=1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 5)
        if size > 1:  # one pixel less is too small
            with pytest.raises(RuntimeError):
                model(torch.randn(2, 1, size - 1, size - 1))


@pytest.mark.parametrize("kw, match", [({"num_classes": -3}, "num_classes=-3"), ({"in_channels": 0}, "in_channels=0")])
def test_bad_arguments_raise_cnnkit_error(kw, match):
    with pytest.raises(CnnkitError, match=match):
        _meta("resnet18", **kw)


@pytest.mark.parametrize(
    "make, c_in",
    [
        (lambda: resnet.resnet18(num_classes=3), 3),
        (lambda: densenet._DenseBlock(2, 16, bn_size=4, growth_rate=8), 16),
        (lambda: googlenet.Inception(16, 8, 8, 8, 4, 4, 4), 16),
        (lambda: inception.InceptionE(16), 16),
    ],
)
def test_train_mode_backward(make, c_in):
    # the in-place ReLUs must not clobber a tensor autograd still needs
    module = make().train()
    module(torch.randn(2, c_in, 32, 32)).square().mean().backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0

"""cnnkit.explain: Grad-CAM by hand, sanity checks, localisation on MNIST canvases, patterns, hooks, CLI."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.explain import (
    feature_maps,
    filter_patterns,
    filters,
    grad_cam,
    last_conv_layer,
    layer_names,
    mean_activation,
    recording,
    resolve_layer,
    saliency,
)
from cnnkit.explain.hooks import default_cam_layer, guided_relus

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- Grad-CAM by hand


def hand_net() -> nn.Sequential:
    """conv 2x2 stride 2 (ch0 = block sum, ch1 = block's top-left pixel) -> ReLU -> GAP -> linear."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 2, stride=2, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [0.0, 0.0]]]]))
        net[4].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0]]))
    return net


HAND_X = torch.tensor([[[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 0.0, 1.0], [0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 2.0, 2.0]]])


def test_grad_cam_matches_a_hand_computation():
    # A0 = block sums [[10, 1], [1, 8]], A1 = top-left pixels [[1, 0], [0, 2]]  (both >= 0: ReLU is identity)
    # GAP: (5, 0.75); y0 = 5 - 2 * 0.75 = 3.5, y1 = 0.5 * 5 + 0.75 = 3.25 -> class 0 is predicted
    # dy_c/dA_k[i, j] = W[c, k] / 4, so alpha = W[c] / 4
    # class 0: alpha = (0.25, -0.5): cam = ReLU(0.25 A0 - 0.5 A1) = [[2, 0.25], [0.25, 1]] -> / 2
    # bilinear 2x2 -> 4x4 (align_corners=False) samples at -0.25, 0.25, 0.75, 1.25: rows
    # (a, 0.75a + 0.25b, 0.25a + 0.75b, b), then the same down the columns
    expected0 = torch.tensor(
        [
            [1.0, 0.78125, 0.34375, 0.125],
            [0.78125, 0.640625, 0.359375, 0.21875],
            [0.34375, 0.359375, 0.390625, 0.40625],
            [0.125, 0.21875, 0.40625, 0.5],
        ]
    )
    net = hand_net()
    assert default_cam_layer(net, HAND_X[None]) == "1"  # the conv, followed through its ReLU
    heat, cls = grad_cam(net, HAND_X)
    assert cls == 0
    torch.testing.assert_close(heat, expected0, rtol=0, atol=1e-6)
    # at the conv itself (before the ReLU) the gradient is masked where A = 0 (ReLU'(0) = 0):
    # A1 is positive at 2 of 4 positions, so alpha = (0.25, -2 / 4 * 2 / 4) = (0.25, -0.25)
    # cam = ReLU(0.25 A0 - 0.25 A1) = [[2.25, 0.25], [0.25, 1.5]] -> / 2.25
    heat_conv, _ = grad_cam(net, HAND_X, layer="0")
    torch.testing.assert_close(heat_conv, upsample_by_hand([[1.0, 1 / 9], [1 / 9, 2 / 3]]), rtol=0, atol=1e-6)
    # class 1 at the ReLU: alpha = (0.5 / 4, 1 / 4): cam = [[1.5, 0.125], [0.125, 1.5]] -> / 1.5
    heat1, cls1 = grad_cam(net, HAND_X, target_class=1)
    assert cls1 == 1
    torch.testing.assert_close(heat1, upsample_by_hand([[1.0, 1 / 12], [1 / 12, 1.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(upsample_by_hand([[1.0, 0.125], [0.125, 0.5]]), expected0)


def upsample_by_hand(m) -> torch.Tensor:
    """2x2 -> 4x4 bilinear, align_corners=False: each line (a, b) becomes (a, .75a + .25b, .25a + .75b, b)."""

    def line(a, b):
        return [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]

    rows = [line(*r) for r in m]
    return torch.tensor([line(rows[0][j], rows[1][j]) for j in range(4)]).T


def test_grad_cam_batch_equals_single_images_and_inplace_relu_changes_nothing():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )
    twin = copy.deepcopy(net)
    twin[1].inplace = twin[4].inplace = False
    x = torch.rand(3, 3, 12, 10)
    heats, classes = grad_cam(net, x)
    assert heats.shape == (3, 12, 10) and classes.shape == (3,)
    assert float(heats.min()) >= 0 and torch.allclose(heats.flatten(1).amax(1), torch.ones(3))
    for i in range(3):
        one, k = grad_cam(net, x[i])
        assert k == int(classes[i])
        torch.testing.assert_close(one, heats[i], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_cam(twin, x)[0], heats, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- saliency


def test_saliency_vanilla_and_guided_against_autograd():
    torch.manual_seed(1)
    conv1, conv2, fc = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
    net = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    # reference: the same forward by hand, gradients by autograd, guided ReLUs by hand
    h1 = conv1(x)
    a1 = h1.relu()
    h2 = conv2(a1)
    a2 = h2.relu()
    y = fc(a2.mean((2, 3)))[0, 2]
    (gx,) = torch.autograd.grad(y, x, retain_graph=True)
    ref_vanilla = gx.abs()[0, 0] / gx.abs().max()
    g_a2 = torch.autograd.grad(y, a2, retain_graph=True)[0].clamp(min=0)
    g_h2 = g_a2 * (h2 > 0)
    g_a1 = torch.autograd.grad(h2, a1, g_h2, retain_graph=True)[0].clamp(min=0)
    g_h1 = g_a1 * (h1 > 0)
    (g_guided,) = torch.autograd.grad(h1, x, g_h1)
    ref_guided = g_guided.abs()[0, 0] / g_guided.abs().max()

    vanilla, k = saliency(net, x[0].detach(), target_class=2)
    guided, _ = saliency(net, x[0].detach(), target_class=2, method="guided")
    assert k == 2
    torch.testing.assert_close(vanilla, ref_vanilla, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guided, ref_guided, rtol=1e-5, atol=1e-6)
    assert (guided - vanilla).abs().max() > 1e-3  # the two methods do differ here
    with pytest.raises(CnnkitError, match="unknown saliency method 'smooth'"):
        saliency(net, x[0].detach(), method="smooth")


class Rectified(nn.Module):
    """conv -> ``first`` -> conv -> ``second`` -> GAP -> linear, the rectifiers called as given."""

    def __init__(self, first, second):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
        self.first, self.second = first, second

    def forward(self, x):
        return self.fc(self.second(self.conv2(self.first(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (F.relu, nn.ReLU6(inplace=True)),
        (torch.relu_, F.relu6),
        (lambda t: t.relu(), lambda t: F.hardtanh(t, 0.0, 6.0)),
        (lambda t: F.relu(t, inplace=True), nn.Hardtanh(0.0, 6.0, inplace=True)),
        (lambda t: t.relu_(), lambda t: F.relu6(t, inplace=True)),
    ],
    ids=["F.relu+ReLU6", "relu_+F.relu6", "Tensor.relu+hardtanh", "inplace+Hardtanh", "Tensor.relu_+relu6_"],
)
def test_guided_saliency_guides_functional_rectifiers_and_relu6_against_a_hand_computation(first, second):
    """Only nn.ReLU modules were guided: a network whose rectifiers are functional calls or ReLU6 was
    refused. Each form is guided: the positive part of the gradient at the rectifier's output, masked
    where its input was inactive (below 0, and for ReLU6 above 6)."""
    torch.manual_seed(5)
    net = Rectified(first, second)
    with torch.no_grad():
        net.conv2.weight.mul_(8)  # some second-layer inputs above 6: ReLU6's top is crossed
    x = (4 * torch.rand(1, 1, 8, 8)).requires_grad_(True)
    # reference: the same forward by hand, gradients by autograd, the guided rule by hand
    h1 = net.conv1(x)
    a1 = h1.clamp(min=0)
    h2 = net.conv2(a1)
    a2 = h2.clamp(0, 6)
    y = net.fc(a2.mean((2, 3)))[0, 2]
    assert (h2 > 6).any() and (h2 < 0).any()
    g_y = torch.autograd.grad(y, a2, retain_graph=True)[0]

    def by_hand(top=True, guide_second=True, guide_first=True):
        g_a2 = g_y.clamp(min=0) if guide_second else g_y
        g_h2 = g_a2 * ((h2 > 0) & (h2 < 6) if top else (h2 > 0))
        g_a1 = torch.autograd.grad(h2, a1, g_h2, retain_graph=True)[0]
        g_a1 = g_a1.clamp(min=0) if guide_first else g_a1
        (g,) = torch.autograd.grad(h1, x, g_a1 * (h1 > 0), retain_graph=True)
        return g.abs()[0, 0] / g.abs().max()

    guided, _ = saliency(net, x[0].detach(), target_class=2, method="guided")
    torch.testing.assert_close(guided, by_hand(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saliency(net, x[0].detach(), target_class=2)[0], by_hand(True, False, False))
    # each part of the rule changes the map here: the top of ReLU6, and the guiding of either rectifier
    for part in ({"top": False}, {"guide_second": False}, {"guide_first": False}):
        assert (guided - by_hand(**part)).abs().max() > 0.05, part
    with guided_relus(net) as guided_calls:
        net(x)
    assert guided_calls == {"ReLU": 1, "ReLU6": 1}


@pytest.mark.parametrize("kind", ["prelu", "leaky"])
def test_a_leaky_rectifier_made_of_relu_calls_keeps_its_own_gradient_under_guided_saliency(kind):
    """Keras' PReLU and ReLU(negative_slope) are computed as relu(x) - a * relu(-x): guided
    backpropagation defines no rule for a leaky rectifier, so their relu calls are not guided; the
    map equals that of the same network with torch's own PReLU / LeakyReLU, the ReLU after it guided."""
    from cnnkit.models.keras import PReLU, ReLU

    torch.manual_seed(3)
    if kind == "prelu":
        keras_layer, torch_layer = PReLU((3, 1, 1)), nn.PReLU(3)
        with torch.no_grad():
            keras_layer.alpha.copy_(torch.tensor([0.1, 0.3, -0.2]).view(3, 1, 1))
            torch_layer.weight.copy_(keras_layer.alpha.flatten())
    else:
        keras_layer, torch_layer = ReLU(negative_slope=0.2), nn.LeakyReLU(0.2)
    net = Rectified(keras_layer, nn.ReLU())
    ref = Rectified(torch_layer, nn.ReLU())
    ref.load_state_dict(
        {
            k.replace("first.alpha", "first.weight"): v.flatten() if "alpha" in k else v
            for k, v in net.state_dict().items()
        }
    )
    x = torch.randn(1, 8, 8)
    torch.testing.assert_close(net(x[None]), ref(x[None]))
    guided, _ = saliency(net, x, target_class=1, method="guided")
    torch.testing.assert_close(guided, saliency(ref, x, target_class=1, method="guided")[0], rtol=1e-5, atol=1e-6)
    with guided_relus(net) as calls:
        net(x[None])
    assert calls == {"ReLU": 1}  # the second layer's; the leaky layer's two relu calls are left as they are


def _guided_by_backward_hooks(net: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Guided saliency by another road: every rectifier made an nn.ReLU / nn.ReLU6 module (googlenet's
    functional relu moved into one), each clamping its input gradient in a full backward hook
    (clamping ``mask * grad`` at 0 is masking the clamped gradient)."""
    from cnnkit.models.googlenet import BasicConv2d

    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, BasicConv2d):  # F.relu(bn(conv(x))) as a module: the same function
            m.act = nn.ReLU()
            m.forward = lambda t, m=m: m.act(m.bn(m.conv(t)))
    rectifiers = [m for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    for m in rectifiers:
        m.inplace = False  # a full backward hook refuses an in-place output
        m.register_full_backward_hook(lambda mod, g_in, g_out: (g_in[0].clamp(min=0),))
    x = x[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x)[0, k], x)
    sal = g.abs().amax(1)[0]
    return sal / sal.max(), len(rectifiers)


@pytest.mark.parametrize(("name", "rectifiers"), [("googlenet", 57), ("mobilenet_v2", 35), ("efficientnet_lite0", 33)])
def test_guided_saliency_of_zoo_networks_equals_a_backward_hook_reference(name, rectifiers):
    """googlenet (functional relu), mobilenet_v2 and efficientnet_lite0 (ReLU6 modules) were refused;
    at random weights their guided maps equal those of backward hooks on module rectifiers, every
    rectifier call is guided, and the maps differ from vanilla saliency. lenet5's scaled tanh is no
    rectifier: it is still refused."""
    from cnnkit.models import create_model

    torch.manual_seed(0)
    net = create_model(name).eval()
    x = torch.rand(3, 64, 64)
    guided, k = saliency(net, x, method="guided")
    vanilla, _ = saliency(net, x, k)
    ref, n = _guided_by_backward_hooks(net, x, k)
    assert n == rectifiers
    torch.testing.assert_close(guided, ref, rtol=1e-4, atol=1e-5)
    assert guided.max() == 1 and (guided - vanilla).abs().max() > 0.1
    with guided_relus(net) as calls:
        net(x[None].requires_grad_(True))
    assert sum(calls.values()) == rectifiers
    with pytest.raises(CnnkitError, match=r"and LeNet5 runs none \(tanh, SiLU, LeakyReLU"):
        saliency(create_model("lenet5"), torch.rand(1, 32, 32), method="guided")


def test_saliency_and_grad_cam_peak_at_1_however_small_the_gradients():
    """Maps were divided by max(peak, 1e-12): an untrained googlenet's input gradients (1e-14) drew a
    saliency map whose peak was 0.01, almost black, where the docstring promises division by the max."""
    net = hand_net()
    with torch.no_grad():
        net[4].weight.mul_(1e-15)  # the class scores, and every gradient, 1e-15 of the hand network's
    sal, _ = saliency(net, HAND_X, target_class=0)
    cam, _ = grad_cam(net, HAND_X, target_class=0)
    assert sal.max() == 1 and cam.max() == 1
    small = hand_net()
    torch.testing.assert_close(sal, saliency(small, HAND_X, target_class=0)[0])
    torch.testing.assert_close(cam, grad_cam(small, HAND_X, target_class=0)[0])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_saliency_says_why_a_torchscript_part_refuses_the_image():
    # TorchScript gives the reason on the last line of its message, after its own traceback
    net = nn.Sequential(torch.jit.script(nn.Conv2d(3, 4, 3)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(CnnkitError) as err:
        saliency(net.eval(), torch.rand(4, 16, 16))
    assert str(err.value) == (
        "the model does not accept an input of shape (1, 4, 16, 16) (The following operation failed in the "
        "TorchScript interpreter. RuntimeError: Given groups=1, weight of size [4, 3, 3, 3], expected "
        "input[1, 4, 16, 16] to have 3 channels, but got 4 channels instead); resize the image to the size "
        "the model was built for"
    )


# ----------------------------------------------------------------------------- feature maps, filters


def test_feature_maps_and_filters_shapes_and_values():
    net = hand_net()
    maps = feature_maps(net, HAND_X)
    assert list(maps) == ["0"] and maps["0"].shape == (2, 2, 2)
    torch.testing.assert_close(maps["0"], torch.tensor([[[10.0, 1.0], [1.0, 8.0]], [[1.0, 0.0], [0.0, 2.0]]]))
    both = feature_maps(net, HAND_X, layers=["0", "2"])
    assert both["2"].shape == (2, 1, 1)
    torch.testing.assert_close(both["2"].flatten(), torch.tensor([5.0, 0.75]))
    w = filters(net, "0")
    assert w.shape == (2, 1, 2, 2) and torch.equal(w, net[0].weight.detach())
    w.zero_()  # a copy: the model keeps its weights
    assert net[0].weight.abs().sum() == 5
    with pytest.raises(CnnkitError, match="is a Linear, not a Conv2d"):
        filters(net, "4")
    with pytest.raises(CnnkitError, match=r"\(1, C, h, w\)"):
        feature_maps(net, HAND_X, layers=["4"])


def test_unknown_layer_and_class_out_of_range_are_one_line_errors():
    net = hand_net()
    assert layer_names(net) == ["0", "1", "2", "3", "4"]  # the conv first
    assert last_conv_layer(net) == "0"
    assert resolve_layer(net, "4") is net[4]
    with pytest.raises(CnnkitError) as err:
        grad_cam(net, HAND_X, layer="conv9")
    msg = str(err.value)
    assert "\n" not in msg and "'conv9'" in msg and "valid layers (convolutions first): 0, 1, 2, 3, 4" in msg
    with pytest.raises(CnnkitError, match=r"class index 7 is out of range: the model has 2 classes \(0..1\)"):
        grad_cam(net, HAND_X, target_class=7)
    with pytest.raises(CnnkitError, match="out of range"):
        saliency(net, HAND_X, target_class=-1)
    with pytest.raises(CnnkitError, match="no convolutional layer"):
        last_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


# ----------------------------------------------------------------------------- hooks clean up


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_and_modes_restored_even_when_the_forward_raises():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), Boom(), nn.Flatten(), nn.Linear(2, 2))
    net.train()
    net[1].eval()  # mixed modes must come back exactly
    net[0].bias.requires_grad_(False)  # and so must mixed requires_grad flags
    modes = [m.training for m in net.modules()]
    flags = [p.requires_grad for p in net.parameters()]
    x = torch.rand(1, 6, 6)
    calls = [
        lambda: grad_cam(net, x, layer="0"),
        lambda: saliency(net, x, method="guided"),
        lambda: saliency(net, x),
        lambda: feature_maps(net, x),
        lambda: filter_patterns(net, "3", size=6, steps=2),
    ]
    for call in calls:
        with pytest.raises((RuntimeError, CnnkitError), match="boom"):
            call()
        assert hook_counts(net) == 0
        assert [m.training for m in net.modules()] == modes
        assert [p.requires_grad for p in net.parameters()] == flags
        assert all(p.grad is None for p in net.parameters())
    with pytest.raises(KeyError):
        with recording(net, ["0", "2"], grads=True), guided_relus(net) as guided:
            net[:3](x[None])  # conv, batch norm, ReLU: one rectifier guided
            assert guided == {"ReLU": 1} and hook_counts(net) == 2
            raise KeyError("inside the block")
    assert hook_counts(net) == 0
    # the torch-function mode that guides rectifiers is gone too: a negative gradient goes back through relu
    t = torch.ones(3, requires_grad=True)
    (g,) = torch.autograd.grad((F.relu(t) * -2).sum(), t)
    assert torch.equal(g, torch.full((3,), -2.0))


def test_explaining_a_model_in_train_mode_leaves_it_in_train_mode_and_grads_untouched():
    net = hand_net().train()
    net[4].weight.grad = torch.full((2, 2), 7.0)
    grad_cam(net, HAND_X)
    saliency(net, HAND_X, method="guided")
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(net[4].weight.grad, torch.full((2, 2), 7.0)) and net[0].weight.grad is None


# ----------------------------------------------------------------------------- a GAP classifier on MNIST


def gap_net() -> nn.Sequential:
    """Bias-free convs + ReLU + global average pooling: a blank canvas gives exactly zero activations."""
    conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1, bias=False)  # noqa: E731
    return nn.Sequential(
        conv(1, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(16, 32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(32, 64),
        nn.ReLU(),
        conv(64, 64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10, bias=False),
    )


@pytest.fixture(scope="module")
def mnist(data_dir):
    from cnnkit.data.idx import read_idx

    folder = data_dir / "mnist"
    train = (
        read_idx(folder / "train-images-idx3-ubyte.gz")[:6000],
        read_idx(folder / "train-labels-idx1-ubyte.gz")[:6000],
    )
    test = (
        read_idx(folder / "t10k-images-idx3-ubyte.gz")[:1000],
        read_idx(folder / "t10k-labels-idx1-ubyte.gz")[:1000],
    )
    return train, test


@pytest.fixture(scope="module")
def trained(mnist, one_thread):
    """Two epochs on 6,000 28x28 digits, shifted by up to 3 px per batch (a second or two on one core)."""
    (images, labels), (test_images, test_labels) = mnist
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = gap_net()
    x, y = images[:, None].float() / 255, labels.long()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(2):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            shift = torch.randint(-3, 4, (2,), generator=gen).tolist()  # MNIST has a 4-px blank border
            loss = F.cross_entropy(net(x[b].roll(shift, dims=(2, 3))), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(test_images[:, None].float() / 255).argmax(1) == test_labels.long()).float().mean()
    assert acc > 0.8, f"the tiny GAP net only reached {acc:.3f} test accuracy"
    return net


def canvases(digits: torch.Tensor, size: int = 84, seed: int = 1):
    """Each 28x28 digit pasted at a random position on a blank size x size canvas; returns (x, top-left)."""
    gen = torch.Generator().manual_seed(seed)
    n = digits.shape[0]
    corner = torch.randint(0, size - 28 + 1, (n, 2), generator=gen)
    x = torch.zeros(n, 1, size, size)
    for i, (r, c) in enumerate(corner.tolist()):
        x[i, 0, r : r + 28, c : c + 28] = digits[i].float() / 255
    return x, corner


def test_grad_cam_localises_digits_pasted_on_a_blank_canvas(trained, mnist):
    _, (test_images, test_labels) = mnist
    x, corner = canvases(test_images[:200])
    heat, classes = grad_cam(trained, x, target_class=test_labels[:200])
    assert heat.shape == (200, 84, 84) and torch.equal(classes, test_labels[:200].long())
    peak = heat.flatten(1).argmax(1)
    row, col = peak // 84, peak % 84
    inside = (row >= corner[:, 0]) & (row < corner[:, 0] + 28) & (col >= corner[:, 1]) & (col < corner[:, 1] + 28)
    assert inside.float().mean() >= 0.90, f"Grad-CAM peak inside the digit's box for {inside.float().mean():.1%}"
    # the heat of the predicted class is concentrated on the digit too
    mask = torch.zeros_like(heat, dtype=torch.bool)
    for i, (r, c) in enumerate(corner.tolist()):
        mask[i, r : r + 28, c : c + 28] = True
    share = (heat * mask).flatten(1).sum(1) / heat.flatten(1).sum(1).clamp(min=1e-12)
    assert share.mean() > 0.8


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (N, H, W) -> (N,)."""
    ra = a.flatten(1).argsort(1).argsort(1).float()
    rb = b.flatten(1).argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def test_model_randomisation_changes_the_grad_cam_map(trained, mnist):
    # Adebayo et al. 2018 (https://arxiv.org/abs/1810.03292): a map that survives randomising the
    # weights explains the input, not the model.
    _, (test_images, test_labels) = mnist
    x, y = test_images[:50, None].float() / 255, test_labels[:50]
    original, _ = grad_cam(trained, x, target_class=y)
    assert spearman(original, grad_cam(trained, x, target_class=y)[0]).mean() > 0.999  # deterministic
    gen = torch.Generator().manual_seed(1)
    for cascade in ("classifier", "all layers"):
        rand = copy.deepcopy(trained)
        layers = [m for m in rand.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for m in layers[-1:] if cascade == "classifier" else layers:
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.weight.std())
        randomised, _ = grad_cam(rand, x, target_class=y)
        rho = spearman(original, randomised).mean()
        assert rho < 0.5, f"randomising the {cascade} left the maps rank-correlated ({rho:.2f})"
        assert (original - randomised).abs().mean() > 0.1


def test_filter_patterns_raise_their_filters_mean_activation_tenfold(trained):
    for layer in ("4", "9"):  # the ReLUs after the second and the last convolutions
        channels = list(range(6))
        start = filter_patterns(trained, layer, channels=channels, size=28, steps=0)
        patterns = filter_patterns(trained, layer, channels=channels, size=28)
        assert patterns.shape == (6, 1, 28, 28)
        before = mean_activation(trained, layer, start, channels)
        after = mean_activation(trained, layer, patterns, channels)
        alive = before > 0  # a channel that is zero everywhere on the noise has no gradient to climb
        assert alive.sum() >= 2
        gain = after[alive] / before[alive]
        assert (gain >= 10).all(), f"layer {layer}: gains {gain.tolist()}"
    again = filter_patterns(trained, "4", channels=[3], size=28, steps=5)
    assert torch.equal(again, filter_patterns(trained, "4", channels=[3], size=28, steps=5))  # seeded
    assert not torch.equal(again, filter_patterns(trained, "4", channels=[3], size=28, steps=5, seed=1))
    with pytest.raises(CnnkitError, match=r"channel\(s\) \[99\] out of range: layer '4' has 32 channels"):
        filter_patterns(trained, "4", channels=[99], size=28)


# ----------------------------------------------------------------------------- the CLI


def make_run(folder, data_dir=None):
    """A run folder as `cnnkit train` writes it: an (untrained) mnist_fast checkpoint and metrics.csv."""
    from cnnkit.engine.runfolder import (
        FORMAT,
        MODEL_FILE,
        save_model,
        write_metrics_csv,
    )
    from cnnkit.models import create_model
    from cnnkit.models.deploy import Classifier

    torch.manual_seed(0)
    clf = Classifier(
        create_model("mnist_fast", num_classes=10, in_channels=1),
        [0.13],
        [0.31],
        [str(k) for k in range(10)],
        (1, 28, 28),
        tta="shift",
    )
    info = {
        "format": FORMAT,
        "model": "mnist_fast",
        "num_classes": 10,
        "input_size": [1, 28, 28],
        "classes": clf.classes,
        "mean": [0.13],
        "std": [0.31],
        "tta": "shift",
        "dataset": {"name": "mnist", "dark_background": True},
        "config": {"data_dir": str(data_dir) if data_dir else None},
    }
    folder.mkdir()
    save_model(folder / MODEL_FILE, clf, info)
    rows = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_acc": 1 - 0.1 / e,
            "val_loss": 1.2 / e,
            "val_acc": 1 - 0.2 / e,
            "lr": 0.01,
            "seconds": 1.5,
        }
        for e in (1, 2, 3)
    ]
    write_metrics_csv(folder / "metrics.csv", rows)
    return folder


def write_png(path, size, mode):
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode).save(path)
    return path


def test_cli_explain_on_a_checkpoint_all_methods(tmp_path, capsys):
    from cnnkit.cli import main

    run = make_run(tmp_path / "run")
    image = write_png(tmp_path / "digit.png", (28, 28), "RGB")  # colour: converted to the model's grey
    for method in ("gradcam", "saliency", "featuremaps", "filters", "patterns"):
        out = tmp_path / f"{method}.png"
        extra = ["--channels", "0", "1", "--steps", "3"] if method == "patterns" else []
        assert main(["explain", str(run), str(image), "--method", method, "--out", str(out), *extra]) == 0
        from PIL import Image

        with Image.open(out) as im:
            assert im.format == "PNG" and im.size[0] > 300
        assert f"-> {out}" in capsys.readouterr().out
    assert main(["explain", str(run), str(image), "--class", "3", "--out", str(tmp_path / "c3.png")]) == 0
    assert "gradcam: class 3 (3)" in capsys.readouterr().out


def test_cli_explain_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from cnnkit.cli import main

    run = make_run(tmp_path / "run")
    image = write_png(tmp_path / "big.png", (40, 36), "L")
    small = write_png(tmp_path / "small.png", (28, 28), "L")
    cases = [
        (
            ["explain", str(run), str(small), "--layer", "nope"],
            "unknown layer 'nope'; valid layers (convolutions first):",
        ),
        (
            ["explain", str(run), str(small), "--class", "10"],
            "class index 10 is out of range: the model has 10 classes",
        ),
        (["explain", str(run), str(tmp_path / "missing.png")], "image not found"),
        (["explain", "no_such_model", str(small)], "unknown model name 'no_such_model'"),
        (["explain", "lenet5", str(small)], "does not accept a 28x28 image"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # a fully convolutional checkpoint takes any size; --resize gives the built-for size
    assert main(["explain", "lenet5", str(image), "--resize", "--out", str(tmp_path / "l.png")]) == 0
    assert "note: lenet5 has random weights, so this shows an untrained network" in capsys.readouterr().out
    assert main(["explain", str(run), str(image), "--out", str(tmp_path / "r.png")]) == 0
    assert "note:" not in capsys.readouterr().out  # a trained run's own weights


def test_plot_run_curves_confusion_and_mistakes(tmp_path, data_dir, capsys):
    from cnnkit.cli import main
    from cnnkit.tasks.classify.plot import plot_run

    run = make_run(tmp_path / "run", data_dir)
    written, notes = plot_run(run, max_images=300)
    assert [p.name for p in written] == ["curves.png", "confusion_test.png", "errors_test.png"]
    assert notes == ["confusion matrix and mistakes on the first 300 images of mnist/test"]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.csv").write_text((run / "metrics.csv").read_text())
    assert main(["plot", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "note: curves only" in out and sorted(p.name for p in bare.iterdir()) == ["curves.png", "metrics.csv"]
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.csv" in capsys.readouterr().err


def test_plot_into_a_run_it_cannot_write_names_no_flag_it_lacks(tmp_path, capsys, monkeypatch):
    """`cnnkit plot RUN` draws into the run folder; refused there, it says so rather than "choose
    another --out" (plot has no --out), and for a folder in the way of curves.png as well."""
    import os

    from cnnkit.cli import main
    from cnnkit.errors import IN_RUN

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,seconds,train_loss\n1,1.0,0.5\n")
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: False if str(path) == str(run) else access(path, mode, **kw)
    )
    assert main(["plot", str(run)]) == 2
    assert capsys.readouterr().err.strip() == f"cnnkit plot: error: cannot write in {run} (permission denied); {IN_RUN}"
    monkeypatch.undo()
    (run / "curves.png").mkdir()
    assert main(["plot", str(run)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"cannot write {run / 'curves.png'}: it is a folder; {IN_RUN}")


class SharedReLU(nn.Module):
    """Two convolutions that share one ``nn.ReLU`` module (as torchvision's ResNet blocks do), or,
    with ``shared=False``, a second ReLU module of its own."""

    def __init__(self, shared: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.relu2 = self.relu if shared else nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu2(self.conv2(x))
        return self.head(x.mean((2, 3)))


def test_grad_cam_at_a_module_called_twice_pairs_the_last_calls_activation_and_gradient():
    torch.manual_seed(0)
    shared = SharedReLU(shared=True)
    with torch.no_grad():
        shared.head.weight.abs_()  # every channel counts for every class: no map is blank
    twin = SharedReLU(shared=False)
    twin.load_state_dict(shared.state_dict())
    x = torch.rand(2, 1, 8, 8)
    # the shared module's record is its last call, the ReLU after conv2: the twin's relu2
    want, want_k = grad_cam(twin, x, layer="relu2")
    # and by hand: the head averages relu2's output, so d y_c / d A_k = W[c, k] / 64 everywhere
    acts = twin.relu2(twin.conv2(twin.relu(twin.conv1(x)))).detach()
    alpha = twin.head.weight.detach()[want_k] / 64  # (N, K)
    cam = F.relu((alpha[:, :, None, None] * acts).sum(1))
    peak = cam.flatten(1).amax(1)
    assert bool((peak > 0).all())  # no blank map: every image's map is checked
    torch.testing.assert_close(want, cam / peak[:, None, None], rtol=1e-5, atol=1e-6)
    got, got_k = grad_cam(shared, x, layer="relu")
    assert torch.equal(got_k, want_k)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tta", ["shift", "flip"])
def test_a_classifier_with_test_time_augmentation_is_explained_on_the_image_alone(tta):
    """cnnkit.load gives a run's classifier with its TTA on (its network runs on 5 or 2 views):
    every explanation is of one forward pass of the image, and the TTA setting comes back."""
    from cnnkit.models.deploy import Classifier

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    clf = Classifier(net, [0.1], [0.3], list("abcd"), (1, 12, 12), tta=tta).eval()
    plain = Classifier(net, [0.1], [0.3], list("abcd"), (1, 12, 12)).eval()
    x = torch.rand(1, 12, 12)
    x[:, :, :4] = 0  # an image that shifting or flipping changes
    got, k = grad_cam(clf, x, layer="net.3")
    want, want_k = grad_cam(plain, x, layer="net.3")
    assert k == want_k and clf.tta == tta
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feature_maps(clf, x, ["net.1"]), feature_maps(plain, x, ["net.1"]))
    torch.testing.assert_close(saliency(clf, x)[0], saliency(plain, x)[0])
    assert clf.tta == tta


def test_grad_cam_and_patterns_at_a_layer_without_feature_maps_are_one_line_errors(tmp_path, capsys):
    from cnnkit.cli import main

    net = hand_net()
    with pytest.raises(
        CnnkitError, match=r"layer '4' gives shape \(1, 2\); Grad-CAM needs a layer with \(N, K, h, w\)"
    ):
        grad_cam(net, HAND_X, layer="4")
    with pytest.raises(
        CnnkitError, match=r"layer '3' gives \(1, 2\); filter patterns need a layer with \(N, C, h, w\)"
    ):
        filter_patterns(net, "3", size=4, steps=2)
    run = make_run(tmp_path / "run")
    image = write_png(tmp_path / "digit.png", (28, 28), "L")
    for method in ("gradcam", "patterns"):
        assert main(["explain", str(run), str(image), "--method", method, "--layer", "fc"]) == 2
        err = capsys.readouterr().err
        assert "layer 'net.fc' gives" in err and err.count("\n") == 1, err


def test_cli_explain_of_a_zoo_model_that_takes_no_images_is_one_line(tmp_path, capsys):
    from cnnkit.cli import main

    image = write_png(tmp_path / "digit.png", (28, 28), "L")
    for name, shape in (("fcn1d", "(1, 128)"), ("gan_generator", "(100,)")):
        assert main(["explain", name, str(image), "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert f"{name} takes inputs of shape {shape}, not images" in err and err.count("\n") == 1, err


def test_explain_reads_a_photo_as_predict_does_for_a_folder_trained_run(tmp_path):
    """A run trained on an image folder is explained on the photo as `cnnkit predict` reads it (the
    shorter side resized, the centre kept), with or without --resize; another model keeps the photo's
    own size unless --resize."""
    from types import SimpleNamespace

    from PIL import Image

    from cnnkit.data.imagefolder import decode_image
    from cnnkit.tasks.classify.explain import read_input

    pixels = np.random.default_rng(0).integers(0, 255, (12, 30, 3), dtype=np.uint8)  # wide: a crop differs
    Image.fromarray(pixels).save(tmp_path / "p.png")
    model = torch.nn.Identity()
    model.info, model.input_size = {"config": {"data": str(tmp_path / "photos")}}, (3, 8, 8)
    run = SimpleNamespace(model=model, input_size=(3, 8, 8), dark_background=False)
    want = decode_image(tmp_path / "p.png", (8, 8), 3).float() / 255
    for resize in (False, True):
        assert torch.equal(read_input(run, tmp_path / "p.png", resize=resize), want)
    zoo = SimpleNamespace(model=torch.nn.Identity(), input_size=(3, 8, 8), dark_background=False)
    assert read_input(zoo, tmp_path / "p.png", resize=False).shape == (3, 12, 30)
    assert read_input(zoo, tmp_path / "p.png", resize=True).shape == (3, 8, 8)


# ----------------------------------------------------------------------------- TorchScript parts


def _scripted_part_net() -> nn.Sequential:
    """A network whose first block is TorchScript: its compiled forward runs its layers without hooks."""
    torch.manual_seed(0)
    block = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    return nn.Sequential(
        block, nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def test_a_torchscript_block_is_one_layer_and_the_layers_inside_it_are_refused_by_name():
    net, x = _scripted_part_net().eval(), torch.rand(3, 8, 8)
    assert layer_names(net) == ["1", "0", "2", "3", "4", "5"]  # nothing inside the TorchScript block "0"
    assert default_cam_layer(net, x[None]) == "2"  # the plain convolution and its ReLU
    cam, _ = grad_cam(net, x, target_class=1)  # at the default layer, found through the hooks that run
    assert cam.shape == (8, 8)
    with recording(net, ["0"]) as rec:  # the TorchScript block itself is hooked from Python
        net(x[None])
    assert rec["activations"]["0"].shape == (1, 4, 8, 8)
    with pytest.raises(CnnkitError) as err:
        resolve_layer(net, "0.0")
    assert str(err.value) == (
        "layer '0.0' is inside the TorchScript module '0', whose compiled forward runs it without hooks, so its "
        "output cannot be seen; pick one of: 1, 0, 2, 3, 4, 5"
    )


def test_a_network_that_is_torchscript_as_a_whole_is_explained_by_saliency_and_refused_by_grad_cam():
    net, x = torch.jit.script(_scripted_part_net().eval()), torch.rand(3, 8, 8)
    assert layer_names(net) == []
    assert saliency(net, x)[0].shape == (8, 8)
    with pytest.raises(
        CnnkitError,
        match=r"^model RecursiveScriptModule has no convolutional layer outside TorchScript \(the network is TorchScript, ",
    ):
        grad_cam(net, x)
    with pytest.raises(
        CnnkitError, match=r"^layer '1' is inside the network, TorchScript as a whole, .*; explain it with saliency"
    ):
        resolve_layer(net, "1")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("compile_", ["script", "trace"])
def test_filters_are_read_from_the_convolutions_inside_torchscript(compile_):
    """Filters run no layer, so no hook is needed: the 2-D convolutions inside TorchScript (a Conv2d
    subclass included, LeNet's masked C3; a transposed one not) give their weights by name, as the
    plain network's do; the other layers are named for what they are."""
    from cnnkit.explain.hooks import conv2d_layers
    from cnnkit.models.lenet import TableConv2d

    torch.manual_seed(0)
    table = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 1, 2, 3)]
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3), TableConv2d(4, 5, 3, table), nn.ReLU(), nn.ConvTranspose2d(5, 2, 2), nn.Flatten()
    ).eval()
    x = torch.rand(1, 3, 9, 9)
    net = torch.jit.script(plain) if compile_ == "script" else torch.jit.trace(plain, x)
    part = nn.Sequential(net, nn.Linear(2 * 6 * 6, 2))  # TorchScript inside a plain network
    assert list(conv2d_layers(plain)) == list(conv2d_layers(net)) == ["0", "1"]
    assert list(conv2d_layers(part)) == ["0.0", "0.1"]
    for name in ("0", "1"):
        assert torch.equal(filters(net, name), plain.get_submodule(name).weight.detach())
        assert torch.equal(filters(part, "0." + name), plain.get_submodule(name).weight.detach())
    assert filters(net, "1").shape == (5, 4, 3, 3)
    with pytest.raises(CnnkitError, match=r"^layer '3' is a ConvTranspose2d, not a Conv2d; pick one of: 0, 1$"):
        filters(net, "3")
    with pytest.raises(CnnkitError, match=r"^unknown layer '7'; 2-D convolutions: 0, 1$"):
        filters(net, "7")

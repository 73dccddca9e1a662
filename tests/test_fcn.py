"""to_fcn: equal to the dense model on the training size, equal to a window loop on a larger image,
a clear error for layers it cannot convert, and the `cnnkit fcn` checkpoint round trip; the layered
networks cnnkit trains (the zoo's Keras-style nets, network specs, Keras files) convert too."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cnnkit import to_fcn
from cnnkit.errors import CnnkitError
from cnnkit.models.fcn import total_stride

pytestmark = pytest.mark.usefixtures("one_thread")


def notes_convnet():  # the notes' Keras MNIST convnet, with dropout and a batch-normed dense layer
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 1, 28, 28) -> (B, 8, 13, 13)
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (B, 16, 5, 5)
        nn.Conv2d(16, 16, 3),
        nn.ReLU(),  # -> (B, 16, 3, 3)
        nn.Flatten(),
        nn.Linear(144, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(32, 10),
    )


class FeaturesHead(nn.Module):  # a model whose head is a Sequential with Flatten; VGG-like adaptive pool
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),  # no padding:
            nn.Conv2d(8, 8, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )  # windows exact
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 5)
        )

    def forward(self, x):
        return self.head(self.features(x))


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)


def _window_loop(model, x, size, stride, n_rows, n_cols):
    rows = [
        torch.stack(
            [model(x[..., i * stride : i * stride + size, j * stride : j * stride + size]) for j in range(n_cols)], -1
        )
        for i in range(n_rows)
    ]
    return torch.stack(rows, -2)  # (B, K, n_rows, n_cols)


def test_training_size_equal_and_larger_image_is_the_window_loop():
    net = notes_convnet().eval()
    _randomise_bn(net)
    fcn = to_fcn(net, (1, 28, 28))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert fcn(x).shape == (4, 10, 1, 1)
        assert (fcn(x).flatten(1) - net(x)).abs().max() < 1e-5
        big = torch.randn(2, 1, 56, 44)
        s = total_stride(fcn)
        scores = fcn(big)
        assert s == 4 and scores.shape == (2, 10, 8, 5)  # (56-28)/4+1, (44-28)/4+1
        assert (scores - _window_loop(net, big, 28, s, 8, 5)).abs().max() < 1e-5
    assert isinstance(net[8], nn.Flatten) and isinstance(net[9], nn.Linear)  # original untouched
    assert [type(m).__name__ for m in fcn[8:]] == ["Identity", "Conv2d", "BatchNorm2d", "ReLU", "Dropout", "Conv2d"]
    assert fcn[9].kernel_size == (3, 3) and fcn[13].kernel_size == (1, 1)


def test_head_sequential_with_adaptive_pool():
    net = FeaturesHead().eval()
    fcn = to_fcn(net, (3, 20, 20))  # the 4x4 map equals the pool's output: the pool becomes Identity
    assert isinstance(fcn.head[0], nn.Identity)
    with torch.no_grad():
        x = torch.randn(2, 3, 20, 20)
        assert (fcn(x).flatten(1) - net(x)).abs().max() < 1e-5
        big = torch.randn(1, 3, 36, 28)
        assert fcn(big).shape == (1, 5, 5, 3)
        assert (fcn(big) - _window_loop(net, big, 20, 4, 5, 3)).abs().max() < 1e-5
        fcn2 = to_fcn(net, (3, 36, 36))  # 8x8 map pooled to 4x4: a 2x2 average pool, stride 2
        assert isinstance(fcn2.head[0], nn.AvgPool2d)
        x2 = torch.randn(2, 3, 36, 36)
        assert (fcn2(x2).flatten(1) - net(x2)).abs().max() < 1e-5


class FunctionalFlatten(nn.Module):  # like torchvision's ResNet: torch.flatten in forward
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


@pytest.mark.parametrize(
    "model, size, match",
    [
        (FunctionalFlatten(), (3, 8, 8), "cannot convert layers fc"),
        (
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LayerNorm(144), nn.Linear(144, 2)),
            (3, 8, 8),
            r"cannot convert 2 \(LayerNorm\)",
        ),
        (
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
            (3, 8, 8),
            None,
        ),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), (3, 8, 8), r"cannot convert 1: the Flatten"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)), (3, 9, 9), "forward pass"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)), None, "input_size=\\(C, H, W\\)"),
    ],
)
def test_unconvertible_layers_are_named(model, size, match):
    if match is None:  # LayerNorm ends the head: the Linear after it is left over and named
        with pytest.raises(CnnkitError, match="cannot convert layers 4"):
            to_fcn(model, size)
        return
    with pytest.raises(CnnkitError, match=match):
        to_fcn(model, size)


def test_cli_fcn_round_trip(tmp_path, capsys):
    from cnnkit.cli import main
    from cnnkit.tasks.classify.fcn import load_fcn
    from cnnkit.tasks.classify.finetune import save_finetuned

    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes=10, in_channels=1):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.MaxPool2d(2),\n"
        "                         nn.Flatten(), nn.Linear(4 * 5 * 5, 16), nn.ReLU(), nn.Linear(16, num_classes))\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net", tmp_path / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.build(3, 1)
    save_finetuned(
        tmp_path / "run",
        net,
        f"{tmp_path / 'net.py'}:build",
        ["a", "b", "c"],
        (1, 12, 12),
        (0.5,),
        (0.25,),
        [],
        {"stages": []},
    )
    assert main(["classify", "fcn", str(tmp_path / "run"), "--out", str(tmp_path / "fcn")]) == 0
    assert "wrote" in capsys.readouterr().out
    import cnnkit

    model = cnnkit.load(tmp_path / "fcn")  # cnnkit.load reads FCN checkpoints too
    assert type(load_fcn(tmp_path / "fcn").net) is type(model.net)
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        assert (model(x).flatten(1) - net.eval()((x - 0.5) / 0.25)).abs().max() < 1e-5
        assert model(torch.rand(1, 1, 20, 20)).shape == (1, 3, 5, 5)
    assert model.classes == ["a", "b", "c"]
    assert main(["classify", "fcn", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


# ----------------------------------------------------------------------------- layered networks

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _randomise_biases(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def _check_exact(net, fcn, size, big_hw, stride, grid):
    """1x1 map == logits at the training size; the map on a larger image == the window loop."""
    with torch.no_grad():
        x = torch.randn(3, *size)
        assert fcn(x).shape == (3, net(x).shape[1], 1, 1)
        assert (fcn(x).flatten(1) - net(x)).abs().max() < 1e-5
        big = torch.randn(2, size[0], *big_hw)
        assert total_stride(fcn) == stride
        scores = fcn(big)
        assert scores.shape[2:] == grid
        assert (scores - _window_loop(net, big, size[1], stride, *grid)).abs().max() < 1e-5


def test_zoo_keras_mnist_convnet():
    import cnnkit

    net = _randomise_biases(cnnkit.create_model("keras_mnist_convnet")).eval()
    keys = {k: v.shape for k, v in net.state_dict().items()}
    fcn = to_fcn(net, (1, 28, 28))
    _check_exact(net, fcn, (1, 28, 28), (56, 44), 4, (8, 5))  # (56-28)/4+1, (44-28)/4+1
    assert list(dict(fcn.named_children())) == list(dict(net.named_children()))  # the Keras names stay
    assert isinstance(fcn.flatten_1, nn.Identity) and fcn.dense_1.kernel_size == (3, 3)
    assert isinstance(fcn.dense_1.activation, nn.ReLU) and fcn.dense_2.kernel_size == (1, 1)
    assert set(fcn.state_dict()) == set(keys)  # a checkpoint's keys still fit (`cnnkit.load` rebuilds this way)
    assert type(net).__name__ == "KerasNet" and isinstance(net.flatten_1, nn.Flatten)  # original untouched
    assert {k: v.shape for k, v in net.state_dict().items()} == keys


@pytest.mark.parametrize("logits", [True, False])  # False: the softmax stays, a forward hook on dense_2
def test_spec_network(logits):
    from cnnkit.models.spec import build_from_spec

    net, size = build_from_spec(EXAMPLES / "keras_mnist.yaml", logits=logits)
    net = _randomise_biases(net).eval()
    fcn = to_fcn(net, size)
    _check_exact(net, fcn, size, (40, 48), 4, (4, 6))
    assert isinstance(fcn.dense_1, nn.Conv2d) and len(fcn.dense_1._forward_hooks) == 1  # its relu moved along
    assert isinstance(net.dense_1, nn.Linear) and len(net.dense_1._forward_hooks) == 1
    assert len(fcn.dense_2._forward_hooks) == (0 if logits else 1)
    if not logits:  # class probabilities at every cell
        with torch.no_grad():
            assert torch.allclose(fcn(torch.randn(1, *size[:1], 40, 48)).sum(1), torch.ones(1, 4, 6), atol=1e-5)
        fcn.dense_2.activation_hook.remove()  # the handle follows the hook, as build_from_spec's logits=True uses it
        assert len(fcn.dense_2._forward_hooks) == 0 and len(net.dense_2._forward_hooks) == 1


def keras_config():
    """A Keras Sequential config (what a .keras file holds): channels-last Flatten, softmax Dense."""

    def layer(kind, **cfg):
        return {"class_name": kind, "config": cfg}

    return {
        "class_name": "Sequential",
        "config": {
            "name": "small",
            "layers": [
                layer("InputLayer", name="input_layer", batch_shape=[None, 14, 14, 2]),
                layer("Conv2D", name="conv2d", filters=6, kernel_size=[3, 3], padding="valid", activation="relu"),
                layer("MaxPooling2D", name="max_pooling2d", pool_size=[2, 2]),
                layer("Conv2D", name="conv2d_1", filters=5, kernel_size=[3, 3], padding="valid", activation="tanh"),
                layer("Flatten", name="flatten"),
                layer("Dense", name="dense", units=12, activation="relu"),
                layer("Dropout", name="dropout", rate=0.5),
                layer("Dense", name="dense_1", units=4, activation="softmax"),
            ],
        },
    }


@pytest.mark.parametrize("last_dim", [False, True])
def test_keras_network(last_dim):
    from cnnkit.models.keras import Flatten as KerasFlatten
    from cnnkit.models.keras import build_from_keras_config

    net = _randomise_biases(build_from_keras_config(keras_config())).eval()
    assert type(net).__name__ == "KerasNetwork" and isinstance(net.flatten, KerasFlatten)
    if last_dim:  # a softmax over the last dim of (B, K) must become one over dim 1 of (B, K, h, w)
        net.dense_1.activation = nn.LogSoftmax(dim=-1)
    fcn = to_fcn(net, net.input_size)  # (2, 14, 14): 12, 6, 4 -> a 4x4 map flattened (h, w, C)
    assert not any(m.training for m in fcn.modules())  # in the mode of the original (its Dropout off)
    _check_exact(net, fcn, (2, 14, 14), (30, 22), 2, (9, 5))  # (30-14)/2+1, (22-14)/2+1
    assert fcn.dense.kernel_size == (4, 4) and fcn.dense_1.activation.dim == 1
    assert net.dense_1.activation.dim == (-1 if last_dim else 1)  # original untouched


class Chain(nn.Module):  # children run one after another, in an order other than their registration
    def __init__(self, work_between=False):
        super().__init__()
        self.fc = nn.Linear(4 * 3 * 3, 3)
        self.conv = nn.Conv2d(2, 4, 3)
        self.flat = nn.Flatten()
        self.work_between = work_between

    def forward(self, x):
        y = self.conv(x)
        if self.work_between:
            y.relu_()  # in place: the same tensor object, changed between two layers
        return self.fc(self.flat(y))


def test_chain_in_call_order_and_work_between_layers_refused():
    net = _randomise_biases(Chain()).eval()
    fcn = to_fcn(net, (2, 5, 5))
    assert [n for n, _ in fcn.named_children()] == ["conv", "flat", "fc"]
    assert all(m.training for m in to_fcn(net.train(), (2, 5, 5)).modules()) and net.eval() is net
    _check_exact(net, fcn, (2, 5, 5), (9, 7), 1, (5, 3))
    with pytest.raises(CnnkitError, match="cannot convert layers fc, flat: .*forward does work between conv and flat"):
        to_fcn(Chain(work_between=True), (2, 5, 5))


def test_mnist_fast_refused_naming_its_layers():
    import cnnkit

    net = cnnkit.create_model("mnist_fast")
    with pytest.raises(CnnkitError) as err:
        to_fcn(net, (1, 28, 28))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot convert layers fc: ")
    assert "MnistNet's forward does work between features and dropout" in msg


def test_cli_fcn_zoo_keras_net(tmp_path, capsys):
    import cnnkit
    from cnnkit.cli import main
    from cnnkit.tasks.classify.finetune import save_finetuned

    net = _randomise_biases(cnnkit.create_model("keras_mnist_convnet", num_classes=3))
    save_finetuned(tmp_path / "run", net, "keras_mnist_convnet", ["a", "b", "c"], (1, 28, 28), (0.5,), (0.25,), [], {})
    assert main(["classify", "fcn", str(tmp_path / "run"), "--out", str(tmp_path / "fcn")]) == 0
    assert "wrote" in capsys.readouterr().out
    model = cnnkit.load(tmp_path / "fcn")
    big = torch.rand(1, 1, 44, 36)
    with torch.no_grad():
        scores = model(big)
        assert scores.shape == (1, 3, 5, 3)
        want = _window_loop(lambda w: net.eval()((w - 0.5) / 0.25), big, 28, 4, 5, 3)
        assert (scores - want).abs().max() < 1e-5


def test_loaded_classifier_converts_with_its_normalisation_and_padding():
    """What cnnkit.load returns (a Classifier: padding, normalisation, TTA around .net) converts as
    itself: the same scores on the training size, a map on a larger image, TTA off."""
    from cnnkit.models.deploy import Classifier, Ensemble

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    clf = Classifier(net, [0.3], [0.2], ["a", "b", "c"], (1, 6, 6), tta="shift", pad=2).eval()
    fcn = to_fcn(clf)
    assert isinstance(fcn, Classifier) and fcn.tta == "" and fcn.pad == 2 and not fcn.training
    assert fcn.classes == ["a", "b", "c"] and fcn.input_size == (1, 6, 6)
    x = torch.rand(2, 1, 6, 6)
    with clf.without_tta():
        expected = clf(x)
    assert torch.allclose(fcn(x).flatten(1), expected, atol=1e-6)
    assert fcn(torch.rand(1, 1, 10, 10)).shape == (1, 3, 5, 5)
    assert clf.tta == "shift" and isinstance(clf.net[3], nn.Linear)  # the original is untouched
    with pytest.raises(CnnkitError, match="convert each member"):
        to_fcn(Ensemble([clf, clf]))


class _ScriptedFeatures(nn.Module):
    """A chain of direct children, the first TorchScript (called from Python, so its hooks run)."""

    def __init__(self):
        super().__init__()
        self.features = torch.jit.script(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 3 * 3, 4))

    def forward(self, x):
        return self.head(self.features(x))


def test_a_network_with_a_torchscript_child_converts_and_one_that_is_torchscript_is_refused():
    net = _randomise_biases(_ScriptedFeatures()).eval()
    fcn = to_fcn(net, (2, 5, 5))
    assert [n for n, _ in fcn.named_children()] == ["features", "head"]
    _check_exact(net, fcn, (2, 5, 5), (9, 7), 1, (5, 3))
    with pytest.raises(CnnkitError) as err:
        to_fcn(torch.jit.script(net), (2, 5, 5))
    assert str(err.value) == (
        "RecursiveScriptModule has no Flatten+Linear head outside TorchScript (it is TorchScript compiled code, "
        "whose layers cannot be rewritten); convert the network before it is scripted or traced"
    )


class _Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):  # PyTorch's text under TORCH_SHOW_CPP_STACKTRACES=1: the reason, then C++ frames
        raise RuntimeError(
            "shape '[7]' is invalid for input of size 6\n"
            "Exception raised from infer_size_impl at InferSize.h:99 (most recent call first):\n"
            "C++ CapturedTraceback:\n#4 c10::Error::Error(...) from libc10.so\n#5 at::native::view from libtorch_cpu.so"
        )


def test_a_failed_forward_is_quoted_without_its_cpp_frames():
    with pytest.raises(CnnkitError) as err:
        to_fcn(_Raises(), (1, 2, 2))
    assert str(err.value) == (
        "a forward pass at input_size=(1, 2, 2) failed (shape '[7]' is invalid for input of size 6); "
        "pass the (C, H, W) size the model was trained on"
    )

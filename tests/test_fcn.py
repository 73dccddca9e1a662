"""to_fcn: equal to the dense model on the training size, equal to a window loop on a larger image,
a clear error for layers it cannot convert, and the `cnnkit fcn` checkpoint round trip."""

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
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 4), nn.Softmax(-1), nn.Linear(4, 2)),
            (3, 8, 8),
            None,
        ),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), (3, 8, 8), r"cannot convert 1: the Flatten"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)), (3, 9, 9), "forward pass"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)), None, "input_size=\\(C, H, W\\)"),
    ],
)
def test_unconvertible_layers_are_named(model, size, match):
    if match is None:  # Softmax ends the head: the Linear after it is left over and named
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

"""Batch norm folded into the convolution before it (cnnkit.models.fold), and the batches classifiers answer in (cnnkit.tasks.classify.evaluate and predict)."""

import pytest
import torch
import torch.nn as nn

from cnnkit.models import create_model
from cnnkit.models.fold import fold_batchnorm


def _randomise_norms(net: nn.Module, g: torch.Generator) -> None:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)


def _folded_outputs(net: nn.Module, x: torch.Tensor):
    """(folded, count, the network's outputs, the folded one's) after norms randomised with seed 3."""
    _randomise_norms(net, torch.Generator().manual_seed(3))
    folded, n = fold_batchnorm(net, x)
    with torch.no_grad():
        return folded, n, net(x), folded(x)


def test_a_zoo_network_folds_every_conv_norm_pair_and_answers_the_same():
    g = torch.Generator().manual_seed(0)
    net = create_model("efficientnet_lite0", num_classes=5).eval()
    _randomise_norms(net, g)
    x = torch.rand(2, 3, 64, 64, generator=g)
    folded, n = fold_batchnorm(net, x[:1])
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert n == norms == 49 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == norms  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-4, rtol=1e-4)
    assert set(folded.state_dict()) != set(net.state_dict())  # a copy for inference, not for saving
    with torch.autocast("cpu", dtype=torch.bfloat16):  # found and checked in fp32 all the same
        assert fold_batchnorm(net, x[:1])[1] == 49


def test_a_norm_after_something_else_or_a_conv_used_twice_is_left_alone():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.pool_bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return self.pool_bn(nn.functional.max_pool2d(self.conv(y), 2))  # conv runs twice; pool_bn after a pool

    net = Twice().eval()
    _randomise_norms(net, torch.Generator().manual_seed(1))
    folded, n = fold_batchnorm(net, torch.rand(1, 3, 8, 8))
    assert n == 0 and isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.pool_bn, nn.BatchNorm2d)


def test_an_answer_that_would_change_keeps_the_unfolded_copy():
    class Reused(nn.Module):  # the conv's output feeds the norm and, again, the sum: folding would change it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = Reused().eval()
    _randomise_norms(net, torch.Generator().manual_seed(2))
    x = torch.rand(1, 3, 4, 4)
    folded, n = fold_batchnorm(net, x)
    assert n == 0 and isinstance(folded.bn, nn.BatchNorm2d)
    assert fold_batchnorm(net, torch.zeros(0, 3, 4, 4))[1] == 0  # an empty batch finds nothing
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x))


def test_every_output_is_checked_not_the_first_alone():
    class Features(nn.Module):  # a head's answer and the conv's own map (a feature pyramid returns such maps)
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return {"out": self.head(self.bn(y)), "features": y}

    net, x = Features().eval(), torch.rand(1, 3, 8, 8)
    folded, n, want, got = _folded_outputs(net, x)
    assert n == 0 and isinstance(folded.bn, nn.BatchNorm2d)
    for key in want:
        torch.testing.assert_close(got[key], want[key])


def test_cpu_evaluation_batches_hold_a_bounded_number_of_pixels():
    """Large photos go through the network a few at a time on a CPU (their activations stay in the
    caches); small images keep the asked batch."""
    from cnnkit.tasks.classify.evaluate import CPU_BATCH_PIXELS, predict_logits

    sizes = []

    class Count(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            sizes.append(len(x))
            return x.mean((1, 2, 3))[:, None] * self.w

    side = int((CPU_BATCH_PIXELS // 2) ** 0.5)  # two such images fill a batch
    predict_logits(Count(), torch.zeros(5, 1, side, side, dtype=torch.uint8), batch_size=100, precision="fp32")
    assert sizes == [2, 2, 1]
    sizes.clear()
    predict_logits(Count(), torch.zeros(30, 1, 28, 28, dtype=torch.uint8), batch_size=16, precision="fp32")
    assert sizes == [16, 14]


def test_evaluation_runs_the_network_in_the_layout_of_its_batches_and_leaves_the_model_as_it_was():
    """A loaded file's weights are NCHW; a one-channel batch is NCHW and NHWC at once, so without a
    converted copy the whole network would run NCHW, 2.5 times slower for MNIST's net."""
    from cnnkit.data.imageset import ImageSet
    from cnnkit.tasks.classify.evaluate import evaluate

    g = torch.Generator().manual_seed(3)
    net = create_model("mnist_fast").eval()
    data = ImageSet(
        torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.arange(20) % 10,
        list("0123456789"),
    )
    layouts = []
    net.features[1][0].register_forward_hook(
        lambda m, i, o: layouts.append((len(o), o.is_contiguous(memory_format=torch.channels_last)))
    )
    nhwc = evaluate(net, data, precision="fp32")
    # the batch of 20 ran NHWC (fold_batchnorm's checks on one image come first); the model is as it was
    assert layouts[-1] == (20, True) and net.features[0][0].weight.is_contiguous()
    layouts.clear()
    nchw = evaluate(net, data, channels_last=False, precision="fp32")
    assert layouts[-1] == (20, False)
    assert nhwc.accuracy == nchw.accuracy and abs(nhwc.loss - nchw.loss) < 1e-5


def test_predicting_many_files_reads_and_answers_them_a_bounded_batch_at_a_time(tmp_path, monkeypatch):
    """`cnnkit predict RUN photos/*.jpg`: 396 photos at 288 px took 18 GB in one batch; now the files
    are read and answered a batch at a time, with the answers of one at a time."""
    import importlib

    from PIL import Image

    from cnnkit.tasks.classify.predict import predict_files

    evaluate = importlib.import_module("cnnkit.tasks.classify.evaluate")
    g = torch.Generator().manual_seed(4)
    paths = []
    for k in range(7):
        paths.append(tmp_path / f"digit{k}.png")
        Image.fromarray(torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=g).numpy()).save(paths[-1])
    net = create_model("mnist_fast").eval()
    net.classes, net.input_size = list("0123456789"), (1, 28, 28)
    sizes = []
    net.register_forward_pre_hook(lambda m, i: sizes.append(len(i[0])))
    alone = [predict_files(net, [p], top=2)[0] for p in paths]
    monkeypatch.setattr(evaluate, "CPU_BATCH_PIXELS", 3 * 28 * 28)  # three digits a batch
    sizes.clear()
    rows = predict_files(net, paths, top=2)
    assert sizes == [3, 3, 1] and [r["image"] for r in rows] == [str(p) for p in paths]
    for row, one in zip(rows, alone):
        assert [c for c, _ in row["top"]] == [c for c, _ in one["top"]]
        assert [p for _, p in row["top"]] == pytest.approx([p for _, p in one["top"]], abs=1e-5)


def test_outputs_that_are_not_floats_are_compared_exactly():
    """A tuple or dict output may hold a mask or indices beside the scores: compared as they are,
    without a subtraction that bool tensors do not have."""

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return {"scores": y, "positive": y > 0, "index": y.flatten(1).argmax(1)}

    folded, n, want, got = _folded_outputs(Masked().eval(), torch.rand(2, 3, 8, 8))
    assert n in (0, 1)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4)

"""The training profiler: every step's parts are charged, the FLOPs are the layer's, the chart is drawn."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.analysis.profile import PARTS, StepProfiler, compute_ceiling
from cnnkit.engine import Data, Phase, Plan, Setup, fit

pytestmark = pytest.mark.usefixtures("one_thread")


class _Task:
    """A linear classifier on fixed batches; ``delay`` seconds of work in each batch's assembly."""

    name, metric = "classify", "acc"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)

    def batches(self, data, generator, train=True):
        def make(i):
            time.sleep(self.delay)
            return self.x[i * 16 : (i + 1) * 16], self.y[i * 16 : (i + 1) * 16]

        return _Lazy(4, make)

    def loss(self, model, batch):
        x, y = batch
        loss = F.cross_entropy(model(x), y)
        n = torch.tensor(float(len(x)))
        return loss, {"loss": loss.detach() * n, "n": n}

    def evaluate(self, model, data):
        with torch.no_grad():
            return {"acc": (model(self.x).argmax(1) == self.y).float().mean().item()}

    def deployable(self, model):
        return model

    def describe(self, model):
        return {"task": "classify"}

    def summary(self, model):
        return "linear"


class _Lazy:
    def __init__(self, n, make):
        self.n, self.make = n, make

    def __len__(self):
        return self.n

    def __iter__(self):
        return (self.make(i) for i in range(self.n))


def test_profiler_charges_each_part_and_counts_the_layers_flops(tmp_path):
    prof = StepProfiler(warmup=1)
    model = nn.Linear(8, 4)
    plan = Plan([Phase(2, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.1)))])
    tick = time.perf_counter()
    prof.start()
    result = fit(
        prof.task(_Task(delay=0.01)), model, Data("train", "val"), prof.plan(plan), tmp_path / "run", quiet=True
    )
    prof.stop()
    wall = time.perf_counter() - tick
    assert prof.steps == 8 and prof.samples == 128 and result.images == 128
    assert prof.flops == {"forward": 2 * 16 * 8 * 4, "backward": 2 * 16 * 8 * 4}  # y = x W^T; dW only
    assert prof.batch == 16
    s = prof.seconds
    assert set(s) == set(PARTS)
    assert s["data"] >= 7 * 0.01 * 0.9  # the 7 batches after warm-up each slept 10 ms
    assert all(s[k] > 0 for k in ("forward", "backward", "optimizer", "validation", "checkpoint", "setup"))
    assert sum(s.values()) == pytest.approx(wall, rel=0.05)  # every second charged to one part
    rows = prof.rows()
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    g = prof.gflops()
    assert g["compute"] == pytest.approx(7 * 2 * 1024 / (s["forward"] + s["backward"]) / 1e9)
    assert "8 steps (7 timed), 128 samples" in prof.table(10.0)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_the_flops_of_the_steps_after_a_freeze_are_counted_again_without_the_frozen_layers_gradients(tmp_path):
    """A layer frozen after the first epoch: its weight gradient and the next layer's input gradient
    are no longer computed, and the steps after the freeze are credited with what they do; the step
    that counts them is not timed, as the warm-up step is not."""
    prof = StepProfiler(warmup=1)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    plan = Plan([Phase(2, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.1), freeze=(1, [m[0]])))])
    prof.start()
    fit(prof.task(_Task()), model, Data("train", "val"), prof.plan(plan), tmp_path / "run", quiet=True)
    prof.stop()
    fwd = 2 * 16 * 8 * 8 + 2 * 16 * 8 * 4
    assert prof.flops == {"forward": fwd, "backward": 2 * 16 * 8 * 8 + 2 * 2 * 16 * 8 * 4}  # dW0; dW1, dX1
    assert prof.steps == 8 and prof.timed == 6  # 4 steps an epoch; the first of each counted, not timed
    assert prof.work == {"forward": 6 * fwd, "backward": 3 * (2048 + 2048) + 3 * 1024}
    s = prof.seconds
    assert prof.gflops()["compute"] == pytest.approx((6 * fwd + 15360) / (s["forward"] + s["backward"]) / 1e9)


def test_profiler_splits_the_steps_after_warm_up_by_layer(tmp_path, slow_layer):
    prof = StepProfiler(warmup=1, layers=True)
    model = nn.Sequential(nn.Linear(8, 8), slow_layer(0.01, 0.02), nn.Linear(8, 4))
    plan = Plan([Phase(2, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.1)))])
    prof.start()
    fit(prof.task(_Task()), model, Data("train", "val"), prof.plan(plan), tmp_path / "run", quiet=True)
    prof.stop()
    rows = {r["layer"]: r for r in prof.layer_rows()}
    assert set(rows) == {"0", "1", "2", "(outside layers)"}
    slow = rows["1"]  # per step after warm-up: validation's forward passes are not counted
    layer, timed = model[1], prof.timed
    trained = [s for grad, s in layer.slept if grad][1:]  # the steps after the warm-up one
    validated = sum(s for grad, s in layer.slept if not grad) / timed  # what counting them would add
    assert len(trained) == timed and validated > 0.002
    assert slow["forward_ms"] / 1000 == pytest.approx(sum(trained) / timed, abs=0.4 * validated)
    assert 20 <= slow["backward_ms"] < 35
    assert prof.layer_rows(1)[0]["layer"] == "1"
    assert rows["0"]["forward_ms"] < 5 and rows["2"]["backward_ms"] < 5
    assert 0.5 < sum(r["share"] for r in rows.values()) <= 1.0
    assert not any(m._forward_hooks for m in model.modules())  # stop() removed the hooks
    assert "fwd ms" in prof.layer_table()


def test_the_compute_ceiling_is_a_positive_rate():
    c = compute_ceiling(repeats=1, batch=1, n=256)
    assert c["conv"] > 0.1 and c["gemm"] > 0.1 and c["threads"] == 1


def test_time_breakdown_draws_one_bar_per_run(tmp_path):
    from cnnkit.errors import CnnkitError
    from cnnkit.plots import time_breakdown

    fig = time_breakdown({"a": {"data": 1.0, "forward": 3.0}, "b": {"forward": 2.0}}, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert len(fig.axes[0].patches) == 3  # a: data + forward, b: forward
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
    with pytest.raises(CnnkitError):
        time_breakdown({})
    with pytest.raises(CnnkitError):
        time_breakdown({"a": {"data": 0.0}})


def test_flop_counter_counts_a_depthwise_backward_as_two_forwards():
    from cnnkit.analysis.profile import flop_counter

    conv = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    with flop_counter() as f:
        y = conv(x)
        fwd = f.get_total_flops()
        y.sum().backward()
    assert fwd == 2 * 2 * 64 * 9 * 16 * 16  # (B, C, H, W) outputs x 9 taps, one multiply-add each
    assert f.get_total_flops() - fwd == 2 * fwd  # input and weight gradients
    with flop_counter() as f:
        conv(torch.randn(2, 64, 16, 16)).sum().backward()  # no input gradient asked
    assert f.get_total_flops() == 2 * fwd

"""Per-layer times of real steps (``cnnkit summary --time``): each layer's forward and backward
seconds land on that layer, the caller's network is left as it was, and bad requests are refused."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torch.nn as nn

from cnnkit.analysis import summary
from cnnkit.analysis.measure import OUTSIDE, LayerTimer, measure_times
from cnnkit.analysis.report import render_csv, render_text
from cnnkit.errors import CnnkitError

FWD, BWD = 0.03, 0.05  # the slow layer's sleeps, seconds
SLACK = 0.03  # a busy machine's scheduling delay, seconds: less than either sleep


@pytest.fixture
def net(slow_layer) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), slow_layer(FWD, BWD), nn.ReLU(inplace=True), nn.Linear(16, 4))


def test_timer_charges_each_layer_its_own_time(net):
    timer = LayerTimer(net)
    loss = net(torch.randn(32, 8)).square().mean()
    timer.backward(loss)
    fwd, bwd = timer.forward_seconds, timer.backward_seconds
    assert set(fwd) == {"0", "1", "2", "3"}
    assert set(bwd) == {OUTSIDE, "0", "1", "2", "3"}
    assert FWD <= fwd["1"] < FWD + SLACK
    assert BWD <= bwd["1"] < BWD + SLACK  # from its output gradient to the first Linear's
    for name in ("0", "2", "3"):
        assert fwd[name] < SLACK / 2 and bwd[name] < SLACK / 2
    timer.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_timer_sums_a_layer_called_twice_and_resets(slow_layer):
    shared = nn.Linear(4, 4)
    slow = slow_layer(FWD, BWD)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.slow = shared, slow

        def forward(self, x):
            return self.shared(self.slow(self.shared(x)))

    net = Twice()
    timer = LayerTimer(net)
    timer.backward(net(torch.randn(2, 4)).sum())
    assert timer.forward_seconds["slow"] >= FWD
    assert timer.backward_seconds["slow"] >= BWD
    assert timer.backward_seconds["shared"] < SLACK / 2
    timer.reset()
    assert not timer.forward_seconds and not timer.backward_seconds
    timer.remove()


def test_measure_times_medians_and_parts_add_up(net):
    t = measure_times(net, (32, 8), steps=3, warmup=1)
    assert t["training"] and t["steps"] == 3 and t["layout"] == "contiguous"
    step, layers = t["step"], t["layers"]
    assert step["forward"] >= FWD and step["backward"] >= BWD
    assert step["total"] == pytest.approx(step["forward"] + step["backward"] + step["optimizer"], rel=0.2)
    assert FWD <= layers["1"]["forward"] < FWD + SLACK
    assert BWD <= layers["1"]["backward"] < BWD + SLACK
    in_layers = sum(v["forward"] for v in layers.values())
    assert in_layers <= step["forward"] + 1e-6
    assert 0 <= t["outside"]["forward"] < SLACK / 2


def test_measure_times_frozen_network_runs_inference(net):
    t = measure_times(net.requires_grad_(False), (4, 8), steps=2, warmup=1)
    assert not t["training"]
    assert t["step"]["backward"] == 0 and t["step"]["optimizer"] == 0
    assert t["layers"]["1"]["backward"] == 0 and t["layers"]["1"]["forward"] >= FWD


def test_summary_time_rows_totals_text_csv_json():
    s = summary("mnist_fast", batch_size=16, time_steps=2)
    t = s.totals["time"]
    assert t["steps"] == 2 and t["training"] and t["layout"] == "channels_last"
    assert set(t) >= {"forward_ms", "backward_ms", "optimizer_ms", "total_ms", "outside_forward_ms"}
    convs = [r for r in s.layers if r["type"] == "Conv2d"]
    assert len(convs) == 3 and all(r["forward_ms"] > 0 and r["backward_ms"] > 0 for r in convs)
    timed = [r["forward_ms"] for r in s.layers if r.get("forward_ms") is not None]
    assert sum(timed) <= t["forward_ms"] * 1.5  # medians of parts against the median of the whole
    text = render_text(s)
    assert "Fwd ms" in text and "Time of one training step" in text and "the median of 2 real training steps" in text
    rows = list(csv.DictReader(io.StringIO(render_csv(s))))
    assert float(rows[0]["forward_ms"]) == pytest.approx(s.layers[0]["forward_ms"])
    assert json.loads(json.dumps(s.to_dict()))["totals"]["time"]["steps"] == 2


def test_summary_time_leaves_the_callers_network_as_it_was(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s = summary(net, input_size=(8,), batch_size=4, optimizer="adam", time_steps=1)
    assert s.totals["time"]["training"]
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())


def test_summary_without_time_has_no_time():
    s = summary("mnist_fast", batch_size=2)
    assert "time" not in s.totals and "forward_ms" not in s.layers[0]
    assert "Fwd ms" not in render_text(s)


@pytest.mark.parametrize("steps", [0, -1, 1001, True, 2.5])
def test_summary_time_refuses_a_bad_step_count(steps):
    with pytest.raises(CnnkitError, match="--time takes a number of steps from 1 to 1000"):
        summary("mnist_fast", time_steps=steps)


def test_summary_time_refuses_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CnnkitError, match="no CUDA device: use --device cpu"):
        summary("mnist_fast", device="cuda", time_steps=1)


def test_summary_time_refuses_a_meta_network():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(CnnkitError, match="weights are not on the meta device"):
        summary(net, input_size=(8,), time_steps=1)


def test_summary_time_refuses_a_step_that_does_not_fit(monkeypatch):
    import cnnkit.errors

    monkeypatch.setattr(cnnkit.errors, "memory_available", lambda: 1000)
    with pytest.raises(CnnkitError, match=r"timing a training step at batch 64 \(--time\) needs .* available"):
        summary("mnist_fast", batch_size=64, time_steps=1)


def test_cli_summary_time(capsys):
    from cnnkit.cli import main

    assert main(["summary", "mnist_fast", "--batch", "8", "--time", "2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["time"]["steps"] == 2
    assert all("forward_ms" in r for r in out["layers"])


def test_summary_time_runs_inference_where_no_training_step_can_run():
    net = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))  # batch norm on a batch of one: no training step
    s = summary(net, input_size=(8,), batch_size=1, time_steps=2)
    assert s.notes[0].startswith("no training step at batch 1")
    t = s.totals["time"]
    assert not t["training"] and t["backward_ms"] == 0 and t["optimizer_ms"] == 0
    assert all(r["backward_ms"] == 0 for r in s.layers)
    assert "one real inference pass" not in s.notes[-1] and "the median of 2 real inference passes" in s.notes[-1]


def test_summary_time_names_a_failure_that_only_a_real_run_meets():
    class RealOnly(nn.Module):
        def forward(self, x):
            if x.device.type != "meta":
                raise RuntimeError("this layer takes positive values only.\n  some are <= 0: put a softplus before it")
            return x

    net = nn.Sequential(nn.Linear(8, 4), RealOnly())
    with pytest.raises(CnnkitError) as info:
        summary(net, input_size=(8,), batch_size=2, time_steps=1)
    msg = str(info.value)
    assert msg == (
        "the network failed when run for real while timing a training step at batch 2 (--time): "
        "this layer takes positive values only. some are <= 0: put a softplus before it; run without --time"
    )


def test_measure_times_trains_a_strided_pointwise_convolution_of_few_channels_in_nchw():
    """As cnnkit trains: NHWC by default on the CPU, NCHW for a network with a strided 1x1
    convolution over fewer than 8 channels (oneDNN's channels-last AVX2 kernels corrupt memory there)."""
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1, stride=2), nn.Flatten(), nn.LazyLinear(2))
    narrow = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 1, stride=2), nn.Flatten(), nn.LazyLinear(2))
    for model, layout in ((wide, "channels_last"), (narrow, "contiguous")):
        model(torch.zeros(2, 3, 12, 12))  # the lazy layer's size
        assert measure_times(model, (16, 3, 12, 12), steps=2, warmup=1)["layout"] == layout

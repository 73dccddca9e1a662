"""The engine alone, with a task that is not classification: a line fitted from dict batches."""

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from cnnkit.engine import Data, Phase, Plan, Setup, fit
from cnnkit.errors import CnnkitError
from cnnkit.train.checkpoint import read_info

pytestmark = pytest.mark.usefixtures("one_thread")


class LineTask:
    """y = 3x - 1 plus noise; batches are dicts; "score" (= -MSE) names the best epoch."""
    name, metric = "line", "score"

    def __init__(self, batch_size=16):
        self.batch_size = batch_size

    def batches(self, data, generator, train):
        x, y = data
        order = torch.randperm(len(x), generator=generator)
        noise = 0.01 * torch.randn(len(x), 1, generator=generator)      # augmentation draws from g
        return [{"x": x[i], "y": y[i] + noise[i]} for i in order.split(self.batch_size)]

    def loss(self, model, batch):
        err = (model(batch["x"]) - batch["y"]).pow(2)
        n = torch.tensor(float(len(err)))
        return err.mean(), {"loss": err.sum().detach(), "n": n}

    def evaluate(self, model, data):
        with torch.no_grad():
            mse = (model(data[0]) - data[1]).pow(2).mean().item()
        return {"mse": mse, "score": -mse}

    def deployable(self, model):
        return model

    def describe(self, model):
        return {"task": "line", "slope": model.weight.item()}

    def summary(self, model):
        return "a line"


def _data():
    x = torch.linspace(-1, 1, 256).unsqueeze(1)
    return Data((x, 3 * x - 1), (x[::4], 3 * x[::4] - 1))


def _plan(lr=0.1):
    def first(m):       # phase 1: SGD with a linear decay; phase 2: Adam at a constant rate
        return Setup(torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
                     schedule=lambda step, steps: lr * (1 - step / steps), row={"opt": "sgd"})
    return Plan([Phase(3, first, "sgd"), Phase(2, lambda m: Setup(torch.optim.Adam(m.parameters(), 1e-2)), "adam")],
                seed=5, ema=0.9)


def _run(out, **kw):
    torch.manual_seed(0)
    return fit(LineTask(), nn.Linear(1, 1), _data(), _plan(kw.pop("lr", 0.1)), out, quiet=True,
               config={"lr": 0.1}, **kw)


def test_a_two_phase_plan_learns_writes_and_resumes_exactly(tmp_path):
    full = _run(tmp_path / "full")
    assert [r["epoch"] for r in full.history] == [1, 2, 3, 4, 5]
    assert [(r["phase"], r["phase_epoch"]) for r in full.history][2:4] == [("sgd", 3), ("adam", 1)]
    assert full.history[-1]["val_mse"] < 0.05 < full.history[0]["train_loss"]
    assert full.best == max(((r["epoch"], r["val_score"]) for r in full.history), key=lambda t: t[1])
    header = (tmp_path / "full" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,phase,phase_epoch,opt,train_loss,val_mse,val_score,lr,seconds"
    assert read_info(tmp_path / "full")["task"] == "line" and full.images == 5 * 256

    def stop(epoch, row):
        if epoch in (0, 2):          # inside phase 1, and at the boundary before phase 2
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch_end=stop)
    assert read_info(tmp_path / "cut")["interrupted"] is True
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch_end=stop, resume=True)
    cut = _run(tmp_path / "cut", resume=True)
    a, b = (load_file(tmp_path / r / "resume.safetensors") for r in ("full", "cut"))
    for k in a:
        if not k.startswith("rng"):
            assert torch.equal(a[k], b[k]), k
    assert torch.equal(cut.model.weight, full.model.weight)          # the EMA copy, as saved
    with pytest.raises(CnnkitError, match="already holds a run; pass --resume"):
        _run(tmp_path / "full")
    with pytest.raises(CnnkitError, match=r"other settings \(lr\)"):
        fit(LineTask(), nn.Linear(1, 1), _data(), _plan(), tmp_path / "full", quiet=True,
            config={"lr": 0.2}, resume=True)


def test_divergence_is_caught_before_anything_is_saved(tmp_path):
    with pytest.raises(CnnkitError, match=r"loss became (nan|inf) at epoch 1, step \d+ of stage sgd: "
                                          r"training diverged.*received --lr 1e\+30"):
        _run(tmp_path / "r", lr=1e30)
    assert not (tmp_path / "r").exists()

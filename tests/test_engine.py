"""The engine alone, with a task that is not classification: a line fitted from dict batches."""

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

from cnnkit.engine import Data, Phase, Plan, Setup, fit
from cnnkit.engine.config import glibc
from cnnkit.engine.runfolder import read_checkpoint, read_info
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")


class LineTask:
    """y = 3x - 1 plus noise; batches are dicts; "score" (= -MSE) names the best epoch."""

    name, metric = "line", "score"

    def __init__(self, batch_size=16):
        self.batch_size = batch_size

    def batches(self, data, generator, train):
        x, y = data
        order = torch.randperm(len(x), generator=generator)
        noise = 0.01 * torch.randn(len(x), 1, generator=generator)  # augmentation draws from g
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


def _plan(lr=0.1, epochs=(2, 1)):
    def first(m):  # phase 1: SGD with a linear decay; phase 2: Adam at a constant rate
        return Setup(
            torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
            schedule=lambda step, steps: lr * (1 - step / steps),
            row={"opt": "sgd"},
        )

    return Plan(
        [
            Phase(epochs[0], first, "sgd"),
            Phase(epochs[1], lambda m: Setup(torch.optim.Adam(m.parameters(), 1e-2)), "adam"),
        ],
        seed=5,
        ema=0.9,
    )


def _run(out, **kw):
    torch.manual_seed(0)
    return fit(
        LineTask(), nn.Linear(1, 1), _data(), _plan(kw.pop("lr", 0.1)), out, quiet=True, config={"lr": 0.1}, **kw
    )


def test_curves_are_drawn_after_the_last_epoch_each_minute_and_on_ctrl_c(tmp_path, monkeypatch):
    import cnnkit.engine.loop as loop

    drawn = []
    monkeypatch.setattr(loop, "_draw_curves", lambda out, history: drawn.append(len(history)))
    _run(tmp_path / "quick")  # three epochs of milliseconds: one figure, after the last
    assert drawn == [3] and (tmp_path / "quick" / "metrics.csv").read_text().count("\n") == 4
    rows = [{"seconds": s} for s in (25.0, 30.0, 10.0, 70.0, 5.0)]  # 25, 55, 65, 135, 140 s of training
    assert [loop._curves_due(rows[: i + 1]) for i in range(5)] == [False, False, True, True, False]
    drawn.clear()

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch_end=stop)
    assert drawn == [1]  # the interrupted run's figure shows the epoch it saved


def test_ctrl_c_names_the_epoch_the_resume_state_continues_from(tmp_path, monkeypatch, capsys):
    """The line printed on Ctrl-C counts the epochs in resume.safetensors, not the rows printed."""
    import cnnkit.engine.loop as loop

    def stop_after(last):
        def stop(epoch, row):
            if epoch == last:
                raise KeyboardInterrupt

        return stop

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "first", on_epoch_end=stop_after(0))
    assert (
        "`cnnkit train --resume --out " + str(tmp_path / "first") + "` continues from epoch 2"
        in capsys.readouterr().err
    )
    with pytest.raises(KeyboardInterrupt):  # after the last of 3 epochs, all saved: nothing left to train
        _run(tmp_path / "last", on_epoch_end=stop_after(2))
    said = capsys.readouterr().err
    assert "continues from epoch 4" not in said and "all 3 epochs are done" in said
    assert "`cnnkit train --resume --out " + str(tmp_path / "last") + "` finishes the run" in said
    assert _run(tmp_path / "last", resume=True).history[-1]["epoch"] == 3
    saves = []
    real = loop.save_resume

    def cut_second_save(*args, **kw):  # Ctrl-C while epoch 2's resume state is being written
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "save_resume", cut_second_save)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "mid")
    assert "continues from epoch 2" in capsys.readouterr().err  # epoch 1 is what the resume state holds


def test_a_two_phase_plan_learns_writes_and_resumes_exactly(tmp_path):
    full = _run(tmp_path / "full")
    assert [r["epoch"] for r in full.history] == [1, 2, 3]
    assert [(r["phase"], r["phase_epoch"]) for r in full.history][1:] == [("sgd", 2), ("adam", 1)]
    assert full.history[-1]["val_mse"] < 0.05 < full.history[0]["train_loss"]
    assert full.best == max(((r["epoch"], r["val_score"]) for r in full.history), key=lambda t: t[1])
    header = (tmp_path / "full" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,phase,phase_epoch,opt,train_loss,val_mse,val_score,lr,seconds"
    assert read_info(tmp_path / "full")["task"] == "line" and full.images == 3 * 256

    def stop(epoch, row):
        if epoch in (0, 1):  # inside phase 1, and at the boundary before phase 2
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
    assert torch.equal(cut.model.weight, full.model.weight)  # the EMA copy, as saved
    with pytest.raises(CnnkitError, match="already holds a run; pass --resume"):
        _run(tmp_path / "full")
    with pytest.raises(CnnkitError, match=r"other settings \(lr\)"):
        fit(
            LineTask(),
            nn.Linear(1, 1),
            _data(),
            _plan(),
            tmp_path / "full",
            quiet=True,
            config={"lr": 0.2},
            resume=True,
        )
    again = fit(
        LineTask(),
        nn.Linear(1, 1),
        _data(),
        _plan(),
        tmp_path / "full",
        quiet=True,
        config={"lr": 0.1, "val_every": 4},
        resume=True,
    )  # a setting the run predates
    assert len(again.history) == 3 and again.images == 0  # resumed (done), not refused


def test_divergence_is_caught_before_anything_is_saved(tmp_path):
    with pytest.raises(
        CnnkitError,
        match=r"loss became (nan|inf) at epoch 1, step \d+ in phase sgd: "
        r"training diverged.*received --lr 1e\+30",
    ):
        _run(tmp_path / "r", lr=1e30)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- precision


def test_precision_selection():
    from cnnkit.engine.precision import _CPU_BF16_FLAGS, choose, cpu_flags

    cpu = torch.device("cpu")
    assert choose("auto", cpu, native=True) == ("bf16", "auto: this CPU has native bf16 arithmetic")
    assert choose("auto", cpu, native=False)[0] == "fp32"
    assert choose("fp32", cpu, native=True)[0] == "fp32"
    assert choose("bf16", cpu, native=True) == ("bf16", "asked for")
    precision, why = choose("bf16", cpu, native=False)
    assert precision == "bf16" and "no native bf16 arithmetic: it will be slow" in why
    with pytest.raises(CnnkitError, match="--precision must be one of auto, fp32, bf16; received 'fp16'"):
        choose("fp16", cpu)
    native = bool(cpu_flags() & _CPU_BF16_FLAGS)  # detected at run time, not assumed
    assert choose("auto", cpu)[0] == ("bf16" if native else "fp32")


_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse avx avx2 avx512f avx512_bf16

processor\t: 1
model name\t: another
"""


def test_cpu_name_tells_apart_processors_that_share_a_model_name(monkeypatch):
    from cnnkit.engine.precision import cpu_name

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu_name(_ZEN4) == "AMD EPYC (family 25 model 17; AVX-512, AVX512-BF16, no AMX)"
    zen3 = _ZEN4.replace("model\t\t: 17", "model\t\t: 1").replace(" avx512f avx512_bf16", "")
    assert cpu_name(zen3) == "AMD EPYC (family 25 model 1; AVX2, no AMX)"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_name(_ZEN4).endswith("no AMX; oneDNN capped at AVX2)")
    assert cpu_name("Features\t: fp asimd bf16\n").endswith("(oneDNN capped at AVX2)")  # an Arm CPU's text


class DtypeLineTask(LineTask):
    def loss(self, model, batch):
        self.seen = model(batch["x"]).dtype  # what autocast made of the Linear
        return super().loss(model, batch)


class ConvThenLine(nn.Linear):
    """A 1x1 convolution, then the line: a network with a convolution for the engine to guard."""

    def __init__(self, *args):
        super().__init__(*args)
        self.conv = nn.Conv1d(1, 1, 1)

    def forward(self, x):
        return super().forward(self.conv(x[:, None]).flatten(1))


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_bf16_autocasts_the_step_and_keeps_fp32_weights(tmp_path, precision, dtype, capsys):
    task = DtypeLineTask()
    net = ConvThenLine(1, 1)
    run = fit(task, net, _data(), _plan(epochs=(1, 0)), tmp_path / precision, quiet=True, precision=precision)
    assert task.seen == dtype and run.precision == precision
    assert (type(net.conv) is not nn.Conv1d) == (precision == "bf16")  # cnnkit.layers.bf16.guard_bf16
    assert read_info(tmp_path / precision)["precision"] == precision
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / precision / "model.safetensors").values())
    err = capsys.readouterr().err
    from cnnkit.engine.precision import _CPU_BF16_FLAGS, cpu_flags

    slow = precision == "bf16" and not cpu_flags() & _CPU_BF16_FLAGS
    assert err.count("it will be slow") == (1 if slow else 0) and err.count("\n") == (1 if slow else 0)


def test_val_every_validates_every_kth_epoch_and_the_last(tmp_path):
    calls = []

    class Counted(LineTask):
        def evaluate(self, model, data):
            calls.append(1)
            return super().evaluate(model, data)

    plan = _plan(epochs=(2, 3))
    plan.val_every = 2
    torch.manual_seed(0)
    run = fit(Counted(), nn.Linear(1, 1), _data(), plan, tmp_path / "r", quiet=True)
    assert len(calls) == 3  # after epochs 2, 4 and 5 (the last)
    assert [("val_mse" in r) for r in run.history] == [False, True, False, True, True]
    lines = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,phase,phase_epoch,opt,train_loss,val_mse,val_score,lr,seconds"
    assert lines[1].split(",")[5:7] == ["", ""]  # epoch 1: no validation, empty cells
    assert run.best[0] in (2, 4, 5)
    calls.clear()
    plan.val_every = 0  # never: no validation while training
    torch.manual_seed(0)
    run = fit(Counted(), nn.Linear(1, 1), _data(), plan, None, quiet=True)
    assert calls == [] and run.best is None and not any("val_mse" in r for r in run.history)


def test_a_time_budget_stops_after_a_saved_epoch_and_resume_finishes_the_plan(tmp_path, capsys):
    plan = _plan(epochs=(2, 1))
    plan.minutes = 1e-9  # any epoch passes it: training stops after the first
    torch.manual_seed(0)
    cut = fit(LineTask(), nn.Linear(1, 1), _data(), plan, tmp_path / "r", config={"lr": 0.1})
    assert len(cut.history) == 1 and cut.images == 256
    assert "time budget of 1e-09 min used up: stopped after epoch 1 of 3" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "r" / "resume.safetensors")[1]["epoch"] == 1
    full = _run(tmp_path / "full")
    plan.minutes = 0.0
    torch.manual_seed(0)
    rest = fit(LineTask(), nn.Linear(1, 1), _data(), plan, tmp_path / "r", quiet=True, config={"lr": 0.1}, resume=True)
    assert len(rest.history) == 3
    assert torch.equal(rest.model.weight, full.model.weight)


def test_a_config_file_tuple_setting_needs_its_count_and_type(tmp_path):
    from cnnkit.engine.config import read_config_file
    from cnnkit.tasks.detect.config import DetectConfig

    good = tmp_path / "good.yaml"
    good.write_text("scenes: [100, 20]\nstrides: [8, 16]\ntest_scale: 1\n")
    assert read_config_file(good, DetectConfig) == {"scenes": (100, 20), "strides": (8, 16), "test_scale": 1.0}
    for text, received in (("scenes: [1, 2, 3]", "[1, 2, 3]"), ("scenes: abc", "abc"), ("scenes: [1, x]", "x")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text + "\n")
        with pytest.raises(
            CnnkitError, match=rf"bad.yaml: scenes must be a list of 2 ints; received '{re.escape(received)}'"
        ):
            read_config_file(bad, DetectConfig)
    bad.write_text("strides: [8, true]\n")
    with pytest.raises(CnnkitError, match="strides must be a list of ints; received 'True'"):
        read_config_file(bad, DetectConfig)


# every task's run config: (its package under cnnkit.tasks, the class)
TASK_CONFIGS = [
    ("classify", "TrainConfig"),
    ("classify", "FinetuneConfig"),
    ("detect", "DetectConfig"),
    ("instance", "InstanceConfig"),
    ("segment", "SegmentConfig"),
    ("sequence", "SequenceConfig"),
    ("video", "VideoConfig"),
    ("video_predict", "PredictConfig"),
    ("generate", "GenerateConfig"),
    ("style", "StyleTrainConfig"),
]


@pytest.mark.parametrize("module, name", TASK_CONFIGS)
def test_threads_left_unset_is_stored_as_null_in_every_task(module, name):
    """One convention: a run's config holds --threads as given, null when unset (0 when given 0),
    resolved or not; the model's metadata holds the number used (``threads``)."""
    import importlib

    cls = getattr(importlib.import_module(f"cnnkit.tasks.{module}.config"), name)
    cfg = cls()
    resolved = cfg.resolved() if hasattr(cfg, "resolved") else cfg
    assert cfg.to_dict()["threads"] is None and resolved.to_dict()["threads"] is None
    assert cls(threads=0).to_dict()["threads"] == 0


@pytest.mark.parametrize("module, name", TASK_CONFIGS)
def test_a_run_folders_config_yaml_reads_back_as_a_config_file(tmp_path, module, name):
    # config.yaml lists the fields the task uses; --config skips a shared field the command does not
    # take at its default (an older run's config.yaml lists them) and refuses one set to anything else
    import importlib

    from cnnkit.engine.config import config_yaml, read_config_file

    cls = getattr(importlib.import_module(f"cnnkit.tasks.{module}.config"), name)
    path = tmp_path / "config.yaml"
    path.write_bytes(config_yaml(cls().to_dict()))
    read = read_config_file(path, cls)
    assert sorted(read) == sorted(cls().to_dict()) and not set(read) & set(cls.unsupported)
    assert cls(**read).to_dict() == cls().to_dict()
    if cls.unsupported:
        odd = cls.unsupported[0]
        path.write_text(f"{odd}: 12345\n")
        with pytest.raises(CnnkitError, match=rf"does not take '{odd}' \(received '12345'\); remove it"):
            read_config_file(path, cls)


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr: null\n", "lr must be set \\(received null\\)"),
        ("epochs: true\n", "epochs must be an int; received True"),
        ("augment: 7\n", "augment must be a mapping of its settings"),
        ("augment:\n  flip: maybe\n", "augment.flip must be a bool; received 'maybe'"),
        ("augment:\n  spin: 3\n", "unknown setting augment.spin"),
        ("augment:\n  crop: -5\n", "augment.crop must be a number >= 0; received '-5'"),
        ("1: 2\nepochs: 3\n", "'1' is not a setting name; names are words"),
        ("augment:\n  1: 2\n  zz: 3\n", "unknown setting augment.1; known: shift"),
        ("augment:\n  " + "k" * 900 + ": 3\n", "unknown setting augment.k{60}; known"),
    ],
)
def test_a_config_file_value_of_the_wrong_kind_is_one_line(tmp_path, capsys, text, message):
    from cnnkit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_a_config_file_never_runs_the_python_it_names(tmp_path, capsys):
    # a run folder's config.yaml is a valid --config: one from elsewhere must not run code by itself
    from cnnkit.cli import main

    code = tmp_path / "net.py"
    marker = tmp_path / "ran"
    code.write_text(f"open({str(marker)!r}, 'w').write('x')\ndef build(**k):\n    raise SystemExit(7)\n")
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {code}:build\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "names a network built by Python code" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


_MAPPED = """
import ctypes, torch
from cnnkit.engine.config import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped():  # bytes glibc holds in blocks mapped on their own, while a 64 MiB tensor lives
    t = torch.empty(16 << 20)
    return libc.mallinfo2().hblkhd

a = mapped()
kept = keep_freed_memory()
print(a, kept, mapped())
"""


@pytest.mark.skipif(not glibc(), reason="glibc's malloc only")
def test_freed_tensors_memory_is_kept_for_the_next_ones_unless_the_user_set_mallocs_tunables():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    run = lambda extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", _MAPPED], env={**env, **extra}, capture_output=True, text=True, check=True
    ).stdout.split()
    mib = 1 << 20
    before, kept, after = run({})
    # glibc maps a 64 MiB block on its own (above its 32 MiB ceiling) and unmaps it when freed; once
    # kept, the block comes from the heap, which keeps freed memory for the next tensors
    assert int(before) >= 64 * mib and kept == "True" and int(after) <= int(before) - 64 * mib, (before, kept, after)
    before, kept, after = run({"MALLOC_TOP_PAD_": "0"})  # the user's own tunable stands
    assert kept == "False" and int(after) >= 64 * mib, (before, kept, after)


@pytest.mark.parametrize("name", ["sgd", "adamw"])  # NAdam: foreach since it was added
def test_the_optimizers_step_every_tensor_at_once_with_the_for_loops_arithmetic(name):
    from types import SimpleNamespace

    from cnnkit.engine.optim import make_optimizer

    cfg = SimpleNamespace(optimizer=name, lr=0.05, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fast = make_optimizer(nets[0], cfg)
    twin = dict(zip(nets[0].parameters(), nets[1].parameters()))  # the same groups over the copy, one by one
    loop = type(fast)([{**g, "params": [twin[p] for p in g["params"]], "foreach": False} for g in fast.param_groups])
    assert fast.defaults["foreach"] is True
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    for net, opt in zip(nets, (fast, loop)):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)


def test_every_model_records_the_threads_it_trained_with(tmp_path):
    from cnnkit.engine.runfolder import read_info

    _run(tmp_path / "r")  # a task that does not say its threads itself
    assert read_info(tmp_path / "r")["threads"] == torch.get_num_threads()


def test_weight_decay_is_decoupled_with_adamw_and_l2_with_sgd_and_nadam_as_every_help_says():
    """A step on zero loss gradients: AdamW shrinks a conv weight by lr * wd * w (decoupled); SGD
    (Nesterov) and NAdam add wd * w to its gradient (L2); biases are not decayed. Every task's
    --weight-decay help says so."""
    import dataclasses
    from types import SimpleNamespace

    from cnnkit.engine.config import field_help
    from cnnkit.engine.optim import make_optimizer

    docs = os.path.join(os.path.dirname(__file__), "..", "docs")
    sys.path.insert(0, docs)
    try:
        import hooks
    finally:
        sys.path.remove(docs)

    lr, wd = 0.1, 0.5
    for name in ("sgd", "adamw", "nadam"):
        conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            conv.weight.fill_(1.0)
            conv.bias.fill_(1.0)
        opt = make_optimizer(conv, SimpleNamespace(optimizer=name, lr=lr, momentum=0.9, weight_decay=wd))
        for p in conv.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        moved = 1.0 - conv.weight.item()
        expected = {"adamw": lr * wd, "sgd": lr * wd * 1.9, "nadam": pytest.approx(lr, rel=0.1)}[name]
        assert moved == pytest.approx(expected) and conv.bias.item() == 1.0, name
    for cls in (hooks._import(spec) for spec in hooks.task_configs()):
        if any(f.name == "weight_decay" for f in dataclasses.fields(cls)):
            text = field_help(cls, "weight_decay")["help"]
            assert "decoupled with adamw" in text and "L2 term in the gradient with sgd and nadam" in text, cls


def test_the_warm_up_is_the_shares_whole_steps_even_where_floats_fall_short():
    """0.29 of 100 steps is 29 warm-up steps (the float product is 28.999999999999996): step 28 still
    warms up, step 29 is the peak."""
    from types import SimpleNamespace

    from cnnkit.engine.optim import lr_at

    cfg = SimpleNamespace(lr=1.0, schedule="onecycle", warmup=0.29)
    assert lr_at(28, 100, cfg) == pytest.approx(0.04 + 0.96 * 28 / 29)
    assert lr_at(29, 100, cfg) == 1.0


class ChangingLineTask(LineTask):
    """An epoch's batch count differs from the last one's, as under InfoBatch pruning: the epochs
    take the first ``counts[k]`` samples' batches in turn."""

    def __init__(self, counts):
        super().__init__()
        self.counts = iter(counts)

    def batches(self, data, generator, train):
        x, y = data
        if train:
            keep = next(self.counts) * self.batch_size
            x, y = x[:keep], y[:keep]
        return super().batches((x, y), generator, train)


@pytest.mark.parametrize("counts", [(16, 4, 8, 2), (2, 16, 8, 4)])
def test_the_progress_bar_ends_full_when_the_epochs_batch_counts_differ(counts, monkeypatch):
    """Each phase's bar ends at its total, whether later epochs have fewer batches than the first
    (the bar would stop short) or more (it would run past its total)."""
    import cnnkit.engine.loop as loop

    bars, progress = [], loop._progress
    monkeypatch.setattr(loop, "_progress", lambda console, disable: bars.append(progress(console, disable)) or bars[-1])
    torch.manual_seed(0)
    fit(ChangingLineTask(counts), nn.Linear(1, 1), _data(), _plan(epochs=(3, 1)), None, quiet=True)
    done = [(t.completed, t.total) for bar in bars for t in bar.tasks]
    assert done == [(sum(counts[:3]), sum(counts[:3])), (counts[3], counts[3])]


def _ema_decays(monkeypatch, model: nn.Module) -> list[float]:
    """The decay of each EMA update of ``model``'s weights, as applied (a spy on the lerp that averages
    them in), in a list that fills as the run trains."""
    decays, lerp = [], torch._foreach_lerp_
    ours = {p.data_ptr() for p in model.parameters()}

    def spy(tensors, others, weight):
        if isinstance(others, list) and others and others[0].data_ptr() in ours:
            decays.append(1.0 - weight)
        return lerp(tensors, others, weight)

    monkeypatch.setattr(torch, "_foreach_lerp_", spy)
    return decays


@pytest.mark.parametrize("cut", [1, 3], ids=["inside-a-phase", "at-a-phase-boundary"])
def test_the_ema_warms_up_once_over_every_step_the_run_takes_and_resumes_exactly(cut, tmp_path, monkeypatch):
    """The EMA's warm-up counts every optimizer step of the run once: through the second phase and
    across epochs of different lengths (as InfoBatch prunes them), and on from where a run cut after
    ``cut`` epochs stopped, to the uninterrupted run's tensors."""
    counts = (16, 5, 9, 3)  # batches of each epoch; phases of 3 and 1 epochs
    expected = [min(0.9, (1 + n) / (10 + n)) for n in range(sum(counts))]

    def run(out, task, **kw):
        torch.manual_seed(0)
        model = nn.Linear(1, 1)
        decays = _ema_decays(monkeypatch, model)
        plan = _plan(epochs=(3, 1))
        fit(task, model, _data(), plan, out, quiet=True, config={"lr": 0.1}, **kw)
        return decays

    assert run(tmp_path / "full", ChangingLineTask(counts)) == pytest.approx(expected)

    def stop(epoch, row):
        if epoch + 1 == cut:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", ChangingLineTask(counts), on_epoch_end=stop)
    before = len(expected) - sum(counts[cut:])
    assert read_checkpoint(tmp_path / "cut" / "resume.safetensors")[1]["ema_updates"] == before
    after = run(tmp_path / "cut", ChangingLineTask(counts[cut:]), resume=True)
    assert after == pytest.approx(expected[before:])
    for name in ("model.safetensors", "resume.safetensors"):
        a, b = (load_file(tmp_path / r / name) for r in ("full", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng")), name


def test_a_resume_state_without_the_ema_count_keeps_the_average_and_a_bad_count_is_refused(tmp_path):
    """A resume state that lacks the EMA's count of steps resumes with the warm-up taken as over (the
    average is kept at the full decay, not forgotten by a warm-up's first steps); a count that is not
    one is a damaged resume state."""
    import json

    from safetensors.torch import save

    from cnnkit.engine.ema import EMA
    from cnnkit.engine.runfolder import atomic_write_bytes, load_resume

    _run(tmp_path / "run")
    path = tmp_path / "run" / "resume.safetensors"
    tensors, meta = read_checkpoint(path)
    assert meta["ema_updates"] == 3 * 16
    for value, want in ((None, 81), (5, 5)):  # (1 + 81) / (10 + 81) > 0.9: the warm-up is over
        edited = {k: v for k, v in meta.items() if k != "ema_updates"} | (
            {} if value is None else {"ema_updates": value}
        )
        atomic_write_bytes(path, save(tensors, metadata={"cnnkit": json.dumps(edited)}))
        ema = EMA(nn.Linear(1, 1), 0.9)
        load_resume(path, nn.Linear(1, 1), None, ema, torch.Generator().manual_seed(0))
        assert ema.updates == want and min(0.9, (1 + want) / (10 + want)) == (0.9 if value is None else 0.4)
    atomic_write_bytes(path, save(tensors, metadata={"cnnkit": json.dumps({**meta, "ema_updates": "many"})}))
    with pytest.raises(CnnkitError, match="resume state is damaged .*ema_updates 'many' is not a count of steps"):
        load_resume(path, nn.Linear(1, 1), None, EMA(nn.Linear(1, 1), 0.9), torch.Generator().manual_seed(0))


class CountingTask(LineTask):
    """The line, with 192 right answers of 227 samples in its one batch and 96 of 153 in validation."""

    name, metric = "count", "acc"

    def batches(self, data, generator, train):
        return [{"x": data[0][:227], "y": data[1][:227]}]

    def loss(self, model, batch):
        loss, stats = super().loss(model, batch)
        return loss, {**stats, "acc": torch.tensor(192), "n": torch.tensor(227.0)}

    def evaluate(self, model, data):
        return {"acc": 96 / 153}


def test_counts_keep_their_five_decimals_and_the_best_line_prints_the_stored_value(tmp_path, capsys):
    """An epoch's share of right answers is divided in float64 (192 / 227 = 0.8458149..., stored as
    0.84581; float32 gives 0.84582), and the best line prints the stored 96 / 153 = 0.62745 as it is,
    not rounded again (0.6274), and says what it measures and which epoch's model is saved."""
    torch.manual_seed(0)
    plan = Plan([Phase(2, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.01)))])
    run = fit(CountingTask(), nn.Linear(1, 1), _data(), plan, tmp_path / "run", config={"lr": 0.01})
    assert [r["train_acc"] for r in run.history] == [0.84581, 0.84581]
    assert [r["val_acc"] for r in run.history] == [0.62745, 0.62745]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[1:4] == ["train_loss", "train_acc", "val_acc"] and rows[1].split(",")[2:4] == [
        "0.84581",
        "0.62745",
    ]
    out = " ".join(capsys.readouterr().out.split())
    assert "best val acc 0.62745 at epoch 1 of 2 (the saved model is epoch 2's)" in out


def test_json_text_writes_each_nan_or_infinity_as_null_and_files_with_the_tokens_still_read(tmp_path):
    """Python's json writes NaN and inf as bare tokens that strict JSON readers refuse (JSON.parse);
    json_text writes each as null at any depth, every other value as json.dumps does. A model file's
    metadata goes through it; one holding the tokens (written by json.dumps) still reads, its NaN back."""
    import json
    import math

    import numpy as np
    from safetensors.torch import save

    from cnnkit.engine.runfolder import FORMAT, atomic_write_bytes, json_text, read_info, save_model

    def strict(text):
        def refuse(token):
            raise AssertionError(f"{token} in {text}")

        return json.loads(text, parse_constant=refuse)

    nan, inf = float("nan"), float("inf")
    obj = {"AP50": nan, "per_class": {"cat": inf, "dog": 0.25}, "rows": [[-inf, 1], (np.float64(nan), "NaN")]}
    assert strict(json_text(obj)) == {
        "AP50": None,
        "per_class": {"cat": None, "dog": 0.25},
        "rows": [[None, 1], [None, "NaN"]],
    }
    assert json_text([nan, {"a": (inf,)}], indent=1) == '[\n null,\n {\n  "a": [\n   null\n  ]\n }\n]'
    finite = {"a": [0.1, 1e-300, -2.5e300, 7], "b": True, "c": None, "d": {"e": (1.5, "x")}}
    assert json_text(finite) == json.dumps(finite) and json_text(finite, indent=2) == json.dumps(finite, indent=2)
    with pytest.raises(ValueError):  # a NaN key would be written as the token too: refused
        json_text({nan: 1})

    history = [{"epoch": 1, "val_VOC_AP50": nan, "val_loss": inf, "seconds": 0.5}]
    save_model(tmp_path / "new.safetensors", nn.Linear(2, 1), {"format": FORMAT, "history": history})
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        assert strict(f.metadata()["cnnkit"])["history"] == [
            {"epoch": 1, "val_VOC_AP50": None, "val_loss": None, "seconds": 0.5}
        ]
    old = json.dumps({"format": FORMAT, "history": history})  # the tokens, as plain json.dumps writes them
    assert "NaN" in old and "Infinity" in old
    atomic_write_bytes(tmp_path / "old.safetensors", save({"w": torch.zeros(1)}, metadata={"cnnkit": old}))
    row = read_info(tmp_path / "old.safetensors")["history"][0]
    assert math.isnan(row["val_VOC_AP50"]) and row["val_loss"] == inf


def test_the_ema_of_a_network_with_a_torchscript_part_averages_it():
    """A TorchScript module's deepcopy clones its parameters, which autograd records (no leaves, whose
    requires_grad cannot be switched off): the EMA's copy is made without recording, and averages the
    compiled part's weights as it does the others'."""
    from cnnkit.engine.ema import EMA

    torch.manual_seed(0)
    model = nn.Sequential(torch.jit.script(nn.Conv2d(1, 4, 3)), nn.ReLU(), nn.Conv2d(4, 2, 1))
    ema = EMA(model, 0.5)
    assert all(p.is_leaf and not p.requires_grad for p in ema.module.parameters())
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # the first update's decay: min(0.5, 1 / 10) = 0.1
    for b, e in zip(before, ema.module.parameters()):
        assert torch.allclose(e, b + 0.9, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # the trained model is untouched


def test_a_run_cut_while_its_first_resume_state_is_written_starts_again_as_the_line_says(tmp_path, monkeypatch, capsys):
    """Ctrl-C while epoch 1's resume state is being written leaves an interrupted model file of one
    epoch and no resume state: the line says the same command starts the run again, and it does."""
    import cnnkit.engine.loop as loop

    real = loop.save_resume

    def cut_first_save(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_resume", cut_first_save)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut")
    assert "the same command without --resume starts the run again" in capsys.readouterr().err
    info = read_info(tmp_path / "cut")
    assert (info["interrupted"], info["epoch"]) == (True, 1) and not (tmp_path / "cut" / "resume.safetensors").exists()
    monkeypatch.setattr(loop, "save_resume", real)
    again = _run(tmp_path / "cut")
    assert [r["epoch"] for r in again.history] == [1, 2, 3] and read_info(tmp_path / "cut")["interrupted"] is False


class _TwoLayers(LineTask):
    def describe(self, model):
        return {"task": "line"}


def test_a_freeze_stops_its_modules_training_after_its_epochs_skips_their_gradient_and_resumes_exactly(tmp_path):
    """Setup.freeze: the first layer trains for one epoch, then gets no gradient (its weights stay as
    the first epoch left them, the second layer's training goes on); a run cut after each epoch
    resumes to the same weights; every parameter trains again after the run."""

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 1))

    def plan():
        def begin(m):
            return Setup(torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), freeze=(1, [m[0]]))

        return Plan([Phase(3, begin)], seed=5)

    seen, grads = [], []

    def record(epoch, row):
        seen.append([p.detach().clone() for p in model.parameters()])

    model = net()
    model[0].weight.register_hook(lambda g: grads.append(len(seen)))  # the epochs its gradient was computed in
    fit(_TwoLayers(), model, _data(), plan(), tmp_path / "full", quiet=True, on_epoch_end=record)
    steps = -(-256 // 16)
    assert grads == [0] * steps  # the first epoch's steps only
    first, second, third = seen
    assert not torch.equal(first[0], net()[0].weight)  # trained in epoch 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], third[1])  # then frozen
    assert not torch.equal(first[2], second[2]) and not torch.equal(second[2], third[2])  # the rest trains
    assert all(p.requires_grad for p in model.parameters())

    for cut in (0, 1):

        def stop(epoch, row, cut=cut):
            if epoch == cut:
                raise KeyboardInterrupt

        out = tmp_path / f"cut{cut}"
        with pytest.raises(KeyboardInterrupt):
            fit(_TwoLayers(), net(), _data(), plan(), out, quiet=True, on_epoch_end=stop)
        fit(_TwoLayers(), net(), _data(), plan(), out, quiet=True, resume=True)
        a, b = (load_file(tmp_path / r / "resume.safetensors") for r in ("full", out.name))
        for k in a:
            if not k.startswith("rng"):
                assert torch.equal(a[k], b[k]), (cut, k)

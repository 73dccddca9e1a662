"""`torchrun --nproc_per_node 2 -m cnnkit train` on CPU (gloo) matches one process, same global batch."""

import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnkit.tasks.classify.config import preset
from cnnkit.tasks.classify.train import train

NET = """
import torch.nn as nn

def net(num_classes=10, in_channels=1):   # no BatchNorm: its statistics are per process
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
"""


def _free_port() -> int:
    """A free port below Linux's ephemeral range (32768 up): a port the kernel hands out (port 0) can be
    taken again, between this check and the store's bind, by another test worker's gloo connection."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


def test_two_processes_match_one(data_dir, tmp_path):
    (tmp_path / "net.py").write_text(NET)
    model = f"{tmp_path / 'net.py'}:net"
    args = dict(
        model=model,
        data_dir=str(data_dir),
        subset=1024,
        epochs=2,
        batch_size=128,
        lr=0.05,
        ema=0.0,
        tta=False,
        threads=1,
        seed=3,
        device="cpu",
        precision="fp32",  # bf16 autocast (auto on a CPU with native bf16) rounds two shards unlike one batch
        freeze_after=1,  # the first conv stops training after epoch 1: DDP then reduces the others alone
        freeze_until="2",
    )
    train(preset("fast", **args), tmp_path / "one", quiet=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "cnnkit",
        "train",
        "--quiet",
        "--model",
        model,
        "--data-dir",
        str(data_dir),
        "--subset",
        "1024",
        "--epochs",
        "2",
        "--batch-size",
        "128",
        "--lr",
        "0.05",
        "--ema",
        "0",
        "--no-tta",
        "--threads",
        "1",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--freeze-after",
        "1",
        "--freeze-until",
        "2",
        "--out",
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # no process warns of DDP's unused-parameter search or of its gradient buckets' strides
    assert "find_unused_parameters" not in proc.stderr and "Grad strides" not in proc.stderr, proc.stderr[-3000:]
    one, two = (load_file(tmp_path / r / "model.safetensors") for r in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    lines = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3  # one row per epoch, by rank 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "config.yaml",
        "curves.png",
        "metrics.csv",
        "model.safetensors",
        "resume.safetensors",
    ]


def _entry(rank: int, fn, port: int, args: tuple) -> None:
    """One of two processes of a gloo group, as torchrun starts them (its environment variables)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    fn(rank, *args)


def _two_processes(fn, *args) -> None:
    """``fn(rank, *args)`` in two processes that join one process group (a few seconds, no torchrun)."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, _free_port(), args), nprocs=2, join=True)


def _one_pair_runs(rank: int, out: str, runs: list[tuple], ports: list[int]) -> None:
    """Each ``(name, fn, args)`` of ``runs`` as ``fn(rank, *args, folder)``, one after another in this
    pair of processes, each in its own folder ``out/name`` and its own process group on its own master
    port (a process that joined the last group's store, still up, would read that group's addresses)."""
    for (name, fn, args), port in zip(runs, ports, strict=True):
        os.environ["MASTER_PORT"] = str(port)
        folder = Path(out, name)
        folder.mkdir(exist_ok=True)
        fn(rank, *args, str(folder))


def _runs_in_one_pair(out: Path, runs: list[tuple]) -> Path:
    """``out``, after :func:`_one_pair_runs` ran ``runs`` in one pair of processes (one start-up for all)."""
    ports: set[int] = set()
    while len(ports) < len(runs):
        ports.add(_free_port())
    _two_processes(_one_pair_runs, str(out), runs, sorted(ports))
    return out


@pytest.fixture(scope="module")
def two_process_runs(request, tmp_path_factory) -> Path:
    """The module's two-process runs, in one pair of processes, run once for the tests that read them:
    a line fitted by a network with a layer its forward never uses, a line fitted in batches that do
    not split evenly, a loss that diverges in one process's share; where the MNIST data is (the tests
    that read these ask for ``data_dir`` too), an ensemble, and a pruned run whole and cut then resumed."""
    out = tmp_path_factory.mktemp("two-processes")
    runs = [("line", _fit_line, ()), ("odd", _fit_odd_line, ()), ("diverge", _wrappers_at_group_end, ())]
    try:
        data = str(request.getfixturevalue("data_dir"))
    except pytest.skip.Exception:
        data = None
    if data is not None:
        (out / "net.py").write_text(NET)
        model = f"{out / 'net.py'}:net"
        runs += [("ens", _ensemble, (data, model)), ("pruned", _full_and_resumed, (data, model))]
    return _runs_in_one_pair(out, runs)


def _ensemble(rank: int, data_dir: str, model: str, out: str) -> None:
    import importlib
    import time

    classify_train = importlib.import_module("cnnkit.tasks.classify.train")  # the module, not its train()

    save = classify_train.save_ensemble
    if rank == 0:  # rank 0 writes the ensemble a moment late: the other process must wait for it

        def late(*a, **kw):
            time.sleep(1.5)
            return save(*a, **kw)

        classify_train.save_ensemble = late
    args = dict(model=model, data_dir=data_dir, subset=256, epochs=1, batch_size=64, ensemble=2, tta=False)
    try:
        result = train(preset("fast", **args, threads=1, device="cpu", precision="fp32"), out, quiet=True)
    finally:
        classify_train.save_ensemble = save
    Path(out, f"acc{rank}.txt").write_text(repr(result.val_acc))


def test_an_ensemble_under_torchrun_is_read_by_every_process_after_rank_0_wrote_it(data_dir, two_process_runs):
    out = two_process_runs / "ens"
    assert (out / "model.safetensors").is_file()
    assert (out / "acc0.txt").read_text() == (out / "acc1.txt").read_text()  # one ensemble, one score


class _Line(torch.nn.Module):
    """y = w x + b, with a layer the forward never uses (as a detector's stage beyond its last stride)."""

    def __init__(self):
        super().__init__()
        self.used, self.unused = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.used(x)


class _LineTask:
    name, metric = "line", "score"

    def batches(self, data, generator, train):
        x, y = data
        return [(x[i], y[i]) for i in torch.randperm(len(x), generator=generator).split(16)]

    def loss(self, model, batch):
        err = (model(batch[0]) - batch[1]).pow(2)
        return err.mean(), {"loss": err.sum().detach(), "n": torch.tensor(float(len(err)))}

    def evaluate(self, model, data):
        return {"score": 0.0}

    def deployable(self, model):
        return model

    def describe(self, model):
        return {"task": "line"}

    def summary(self, model):
        return "a line"


def _fit_line(rank: int, out: str | None) -> dict:
    from cnnkit.engine import Data, Phase, Plan, Setup, fit

    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 128).unsqueeze(1)
    plan = Plan([Phase(2, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)))], seed=1)
    model = fit(_LineTask(), _Line(), Data((x, 3 * x - 1)), plan, out, quiet=True, device="cpu", precision="fp32").model
    if out is not None:
        torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    return model.state_dict()


def test_a_network_with_parameters_its_forward_never_uses_trains_under_torchrun(two_process_runs):
    one = _fit_line(0, None)
    for rank in (0, 1):
        two = torch.load(two_process_runs / "line" / f"rank{rank}.pt")
        for k in one:
            torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-5)


def _full_and_resumed(rank: int, data_dir: str, model: str, root: str) -> None:
    import torch.distributed as dist

    from cnnkit.engine.distributed import Dist
    from cnnkit.tasks.classify.train import train_one

    args = dict(model=model, data_dir=data_dir, subset=512, epochs=3, batch_size=64, lr=0.05, prune=0.65, tta=False)
    cfg = preset("fast", **args, threads=1, device="cpu", precision="fp32", ema=0.0)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    d = Dist(rank, 2, rank, torch.device("cpu"))
    try:
        train_one(cfg, Path(root, "full"), d, quiet=True)
        train_one(replace(cfg, minutes=1e-6), Path(root, "cut"), d, quiet=True)  # stops after its first epoch
        train_one(cfg, Path(root, "cut"), d, resume=True, quiet=True)
    finally:
        dist.destroy_process_group()


def test_a_pruned_run_resumed_under_torchrun_continues_exactly(data_dir, two_process_runs):
    root = two_process_runs / "pruned"
    full, cut = (load_file(root / r / "model.safetensors") for r in ("full", "cut"))
    for k in full:
        torch.testing.assert_close(cut[k], full[k], atol=0, rtol=0)
    assert (root / "cut" / "metrics.csv").read_text().splitlines()[-1].split(",")[:3] == (
        (root / "full" / "metrics.csv").read_text().splitlines()[-1].split(",")[:3]
    )


def test_the_final_line_speaks_once_and_generate_refuses_torchrun_before_reading_data(tmp_path, monkeypatch, capsys):
    """Under torchrun only rank 0 prints a command's final line; `generate train` refuses a second
    process before it reads a digit."""
    import argparse

    import pytest

    from cnnkit.cli import finished
    from cnnkit.errors import CnnkitError
    from cnnkit.tasks.generate.config import GenerateConfig
    from cnnkit.tasks.generate.train import train as train_gan

    args = argparse.Namespace(quiet=False)
    monkeypatch.setenv("RANK", "1")
    finished(args, "done: rank 1")
    monkeypatch.setenv("RANK", "0")
    finished(args, "done: rank 0")
    assert capsys.readouterr().out == "done: rank 0\n"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CnnkitError, match="runs in one process .* run it without torchrun"):
        train_gan(GenerateConfig(data_dir=str(tmp_path / "nothing-here")), tmp_path / "gan")
    assert not (tmp_path / "gan").exists()


def test_every_sample_of_a_batch_that_does_not_split_evenly_trains_with_its_weight():
    """13 samples over 3 processes: shares of 4, 4 and 5, none dropped; each share's mean loss,
    weighted, makes DDP's average of the gradients the whole batch's mean gradient."""
    from cnnkit.engine.distributed import Dist, batch_length, shard_batch, shard_weight
    from cnnkit.errors import CnnkitError

    torch.manual_seed(0)
    x, y = torch.randn(13, 3), torch.randn(13, 1)
    batch = {"x": x, "y": (y, [f"s{i}" for i in range(13)])}
    ranks = [Dist(r, 3) for r in range(3)]
    parts = [shard_batch(batch, d) for d in ranks]
    assert [len(p["x"]) for p in parts] == [4, 4, 5] and batch_length(batch) == 13
    assert torch.equal(torch.cat([p["x"] for p in parts]), x)
    assert sum((p["y"][1] for p in parts), []) == batch["y"][1]
    line = torch.nn.Linear(3, 1)

    def grad(loss):
        line.zero_grad()
        loss.backward()
        return line.weight.grad.clone()

    whole = grad((line(x) - y).pow(2).mean())
    ddp = sum(grad((line(p["x"]) - p["y"][0]).pow(2).mean() * shard_weight(13, d)) for p, d in zip(parts, ranks)) / 3
    torch.testing.assert_close(ddp, whole)
    assert shard_weight(12, ranks[1]) == 1.0 and shard_weight(5, Dist()) == 1.0
    with pytest.raises(CnnkitError, match="batch of 2 sample.*over 3 processes"):
        shard_weight(2, ranks[0])


def _fit_odd_line(rank: int, out: str | None) -> dict:
    """13 samples in batches of 5, 5 and 3: under two processes, shares of 2 and 3, then 1 and 2."""
    from cnnkit.engine import Data, Phase, Plan, Setup, fit

    class Odd(_LineTask):
        def batches(self, data, generator, train):
            x, y = data
            return [(x[i], y[i]) for i in torch.randperm(len(x), generator=generator).split(5)]

    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 13).unsqueeze(1)
    plan = Plan([Phase(2, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)))], seed=1)
    result = fit(Odd(), _Line(), Data((x, 3 * x - 1)), plan, out, quiet=True, device="cpu", precision="fp32")
    if out is not None:
        torch.save({**result.model.state_dict(), "images": torch.tensor(result.images)}, Path(out) / f"rank{rank}.pt")
    return {**result.model.state_dict(), "images": torch.tensor(result.images)}


@pytest.mark.slow
def test_two_processes_train_every_sample_of_batches_that_do_not_split_evenly(two_process_runs):
    one = _fit_odd_line(0, None)
    assert one["images"] == 26
    for rank in (0, 1):
        two = torch.load(two_process_runs / "odd" / f"rank{rank}.pt")
        for k in one:
            torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-5)


def _recorded_waits(monkeypatch) -> list[str]:
    """The ranks that wait for rank 0 to speak (:func:`cnnkit.cli._let_rank_0_speak`), recorded
    instead of slept."""
    import cnnkit.cli as cli

    waits = []
    monkeypatch.setattr(cli, "_let_rank_0_speak", lambda: waits.append(os.environ["RANK"]))
    return waits


def test_bad_input_under_torchrun_is_said_once_by_rank_0_and_every_rank_fails(tmp_path, monkeypatch, capsys):
    """Every process meets the same bad input: rank 0 alone prints the line, every rank exits with 2
    (rank 1 after its wait for rank 0, recorded here rather than slept)."""
    from cnnkit.cli import main

    waits = _recorded_waits(monkeypatch)
    argv = ["train", "--data-dir", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "run"), "--quiet"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    said = []
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 2
        said.append(capsys.readouterr().err)
    assert said[0] == "" and said[1].count("error:") == 1 and "nothing-here" in said[1]
    assert waits == ["1"]
    assert not (tmp_path / "run").exists()


def test_argparse_says_a_usage_error_or_help_once_under_torchrun_and_every_rank_exits_alike(monkeypatch, capsys):
    """argparse's own output (a bad value, an unknown flag, --help, --version, no command) is printed
    by rank 0 alone; every rank exits with argparse's code (rank 1, on an error, after its wait for
    rank 0, recorded here rather than slept)."""
    from cnnkit.cli import main

    waits = _recorded_waits(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv, code in [
        (["train", "--epochs", "x"], 2),
        (["segment", "train", "--nope"], 2),
        (["train", "--help"], 0),
        (["--version"], 0),
    ]:
        said = []
        waits.clear()
        for rank in ("1", "0"):
            monkeypatch.setenv("RANK", rank)
            with pytest.raises(SystemExit) as stop:
                main(argv)
            assert stop.value.code == code, argv
            said.append(capsys.readouterr())
        assert said[0].out == said[0].err == "", argv
        assert (said[1].err if code else said[1].out).strip(), argv
        assert waits == (["1"] if code else []), argv
    waits.clear()
    monkeypatch.setenv("RANK", "1")
    assert main([]) == 2 and capsys.readouterr().out == ""
    assert waits == ["1"]  # no command is exit 2 as well: rank 1 waits for rank 0's help


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m cnnkit ARGV`` on this machine (gloo, one thread a process)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "cnnkit", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_prints_a_usage_error_and_help_once(tmp_path):
    proc = _torchrun(["train", "--epochs", "x", "--out", str(tmp_path / "run")])
    assert proc.stderr.count("cnnkit train: error: argument --epochs: invalid int value") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("usage: cnnkit train") == 1 and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    proc = _torchrun(["train", "--help"])
    assert proc.returncode == 0 and proc.stdout.count("usage: cnnkit train") == 1, proc.stdout[-3000:]
    assert not (tmp_path / "run").exists()


def test_a_process_other_than_rank_0_waits_before_it_exits_on_bad_input(tmp_path, monkeypatch, capsys):
    """torchrun stops every process when one fails: rank 1 waits (silent) before it exits with code 2,
    so that rank 0 says why first; rank 0 does not wait."""
    import cnnkit.cli as cli

    waits = _recorded_waits(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, waited in (("1", ["1"]), ("0", [])):
        monkeypatch.setenv("RANK", rank)
        waits.clear()
        with pytest.raises(SystemExit) as stop:
            cli.main(["train", "--epochs", "x", "--out", str(tmp_path / "run")])
        assert stop.value.code == 2 and waits == waited
        waits.clear()
        assert cli.main(["train", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "none.yaml")]) == 2
        assert waits == waited
        err = capsys.readouterr().err
        assert ("error" in err) == (rank == "0"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchrun_says_a_bad_input_once_and_writes_nothing(data_dir, tmp_path):
    argv = ["train", "--quiet", "--data-dir", str(data_dir), "--subset", "64", "--batch-size", "1", "--epochs", "1"]
    proc = _torchrun([*argv, "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cnnkit train: error:")]
    assert len(lines) == 1 and "batch of 1 sample(s) cannot be split over 2 processes" in lines[0], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr  # torchrun's report of the failed process: cnnkit's code
    assert not (tmp_path / "run").exists()


def _diverge_in_one_share(rank: int, out: str) -> None:
    """One batch of 4 samples; the last one (rank 1's share) has a NaN target."""
    from cnnkit.engine import Data, Phase, Plan, Setup, fit
    from cnnkit.errors import CnnkitError

    class InOrder(_LineTask):
        def batches(self, data, generator, train):
            return [data]

    x = torch.linspace(-1, 1, 4).unsqueeze(1)
    y = 3 * x - 1
    y[3] = float("nan")
    plan = Plan([Phase(1, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.1)))])
    try:
        fit(InOrder(), _Line(), Data((x, y)), plan, None, quiet=True, device="cpu", precision="fp32")
    except CnnkitError as exc:
        Path(out, f"rank{rank}.txt").write_text(str(exc))


@pytest.mark.slow
def test_a_loss_that_diverges_in_one_process_share_stops_every_process_alike(two_process_runs):
    """Rank 0 says why a run stopped: a loss that became NaN in rank 1's share alone must stop rank 0
    too, with the same message (rank 1's is not printed)."""
    said = [(two_process_runs / "diverge" / f"rank{r}.txt").read_text() for r in range(2)]
    assert said[0] == said[1] and "the loss became nan at epoch 1, step 1" in said[0]


def _wrappers_at_group_end(rank: int, out: str) -> None:
    """The diverging run of :func:`_diverge_in_one_share`, counting the DDP wrappers alive when the
    process group is destroyed."""
    import gc

    import cnnkit.engine.distributed as engine_dist

    destroy = engine_dist.dist.destroy_process_group

    def counted(*args, **kwargs):
        alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
        Path(out, f"alive{rank}.txt").write_text(str(alive))
        return destroy(*args, **kwargs)

    engine_dist.dist.destroy_process_group = counted
    try:
        _diverge_in_one_share(rank, out)
    finally:
        engine_dist.dist.destroy_process_group = destroy


@pytest.mark.slow
def test_a_run_stopped_by_an_error_lets_its_ddp_wrappers_go_before_its_process_group(two_process_runs):
    # a reducer outliving its group (held by the error's traceback until the interpreter's exit) can
    # abort the process ("terminate called without an active exception")
    out = two_process_runs / "diverge"
    assert [(out / f"alive{r}.txt").read_text() for r in range(2)] == ["0", "0"]
    assert "the loss became nan" in (out / "rank0.txt").read_text()


@pytest.mark.parametrize("rank, world", [("", "2"), ("abc", "1"), ("0", "")])
def test_a_rank_or_world_size_torchrun_did_not_set_is_no_torchrun(monkeypatch, capsys, rank, world):
    # RANK / WORLD_SIZE that are not integers were not set by torchrun: one process, which speaks
    from cnnkit.cli import main
    from cnnkit.engine.config import launched

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    assert launched() == (0, 1)
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("cnnkit ")

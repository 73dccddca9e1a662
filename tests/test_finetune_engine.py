"""Fine-tuning through the engine: exact resume (library and CLI), the NaN guard, torchrun == 1 process."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import _free_port
from test_transfer import small_vgg, toy_set

import cnnkit
import cnnkit.engine.loop as loop
from cnnkit.cli import main
from cnnkit.engine.runfolder import read_info
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.finetune import finetune

pytestmark = pytest.mark.usefixtures("one_thread")
STAGED = dict(stages=("head", "top"), epochs=2, batch_size=8, lr_head=1e-2, lr_top=1e-2)  # two short stages


def _same_files(a, b, exact=True):
    """Every tensor of the two runs' model and resume files equal (``exact=False``: up to rounding)."""
    for name in ("model.safetensors", "resume.safetensors") if exact else ("model.safetensors",):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            if exact and not k.startswith("rng"):
                assert torch.equal(ta[k], tb[k]), (name, k)
            elif not exact:
                torch.testing.assert_close(tb[k], ta[k], atol=1e-5, rtol=1e-4)


def test_interrupted_stages_resume_to_the_same_weights(tmp_path):
    """Cut after epoch 1 (inside the cached head stage), 2 (the head/top boundary: a new optimizer)
    and 3 (inside top, Adam state restored): the same bytes as one uninterrupted run."""
    kw = dict(STAGED, augment=lambda x, g: x + 0.01 * torch.rand(x.shape, generator=g))  # draws from g

    def run(out, **more):
        torch.manual_seed(0)
        net = small_vgg()
        return net, finetune(net, toy_set(), toy_set(seed=1), out=out, **kw, **more)

    full_net, full = run(tmp_path / "full")
    cut = tmp_path / "cut"
    for stop in (1, 2, 3):

        def interrupt(row, stop=stop):  # after the epoch's files are written
            if read_info(cut)["epoch"] == stop:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run(cut, resume=stop > 1, log=interrupt)
    net, rows = run(cut, resume=True)
    _same_files(tmp_path / "full", cut)
    for k, v in full_net.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    assert [(r["stage"], r["epoch"]) for r in rows] == [("head", 1), ("head", 2), ("top", 1), ("top", 2)]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full]
    lines = (cut / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,phase,phase_epoch,trainable,train_loss,train_acc,val_loss,val_acc")
    assert len(lines) == 5 and (cut / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(CnnkitError, match="trained with other settings"):
        finetune(small_vgg(), toy_set(), toy_set(seed=1), out=cut, resume=True, **{**kw, "lr_top": 1e-3})


def test_diverging_finetune_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(CnnkitError, match=r"at epoch 2, step \d+ in phase top: training diverged"):
        finetune(
            small_vgg(),
            toy_set(),
            toy_set(seed=1),
            stages=("head", "top"),
            epochs=1,
            batch_size=8,
            lr_top=1e30,
            out=tmp_path,
        )
    info = read_info(tmp_path)
    assert info["epoch"] == 1 and [r["phase"] for r in info["history"]] == ["head"]
    for name in ("model.safetensors", "resume.safetensors"):
        for k, v in load_file(tmp_path / name).items():
            assert torch.isfinite(v.float()).all(), (name, k)


def _cli(data_dir, out, *more):
    return [
        "classify",
        "finetune",
        "--model",
        "resnet18",
        "--data",
        str(data_dir / "hymenoptera"),
        "--image-size",
        "32",
        "--stages",
        "head,top",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--quiet",
        "--out",
        str(out),
        *more,
    ]


def test_cli_finetune_resumes_exactly_and_torchrun_matches_one_process(data_dir, tmp_path, monkeypatch, capsys):
    """`cnnkit finetune` cut by Ctrl-C after its first epoch and resumed gives the uninterrupted
    run's bytes; under torchrun (2 processes, gloo) the same weights up to float rounding -- BN
    stays frozen (eval) while fine-tuning, so two shards of each batch are one batch. In fp32: under
    bf16 autocast (the default on a CPU with native bf16) two shards round differently from one batch."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    assert main(_cli(data_dir, tmp_path / "one", "--precision", "fp32", "--threads", "1")) == 0
    assert capsys.readouterr().out == ""  # --quiet: no data line, scores or file name either
    assert cnnkit.load(tmp_path / "one").info["threads"] == 1
    save = loop._save_run

    def save_then_stop(out, *args):
        save(out, *args)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's files

    monkeypatch.setattr(loop, "_save_run", save_then_stop)
    assert main(_cli(data_dir, tmp_path / "cut", "--precision", "fp32")) == 130
    monkeypatch.setattr(loop, "_save_run", save)
    assert cnnkit.load(tmp_path / "cut").info["interrupted"] is True
    # the settings that say where, how fast and how long it computes may change (the command keeps
    # them in its config's "args"): the cut run had no --threads and no budget
    resume = ["classify", "finetune", "--resume", "--out", str(tmp_path / "cut"), "--quiet"]
    assert main([*resume, "--threads", "1", "--minutes", "5"]) == 0
    assert read_info(tmp_path / "cut")["args"]["threads"] == 1
    _same_files(tmp_path / "one", tmp_path / "cut")
    assert cnnkit.load(tmp_path / "cut").info["finetune"]["stages"] == ["head", "top"]

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
        *(a for a in _cli(data_dir, tmp_path / "two", "--precision", "fp32") if a != "--quiet"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("244 train / 153 val images") == 1  # rank 0 speaks, and writes:
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "config.yaml",
        "curves.png",
        "metrics.csv",
        "model.safetensors",
        "resume.safetensors",
        "split.json",
    ]
    _same_files(tmp_path / "one", tmp_path / "two", exact=False)


def test_bf16_training_checkpoint_loads_and_predicts_in_fp32(data_dir, tmp_path, capsys):
    """`cnnkit train --precision bf16` (emulated on a CPU without native bf16: a one-line notice)."""
    from test_train import TINY

    (tmp_path / "tiny.py").write_text(TINY)
    assert (
        main(
            [
                "train",
                "--model",
                f"{tmp_path / 'tiny.py'}:tiny",
                "--subset",
                "512",
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--threads",
                "1",
                "--no-tta",
                "--precision",
                "bf16",
                "--quiet",
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    model = cnnkit.load(tmp_path / "r")
    assert model.info["precision"] == "bf16" and model.info["config"]["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.rand(4, 1, 28, 28)
    assert model(x).dtype == torch.float32
    assert main(["eval", str(tmp_path / "r"), "--split", "val", "--precision", "fp32", "--format", "json"]) == 0
    import json

    acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert acc == pytest.approx(model.info["history"][-1]["val_acc"], abs=0.02)  # bf16 vs fp32 answers


def test_stage_top_on_cached_activations_trains_as_on_the_whole_network():
    """Without augmentation, stage top trains its layers on the activations entering them, computed
    once (the layers below are frozen): the same weights as running the whole network every step."""
    from cnnkit.tasks.classify.finetune import _halves

    kw = dict(
        STAGED,
        cache_flips=False,
        head="features",
        precision="fp32",
    )
    nets = []
    for cache in (True, False):
        torch.manual_seed(0)
        net = small_vgg()
        finetune(net, toy_set(), toy_set(seed=1), cache_features=cache, **kw)
        nets.append(net)
    cached, whole = (dict(n.named_parameters()) for n in nets)
    assert max((cached[k] - whole[k]).abs().max().item() for k in cached) < 1e-4
    moved = (cached["10.weight"] - small_vgg_at_seed_0()["10.weight"]).abs().max().item()
    assert moved > 1e-3  # the last convolution did train
    below, above = _halves(nets[0].eval(), "10", torch.rand(1, 3, 16, 16))
    assert len(below) == 10 and len(above) == 4  # split before it: conv, BN, ReLU, pool above


def small_vgg_at_seed_0():
    torch.manual_seed(0)
    return dict(small_vgg().named_parameters())


def test_a_network_whose_forward_is_not_a_chain_is_not_split_and_stage_top_still_trains():
    from cnnkit.tasks.classify.finetune import _halves

    class Skip(torch.nn.Module):  # forward_features adds its input back: not its modules in turn
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.block = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 2)

        def forward_features(self, x):
            x = self.stem(x)
            return x + self.block(x)

        def forward_head(self, x):
            return self.fc(x.mean((2, 3)))

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    torch.manual_seed(0)
    net = Skip()
    assert _halves(net.eval(), "block", torch.rand(1, 3, 16, 16)) is None
    before = net.block.weight.detach().clone()
    history = finetune(
        net,
        toy_set(),
        toy_set(seed=1),
        stages=("head", "top"),
        freeze_until="block",
        epochs=1,
        batch_size=8,
        lr_top=1e-2,
    )
    assert [r["stage"] for r in history] == ["head", "top"]
    assert (net.block.weight - before).abs().max().item() > 1e-4


def test_auto_stages_try_head_and_top_on_the_cache_and_keep_the_lower_val_loss(tmp_path):
    """``stages="auto"``: both candidates train on the cached data from the same start; the run is
    the one with the lower validation loss, recorded in the checkpoint, and a resumed run keeps it."""
    from cnnkit.engine.runfolder import resumed_config

    kw = dict(epochs=2, batch_size=8, lr_head=1e-2, lr_top=1e-2, head="features", precision="fp32")
    torch.manual_seed(0)
    net = small_vgg()
    history = finetune(net, toy_set(), toy_set(seed=1), stages="auto", out=tmp_path / "run", **kw)
    info = read_info(tmp_path / "run")
    losses = info["finetune_stages"]["val_loss"]
    assert set(losses) == {"head", "top"} and losses["head"] != losses["top"]
    chosen = min(losses, key=losses.get)
    assert info["finetune_stages"]["stages"] == [chosen] and {r["stage"] for r in history} == {chosen}
    assert resumed_config(tmp_path / "run")["finetune"]["stages"] == [chosen]
    # the chosen stage alone, run as such, ends with the trial's validation loss
    torch.manual_seed(0)
    alone = finetune(small_vgg(), toy_set(), toy_set(seed=1), stages=(chosen,), **kw)
    assert alone[-1]["val_loss"] == pytest.approx(losses[chosen], rel=1e-5)
    assert history[-1]["val_loss"] == pytest.approx(losses[chosen], rel=1e-5)


def test_the_winning_candidate_is_kept_not_trained_again_and_its_folder_is_a_finished_run(tmp_path, monkeypatch):
    """The candidates train once each; the run folder holds the winner as fit would have left it
    (weights, history, metrics.csv, resume state), and resuming it trains nothing."""
    import cnnkit.engine as engine

    calls = []
    fit = engine.fit
    monkeypatch.setattr(engine, "fit", lambda *a, **k: calls.append(a[4]) or fit(*a, **k))
    kw = dict(epochs=2, batch_size=8, lr_head=1e-2, lr_top=1e-2, head="features", precision="fp32")
    torch.manual_seed(0)
    net = small_vgg()
    history = finetune(net, toy_set(), toy_set(seed=1), stages="auto", out=tmp_path / "run", **kw)
    assert calls == [None, None]  # stage head and stage top, tried without a folder; no third run
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml",
        "curves.png",
        "metrics.csv",
        "model.safetensors",
        "resume.safetensors",
    ]
    assert len(read_info(run)["history"]) == len(history) == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    saved = load_file(run / "model.safetensors")
    for name, value in net.state_dict().items():  # the file holds the network as finetune left it
        assert any(k.endswith(name) and torch.equal(v, value) for k, v in saved.items()), name
    model_bytes = (run / "model.safetensors").read_bytes()
    again = finetune(small_vgg(), toy_set(), toy_set(seed=1), stages="auto", out=run, resume=True, **kw)
    assert calls[2:] == [run] and [r["val_loss"] for r in again] == [r["val_loss"] for r in history]
    assert (run / "model.safetensors").read_bytes() == model_bytes  # nothing left to train or write
    with pytest.raises(CnnkitError, match="already holds a run"):  # before any candidate trains
        finetune(small_vgg(), toy_set(), toy_set(seed=1), stages="auto", out=run, **kw)
    assert len(calls) == 3


def test_auto_stages_without_a_validation_split_train_the_head():
    torch.manual_seed(0)
    history = finetune(small_vgg(), toy_set(), None, stages="auto", epochs=1, batch_size=8, precision="fp32")
    assert [r["stage"] for r in history] == ["head"]


def test_finetune_says_which_model_each_accuracy_it_prints_is_of(tmp_path, monkeypatch, capsys):
    """The best line is the per-epoch validation's best epoch, as metrics.csv holds it; the final line
    is the saved model's (the last epoch's) with its flip TTA, as `cnnkit eval` scores it."""
    import json
    import re

    from test_honest_eval import _noise_photos

    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    _noise_photos(tmp_path / "photos", 12)
    run = tmp_path / "run"
    argv = ["--model", "resnet18", "--image-size", "16", "--stages", "head,top", "--epochs", "1", "--threads", "1"]
    assert main(["classify", "finetune", "--data", str(tmp_path / "photos"), *argv, "--out", str(run)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    accs = [row[rows[0].index("val_acc")] for row in rows[1:]]
    best = max(range(2), key=lambda i: (float(accs[i]), -i))
    saved = "" if best == 1 else " (the saved model is epoch 2's)"
    assert f"best val acc {accs[best]} at epoch {best + 1} of 2{saved} " in said
    final = re.search(r"val accuracy (\S+) on (\d+) images: the saved model \(epoch 2\) with flip TTA", said)
    assert final is not None, said[-400:]
    assert main(["eval", str(run), "--split", "val", "--format", "json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert float(final[1]) == round(scored["accuracy"], 4) and int(final[2]) == scored["n"]

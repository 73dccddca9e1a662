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
    kw = dict(
        stages=("head", "top"),
        epochs=2,
        batch_size=8,
        lr_head=1e-2,
        lr_top=1e-2,
        augment=lambda x, g: x + 0.01 * torch.rand(x.shape, generator=g),
    )  # draws from g

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


def test_cli_finetune_resumes_exactly_and_torchrun_matches_one_process(data_dir, tmp_path, monkeypatch):
    """`cnnkit finetune` cut by Ctrl-C after its first epoch and resumed gives the uninterrupted
    run's bytes; under torchrun (2 processes, gloo) the same weights up to float rounding -- BN
    stays frozen (eval) while fine-tuning, so two shards of each batch are one batch. In fp32: under
    bf16 autocast (the default on a CPU with native bf16) two shards round differently from one batch."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    assert main(_cli(data_dir, tmp_path / "one", "--precision", "fp32")) == 0
    save = loop._save_run

    def save_then_stop(out, *args):
        save(out, *args)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's files

    monkeypatch.setattr(loop, "_save_run", save_then_stop)
    assert main(_cli(data_dir, tmp_path / "cut", "--precision", "fp32")) == 130
    monkeypatch.setattr(loop, "_save_run", save)
    assert cnnkit.load(tmp_path / "cut").info["interrupted"] is True
    assert main(["classify", "finetune", "--resume", "--out", str(tmp_path / "cut"), "--quiet"]) == 0
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
        *_cli(data_dir, tmp_path / "two", "--precision", "fp32"),
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

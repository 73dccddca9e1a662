"""`torchrun --nproc_per_node 2 -m cnnkit video-predict train` on CPU (gloo) equals one process at the
same global batch (SimVP's GroupNorm has no per-process statistics), and `cnnkit video train` runs
under torchrun with rank 0 alone writing the run folder."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from test_distributed import _free_port

from cnnkit.cli import main

SMALL = ["--clips", "32", "--val-clips", "8", "--test-clips", "8", "--epochs", "1", "--batch-size", "8"]


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    head += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "cnnkit"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(head + argv, capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_train_the_predictor_as_one(data_dir, tmp_path, monkeypatch):
    """Under torchrun the weights of one process; that run, read only for its weights, draws no curves.png."""
    import cnnkit.engine.loop as loop

    common = ["video-predict", "train", "--data-dir", str(data_dir), *SMALL, "--threads", "1", "--seed", "5"]
    common += ["--device", "cpu", "--precision", "fp32", "--quiet"]  # bf16 rounds two shards unlike one batch
    with monkeypatch.context() as patched:
        patched.setattr(loop, "_draw_curves", lambda out, history: None)
        assert main([*common, "--out", str(tmp_path / "one")]) == 0
    proc = _torchrun([*common, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (load_file(tmp_path / r / "model.safetensors") for r in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-4, rtol=1e-3)  # summation order only
    assert len((tmp_path / "two" / "metrics.csv").read_text().splitlines()) == 2  # one epoch, by rank 0


def test_the_clip_classifier_trains_under_torchrun(data_dir, tmp_path):
    argv = ["video", "train", "--data-dir", str(data_dir), *SMALL, "--threads", "1", "--device", "cpu", "--quiet"]
    proc = _torchrun([*argv, "--out", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "val_both" in rows[0], rows
    assert {"model.safetensors", "resume.safetensors", "metrics.csv"} <= {p.name for p in (tmp_path / "run").iterdir()}

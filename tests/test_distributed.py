"""`torchrun --nproc_per_node 2 -m cnnkit train` on CPU (gloo) matches one process, same global batch."""

import os
import socket
import subprocess
import sys

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        "--out",
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
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

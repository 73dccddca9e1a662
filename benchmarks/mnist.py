"""MNIST benchmark of the training presets against the notes' Keras network (seed 000, exercise 9).

    python benchmarks/mnist.py --data-dir ../shared/data                 # fast + best + baseline
    python benchmarks/mnist.py --presets fast --seeds 3 --no-baseline    # mean/spread over seeds
    python benchmarks/mnist.py --presets best --trainval --no-baseline   # the refit on all 60,000

For each preset: training wall time, test accuracy (the test set is only reported, never used to
choose), training images/s, the model's forward MACs per image, and the achieved GFLOP/s of the
training step (6 x MACs x images/s: forward + two backward matmuls) against this machine's measured
fp32 matmul GFLOP/s at the same thread count -- the physical ceiling. The baseline is the notes'
network trained the notes' way: Nadam (lr 1e-3), batch 32, 10 epochs, no augmentation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import cnnkit
from cnnkit.data.augment import AugmentConfig
from cnnkit.data.datasets import load_dataset
from cnnkit.train.config import TrainConfig, preset
from cnnkit.train.evaluate import evaluate
from cnnkit.train.trainer import train

# the notes' exercise 9, the notes' way (Keras defaults: Nadam lr 1e-3, batch 32, 10 epochs)
BASELINE = dict(model="exercise9_mnist", epochs=10, batch_size=32, lr=1e-3, optimizer="nadam",
                schedule="constant", weight_decay=0.0, label_smoothing=0.0, ema=0.0, tta=False,
                augment=AugmentConfig())


def _best_seconds(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gflops(threads: int, n: int = 2048, repeat: int = 10) -> float:
    """torch.matmul's fp32 throughput (MKL sgemm): the issue's "measured fp32 matmul" ceiling."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _best_seconds(lambda: a @ b, repeat) / 1e9


def onednn_gemm_gflops(threads: int, n: int = 1024, repeat: int = 10) -> float:
    """The same fp32 GEMM (n x n times n x n) run as a 1x1 convolution, i.e. by oneDNN, the library
    PyTorch's CPU convolutions use. On CPUs where MKL picks a narrower kernel than the hardware has
    (AMD Zen 5: AVX2 in MKL, AVX-512 in oneDNN) this is the higher, physical ceiling."""
    torch.set_num_threads(threads)
    x = torch.randn(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)  # n pixels, n channels
    w = torch.randn(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    return 2 * n ** 3 / _best_seconds(lambda: torch.nn.functional.conv2d(x, w), repeat) / 1e9


def forward_macs(model: torch.nn.Module, input_size) -> float:
    """MACs of one image's forward pass, counted by PyTorch's own FlopCounterMode (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, *input_size))
    return counter.get_total_flops() / 2


def train_flops(model: torch.nn.Module, input_size) -> float:
    """FLOPs of one image's training step (forward + backward), as FlopCounterMode counts them: the
    first conv computes no input gradient, so this is a little under 6 x MACs."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.train()
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(2, *input_size)).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def run_one(name: str, cfg: TrainConfig, test, workdir: Path, console: Console) -> list[dict]:
    """Train ``cfg`` (an ensemble when cfg.ensemble > 1); one row per member, plus the ensemble's."""
    out = workdir / f"{name}-seed{cfg.seed}"
    t = time.perf_counter()
    result = train(cfg, out, quiet=True)
    wall = time.perf_counter() - t
    members = result.members or [result]
    rows = []
    for i, member in enumerate(members):
        model = cnnkit.load(member.out)
        acc = evaluate(model, test).accuracy
        rows.append(dict(name=name, seed=cfg.seed + i, train_s=member.seconds, wall_s=wall, test_acc=acc,
                         ips=member.images / member.seconds, macs=forward_macs(model.net, model.input_size),
                         flops=train_flops(model.net, model.input_size)))
        console.print(f"{name} seed {cfg.seed + i}: test {acc:.2%}, training {member.seconds:.1f} s, "
                      f"{rows[-1]['ips']:,.0f} img/s")
    if cfg.ensemble > 1:
        acc = evaluate(cnnkit.load(out), test).accuracy
        rows.append(dict(rows[-1], name=f"{name} ensemble of {cfg.ensemble}", test_acc=acc,
                         train_s=result.seconds, ips=result.images / result.seconds))
        console.print(f"{name} ensemble of {cfg.ensemble}: test {acc:.2%}, training {result.seconds:.1f} s")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="folder holding mnist/ (else $CNNKIT_DATA)")
    p.add_argument("--presets", nargs="*", default=["fast", "best"],
                   help="presets to train (none: only the baseline)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per preset (mean and spread)")
    p.add_argument("--ensemble", type=int, default=1,
                   help="train each preset as `--ensemble K` (members are seeds 0..K-1) and report "
                        "every member and the ensemble")
    p.add_argument("--trainval", action="store_true",
                   help="the presets' final refit on train + val (all 60,000 images; rows named PRESET+val)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--no-baseline", action="store_true", help="skip the notes' Keras network")
    p.add_argument("--baseline-epochs", type=int, default=10, help="the notes train 10 epochs")
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = p.parse_args(argv)

    import os

    threads = args.threads or os.cpu_count() or 1
    console = Console(width=120)
    mkl, onednn = matmul_gflops(threads), onednn_gemm_gflops(threads)
    console.print(f"fp32 GEMM on {threads} threads: torch.matmul (MKL) {mkl:,.0f} GFLOP/s, "
                  f"oneDNN (1x1 conv) {onednn:,.0f} GFLOP/s")
    test = load_dataset("mnist", "test", args.data_dir)
    jobs = [(name + ("+val" if args.trainval else ""), preset(
        name, data_dir=args.data_dir, threads=threads, ensemble=args.ensemble, trainval=args.trainval))
            for name in args.presets]
    if not args.no_baseline:
        jobs.append(("notes-keras", replace(TrainConfig(data_dir=args.data_dir, threads=threads),
                                            **{**BASELINE, "epochs": args.baseline_epochs})))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.out or tmp)
        for name, cfg in jobs:
            seeds = 1 if name == "notes-keras" or cfg.ensemble > 1 else args.seeds
            for seed in range(seeds):
                rows += run_one(name, replace(cfg, seed=seed), test, workdir, console)

    table = Table(title=f"MNIST, {threads} threads; fp32 GEMM ceiling: torch.matmul {mkl:,.0f}, "
                        f"oneDNN {onednn:,.0f} GFLOP/s")
    for col in ("run", "seeds", "test acc", "training s", "img/s", "MMACs/img", "GFLOP/s",
                "% matmul", "% oneDNN"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = [r for r in rows if r["name"] == name]
        accs = [r["test_acc"] for r in rs]
        spread = f" ± {statistics.stdev(accs):.2%} (min {min(accs):.2%})" if len(accs) > 1 else ""
        ips = statistics.mean(r["ips"] for r in rs)
        gflops = rs[0]["flops"] * ips / 1e9          # forward + backward FLOPs per image
        table.add_row(name, str(len(rs)), f"{statistics.mean(accs):.2%}{spread}",
                      f"{statistics.mean(r['train_s'] for r in rs):.1f}", f"{ips:,.0f}",
                      f"{rs[0]['macs'] / 1e6:.2f}", f"{gflops:.0f}", f"{gflops / mkl:.0%}",
                      f"{gflops / onednn:.0%}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

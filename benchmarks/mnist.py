"""MNIST benchmark of the training presets against the notes' Keras network (seed 000, exercise 9).

    python benchmarks/mnist.py --data-dir ../shared/data                 # fast + best + baseline
    python benchmarks/mnist.py --presets fast --seeds 3 --no-baseline    # mean/spread over seeds
    python benchmarks/mnist.py --presets best --trainval --no-baseline   # the refit on all 60,000
    python benchmarks/mnist.py --presets --plain                         # notes' network: cnnkit vs bare PyTorch
    python benchmarks/mnist.py --presets --keras /path/to/tf/bin/python  # ... and vs Keras on TensorFlow
    python benchmarks/mnist.py --presets --no-baseline --step             # the step's variants (compile, ...)
    python benchmarks/mnist.py --presets fast --seeds 3 --no-baseline --precisions fp32 bf16   # bf16 parity

For each preset: training wall time, test accuracy (the test set is only reported, never used to
choose), training images/s, the model's forward MACs per training image (at the size it trains on:
`fast`'s 24x24 windows), and the achieved GFLOP/s of the training step (6 x MACs x images/s: forward
+ two backward matmuls) against this machine's measured fp32 matmul GFLOP/s at the same thread count
-- the physical ceiling -- and, per row, the fraction of the convolution ceiling of the precision it
trained in (fp32 and bf16 matmul and the issue's 64->64 3x3 convolution are measured first; the
report says whether this CPU has native bf16). The baseline is the notes' network trained the notes'
way: Nadam (lr 1e-3), batch 32, 10 epochs, no augmentation; with ``--keras`` the same network and
settings in Keras (`benchmarks/keras_mnist.py`, run by a Python that has TensorFlow, in its own
process right after cnnkit's) and the ratio of the two images/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
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
from cnnkit.engine.precision import choose, cpu_name, native_bf16
from cnnkit.engine.runfolder import read_info
from cnnkit.tasks.classify.config import TrainConfig, preset
from cnnkit.tasks.classify.evaluate import evaluate
from cnnkit.tasks.classify.train import train

# the target for preset fast (as benchmarks/profile_tasks.py and docs/benchmarks.md state it)
TARGET = "fast: test >= 99.5% on every seed, training <= 40 s on the AMD EPYC Zen 3 (2 threads, fp32)"

# the notes' exercise 9, the notes' way (Keras defaults: Nadam lr 1e-3, batch 32, 10 epochs)
BASELINE = dict(
    model="exercise9_mnist",
    epochs=10,
    batch_size=32,
    lr=1e-3,
    optimizer="nadam",
    schedule="constant",
    weight_decay=0.0,
    label_smoothing=0.0,
    ema=0.0,
    tta=False,
    augment=AugmentConfig(),
)


def _seconds(fn, repeat: int, warmup: int = 3) -> list[float]:
    """Wall seconds of each of ``repeat`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _best_seconds(fn, repeat: int) -> float:
    return min(_seconds(fn, repeat))


def matmul_gflops(threads: int, n: int = 2048, repeat: int = 10, dtype=torch.float32) -> float:
    """torch.matmul's throughput (fp32: MKL sgemm): the issue's "measured matmul" ceiling."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeat) / 1e9


def conv_gflops(threads: int, dtype=torch.float32, batch: int = 128, repeat: int = 10) -> float:
    """The issue's convolution: 64 -> 64 channels, 3x3, 14x14 maps, channels-last, in ``dtype``."""
    torch.set_num_threads(threads)
    x = torch.randn(batch, 64, 14, 14, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * 14 * 14 * 64 * 64 * 9
    return flops / _best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeat) / 1e9


def ceilings(threads: int) -> tuple[dict[str, dict[str, float]], bool]:
    """({"fp32" | "bf16": {"gemm", "conv"} GFLOP/s}, native bf16?). Emulated bf16 is ~1,000x slower
    than native, so without native bf16 a smaller problem keeps the measurement to seconds."""
    native = native_bf16(torch.device("cpu"))
    n, batch = (2048, 128) if native else (256, 2)
    return {
        "fp32": {"gemm": matmul_gflops(threads), "conv": conv_gflops(threads)},
        "bf16": {
            "gemm": matmul_gflops(threads, n, dtype=torch.bfloat16),
            "conv": conv_gflops(threads, torch.bfloat16, batch),
        },
    }, native


def plain_pytorch(data_dir, epochs: int, threads: int, seed: int = 0) -> dict:
    """The notes' network the notes' way (Nadam 1e-3, batch 32, pixels / 255) in a bare PyTorch loop
    -- no engine, no progress, no checkpoints --, validated after every epoch as Keras' fit does:
    what cnnkit's engine costs on top of PyTorch itself."""
    import torch.nn.functional as F

    from cnnkit.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_set, val_set = load_dataset("mnist", "train", data_dir), load_dataset("mnist", "val", data_dir)
    x, y = train_set.images.float().div(255), train_set.labels
    xv, yv = val_set.images.float().div(255), val_set.labels
    model = create_model("exercise9_mnist")
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    t = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_acc = torch.cat([model(b).argmax(1) for b in xv.split(1000)]).eq(yv).float().mean().item()
    seconds = time.perf_counter() - t
    return dict(seconds=seconds, ips=epochs * len(x) / seconds, val_acc=val_acc)


def keras_row(python: str, data_dir, epochs: int, threads: int) -> dict:
    """benchmarks/keras_mnist.py under ``python`` (one with TensorFlow): its JSON line as a dict."""
    script = Path(__file__).with_name("keras_mnist.py")
    cmd = [python, str(script), "--epochs", str(epochs), "--threads", str(threads)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: the Keras run failed ({' '.join(cmd)}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def default_keras_python() -> str | None:
    """This Python when it can import TensorFlow (checked without importing it here), else None."""
    import importlib.util

    return sys.executable if importlib.util.find_spec("tensorflow") else None


def step_variants(threads: int, name: str = "mnist_fast", batch: int = 128, steps: int = 40) -> list[dict]:
    """The training step of preset ``fast``'s network (SGD Nesterov, batch 128) in the variants issue
    20 asks to measure: NCHW vs channels-last, ``torch.compile`` (inductor's generated C++, its
    compile time shown apart), and the optimizer's for-loop / ``foreach`` / ``fused`` paths. Median
    ms per step after 5 warm-up steps, on random digits (the step's cost does not depend on them)."""
    import torch._inductor.config as inductor
    import torch.nn.functional as F

    from cnnkit.models import create_model

    inductor.force_disable_caches = True  # the compile time counted, not read from a cache
    torch.set_num_threads(threads)
    side = preset("fast").augment.crop or 28  # the windows the preset trains on
    variants = [
        ("NCHW, eager", False, False, {}),
        ("channels-last, eager (the engine's)", True, False, {}),
        ("NCHW, torch.compile", False, True, {}),
        ("channels-last, torch.compile", True, True, {}),
        ("channels-last, SGD foreach", True, False, {"foreach": True}),
        ("channels-last, SGD fused", True, False, {"fused": True}),
    ]
    rows = []
    for label, cl, compiled, opt_kw in variants:
        torch.manual_seed(0)
        model = create_model(name)
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, **opt_kw)
        net = torch.compile(model) if compiled else model
        x = torch.rand(batch, 1, side, side).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,))

        def step():
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = time.perf_counter()
        step()
        first = time.perf_counter() - t
        ms = statistics.median(_seconds(step, steps, warmup=4)) * 1000
        rows.append(dict(variant=label, first_s=first, ms=ms, ips=batch / ms * 1000))
    return rows


def onednn_gemm_gflops(threads: int, n: int = 1024, repeat: int = 10) -> float:
    """The same fp32 GEMM (n x n times n x n) run as a 1x1 convolution, i.e. by oneDNN, the library
    PyTorch's CPU convolutions use. On CPUs where MKL picks a narrower kernel than the hardware has
    (AMD Zen 5: AVX2 in MKL, AVX-512 in oneDNN) this is the higher, physical ceiling."""
    torch.set_num_threads(threads)
    x = torch.randn(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)  # n pixels, n channels
    w = torch.randn(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    return 2 * n**3 / _best_seconds(lambda: torch.nn.functional.conv2d(x, w), repeat) / 1e9


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
        crop = read_info(member.out)["config"]["augment"].get("crop", 0)  # the size trained on (fast: 24x24)
        size = (model.input_size[0], crop, crop) if crop else model.input_size
        acc = evaluate(model, test).accuracy
        rows.append(
            dict(
                name=name,
                seed=cfg.seed + i,
                train_s=member.seconds,
                wall_s=wall,
                test_acc=acc,
                val_acc=member.val_acc,
                precision=choose(cfg.precision, torch.device(cfg.device or "cpu"))[0],
                ips=member.images / member.seconds,
                macs=forward_macs(model.net, size),
                flops=train_flops(model.net, size),
            )
        )
        console.print(
            f"{name} seed {cfg.seed + i}: val {member.val_acc:.2%}, test {acc:.2%}, training {member.seconds:.1f} s, "
            f"{rows[-1]['ips']:,.0f} img/s"
        )
    if cfg.ensemble > 1:
        acc = evaluate(cnnkit.load(out), test).accuracy
        rows.append(
            dict(
                rows[-1],
                name=f"{name} ensemble of {cfg.ensemble}",
                test_acc=acc,
                val_acc=result.val_acc,
                train_s=result.seconds,
                ips=result.images / result.seconds,
            )
        )
        console.print(f"{name} ensemble of {cfg.ensemble}: test {acc:.2%}, training {result.seconds:.1f} s")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="folder holding mnist/ (else $CNNKIT_DATA)")
    p.add_argument("--presets", nargs="*", default=["fast", "best"], help="presets to train (none: only the baseline)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per preset (mean and spread)")
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="train each preset as `--ensemble K` (members are seeds 0..K-1) and report every member and the ensemble",
    )
    p.add_argument(
        "--trainval",
        action="store_true",
        help="the presets' final refit on train + val (all 60,000 images; rows named PRESET+val)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["auto"],
        choices=["auto", "fp32", "bf16"],
        help="train each preset in each of these (rows named PRESET PRECISION when more than "
        "one): fp32 bf16 measures bf16's accuracy parity (bf16 without native support "
        "runs emulated, about 10x slower, with the same rounding)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the notes' Keras network")
    p.add_argument("--baseline-epochs", type=int, default=10, help="the notes train 10 epochs")
    p.add_argument(
        "--plain", action="store_true", help="also the notes' network in a bare PyTorch loop (the engine's overhead)"
    )
    p.add_argument(
        "--keras",
        nargs="?",
        const="auto",
        metavar="PYTHON",
        help="also train the notes' network in Keras, under PYTHON (one with TensorFlow; "
        "default: this Python if it has TensorFlow), and print cnnkit's images/s ratio",
    )
    p.add_argument(
        "--step",
        action="store_true",
        help="also time the training step's variants: "
        "channels-last, torch.compile, the optimizer's foreach/fused paths",
    )
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    keras_python = default_keras_python() if args.keras == "auto" else args.keras
    if args.keras and not keras_python:
        p.error("--keras: this Python has no TensorFlow; name one that has: --keras /path/to/bin/python")
    if keras_python and not shutil.which(keras_python):
        p.error(f"--keras: no Python at {keras_python}")
    if args.keras and args.no_baseline:
        p.error("--keras compares with the notes' network: drop --no-baseline")

    import os

    threads = args.threads or os.cpu_count() or 1
    console = Console(width=170)
    ceiling, native = ceilings(threads)
    mkl, onednn = ceiling["fp32"]["gemm"], onednn_gemm_gflops(threads)  # the fp32 matmul measured once
    console.print(f"{cpu_name()}, {threads} threads, native bf16: {'yes' if native else 'no (bf16 emulated)'}")
    console.print(f"fp32 GEMM: torch.matmul (MKL) {mkl:,.0f} GFLOP/s, oneDNN (1x1 conv) {onednn:,.0f} GFLOP/s")
    for prec, c in ceiling.items():
        console.print(
            f"{prec}: matmul {c['gemm']:,.1f} GFLOP/s, conv 64->64 3x3 at 14x14 channels-last {c['conv']:,.1f} GFLOP/s"
        )
    test = load_dataset("mnist", "test", args.data_dir)
    jobs = [
        (
            name + ("+val" if args.trainval else "") + (f" {prec}" if len(args.precisions) > 1 else ""),
            preset(
                name,
                data_dir=args.data_dir,
                threads=threads,
                ensemble=args.ensemble,
                trainval=args.trainval,
                precision=prec,
            ),
        )
        for name in args.presets
        for prec in args.precisions
    ]
    if not args.no_baseline:
        jobs.append(
            (
                "notes-keras",
                replace(
                    TrainConfig(data_dir=args.data_dir, threads=threads), **{**BASELINE, "epochs": args.baseline_epochs}
                ),
            )
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.out or tmp)
        for name, cfg in jobs:
            seeds = 1 if name == "notes-keras" or cfg.ensemble > 1 else args.seeds
            for seed in range(seeds):
                rows += run_one(name, replace(cfg, seed=seed), test, workdir, console)
    if keras_python:
        k = keras_row(keras_python, args.data_dir, args.baseline_epochs, threads)
        notes = next(r for r in rows if r["name"] == "notes-keras")
        rows.append(
            dict(
                notes,
                name=f"Keras {k['keras']} (TF {k['tensorflow']})",
                train_s=k["seconds"],
                ips=k["ips"],
                test_acc=k["test_acc"],
                val_acc=k["val_acc"],
                precision="fp32",
            )
        )
        console.print(
            f"Keras {k['keras']} on TensorFlow {k['tensorflow']}, the notes' network, "
            f"{k['epochs']} epochs: {k['seconds']:.1f} s, {k['ips']:,.0f} img/s (validation "
            f"included), val {k['val_acc']:.2%}, test {k['test_acc']:.2%}; cnnkit "
            f"{notes['ips'] / k['ips']:.2f}x Keras's images/s"
        )

    table = Table(
        title=f"MNIST, {threads} threads; fp32 GEMM ceiling: torch.matmul {mkl:,.0f}, oneDNN {onednn:,.0f} GFLOP/s"
    )
    for col in (
        "run",
        "seeds",
        "val acc",
        "test acc",
        "training s",
        "img/s",
        "MMACs/img",
        "GFLOP/s",
        "% matmul",
        "% oneDNN",
        "precision",
        "% its conv ceiling",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = [r for r in rows if r["name"] == name]
        accs = [r["test_acc"] for r in rs]
        spread = f" ± {statistics.stdev(accs):.2%} (min {min(accs):.2%})" if len(accs) > 1 else ""
        ips = statistics.mean(r["ips"] for r in rs)
        gflops = rs[0]["flops"] * ips / 1e9  # forward + backward FLOPs per image
        vals = [r["val_acc"] for r in rs]
        vspread = f" ± {statistics.stdev(vals):.2%} (min {min(vals):.2%})" if len(vals) > 1 else ""
        table.add_row(
            name,
            str(len(rs)),
            f"{statistics.mean(vals):.2%}{vspread}",
            f"{statistics.mean(accs):.2%}{spread}",
            f"{statistics.mean(r['train_s'] for r in rs):.1f}",
            f"{ips:,.0f}",
            f"{rs[0]['macs'] / 1e6:.2f}",
            f"{gflops:.0f}",
            f"{gflops / mkl:.0%}",
            f"{gflops / onednn:.0%}",
            rs[0]["precision"],
            f"{gflops / ceiling[rs[0]['precision']]['conv']:.0%}",
        )
    if rows:
        console.print(table)
        console.print(f"reference: {TARGET}; the notes' network (notes-keras) when run")
    if args.plain:
        plain = plain_pytorch(args.data_dir, args.baseline_epochs, threads)
        keras = [r for r in rows if r["name"] == "notes-keras"]
        ratio = f"; cnnkit's notes-keras row {keras[0]['ips'] / plain['ips']:.2f}x its images/s" if keras else ""
        console.print(
            f"plain PyTorch loop, the notes' network, {args.baseline_epochs} epochs: "
            f"{plain['seconds']:.1f} s, {plain['ips']:,.0f} img/s (validation included), "
            f"val acc {plain['val_acc']:.2%}{ratio}"
        )
    if args.step:
        steps = step_variants(threads)
        base = steps[1]["ms"]
        table = Table(title=f"training step of preset fast's network, batch 128, {threads} threads")
        for col in ("variant", "first step s", "ms/step", "img/s", "vs the engine's"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for r in steps:
            table.add_row(
                r["variant"], f"{r['first_s']:.1f}", f"{r['ms']:.1f}", f"{r['ips']:,.0f}", f"{base / r['ms']:.2f}x"
            )
        console.print(table)
    return 0


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

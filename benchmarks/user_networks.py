"""The user's own network with the defaults: `cnnkit train --model NET --epochs 1` on MNIST for three
ordinary networks that are not the preset's own, each scored on the 10,000 test digits.

    python benchmarks/user_networks.py --data-dir ../shared/data [--threads 2]

The networks: the notes' Keras convnet (zoo ``keras_mnist_convnet``: three 3x3 convolutions, no batch
norm, a 64-unit dense layer), a VGG-style net without batch norm (:func:`vgg_plain` below, named as
``user_networks.py:vgg_plain`` as a user names a file), and the zoo's LeNet-5. The reference is the
target each must reach in one epoch: 98.5% test accuracy. Prints the CPU, one line per network
(recipe, optimizer, lr, test accuracy, seconds) and whether each reached the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import cnnkit
from cnnkit.cli import main as cli
from cnnkit.data.datasets import load_dataset
from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.classify.evaluate import evaluate

REFERENCE = 0.985  # test accuracy after one epoch with the defaults


def vgg_plain(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """VGG-style: two 3x3 conv blocks of 32 and 64 channels, max-pooled, a 128-unit dense layer; no BN."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 32),
        nn.MaxPool2d(2),  # (B, 32, 28, 28) -> (B, 32, 14, 14)
        *block(32, 64),
        nn.MaxPool2d(2),  # -> (B, 64, 7, 7)
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"), help="folder holding mnist/")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--only", nargs="*", help="network names to run (default: all three)")
    p.add_argument("--set", nargs="*", default=[], help="flags added to `cnnkit train` (e.g. --set=--lr=0.002)")
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir (or $CNNKIT_DATA) must name the folder holding mnist/")
    nets = {
        "keras_mnist_convnet": "keras_mnist_convnet",
        "vgg_plain": f"{Path(__file__).resolve()}:vgg_plain",
        "lenet5": "lenet5",
    }
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}; reference: >= {REFERENCE:.1%}")
    test = load_dataset("mnist", "test", args.data_dir)
    failed = 0
    for name, model in nets.items():
        if args.only and name not in args.only:
            continue
        out = Path(tempfile.mkdtemp(prefix=f"cnnkit-{name}-")) / "run"
        argv = ["train", "--model", model, "--epochs", "1", "--data-dir", args.data_dir, "--out", str(out)]
        start = time.perf_counter()
        code = cli([*argv, "--threads", str(args.threads), "--quiet", *(a for f in args.set for a in f.split("="))])
        seconds = time.perf_counter() - start
        if code != 0:
            print(f"{name}: cnnkit train exited {code}")
            failed += 1
            continue
        net = cnnkit.load(out)
        cfg = net.info["config"]
        acc = evaluate(net, test).accuracy
        failed += acc < REFERENCE
        print(
            f"{name}: recipe {cfg.get('recipe')!r} ({cfg['optimizer']} lr {cfg['lr']:g}, batch {cfg['batch_size']}, "
            f"{cfg['schedule']}), 1 epoch: test accuracy {acc:.2%} "
            f"({'reaches' if acc >= REFERENCE else 'BELOW'} {REFERENCE:.1%}), {seconds:.0f} s"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

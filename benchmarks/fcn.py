"""An MNIST classifier trained on 28x28 digits, made fully convolutional, run on a 112x112 canvas.

The network is the notes' Keras convnet (seed 004): Conv(32,3)-Pool-Conv(64,3)-Pool-Conv(64,3)-
Flatten-Dense(64)-Dense(10). After one epoch of training, :func:`cnnkit.to_fcn` turns its dense
layers into a 3x3 conv (the Flatten's input map is 64x3x3) and a 1x1 conv. On a 112x112 canvas holding
several test digits, one forward pass gives a 22x22 map of class scores: one cell per 28x28 window,
every 4 pixels (the network's total stride). The script checks that map against classifying every
window separately, prints both timings, and writes a PNG of the class map.

Run: ``python benchmarks/fcn.py [--out runs/fcn_class_map.png]`` (under a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit import to_fcn
from cnnkit.data.idx import read_idx
from cnnkit.data.imageset import ImageSet
from cnnkit.engine.precision import cpu_name
from cnnkit.models.fcn import total_stride
from cnnkit.tasks.classify.finetune import evaluate, finetune

MEAN, STD = (0.1307,), (0.3081,)
CANVAS = 112


def notes_convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 1, 28, 28) -> (B, 32, 13, 13)
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (B, 64, 5, 5)
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),  # -> (B, 64, 3, 3)
        nn.Flatten(),
        nn.Linear(64 * 3 * 3, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )  # -> (B, 10)


def canvas_of_digits(images: torch.Tensor, labels: torch.Tensor, seed: int = 0):
    """A (1, 1, 112, 112) float canvas holding 6 test digits on a 4-pixel grid, and their (label, y, x)."""
    g = torch.Generator().manual_seed(seed)
    canvas = torch.zeros(1, 1, CANVAS, CANVAS)
    spots = [(4, 4), (0, 44), (8, 80), (40, 16), (48, 60), (80, 36)]  # on the 4-px grid, no overlaps
    placed = []
    for (y, x), i in zip(spots, torch.randperm(len(images), generator=g)[:6].tolist()):
        canvas[0, 0, y : y + 28, x : x + 28] = images[i].float() / 255
        placed.append((int(labels[i]), y, x))
    return canvas, placed


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("CNNKIT_DATA", repo.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, default=Path("runs/fcn_class_map.png"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    mnist = args.data / "mnist"
    train = ImageSet(
        read_idx(mnist / "train-images-idx3-ubyte.gz")[:, None].contiguous(),
        read_idx(mnist / "train-labels-idx1-ubyte.gz").long(),
        [str(d) for d in range(10)],
    )
    test = ImageSet(
        read_idx(mnist / "t10k-images-idx3-ubyte.gz")[:, None].contiguous(),
        read_idx(mnist / "t10k-labels-idx1-ubyte.gz").long(),
        train.classes,
    )

    t0 = time.perf_counter()
    net = notes_convnet()
    finetune(net, train, None, stages=("all",), epochs=1, batch_size=128, lr_all=2e-3, lr_decay=1.0, mean=MEAN, std=STD)
    print(
        f"trained the notes' convnet 1 epoch on 60,000 digits: test accuracy "
        f"{evaluate(net, test, MEAN, STD)[1]:.4f} ({time.perf_counter() - t0:.0f} s)"
    )

    fcn = to_fcn(net, (1, 28, 28)).eval()
    s = total_stride(fcn)
    x = (test.images[:256].float() / 255 - MEAN[0]) / STD[0]
    with torch.no_grad():
        diff = (fcn(x).flatten(1) - net(x)).abs().max().item()
    print(f"28x28: FCN output (256, 10, 1, 1) vs dense (256, 10): max abs diff {diff:.2e}")

    canvas, placed = canvas_of_digits(test.images, test.labels)
    xc = (canvas - MEAN[0]) / STD[0]
    with torch.no_grad():
        fcn(xc)  # warm-up (oneDNN primitive creation)
        t0 = time.perf_counter()
        scores = fcn(xc)  # (1, 10, 22, 22)
        t_fcn = time.perf_counter() - t0
        n = scores.shape[-1]
        t0 = time.perf_counter()
        loop = torch.empty_like(scores)
        for i in range(n):
            for j in range(n):
                loop[0, :, i, j] = net(xc[..., i * s : i * s + 28, j * s : j * s + 28])[0]
        t_loop = time.perf_counter() - t0
    diff = (scores - loop).abs().max().item()
    print(
        f"{CANVAS}x{CANVAS} canvas -> class map {tuple(scores.shape)} at total stride {s}: "
        f"max abs diff vs {n * n} windows {diff:.2e}"
    )
    print(
        f"one FCN pass {t_fcn * 1e3:.1f} ms; window loop {t_loop * 1e3:.1f} ms; "
        f"speed-up {t_loop / t_fcn:.0f}x (timings noisy: shared CPU)"
    )
    probs = scores.softmax(1)[0]
    for label, y, xx in placed:
        i, j = y // s, xx // s  # the window exactly on the digit
        print(
            f"  digit {label} at ({y}, {xx}): window ({i}, {j}) predicts {int(probs[:, i, j].argmax())} "
            f"p={float(probs[:, i, j].max()):.3f}"
        )
    print(f"wrote {plot(canvas, probs, placed, s, args.out)}")


def plot(canvas, probs, placed, stride, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnkit.plots import save_figure

    conf, cls = probs.max(0)  # (22, 22) each
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 5))
    a.imshow(canvas[0, 0], cmap="gray")
    a.set_title(f"{CANVAS}x{CANVAS} canvas: " + " ".join(str(lbl) for lbl, _, _ in placed), fontsize=10)
    n = cls.shape[0]
    extent = (14 - stride / 2, 14 + (n - 0.5) * stride, 14 + (n - 0.5) * stride, 14 - stride / 2)
    b.imshow(canvas[0, 0], cmap="gray", alpha=0.35, extent=(0, CANVAS, CANVAS, 0))
    im = b.imshow(cls, cmap="tab10", vmin=-0.5, vmax=9.5, alpha=(conf.numpy() > 0.5) * 0.75, extent=extent)
    for i in range(n):
        for j in range(n):
            if conf[i, j] > 0.99:
                b.text(
                    14 + j * stride,
                    14 + i * stride,
                    str(int(cls[i, j])),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black",
                )
    b.set_xlim(0, CANVAS)
    b.set_ylim(CANVAS, 0)
    b.set_title(f"FCN class map {n}x{n}, stride {stride} (p > 0.5)", fontsize=10)
    fig.colorbar(im, ax=b, ticks=range(10), fraction=0.046)
    return save_figure(fig, out)


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

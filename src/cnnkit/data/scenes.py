"""Scenes of MNIST digits: the detection and segmentation tasks' synthetic data, deterministic per seed.

Each scene is a dark ``canvas x canvas`` image holding 1-4 (``digits``) MNIST digits at random
positions and sizes (``scale`` times the 28-pixel original), never overlapping. A digit's *ink* is
its pixels of value >= :data:`INK` after resizing; its box is tight around that ink and its masks
are exactly that ink, so box, semantic mask and instance mask always agree::

    s = digit_scenes("train", n=1000, canvas=128, data_dir="../shared/data")
    s.images[i]      # (1, 128, 128) uint8
    s.boxes[i]       # (k, 4) float x1, y1, x2, y2 in pixels (x2, y2 exclusive)
    s.labels[i]      # (k,) int64 digit 0..9
    s.semantic[i]    # (128, 128) uint8: 0 background, 1 + digit on its ink
    s.instances[i]   # (128, 128) uint8: 0 background, j + 1 on the ink of the j-th digit

Train scenes take their digits from MNIST's training split (the first 55,000 images), ``val``
scenes from the last 5,000 (cnnkit's validation split), test scenes from the 10,000 test digits,
so no digit image is shared between splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cnnkit.data.datasets import load_dataset
from cnnkit.errors import CnnkitError, check_fits

INK = 64  # a resized digit's pixel is ink when >= this (of 255)
_SPLIT_SALT = {"train": 0, "val": 1, "test": 2}  # different random streams per split, same seed


@dataclass
class Scenes:
    images: torch.Tensor  # (N, 1, S, S) uint8
    boxes: list[torch.Tensor]  # N x (k_i, 4) float32 x1, y1, x2, y2 (x2, y2 exclusive)
    labels: list[torch.Tensor]  # N x (k_i,) int64, 0..9
    semantic: torch.Tensor  # (N, S, S) uint8, 0 = background, 1 + digit
    instances: torch.Tensor  # (N, S, S) uint8, 0 = background, j + 1 = j-th digit
    classes: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]


def digit_scenes(
    split: str = "train",
    n: int = 1000,
    canvas: int = 128,
    data_dir=None,
    seed: int = 0,
    digits: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.6, 2.0),
    source=None,
) -> Scenes:
    """``n`` scenes of MNIST digits on a ``canvas``-pixel square (see the module docstring).

    Args:
        split: ``train`` | ``val`` | ``test``: which MNIST digits the scenes are made of.
        n: number of scenes.
        canvas: side of the square image in pixels.
        data_dir: the folder holding ``mnist/`` (as :func:`~cnnkit.data.datasets.load_dataset`).
        seed: scenes are a pure function of (split, n, canvas, seed, digits, scale).
        digits: the least and most digits per scene (inclusive).
        scale: the least and most digit size as a multiple of 28 px (drawn log-uniformly).
        source: an :class:`~cnnkit.data.imageset.ImageSet` of 28x28 digits to use instead of MNIST's
            (tests pass a small one).

    Raises:
        CnnkitError: a bad argument, named with the value received.
    """
    if split not in _SPLIT_SALT:
        raise CnnkitError(f"unknown scene split {split!r}; use train, val or test")
    lo, hi = digits
    if not (isinstance(n, int) and n >= 1):
        raise CnnkitError(f"the number of scenes must be a positive integer. Received: n={n!r}")
    if not 1 <= lo <= hi <= 16:
        raise CnnkitError(f"digits per scene must satisfy 1 <= least <= most <= 16. Received: digits={digits!r}")
    if not 0.25 <= scale[0] <= scale[1]:
        raise CnnkitError(f"digit scale must satisfy 0.25 <= least <= most. Received: scale={scale!r}")
    largest = round(28 * scale[1])
    if not largest <= canvas <= 4096:
        raise CnnkitError(
            f"the canvas must hold the largest digit ({largest} px) and be at most 4096 px. Received: canvas={canvas!r}"
        )
    # the image and its two masks, a byte a pixel each: refused before anything is drawn where they
    # would not fit in memory
    check_fits(
        3 * n * canvas * canvas,
        f"drawing {n:,} {split} scenes of {canvas}x{canvas} px",
        "ask for fewer or smaller scenes (--scenes, --image-size or --canvas; n= and canvas= in Python)",
    )
    pool = source if source is not None else load_dataset("mnist", split, data_dir)
    g = torch.Generator().manual_seed(seed * 3 + _SPLIT_SALT[split])
    images = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    semantic = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    instances = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    log_lo, log_hi = torch.tensor(scale, dtype=torch.float64).log().tolist()
    for i in range(n):
        want = int(torch.randint(lo, hi + 1, (1,), generator=g))
        boxes, labels = [], []
        for _ in range(want * 20):  # placement attempts; crowded canvases get fewer digits
            if len(boxes) == want:
                break
            k = int(torch.randint(len(pool), (1,), generator=g))
            size = round(28 * float(torch.empty(1, dtype=torch.float64).uniform_(log_lo, log_hi, generator=g).exp()))
            digit = _resize(pool.images[k, 0], size)  # (size, size) uint8
            ink = digit >= INK
            if not ink.any():
                continue
            rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            digit, ink = digit[y0:y1, x0:x1], ink[y0:y1, x0:x1]  # crop to the ink's box
            h, w = ink.shape
            top = int(torch.randint(canvas - h + 1, (1,), generator=g))
            left = int(torch.randint(canvas - w + 1, (1,), generator=g))
            box = (left, top, left + w, top + h)
            if any(_touch(box, b) for b in boxes):
                continue
            region = images[i, 0, top : top + h, left : left + w]
            torch.maximum(region, digit, out=region)
            label = int(pool.labels[k])
            semantic[i, top : top + h, left : left + w][ink] = 1 + label
            instances[i, top : top + h, left : left + w][ink] = len(boxes) + 1
            boxes.append(box)
            labels.append(label)
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    meta = {
        "split": split,
        "n": n,
        "canvas": canvas,
        "seed": seed,
        "digits": list(digits),
        "scale": list(scale),
        "source": pool.name,
        "ink_threshold": INK,
    }
    return Scenes(images, all_boxes, all_labels, semantic, instances, meta=meta)


def _resize(digit: torch.Tensor, size: int) -> torch.Tensor:
    """(28, 28) uint8 -> (size, size) uint8, bilinear with antialiasing when shrinking."""
    x = digit.float()[None, None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 28)
    return y[0, 0].round().clamp(0, 255).to(torch.uint8)


def _touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 1) -> bool:
    """Whether boxes a and b overlap or come closer than ``gap`` pixels."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap

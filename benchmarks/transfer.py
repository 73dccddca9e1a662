"""Measured benefit of transfer learning, on real data we have (issue 6).

Table 1 -- MNIST: pretrain the notes' small convnet (Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense,
the Keras model of the notes) on digits 0-4 (all 30,596 training images, one epoch), then learn
digits 5-9 from only 100 labelled training images per class: fine-tuning (head, top, all: 5 epochs
each) versus the same network from scratch with the same 15 epochs (30 epochs do not help it).
Test accuracy on all 4,861 test images of digits 5-9, mean (min-max) over 3 seeds.

Table 2 -- hymenoptera (ants vs bees, 244 train / 153 val images): a small Keras-style CNN from
scratch with the notes' augmentation, and the fine-tuning pipeline end to end with a zoo ResNet-18.
There are no pretrained ImageNet weights offline, so the ResNet-18 starts from RANDOM weights: the
row shows the pipeline working, not the benefit of ImageNet features.

Table 3 (``--pretrained``, issue 15) -- efficientnet_lite0 with its published ImageNet weights on
hymenoptera (its own train/val) and flowers (tf_flowers, 5 x 300 photos: a seeded stratified
70/15/15 train/val/test split, the split ``cnnkit finetune`` makes at its default seed; test read
once, at the end): from scratch (random init, stage ``all``, 224 px), head only (the ``cnnkit
finetune`` defaults: 288 px, features cached, the head chosen by val loss), head + top, and head +
top + all. Accuracy and training seconds (``finetune`` from start to end, feature caching
included) per training seed.

``--zero-shot``: the preprocessing sweep that chose efficientnet_lite0's (crop share, mean/std,
interpolation), scored by ImageNet's own ant (310) / bee (309) logits on hymenoptera/val.

Run: ``python benchmarks/transfer.py`` (a few minutes on 2 CPU cores). ``--data`` or
``$CNNKIT_DATA``: the folder holding ``mnist/``, ``hymenoptera/`` and ``flowers/``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from fcn import notes_convnet  # benchmarks/fcn.py: the notes' Keras MNIST convnet

from cnnkit.data.augment import NOTES_AUGMENT
from cnnkit.data.idx import read_idx
from cnnkit.data.imagefolder import load_image_folder
from cnnkit.data.imageset import ImageSet
from cnnkit.models import create_model
from cnnkit.models.preprocess import preprocess_for
from cnnkit.tasks.classify.finetune import STAGES, evaluate, finetune

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
SHOTS = 100  # labelled training images per new class
SEEDS = (0, 1, 2)
STAGE_EPOCHS = {"head": 5, "top": 5, "all": 5}  # fine-tuning; scratch gets their sum


def mnist(data: Path, split: str, digits: range) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(data / "mnist" / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(data / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").long()
    keep = (y >= digits.start) & (y < digits.stop)
    return ImageSet(
        x[keep][:, None].contiguous(),
        y[keep] - digits.start,
        [str(d) for d in digits],
        f"mnist/{split}/{digits.start}-{digits.stop - 1}",
    )


def few_shot(data: ImageSet, per_class: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    idx = [torch.nonzero(data.labels == c).flatten() for c in range(len(data.classes))]
    idx = [i[torch.randperm(len(i), generator=g)[:per_class]] for i in idx]
    return data.subset(torch.cat(idx))


def mnist_table(data: Path) -> list[tuple]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    old = mnist(data, "train", range(0, 5))
    base = notes_convnet()
    finetune(
        base,
        old,
        None,
        stages=("all",),
        epochs=1,
        batch_size=64,
        lr_all=2e-3,
        lr_decay=1.0,
        mean=MNIST_MEAN,
        std=MNIST_STD,
    )
    _, acc_old = evaluate(base, mnist(data, "test", range(0, 5)), MNIST_MEAN, MNIST_STD)
    print(
        f"pretrained the notes' convnet on {len(old)} images of digits 0-4: test accuracy {acc_old:.4f} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    new_train, new_test = mnist(data, "train", range(5, 10)), mnist(data, "test", range(5, 10))
    runs = {  # name -> (start from the pretrained base?, finetune arguments)
        "fine-tuned from 0-4: head only (base frozen)": (True, dict(stages=("head",), epochs=15, lr_head=3e-3)),
        "fine-tuned from 0-4: head, top, all": (
            True,
            dict(stages=STAGES, epochs=STAGE_EPOCHS, lr_head=3e-3, lr_top=1e-3, lr_all=1e-3),
        ),
        "from scratch": (False, dict(stages=("all",), epochs=sum(STAGE_EPOCHS.values()), lr_all=1e-3, lr_decay=1.0)),
    }
    results = {name: [] for name in runs}
    for seed in SEEDS:
        few = few_shot(new_train, SHOTS, seed)
        for name, (pretrained, kw) in runs.items():
            torch.manual_seed(seed)
            net = copy.deepcopy(base) if pretrained else notes_convnet()
            finetune(net, few, None, batch_size=50, mean=MNIST_MEAN, std=MNIST_STD, seed=seed, **kw)
            results[name].append(evaluate(net, new_test, MNIST_MEAN, MNIST_STD)[1])
        print(
            f"  seed {seed}: "
            + ", ".join(f"{v[-1]:.4f}" for v in results.values())
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
    return [(k, sum(v) / len(v), min(v), max(v)) for k, v in results.items()]


def small_cnn(num_classes: int = 2) -> nn.Sequential:
    """The notes' small convnet (Chollet 5.2), for 64x64 RGB: 4 conv-pool blocks, dropout, dense."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 3, 64, 64) -> (B, 32, 31, 31)
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (B, 64, 14, 14)
        nn.Conv2d(64, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (B, 128, 6, 6)
        nn.Conv2d(128, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (B, 128, 2, 2)
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def hymenoptera_table(data: Path) -> list[tuple]:
    rows = []
    root = data / "hymenoptera"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped .gif, reported by the tests
        pre = preprocess_for("resnet18", image_size=(64, 64))
        load = dict(image_size=pre.image_size, crop_fraction=pre.crop_fraction)
        train, val = load_image_folder(root, "train", **load), load_image_folder(root, "val", **load)
    for name, aug, epochs in (
        ("small CNN, scratch, no augmentation", None, 20),
        ("small CNN, scratch, notes' augmentation", NOTES_AUGMENT, 20),
    ):
        t0 = time.perf_counter()
        torch.manual_seed(0)
        net = small_cnn()
        finetune(
            net,
            train,
            None,
            stages=("all",),
            augment=aug,
            epochs=epochs,
            batch_size=32,
            lr_all=1e-3,
            lr_decay=1.0,
            mean=pre.mean,
            std=pre.std,
        )
        rows.append((name, epochs, evaluate(net, val, pre.mean, pre.std)[1], time.perf_counter() - t0))
        print(f"  {name}: {rows[-1][2]:.4f} ({rows[-1][3]:.0f} s)")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = create_model("resnet18")  # RANDOM init: no pretrained weights offline
    finetune(
        net,
        train,
        None,
        stages=("head", "top"),
        augment=NOTES_AUGMENT,
        epochs={"head": 3, "top": 1},
        batch_size=32,
        mean=pre.mean,
        std=pre.std,
    )
    rows.append(
        (
            "resnet18 (RANDOM init), head 3 + top 1 epochs",
            4,
            evaluate(net, val, pre.mean, pre.std)[1],
            time.perf_counter() - t0,
        )
    )
    print(f"  {rows[-1][0]}: {rows[-1][2]:.4f} ({rows[-1][3]:.0f} s)")
    return rows


def pretrained_table(data: Path, seeds, rows_wanted, sets=("hymenoptera", "flowers")) -> list[tuple]:
    """Table 3: efficientnet_lite0 from ImageNet on hymenoptera and flowers; (set, row, seed, acc, s)."""
    from cnnkit.models.preprocess import finetune_preprocess
    from cnnkit.tasks.classify.finetune import FinetuneRecipe

    default = FinetuneRecipe().epochs
    runs = {  # --rows id -> (row, ImageNet weights?, finetune arguments)
        "scratch": (
            "from scratch (random init), all, 10 epochs",
            False,
            dict(stages=("all",), epochs=10, lr_all=1e-3, lr_decay=1.0),
        ),
        "head": ("head only (cnnkit finetune defaults)", True, dict(stages=("head",))),
        "top": ("head + top", True, dict(stages=("head", "top"), lr_top=1e-4)),
        "all": ("head + top + all", True, dict(stages=("head", "top", "all"), lr_top=1e-4, lr_all=1e-4)),
    }
    out, loaded = [], {}
    for name in sets:
        for key in rows_wanted:
            row, imagenet, kw = runs[key]
            pre = finetune_preprocess("efficientnet_lite0", imagenet)  # as `cnnkit finetune` sizes it
            if (name, pre.image_size) not in loaded:  # rows at one size share the images
                load = dict(image_size=pre.image_size, crop_fraction=pre.crop_fraction, interpolation=pre.interpolation)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    split = dict(val_fraction=0.15, test_fraction=0.15, seed=0) if name == "flowers" else {}
                    parts = [load_image_folder(data / name, s, **split, **load) for s in ("train", "val")]
                    parts.append(
                        load_image_folder(data / name, "test", **split, **load) if name == "flowers" else parts[1]
                    )
                loaded[name, pre.image_size] = parts
            train, val, test = loaded[name, pre.image_size]
            for seed in seeds:
                torch.manual_seed(seed)
                net = create_model("efficientnet_lite0", weights="imagenet" if imagenet else None)
                t0 = time.perf_counter()
                finetune(net, train, val, mean=pre.mean, std=pre.std, seed=seed, **{"epochs": default, **kw})
                sec = time.perf_counter() - t0
                tta = FinetuneRecipe().tta  # as the checkpoint answers
                out.append((name, row, seed, evaluate(net, test, pre.mean, pre.std, tta=tta)[1], sec))
                print(f"  {name} | {row} | seed {seed}: {out[-1][3]:.4f} ({sec:.0f} s)", flush=True)
    return out


def zero_shot(data: Path) -> None:
    """Print pair (ant vs bee logit) and top-1 accuracy of each preprocessing candidate."""
    from cnnkit.models.preprocess import Preprocess, load_photo, normalize

    net = create_model("efficientnet_lite0", weights="imagenet").eval()
    files = sorted((data / "hymenoptera" / "val").glob("*/*.jpg"))
    truth = torch.tensor([310 if f.parent.name == "ants" else 309 for f in files])
    for interp in ("bilinear", "bicubic"):
        for crop in (0.8, 0.85, 0.875, 0.9, 0.95, 1.0) if interp == "bicubic" else (0.875, 1.0):
            x = torch.stack(
                [load_photo(f, Preprocess((3, 224, 224), (0.5,) * 3, (0.5,) * 3, crop, interp)) for f in files]
            )
            for norm, (mean, std) in {
                "[-1, 1]": ((0.5,) * 3, (0.5,) * 3),
                "ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            }.items():
                with torch.no_grad():
                    logits = torch.cat([net(normalize(b, mean, std)) for b in x.split(51)])
                pair = torch.where(logits[:, 310] > logits[:, 309], 310, 309)
                print(
                    f"| {interp} | {crop} | {norm} | {(pair == truth).float().mean():.3f} | "
                    f"{(logits.argmax(1) == truth).float().mean():.3f} |",
                    flush=True,
                )


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("CNNKIT_DATA", repo.parent / "shared" / "data"))
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pretrained", action="store_true", help="only Table 3 (efficientnet_lite0, ImageNet)")
    parser.add_argument(
        "--rows",
        default="scratch,head,top,all",
        help="Table 3 rows to run: some of scratch, head (the defaults), top (head + top), all (head + top + all)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="Table 3 seeds per row")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="Table 3 seeds are first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--sets", default="hymenoptera,flowers", help="Table 3 data sets")
    parser.add_argument("--zero-shot", action="store_true", help="only the preprocessing sweep")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from cnnkit.engine.precision import cpu_name

    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    if args.zero_shot:
        print("| interpolation | crop share | normalisation | ant-vs-bee logit | top-1 of 1000 |")
        return zero_shot(args.data)
    if args.pretrained:
        rows = pretrained_table(
            args.data, range(args.first_seed, args.first_seed + args.seeds), args.rows.split(","), args.sets.split(",")
        )
        print("\nTable 3. efficientnet_lite0; hymenoptera: val accuracy (153), flowers: test accuracy (225)")
        print("| set | start | seed | accuracy | training seconds |\n| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4f} | {r[4]:.0f} |")
        from cnnkit.engine.precision import cpu_flags

        avx = ", ".join(sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512f", "avx512_bf16", "amx"))))
        print(f"\ntotal {time.perf_counter() - t0:.0f} s on {args.threads} threads of {cpu_name()} ({avx})")
        print("targets (issue 15): hymenoptera val >= 0.96, flowers test >= 0.93, each within 15 min of training")
        return
    mnist_rows = mnist_table(args.data)
    hym_rows = hymenoptera_table(args.data)
    print(
        f"\nTable 1. MNIST digits 5-9 from {SHOTS} training images per class; test accuracy on all "
        f"4,861 test digits 5-9, mean (min-max) over seeds {SEEDS}"
    )
    print("| notes' convnet | test accuracy | test error |\n| --- | --- | --- |")
    for name, mean, lo, hi in mnist_rows:
        print(f"| {name} | {mean:.4f} ({lo:.4f}-{hi:.4f}) | {100 * (1 - mean):.2f}% |")
    print("\nTable 2. hymenoptera (ants vs bees), 64x64 inputs, 244 train images; accuracy on the 153 val images")
    print("| network | epochs | val accuracy | seconds |\n| --- | --- | --- | --- |")
    for name, epochs, acc, sec in hym_rows:
        print(f"| {name} | {epochs} | {acc:.4f} | {sec:.0f} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s on {args.threads} threads")


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

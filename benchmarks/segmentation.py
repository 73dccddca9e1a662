"""Segmentation benchmark: what skips, U-Net's decoder and atrous convolution restore, as numbers.

    python benchmarks/segmentation.py --data-dir ../shared/data                # digit scenes + Penn-Fudan
    python benchmarks/segmentation.py --only digits --archs fcn8s   # one architecture (one locked run)
    python benchmarks/segmentation.py --report                       # the table + figure of those trained

Digit scenes (MNIST digits on a dark canvas, 11 classes: background + 0-9 from each digit's ink):
FCN-32s, FCN-16s, FCN-8s and DeepLab-v3 (output stride 16) on one encoder trained from scratch
(``--backbone``, resnet18 by default), and U-Net on its own encoder (`--data digits`'s default), all
with the same data, epochs, batch, learning rate and loss (cross-entropy + Dice); test mIoU, pixel
accuracy, boundary IoU (Cheng et al. 2021, band of 3 px) and training time, with the command and
the CPU. The figure (cnnkit.plots.mask_panels) shows one test scene's masks from each.
Penn-Fudan: `cnnkit segment train --data pennfudan` with its defaults (the recipe a user gets
without flags: ImageNet efficientnet_lite0 U-Net), person IoU on the 50 test photos.
Every run goes through cnnkit's one training engine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.segment.config import SegmentConfig
from cnnkit.tasks.segment.load import load_segmenter
from cnnkit.tasks.segment.predict import predict_masks
from cnnkit.tasks.segment.train import train

TARGETS = "targets: digit mIoU >= 0.90; FCN-8s >= FCN-32s + 0.03 mIoU; Penn-Fudan person IoU >= 0.80 in 8 min"
ARCHS = ["fcn32s", "fcn16s", "fcn8s", "deeplabv3", "unet"]  # unet: `--data digits`'s default, its own encoder


def _backbone(arch: str, args) -> str:
    return "unet" if arch == "unet" else args.backbone


def digits(args) -> None:
    """Train each architecture into ``--keep``/<arch> (one locked run each if you like), with the same
    data, epochs, batch, learning rate and loss; the U-Net also at the digits default's width."""
    keep = Path(args.keep)
    for arch in args.archs:
        cfg = SegmentConfig(
            data="digits",
            data_dir=args.data_dir,
            arch=arch,
            model=_backbone(arch, args),
            epochs=args.epochs,
            scenes=args.scenes,
            canvas=args.canvas,
            batch_size=args.batch_size,
            lr=args.lr,
            threads=args.threads,
            output_stride=16,
        )
        out = keep / arch
        if out.exists():
            shutil.rmtree(out)
        t = time.perf_counter()
        result = train(cfg, out, quiet=True)
        wall = time.perf_counter() - t
        test, r = result.test, cfg.resolved()
        row = {
            "arch": arch,
            "backbone": r.model,
            "mIoU": test["mIoU"],
            "pixel_accuracy": test["pixel_accuracy"],
            "boundary_iou": test["boundary_iou"],
            "seconds": result.seconds,
            "wall": wall,
            "params": sum(p.numel() for p in result.model.net.parameters()),
            "iou": test["iou"],
            "command": " ".join(["python benchmarks/segmentation.py", *sys.argv[1:]]),
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "settings": {
                k: getattr(r, k)
                for k in ("canvas", "scenes", "epochs", "batch_size", "lr", "dice", "width", "channels_last", "weights")
            },
        }
        (out / "bench.json").write_text(json.dumps(row, indent=1))
        print(
            f"{arch:>9} ({r.model}): test mIoU {row['mIoU']:.4f}  pixel acc {row['pixel_accuracy']:.4f}  "
            f"boundary IoU {row['boundary_iou']:.4f}  training {row['seconds']:.0f} s (wall {wall:.0f} s)",
            flush=True,
        )


NAMES = {
    "fcn32s": "FCN-32s",
    "fcn16s": "FCN-16s",
    "fcn8s": "FCN-8s",
    "deeplabv3": "DeepLab-v3 (OS 16)",
    "unet": "U-Net",
}


def report(args) -> None:
    """The table of every architecture trained into ``--keep``, and the figure of one test scene's masks."""
    keep = Path(args.keep)
    rows = [json.loads((keep / a / "bench.json").read_text()) for a in ARCHS if (keep / a / "bench.json").is_file()]
    if not rows:
        return
    st = rows[0]["settings"]
    print(
        f"\ndigit scenes: canvas {st['canvas']} px, {st['scenes']} train / {max(2, st['scenes'] // 4)} test scenes, "
        f"{st['epochs']} epochs, batch {st['batch_size']}, AdamW lr {st['lr']} one-cycle, cross-entropy + "
        f"{st['dice']} x Dice, channels-last {st['channels_last']}, every encoder from scratch"
    )
    for r in rows:
        print(f"  {r['arch']}: {r['command']}  ({r['cpu']}, {r['threads']} thread(s))")
    print("| model | encoder | test mIoU | pixel accuracy | boundary IoU (3 px) | training time | params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        enc = f"own (width {r['settings']['width']})" if r["backbone"] == "unet" else r["backbone"]
        print(
            f"| {NAMES[r['arch']]} | {enc} | {r['mIoU']:.4f} | {r['pixel_accuracy']:.4f} | "
            f"{r['boundary_iou']:.4f} | {r['seconds']:.0f} s | {r['params'] / 1e6:.2f}M |"
        )
    by = {r["arch"]: r for r in rows}
    if "fcn8s" in by and "fcn32s" in by:
        d, b = by["fcn8s"]["mIoU"] - by["fcn32s"]["mIoU"], by["fcn8s"]["boundary_iou"] - by["fcn32s"]["boundary_iou"]
        print(f"FCN-8s - FCN-32s: {100 * d:+.1f} points of mIoU (target >= +3), {100 * b:+.1f} points of boundary IoU")
    if args.figure:
        figure(args, rows, keep)


def figure(args, rows: list[dict], keep: Path) -> None:
    """One test scene: the image, its truth and each model's mask (cnnkit.plots.mask_panels)."""
    from cnnkit import plots
    from cnnkit.metrics.segmentation import SegmentationMeter
    from cnnkit.tasks.segment.data import load_splits
    from cnnkit.tasks.segment.predict import palette

    st = rows[0]["settings"]
    cfg = SegmentConfig(data="digits", data_dir=args.data_dir, scenes=st["scenes"], canvas=st["canvas"]).resolved()
    scenes = load_splits(cfg)[2]
    i = args.figure_scene
    truth = scenes.masks[i].long()
    masks = {"truth": truth}
    for r in rows:
        pred = predict_masks(load_segmenter(keep / r["arch"]), scenes.images[i : i + 1])[0]
        meter = SegmentationMeter(scenes.num_classes, 255, 3, scenes.classes)
        meter.update(pred[None], truth[None])
        masks[f"{NAMES[r['arch']].split(' ')[0]}\nmIoU {meter.compute()['mIoU']:.2f}"] = pred
    plots.mask_panels(
        scenes.images[i],
        masks,
        palette(scenes.num_classes),
        args.figure,
        classes=scenes.classes,
        title=f"test scene {i}: each model's mask (mIoU over the classes in this scene)",
    )
    print(f"figure: {args.figure} (test scene {i})")


def pennfudan(args) -> None:
    cfg = SegmentConfig(data="pennfudan", data_dir=args.data_dir, threads=args.threads)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        result = train(cfg, out, quiet=True)
        wall = time.perf_counter() - t
    test, r = result.test, cfg.resolved()
    print(
        f"\nPenn-Fudan (cnnkit segment train --data pennfudan: {r.arch} on {r.model} (weights {r.weights}, "
        f"BN frozen {r.freeze_bn}, layers to stride {r.freeze_to} frozen, encoder lr x{r.encoder_lr}), decoder to "
        f"stride {r.finest}, photos shrunk to {r.max_side} px, crops {r.crop}, colour jitter {r.jitter}, "
        f"{r.epochs} epochs, batch {r.batch_size}, AdamW lr {r.lr} one-cycle, cross-entropy + {r.lovasz} x "
        f"Lovasz; tested with tta {r.tta} at scale {r.test_scale})"
    )
    print(
        f"person IoU {test['iou'][1]:.4f}  mIoU {test['mIoU']:.4f}  pixel acc {test['pixel_accuracy']:.4f}  "
        f"boundary IoU {test['boundary_iou']:.4f}  on {test['images']} test photos; training "
        f"{result.seconds:.0f} s (wall {wall:.0f} s)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", choices=["digits", "pennfudan"])
    p.add_argument("--archs", nargs="*", default=ARCHS, choices=ARCHS, help="which to train (default: all)")
    p.add_argument("--backbone", default="resnet18", help="the FCNs' and DeepLab's encoder (from scratch)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--scenes", type=int, default=2000)
    p.add_argument("--canvas", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--figure", default="docs/images/segmentation_digits.png")
    p.add_argument("--figure-scene", type=int, default=7, help="which test scene the figure shows (7: four digits)")
    p.add_argument("--keep", default="runs/bench-segmentation", help="run folders of the digit models")
    p.add_argument("--report", action="store_true", help="only print the table and draw the figure of --keep")
    args = p.parse_args()
    print(f"{cpu_name()}, {args.threads or torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(TARGETS)
    if args.report:
        report(args)
        return
    if args.only != "pennfudan":
        digits(args)
        report(args)
    if args.only != "digits":
        pennfudan(args)


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

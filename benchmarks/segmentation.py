"""Segmentation benchmark: what skips, U-Net's decoder and atrous convolution restore, as numbers.

    python benchmarks/segmentation.py --data-dir ../shared/data                # digit scenes + Penn-Fudan
    python benchmarks/segmentation.py --only digits --archs fcn8s   # one architecture (one locked run)
    python benchmarks/segmentation.py --report                       # the table + figure of those trained

Digit scenes (MNIST digits on a dark canvas, 11 classes: background + 0-9 from each digit's ink):
FCN-32s, FCN-16s, FCN-8s, U-Net and DeepLab-v3 (output stride 16), all on a ResNet-18 encoder
trained from scratch (and U-Net on its own encoder, `--data digits`'s default: `--archs unet-unet`),
with the same data, epochs, batch, learning rate and loss (cross-entropy + Dice); test mIoU, pixel
accuracy, boundary IoU (Cheng et al. 2021, band of 3 px) and training time. A figure shows one
test scene's masks from each. Penn-Fudan: `cnnkit segment train --data pennfudan` with its
defaults (the recipe a user gets without flags: ImageNet efficientnet_lite0 U-Net), person IoU on
the 50 test photos.
Every run goes through cnnkit's one training engine; the CPU and thread count are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.segment import SegmentConfig, load_segmenter, overlay, predict_masks, train

ARCHS = [("fcn32s", "resnet18"), ("fcn16s", "resnet18"), ("fcn8s", "resnet18"), ("unet", "resnet18"),
         ("deeplabv3", "resnet18"), ("unet", "unet")]   # the last: `--data digits`'s default, U-Net's own encoder


def _key(arch: str, backbone: str) -> str:
    return arch if backbone == "resnet18" else f"{arch}-{backbone}"
TARGETS = "targets: digit mIoU >= 0.90; FCN-8s >= FCN-32s + 0.03 mIoU; Penn-Fudan person IoU >= 0.80 in 20 min"


def digits(args) -> None:
    """Train each architecture into ``--keep``/<arch> (one locked run each if you like), then report all."""
    keep = Path(args.keep)
    for arch, backbone in ARCHS:
        if args.archs is not None and _key(arch, backbone) not in args.archs:
            continue
        cfg = SegmentConfig(data="digits", data_dir=args.data_dir, arch=arch, backbone=backbone,
                            epochs=args.epochs, scenes=args.scenes, canvas=args.canvas,
                            batch_size=args.batch_size, lr=args.lr, threads=args.threads, output_stride=16)
        out = keep / _key(arch, backbone)
        if out.exists():
            shutil.rmtree(out)
        t = time.perf_counter()
        result = train(cfg, out, quiet=True)
        wall = time.perf_counter() - t
        test = result.test
        row = {"key": _key(arch, backbone), "arch": arch, "backbone": backbone, "mIoU": test["mIoU"], "pixel_accuracy": test["pixel_accuracy"],
               "boundary_iou": test["boundary_iou"], "seconds": result.seconds, "wall": wall,
               "params": sum(p.numel() for p in result.model.net.parameters()), "iou": test["iou"],
               "settings": {k: getattr(args, k) for k in ("canvas", "scenes", "epochs", "batch_size", "lr")},
               "recipe": {k: getattr(cfg.resolved(), k) for k in ("width", "dice", "weights", "channels_last")}}
        (out / "bench.json").write_text(json.dumps(row, indent=1))
        print(f"{arch:>9} ({backbone}): test mIoU {row['mIoU']:.4f}  pixel acc {row['pixel_accuracy']:.4f}  "
              f"boundary IoU {row['boundary_iou']:.4f}  training {row['seconds']:.0f} s (wall {wall:.0f} s)", flush=True)


def report(args) -> None:
    """The table of every architecture trained into ``--keep``, and the figure of their test masks."""
    keep = Path(args.keep)
    rows = [json.loads((keep / _key(*a) / "bench.json").read_text()) for a in ARCHS
            if (keep / _key(*a) / "bench.json").is_file()]
    if not rows:
        return
    st = rows[0]["settings"]
    print(f"\ndigit scenes: canvas {st['canvas']}, {st['scenes']} train / {st['scenes'] // 4} test scenes, "
          f"{st['epochs']} epochs, batch {st['batch_size']}, AdamW lr {st['lr']} one-cycle, cross-entropy + "
          f"{rows[0]['recipe']['dice']} x Dice, from scratch")
    print("| model | encoder | test mIoU | pixel accuracy | boundary IoU (3 px) | training time | params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {_label(r)} | {r['backbone']} | {r['mIoU']:.4f} | {r['pixel_accuracy']:.4f} | "
              f"{r['boundary_iou']:.4f} | {r['seconds']:.0f} s | {r['params'] / 1e6:.2f}M |")
    if args.figure:
        from cnnkit.tasks.segment import load_splits

        cfg = SegmentConfig(data="digits", data_dir=args.data_dir, scenes=st["scenes"], canvas=st["canvas"],
                            arch="fcn8s", backbone="resnet18")
        scenes = load_splits(cfg.resolved())[2]
        preds = {_label(r): predict_masks(load_segmenter(keep / r["key"]), scenes.images[: args.figure_scenes])
                 for r in rows}
        figure(scenes, preds, Path(args.figure))
        print(f"figure: {args.figure}")


def _label(row: dict) -> str:
    return row["arch"] if row["backbone"] == "resnet18" else f"{row['arch']} ({row['backbone']})"


def figure(scenes, preds: dict, path: Path, zoom: int = 3) -> None:
    """Rows: scenes; columns: image, ground truth, each model's prediction (VOC colours over the image)."""
    from PIL import Image, ImageDraw

    n = next(iter(preds.values())).shape[0]
    cols = ["image", "truth", *preds]
    s = scenes.images.shape[-1] * zoom
    sheet = Image.new("RGB", (len(cols) * (s + 4), 14 + n * (s + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(cols):
        draw.text((j * (s + 4) + 2, 1), name, fill="black")
    for i in range(n):
        image = scenes.images[i]
        tiles = [image.expand(3, -1, -1), overlay(image, scenes.masks[i].long(), 11, 0.8),
                 *[overlay(image, p[i], 11, 0.8) for p in preds.values()]]
        for j, t in enumerate(tiles):
            tile = Image.fromarray(t.permute(1, 2, 0).numpy()).resize((s, s), Image.NEAREST)
            sheet.paste(tile, (j * (s + 4), 14 + i * (s + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def pennfudan(args) -> None:
    cfg = SegmentConfig(data="pennfudan", data_dir=args.data_dir, threads=args.threads)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        result = train(cfg, out, quiet=True)
        wall = time.perf_counter() - t
    test, r = result.test, cfg.resolved()
    print(f"\nPenn-Fudan (cnnkit segment train --data pennfudan: {r.arch} on {r.backbone} (weights {r.weights}, "
          f"BN frozen {r.freeze_bn}, layers to stride {r.freeze_to} frozen, encoder lr x{r.encoder_lr}), decoder to "
          f"stride {r.finest}, photos shrunk to {r.max_side} px, crops {r.crop}, colour jitter {r.jitter}, "
          f"{r.epochs} epochs, batch {r.batch_size}, AdamW lr {r.lr} one-cycle)")
    print(f"person IoU {test['iou'][1]:.4f}  mIoU {test['mIoU']:.4f}  pixel acc {test['pixel_accuracy']:.4f}  "
          f"boundary IoU {test['boundary_iou']:.4f}  on {test['images']} test photos; training "
          f"{result.seconds:.0f} s (wall {wall:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", choices=["digits", "pennfudan"])
    p.add_argument("--archs", nargs="*", help="a subset of fcn32s fcn16s fcn8s unet deeplabv3")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--scenes", type=int, default=1000)
    p.add_argument("--canvas", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--figure", default="docs/images/segmentation_digits.png")
    p.add_argument("--figure-scenes", type=int, default=3)
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
    main()

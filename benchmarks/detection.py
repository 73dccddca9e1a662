"""Detection benchmark: the speed of cnnkit.ops' RoIAlign and of decode + NMS on this CPU.

The issue's targets: RoIAlign of 512 boxes on a (1, 256, 64, 64) map under 50 ms; decode + NMS
under 5 ms per image. Boxes are random, 2-18 feature cells a side (the sizes a Mask R-CNN head sees),
output 7x7, ``sampling_ratio=2`` (torchvision's MultiScaleRoIAlign default) and adaptive (-1).
Decode + NMS runs on a 384x384 image's raw detector output at strides 8/16/32 (3,024 locations),
with 1 class (Penn-Fudan) and 10 classes (digit scenes) and the logits set so that ``top_k`` = 1000
candidates reach NMS (the worst case decode allows). Times are medians of ``--repeats`` runs after
a warm-up. ``digits`` and ``pennfudan`` train the default recipe of ``cnnkit detect train`` (through
the engine; flags override it) and print test AP and the time it took, then the inference time per
image (the network, and decode + NMS, separately). Timed runs go under the shared lock, at normal
priority::

    flock /tmp/cnnkit-bench.lock python benchmarks/detection.py ops [--threads 1 2]
    flock /tmp/cnnkit-bench.lock python benchmarks/detection.py digits --data-dir ../shared/data [--epochs N]
    flock /tmp/cnnkit-bench.lock python benchmarks/detection.py pennfudan --data-dir ../shared/data [--epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.models.detection import decode, grid_points
from cnnkit.ops import batched_nms, roi_align


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def roi_boxes(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * (size - 18)
    wh = torch.rand(n, 2, generator=g) * 16 + 2
    return torch.cat([torch.zeros(n, 1), xy, xy + wh], 1)


def detector_output(image: int, classes: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    strides = [8, 16, 32]
    sizes = [(image // s, image // s) for s in strides]
    points, st = grid_points(sizes, strides)
    a = len(points)
    cls = torch.randn(1, a, classes, generator=g) - 2.0
    flat = cls.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[:1500]] = 3.0 + torch.rand(1500, generator=g)  # >> threshold
    box = (torch.rand(1, a, 4, generator=g) * 2 + 0.5) * st[None, :, None] * 2
    return {"cls": cls, "box": box, "ctr": torch.randn(1, a, generator=g) + 2, "points": points, "strides": st}


def ops(args) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 64, 64, generator=g)
    boxes = roi_boxes(512, 64, g)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}")
    print(
        "| threads | RoIAlign 512 boxes, ratio 2 (ms) | ratio -1 (ms) | aligned, ratio 2 (ms) "
        "| decode, 1 class (ms) | NMS (ms) | decode, 10 classes (ms) | NMS (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        ra = median_ms(lambda: roi_align(x, boxes, 7, 1.0, 2, False), args.repeats)
        rad = median_ms(lambda: roi_align(x, boxes, 7, 1.0, -1, False), args.repeats)
        ral = median_ms(lambda: roi_align(x, boxes, 7, 1.0, 2, True), args.repeats)
        row = [ra, rad, ral]
        for classes in (1, 10):
            out = detector_output(384, classes, g)
            # decode without NMS: NMS with threshold 1.0 suppresses nothing but is still run, so time
            # the parts separately: candidates (score, top-k, boxes) and then batched_nms on them
            nms_in = {}

            def candidates():
                scores = (torch.sigmoid(out["cls"]) * torch.sigmoid(out["ctr"])[..., None]).sqrt()[0]
                flat = scores.flatten()
                keep = torch.nonzero(flat > 0.05).flatten()
                keep = keep[flat[keep].topk(min(1000, len(keep))).indices]
                loc = keep // classes
                p = out["points"][loc]
                d = out["box"][0, loc]
                nms_in["b"] = torch.cat([p - d[:, :2], p + d[:, 2:]], 1)
                nms_in["s"], nms_in["c"] = flat[keep], keep % classes

            dec = median_ms(candidates, args.repeats)
            nms = median_ms(lambda: batched_nms(nms_in["b"], nms_in["s"], nms_in["c"], 0.6, max_keep=100), args.repeats)
            total = median_ms(lambda: decode(out, (384, 384)), args.repeats)
            row += [dec, nms]
            print(
                f"  ({classes} class{'es' if classes > 1 else ''}: decode() end to end {total:.2f} ms, "
                f"{len(decode(out, (384, 384))[0]['boxes'])} boxes kept of {len(nms_in['b'])})"
            )
        print(f"| {threads} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    print("targets: RoIAlign < 50 ms, decode + NMS < 5 ms per image")


def train_and_time(args) -> None:
    import os
    import tempfile

    from cnnkit.models.detection import decode as decode_fn
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data
    from cnnkit.tasks.detect.train import train

    cfg = DetectConfig(
        data=args.what,
        data_dir=args.data_dir,
        epochs=args.epochs,
        image_size=args.image_size,
        model=args.backbone or "",
        threads=args.threads,
        scenes=tuple(args.scenes) if args.scenes else DetectConfig.scenes,
    )
    out = args.out or tempfile.mkdtemp(prefix=f"cnnkit-bench-detect-{args.what}-")  # a fresh run folder
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}")
    run, m = train(cfg, out, quiet=not args.progress)
    cfg = cfg.resolved()
    print(
        f"| {args.what} | {cfg.model} ({cfg.weights or 'scratch'}) | {cfg.image_size} | {cfg.epochs} | "
        f"{run.seconds / 60:.1f} min | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['AR100']:.3f} | "
        f"{m['VOC_AP50']:.3f} |"
    )
    _, _, test_set, _ = load_split_data(cfg)
    model = run.model.eval()
    x = test_set.images[:8].float() / 255
    with torch.no_grad():
        net = median_ms(lambda: model(x[:1]), 10)
        out_ = model(x[:1])
        dec = median_ms(lambda: decode_fn(out_, tuple(x.shape[-2:])), 20)
    budget = 10 if args.what == "digits" else 8
    target = "AP50 >= 0.97" if args.what == "digits" else "AP50 >= 0.90 and AP >= 0.55"
    print(f"target: {target} within {budget} min of training; measured {run.seconds / 60:.1f} min")
    print(
        f"inference per image at {cfg.image_size}x{cfg.image_size}: network {net:.1f} ms, decode + NMS {dec:.2f} ms "
        f"({torch.get_num_threads()} threads)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ops", help="RoIAlign and decode + NMS timings")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=20)
    for name in ("digits", "pennfudan"):
        q = sub.add_parser(name, help=f"train the default {name} recipe, print test AP and times")
        q.add_argument("--data-dir")
        q.add_argument("--epochs", type=int)
        q.add_argument("--image-size", type=int)
        q.add_argument("--backbone")
        q.add_argument("--scenes", type=int, nargs=2)
        q.add_argument("--threads", type=int, help="torch threads (default: the recipe's, 1)")
        q.add_argument("--out")
        q.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.what == "ops":
        ops(args)
    else:
        train_and_time(args)


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

"""Instance-segmentation benchmark: `cnnkit instance train --data pennfudan` (or digits) with its defaults,
then COCO mask AP@[.50:.95] and box AP on the test split, the training and inference times and the CPU.

The target: Penn-Fudan mask AP >= 0.50 within 9 minutes of training on the 2-core AMD EPYC Zen 3
(for scale: the torchvision tutorial's COCO-pretrained Mask R-CNN reaches 0.761 on a GPU). Timed
runs go under the shared lock, at normal priority; flags override the recipe::

    flock /tmp/cnnkit-bench.lock python benchmarks/instance.py pennfudan --data-dir ../shared/data [--epochs N]
    flock /tmp/cnnkit-bench.lock python benchmarks/instance.py digits --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.instance.config import InstanceConfig
from cnnkit.tasks.instance.data import load_instance_data
from cnnkit.tasks.instance.load import load_mask_detector
from cnnkit.tasks.instance.predict import predict_instances
from cnnkit.tasks.instance.train import train

REFERENCE = {"pennfudan": ("torchvision tutorial Mask R-CNN (COCO-pretrained, GPU)", 0.761), "digits": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", choices=["pennfudan", "digits"])
    ap.add_argument("--data-dir")
    ap.add_argument("--out", help="run folder (default: a temporary one)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--lr", type=float)
    args = ap.parse_args()
    given = {"epochs": args.epochs, "image_size": args.image_size, "lr": args.lr}
    cfg = InstanceConfig(data=args.data, data_dir=args.data_dir, **{k: v for k, v in given.items() if v is not None})
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"instance-{args.data}-"))
    tick = time.perf_counter()
    run, final = train(cfg, out, quiet=True)
    wall = time.perf_counter() - tick
    # inference: the deployable model on the test split, network + decode + mask pasting per image
    model = load_mask_detector(out)
    _, _, test_set, _ = load_instance_data(model_cfg := cfg.resolved())
    t = time.perf_counter()
    predict_instances(model, test_set, 1, **model.info.get("decode", {}))
    per_image = (time.perf_counter() - t) / len(test_set) * 1000
    cmd = "python benchmarks/instance.py " + " ".join(sys.argv[1:])
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; command: {cmd}")
    print(
        f"recipe: {model_cfg.model} ({model_cfg.weights}), {model_cfg.image_size} px, {model_cfg.epochs} epochs, "
        f"batch {model_cfg.batch_size}, lr {model_cfg.lr}, freeze to stride {model_cfg.freeze_to}"
    )
    print(
        f"{args.data} test ({len(test_set)} images): mask AP {final['mask_AP']:.3f}  AP50 {final['mask_AP50']:.3f}  "
        f"AP75 {final['mask_AP75']:.3f}  AR100 {final['mask_AR100']:.3f} | box AP {final['box_AP']:.3f}  "
        f"AP50 {final['box_AP50']:.3f}"
    )
    print(
        f"training {run.seconds:.0f} s in the engine ({wall:.0f} s wall with data loading and the final "
        f"evaluation); inference {per_image:.0f} ms per image (network, decode, pasting at the original size)"
    )
    ref = REFERENCE[args.data]
    if ref:
        print(
            f"reference: {ref[0]} mask AP {ref[1]:.3f}; target >= 0.50 in 9 minutes: "
            f"{'met' if final['mask_AP'] >= 0.5 and run.seconds <= 540 else 'NOT met'}"
        )
    print(
        json.dumps(
            {
                "data": args.data,
                **final,
                "train_seconds": round(run.seconds, 1),
                "wall_seconds": round(wall, 1),
                "ms_per_image": round(per_image, 1),
                "cpu": cpu_name(),
                "run": str(out),
            }
        )
    )


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

"""Test-time views for networks trained on random windows: does matching the training size help?

The presets train on random 24x24 windows of the 28x28 digits and evaluate whole images with the
shift TTA (the image and four 1-px shifts). A net that pools globally also takes the windows, so
this scores, for each trained run given, the same images seen as:

- ``whole``: the 28x28 image alone;
- ``shift``: what the presets do (whole image + 4 one-pixel shifts, ``Classifier(tta="shift")``);
- ``center``: the central window of the training size;
- ``windows``: every window offset, at most 5 per axis (25 views for 24 of 28).

It prints each run's errors, their mean accuracy and the errors of the runs' averaged
probabilities (an ensemble). Choose on ``--split val``; report ``test``.

    python benchmarks/mnist_tta.py RUN [RUN ...] --data-dir ../shared/data --split val
"""

from __future__ import annotations

import argparse
import os

import torch

import cnnkit
from cnnkit.data.datasets import load_dataset
from cnnkit.engine.precision import cpu_name
from cnnkit.train.checkpoint import read_info


def offsets(free: int, most: int = 5) -> list[int]:
    """Up to ``most`` evenly spread offsets in 0..free, both ends included."""
    n = min(most, free + 1)
    return sorted({round(i * free / max(1, n - 1)) for i in range(n)})


def views(x: torch.Tensor, window: int) -> dict[str, list[torch.Tensor]]:
    h, w = x.shape[-2:]
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1))
    shift = [x] + [pad[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    cut = lambda dy, dx: x[..., dy:dy + window, dx:dx + window].contiguous(memory_format=torch.channels_last)
    return {"whole": [x], "shift": shift, "center": [cut((h - window) // 2, (w - window) // 2)],
            "windows": [cut(dy, dx) for dy in offsets(h - window) for dx in offsets(w - window)]}


@torch.no_grad()
def probabilities(model, images: list[torch.Tensor], batch: int = 1000) -> torch.Tensor:
    """The views' softmax averaged, through the bare net (the Classifier's normalisation applied)."""
    per_view = [torch.cat([model.net((v[i:i + batch] - model.mean) / model.std).float().softmax(1)
                           for i in range(0, len(v), batch)]) for v in images]
    return torch.stack(per_view).mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="trained run folders (cnnkit train)")
    ap.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--window", type=int, default=0,
                    help="the training window's side (default: the crop in each run's config)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    first = read_info(args.runs[0])
    data = load_dataset(first["dataset"]["name"], args.split, args.data_dir)
    x = data.images.float().div(255).contiguous(memory_format=torch.channels_last)
    errors: dict[str, list[int]] = {}
    summed: dict[str, torch.Tensor] = {}
    for run in args.runs:
        window = args.window or read_info(run)["config"]["augment"].get("crop", 0) or x.shape[-1]
        model = cnnkit.load(run)
        for name, images in views(x, window).items():
            p = probabilities(model, images)
            summed[name] = summed.get(name, 0) + p
            errors.setdefault(name, []).append(int((p.argmax(1) != data.labels).sum()))
        print(f"{run}: trained on {window}x{window} windows")
    n = len(data.labels)
    print(f"{args.split} ({n} images) | view | errors per run | mean accuracy | ensemble errors")
    for name, errs in errors.items():
        ensemble = int((summed[name].argmax(1) != data.labels).sum())
        print(f"| {name} ({len(views(x[:1], window)[name])} views) | {errs} | "
              f"{1 - sum(errs) / len(errs) / n:.2%} | {ensemble} |")


if __name__ == "__main__":
    main()

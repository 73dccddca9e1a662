"""Test-time views for networks trained on random windows: does matching the training size help?

The presets train on random 24x24 windows of the 28x28 digits and evaluate whole images with the
shift TTA (the image and four 1-px shifts). A net that pools globally also takes the windows, so
this scores, for each trained run given, the same images seen as:

- ``whole``: the 28x28 image alone;
- ``shift``: what the presets do (whole image + 4 one-pixel shifts, ``Classifier(tta="shift")``);
- ``center``: the central window of the training size;
- ``windows``: every window offset, at most 5 per axis (25 views for 24 of 28).

The shift TTA is the library's own (``cnnkit.models.deploy.tta_logits``).

It prints each run's errors, their mean accuracy and the errors of the runs' averaged
probabilities (an ensemble). Choose on ``--split val``; report ``test``.

    python benchmarks/mnist_tta.py RUN [RUN ...] --data-dir ../shared/data --split val
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

import cnnkit
from cnnkit.data.datasets import load_dataset
from cnnkit.engine.precision import cpu_name
from cnnkit.engine.runfolder import read_info
from cnnkit.models.deploy import tta_logits


def offsets(free: int, most: int = 5) -> list[int]:
    """Up to ``most`` evenly spread offsets in 0..free, both ends included."""
    n = min(most, free + 1)
    return sorted({round(i * free / max(1, n - 1)) for i in range(n)})


def window_views(z: torch.Tensor, window: int, every: bool) -> list[torch.Tensor]:
    """The central ``window`` x ``window`` window of the batch, or (``every``) all offsets."""
    h, w = z.shape[-2:]
    at = (
        [(dy, dx) for dy in offsets(h - window) for dx in offsets(w - window)]
        if every
        else [((h - window) // 2, (w - window) // 2)]
    )
    return [z[..., dy : dy + window, dx : dx + window].contiguous(memory_format=torch.channels_last) for dy, dx in at]


def schemes(window: int) -> dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]]:
    """name -> (bare net, normalised batch) -> the views' averaged probabilities."""

    def crops(every):
        return lambda net, z: torch.stack([net(v).float().softmax(1) for v in window_views(z, window, every)]).mean(0)

    return {
        "whole": lambda net, z: tta_logits(net, z, "").exp(),
        "shift": lambda net, z: tta_logits(net, z, "shift").exp(),  # the presets' TTA
        "center": crops(False),
        "windows": crops(True),
    }


@torch.no_grad()
def probabilities(model, x: torch.Tensor, scheme, batch: int = 1000) -> torch.Tensor:
    """A scheme's probabilities for every image of ``x``, after the Classifier's normalisation."""
    return torch.cat([scheme(model.net, (x[i : i + batch] - model.mean) / model.std) for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="trained run folders (cnnkit train)")
    ap.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument(
        "--window", type=int, default=0, help="the training window's side (default: the crop in each run's config)"
    )
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    infos = [read_info(run) for run in args.runs]
    data = load_dataset(infos[0]["dataset"]["name"], args.split, args.data_dir)
    x = data.images.float().div(255).contiguous(memory_format=torch.channels_last)
    errors: dict[str, list[int]] = {}
    summed: dict[str, torch.Tensor] = {}
    for run, info in zip(args.runs, infos):
        window = args.window or info["config"]["augment"].get("crop", 0) or x.shape[-1]
        model = cnnkit.load(run)
        for name, scheme in schemes(window).items():
            p = probabilities(model, x, scheme)
            summed[name] = summed.get(name, 0) + p
            errors.setdefault(name, []).append(int((p.argmax(1) != data.labels).sum()))
        print(f"{run}: trained on {window}x{window} windows")
    n = len(data.labels)
    print(f"{args.split} ({n} images) | view | errors per run | mean accuracy | ensemble errors")
    for name, errs in errors.items():
        ensemble = int((summed[name].argmax(1) != data.labels).sum())
        print(f"| {name} | {errs} | {1 - sum(errs) / len(errs) / n:.2%} | {ensemble} |")


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

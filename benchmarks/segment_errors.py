"""Where a segmentation run's errors lie, on its validation photos: what the foreground threshold,
the boundaries and whole unlabelled objects account for.

    python benchmarks/segment_errors.py RUN --data-dir ../shared/data              # the run's val split
    python benchmarks/segment_errors.py RUN --data-dir ../shared/data --out DIR    # + the worst photos' pictures

For a run with a background class (class 0), every photo of the split (the run's own, as its
``split.json`` names them) is answered at its own size by the run's test-time procedure (what
``cnnkit segment predict`` writes) and its pixels counted as true positives, false positives
(foreground where the mask says background) and false negatives, pooled over the photos. Printed:

- the foreground IoU with the foreground probability thresholded at several values (0.5: the
  label map itself), to see whether a calibrated threshold would help;
- the IoU when errors within d px of a mask boundary are left out, to see how much is boundary;
- the false positives in predicted regions that touch no labelled foreground pixel (an object the
  masks leave unlabelled, or a phantom);
- the photos with the most wrong pixels; with ``--out`` their error maps (false positives class 1,
  false negatives class 2) as overlays, written by ``cnnkit``'s own prediction writer.

The test split is there for a run's final report, not for choosing a recipe: ``--split test`` is
accepted but the default is ``val``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BANDS = (1, 2, 3, 5, 8)


def tally(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(true positive, false positive, false negative) pixels of two boolean maps, as floats."""
    return torch.tensor([(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()], dtype=torch.float)


def iou(counts: torch.Tensor) -> float:
    tp, fp, fn = counts.tolist()
    return tp / max(1.0, tp + fp + fn)


def components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a boolean (H, W) map (0 outside it), by propagating the
    largest pixel index through each region."""
    h, w = mask.shape
    m = mask.float()
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).view(h, w) * m
    while True:
        grown = F.max_pool2d(labels[None, None], 3, 1, 1)[0, 0] * m
        if torch.equal(grown, labels):
            return labels
        labels = grown


def band(fg: torch.Tensor, d: int) -> torch.Tensor:
    """Pixels within d px (a (2d+1)^2 window) of the boundary of the boolean map ``fg``."""
    f = fg.float()[None, None]
    grown = F.max_pool2d(f, 2 * d + 1, 1, d)[0, 0] > 0
    shrunk = -F.max_pool2d(-f, 2 * d + 1, 1, d)[0, 0] > 0
    return grown & ~shrunk


def main(argv=None) -> int:
    from cnnkit.engine.precision import cpu_name
    from cnnkit.engine.runfolder import resolve, run_photos
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import PARTS, load_splits
    from cnnkit.tasks.segment.load import load_segmenter
    from cnnkit.tasks.segment.predict import image_logits, write_prediction

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a segmentation run folder")
    parser.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA", "../shared/data"))
    parser.add_argument("--split", default="val", choices=("val", "test", "train"))
    parser.add_argument("--worst", type=int, default=6, help="photos to list (and draw with --out)")
    parser.add_argument("--out", default="", help="write the worst photos' error overlays here")
    args = parser.parse_args(argv)

    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads")
    run = Path(args.run)
    model = load_segmenter(run).eval()
    cfg = SegmentConfig.from_dict(model.info["config"], strict=False)
    cfg.data_dir = args.data_dir
    names = run_photos(resolve(run), cfg.data)  # the run's own photos, as `segment eval`
    read = load_splits(cfg, own_size=True, split=names, parts=(args.split,), classes=model.classes)
    parts = dict(zip(PARTS, read[:3]))
    data = parts[args.split]
    print(
        f"{run}: {args.split} split, {len(data)} photos; test-time procedure: tta {model.tta or 'none'}, "
        f"scales {list(model.test_scale)}; the network sees each photo shrunk to {cfg.max_side} px"
    )

    total = torch.zeros(3)
    by_t = {t: torch.zeros(3) for t in THRESHOLDS}
    by_d = {d: torch.zeros(3) for d in BANDS}
    loose_fp = 0.0
    photos = []
    with torch.no_grad():
        for name, image, mask in zip(data.names, data.images, data.masks):
            probs = image_logits(model, image, cfg.max_side).softmax(0)  # (K, H, W), as `predict` answers
            pred = probs.argmax(0)
            m = mask.long()
            seen = m != 255
            gt = (m > 0) & seen
            fg = (pred > 0) & seen
            counts = tally(fg, gt)
            for t in THRESHOLDS:
                by_t[t] += tally((1 - probs[0] > t) & seen, gt)
            for d in BANDS:
                keep = ~band(gt, d)
                by_d[d] += tally(fg & keep, gt & keep)
            regions = components(fg)
            touching = torch.unique(regions[fg & gt])
            loose_fp += float((fg & ~gt & ~torch.isin(regions, touching)).sum())
            total += counts
            photos.append((float(counts[1] + counts[2]), name, image, fg, gt, counts))

    tp, fp, fn = total.tolist()
    print(
        f"foreground IoU {iou(total):.4f}: {tp:,.0f} right, {fp:,.0f} false positive, {fn:,.0f} false negative pixels"
    )
    print("foreground probability threshold: " + ", ".join(f"{t}: {iou(c):.4f}" for t, c in by_t.items()))
    print(
        "errors within d px of a mask boundary left out: "
        + ", ".join(f"d={d}: IoU {iou(c):.4f} ({c[1] + c[2]:,.0f} errors left)" for d, c in by_d.items())
    )
    print(
        f"false positives in predicted regions touching no labelled pixel: {loose_fp:,.0f} "
        f"({loose_fp / max(1.0, fp):.0%} of the false positives)"
    )
    photos.sort(key=lambda p: -p[0])
    print("photos with the most wrong pixels:")
    for _, name, image, fg, gt, counts in photos[: args.worst]:
        print(f"  {name}: IoU {iou(counts):.3f}, {counts[1]:,.0f} false positive, {counts[2]:,.0f} false negative")
        if args.out:
            errors_map = torch.zeros_like(fg, dtype=torch.long)
            errors_map[fg & ~gt] = 1
            errors_map[~fg & gt] = 2
            write_prediction(image, errors_map, 3, args.out, Path(name).stem + "_errors")
    return 0


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")

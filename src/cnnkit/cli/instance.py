"""``cnnkit instance train|eval|predict``: thin wrappers over cnnkit.tasks.instance."""

from __future__ import annotations

import json
from pathlib import Path

from cnnkit.cli.detect import add_eval_predict, add_train_args, config_args, start_run


def register(subparsers) -> None:
    p = subparsers.add_parser("instance", help="instance segmentation (masks per object): train, eval, predict",
                              description="Train the anchor-free detector with a Mask R-CNN-style mask head on "
                                          "Penn-Fudan or digit scenes; evaluate it (COCO mask AP); draw its masks.")
    sub = p.add_subparsers(dest="instance_command", metavar="ACTION")

    t = sub.add_parser("train", help="train a mask detector (through the one training engine)")
    t.add_argument("--data", default="pennfudan", choices=["pennfudan", "digits"])
    add_train_args(t, "instance", "zoo name (default: efficientnet_lite0 for photos, resnet18 for digits)",
                   "default 320; digits 96")
    t.add_argument("--mask-convs", type=int, help="3x3 convs of the mask head (default 4)")
    t.add_argument("--mask-width", type=int, help="channels of the mask head (default 64)")
    t.add_argument("--roi-jitter", type=int, help="jittered copies of each box the mask head trains on (default 2)")
    t.set_defaults(func=run_train)

    add_eval_predict(sub, "COCO mask AP (and box AP) on the run's test split",
                     "instance masks and boxes of image files, drawn into PNGs", run_eval, run_predict)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_train(args) -> int:
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.train import train

    cfg = InstanceConfig(**config_args(args, "mask_convs", "mask_width", "roi_jitter"))
    return start_run(args, cfg, train, "instance")


def run_eval(args) -> int:
    from cnnkit.tasks.instance.evaluate import evaluate_run

    m = evaluate_run(args.run, args.data_dir)
    if args.format == "json":
        print(json.dumps(m))
        return 0
    print(f"{m['data']} {m['split']} ({m['images']} images): mask AP {m['mask_AP']:.3f}  AP50 {m['mask_AP50']:.3f}  "
          f"AP75 {m['mask_AP75']:.3f}  AR100 {m['mask_AR100']:.3f}  box AP {m['box_AP']:.3f}  box AP50 {m['box_AP50']:.3f}")
    return 0


def run_predict(args) -> int:
    from cnnkit.engine.runfolder import resolve
    from cnnkit.tasks.instance.load import load_mask_detector
    from cnnkit.tasks.instance.predict import predict_files

    model = load_mask_detector(args.run)
    out_dir = Path(args.out_dir) if args.out_dir else resolve(args.run).parent / "predictions"
    rows = predict_files(model, [Path(p) for p in args.images], out_dir, args.score)
    if args.format == "json":                              # one JSON object per image, one per line
        for r in rows:
            print(json.dumps(r))
        return 0
    for r in rows:
        print(f"{r['image']}: {len(r['boxes'])} instances -> {r['png']}")
        for b, s, name, px in zip(r["boxes"], r["scores"], r["labels"], r["mask_pixels"]):
            print(f"  {name} {s:.2f} [{', '.join(f'{v:.0f}' for v in b)}] {px} px")
    return 0

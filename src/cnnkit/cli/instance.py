"""``cnnkit instance train|eval|predict``: thin wrappers over cnnkit.tasks.instance."""

from __future__ import annotations

from pathlib import Path

from cnnkit.cli import add_run_arguments, print_json, train_config
from cnnkit.cli.detect import DATA_EXAMPLES, add_eval_predict, start_run
from cnnkit.engine.config import add_config_arguments, resolved_defaults
from cnnkit.errors import CnnkitError
from cnnkit.tasks.instance.config import InstanceConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "instance",
        help="instance segmentation (masks per object): train, eval, predict",
        description="Train the anchor-free detector with a Mask R-CNN-style mask head on "
        "Penn-Fudan, digit scenes, a COCO JSON file (each object's polygons or RLE) or a Pascal VOC "
        "folder (SegmentationObject/ + SegmentationClass/); evaluate it (COCO mask AP); draw its masks.",
    )
    sub = p.add_subparsers(dest="instance_command", metavar="ACTION")

    t = sub.add_parser(
        "train",
        help="train a mask detector (through the one training engine)",
        description="Train the detector with a Mask R-CNN-style mask head; the run folder holds "
        "model.safetensors, resume.safetensors, metrics.csv, curves.png, config.yaml and split.json.",
    )
    add_config_arguments(t, InstanceConfig, presets=resolved_defaults(InstanceConfig, DATA_EXAMPLES))
    add_run_arguments(t, "runs/instance-<data>-<time>")
    t.set_defaults(func=run_train)

    add_eval_predict(
        sub,
        "COCO mask AP (and box AP) on the run's test (or validation) photos",
        "instance masks and boxes of image files, drawn into PNGs",
        run_eval,
        run_predict,
    )
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_train(args) -> int:
    from cnnkit.tasks.instance.train import train

    values = train_config(InstanceConfig, args, ("pennfudan", "digits"))
    return start_run(args, InstanceConfig(**values), train, "instance", values)


def run_eval(args) -> int:
    from cnnkit.cli import existing_data_dir
    from cnnkit.tasks.instance.evaluate import evaluate_run

    existing_data_dir(args.data_dir)
    m = evaluate_run(args.run, args.data_dir, args.split, args.test_scale)
    if args.format == "json":
        print_json(m)
        return 0
    print(
        f"{m['data']} {m['split']} ({m['images']} images): mask AP {m['mask_AP']:.3f}  AP50 {m['mask_AP50']:.3f}  "
        f"AP75 {m['mask_AP75']:.3f}  AR100 {m['mask_AR100']:.3f}  box AP {m['box_AP']:.3f}  box AP50 {m['box_AP50']:.3f}"
    )
    return 0


def run_predict(args) -> int:
    from cnnkit.console import shown
    from cnnkit.engine.runfolder import resolve
    from cnnkit.tasks.instance.load import load_mask_detector
    from cnnkit.tasks.instance.predict import predict_files

    if not 0 <= args.score <= 1:  # NaN fails too: it would keep no box, silently
        raise CnnkitError(f"--score must be a number from 0 to 1 (the least score shown); received {args.score}")
    model = load_mask_detector(args.run)
    out_dir = Path(args.out_dir) if args.out_dir else resolve(args.run).parent / "predictions"
    rows = predict_files(model, [Path(p) for p in args.images], out_dir, args.score)
    if args.format == "json":  # one JSON object per image, one per line
        for r in rows:
            print_json(r)
        return 0
    for r in rows:
        print(f"{shown(r['image'])}: {len(r['boxes'])} instances -> {shown(r['png'])}")
        for b, s, name, px in zip(r["boxes"], r["scores"], r["labels"], r["mask_pixels"]):
            print(f"  {shown(name)} {s:.2f} [{', '.join(f'{v:.0f}' for v in b)}] {px} px")
    return 0

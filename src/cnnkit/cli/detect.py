"""``cnnkit detect train|eval|predict``: thin wrappers over cnnkit.tasks.detect."""

from __future__ import annotations

import time
from pathlib import Path

from cnnkit.cli import add_format, add_run_arguments, print_json, train_config
from cnnkit.engine.config import add_config_arguments, resolved_defaults
from cnnkit.errors import CnnkitError
from cnnkit.tasks.detect.config import DetectConfig

DATA_EXAMPLES = {
    "photos": {"data": "pennfudan"},
    "digits": {"data": "digits"},
}  # one of each kind of data: the help shows each one's defaults


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect",
        help="object detection: train, eval, predict",
        description="Train an anchor-free detector on Penn-Fudan, digit scenes, a COCO "
        "JSON file, a YOLO or a VOC folder; evaluate it (COCO AP); draw its boxes.",
    )
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION")

    t = sub.add_parser(
        "train",
        help="train a detector (through the one training engine)",
        description="Train an anchor-free detector; the run folder holds model.safetensors, "
        "resume.safetensors, metrics.csv, curves.png, config.yaml and split.json.",
    )
    add_config_arguments(t, DetectConfig, presets=resolved_defaults(DetectConfig, DATA_EXAMPLES))
    add_run_arguments(t, "runs/detect-<data>-<time>")
    t.set_defaults(func=run_train)

    add_eval_predict(
        sub,
        "COCO AP / AP50 / AP75 / AR100 on the run's test (or validation) photos",
        "boxes of image files, drawn into PNGs",
        run_eval,
        run_predict,
    )
    p.set_defaults(func=lambda args: p.print_help() or 2)


def add_eval_predict(sub, eval_help: str, predict_help: str, run_eval, run_predict) -> None:
    # allow_abbrev=False: a mistyped --data must not pass as --data-dir (eval scores the run's own data)
    e = sub.add_parser("eval", help=eval_help, allow_abbrev=False)
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument(
        "--data-dir", help="the folder holding the built-in data sets (pennfudan, digits; default: the run's)"
    )
    add_format(e)
    e.add_argument("--split", default="test", choices=["val", "test"], help="the photos scored (default: test)")
    e.add_argument(
        "--test-scale",
        type=float,
        help="instead of the run's: images letterboxed to its --image-size times this (photos only)",
    )
    e.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help=predict_help, allow_abbrev=False)
    q.add_argument("run", help="run folder or model.safetensors (detect: also a .onnx file from `cnnkit export`)")
    q.add_argument("images", nargs="+")
    q.add_argument("--score", type=float, default=0.3, help="least score shown (default 0.3)")
    q.add_argument("--out-dir", help="where the PNGs go (default: <run>/predictions)")
    add_format(q)
    q.set_defaults(func=run_predict)


def run_train(args) -> int:
    from cnnkit.tasks.detect.train import train

    values = train_config(DetectConfig, args, ("pennfudan", "digits"))
    return start_run(args, DetectConfig(**values), train, "detect", values)


def start_run(args, cfg, train, kind: str, given: dict) -> int:
    """``train(cfg, out)`` in ``--out`` (default ``runs/KIND-DATA-TIME``), resuming with ``--resume``
    (the settings ``given`` on the command line checked against the run's own)."""
    from dataclasses import replace

    from cnnkit.engine.runfolder import RESUME_FREE, check_resume_settings

    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN_FOLDER (the run to continue)")
    if args.resume:
        run = check_resume_settings(args.out, kind, given)  # where, how fast and how long: typed or the run's
        cfg = replace(cfg, **{k: run[k] for k in RESUME_FREE if k in run})
    out = args.out or f"runs/{kind}-{Path(cfg.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    train(cfg, out, resume=args.resume, quiet=args.quiet)
    return 0


def run_eval(args) -> int:
    from cnnkit.cli import existing_data_dir
    from cnnkit.tasks.detect.evaluate import evaluate_run

    existing_data_dir(args.data_dir)
    m = evaluate_run(args.run, args.data_dir, args.split, args.test_scale)
    if args.format == "json":
        print_json(m)
        return 0
    from cnnkit.console import shown

    print(
        f"{shown(m['data'])} {m['split']} ({m['images']} images): AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  "
        f"AP75 {m['AP75']:.3f}  AR100 {m['AR100']:.3f}  VOC AP50 {m['VOC_AP50']:.3f}"
    )
    for name, ap in m["per_class_AP"].items():
        print(f"  {shown(name)}: AP {ap:.3f}")
    return 0


def run_predict(args) -> int:
    from cnnkit.console import shown
    from cnnkit.data.images import read_pixels
    from cnnkit.engine.runfolder import output_stems, resolve
    from cnnkit.errors import output_folder
    from cnnkit.tasks.detect.load import load_detector, onnx_detector
    from cnnkit.tasks.detect.predict import draw_detections, predict_images

    if not 0 <= args.score <= 1:  # NaN fails too: it would keep no box, silently
        raise CnnkitError(f"--score must be a number from 0 to 1 (the least score shown); received {args.score}")
    exported = args.run.lower().endswith(".onnx")
    model = onnx_detector(args.run) if exported else load_detector(args.run)
    size = model.info["input_size"][-1]
    paths = [Path(p) for p in args.images]
    images = [read_pixels(p) for p in paths]  # CnnkitError on a missing file, before any work
    folder = Path(args.run).parent if exported else resolve(args.run).parent
    out_dir = Path(args.out_dir) if args.out_dir else folder / "predictions"
    stems = output_stems(paths, out_dir, ("_boxes.png",), "--out-dir")  # unique, and never an input's own name
    output_folder(out_dir)  # before the work: a folder that cannot be made is said at once
    decode = {**model.info.get("decode", {}), "score_threshold": args.score}  # the run's own test-time augmentation
    results = predict_images(model, images, size, model.info["classes"], **decode)
    rows = []
    for path, stem, img, det in zip(paths, stems, images, results):
        png = out_dir / f"{stem}_boxes.png"
        draw_detections(img, det, png)
        rows.append({"image": str(path), **det, "png": str(png)})
    if args.format == "json":  # one JSON object per image, one per line
        for r in rows:
            print_json(r)
        return 0
    for r in rows:
        print(f"{shown(r['image'])}: {len(r['boxes'])} boxes -> {shown(r['png'])}")
        for b, s, name in zip(r["boxes"], r["scores"], r["labels"]):
            print(f"  {shown(name)} {s:.2f} [{', '.join(f'{v:.0f}' for v in b)}]")
    return 0

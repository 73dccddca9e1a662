"""``cnnkit detect train|eval|predict``: thin wrappers over cnnkit.tasks.detect."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cnnkit.errors import CnnkitError


def register(subparsers) -> None:
    p = subparsers.add_parser("detect", help="object detection: train, eval, predict",
                              description="Train an anchor-free detector on Penn-Fudan, digit scenes, a COCO "
                                          "JSON file or a YOLO folder; evaluate it (COCO AP); draw its boxes.")
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION")

    t = sub.add_parser("train", help="train a detector (through the one training engine)")
    t.add_argument("--data", default="pennfudan", help="pennfudan | digits | PATH (a COCO JSON file or a YOLO folder)")
    add_train_args(t, "detect", "zoo name or tiny (default: efficientnet_lite0 for photos, tiny for digits)",
                   "default 320; digits 128")
    t.set_defaults(func=run_train)

    add_eval_predict(sub, "COCO AP / AP50 / AP75 / AR100 on the run's test split",
                     "boxes of image files, drawn into PNGs", run_eval, run_predict)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def add_train_args(t, kind: str, backbone_help: str, size_default: str) -> None:
    """The train options `cnnkit detect` and `cnnkit instance` share (after their own --data)."""
    t.add_argument("--data-dir", help="folder holding pennfudan/ and mnist/ (else $CNNKIT_DATA)")
    t.add_argument("--out", help=f"run folder (default: runs/{kind}-<data>-<time>)")
    t.add_argument("--backbone", help=backbone_help)
    t.add_argument("--weights", help="backbone weights: imagenet | none | PATH (default: imagenet for photos)")
    t.add_argument("--image-size", type=int, help=f"square side images are letterboxed to ({size_default})")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--width", type=int, help="channels of the neck and head (default 64)")
    t.add_argument("--scenes", type=int, nargs=2, metavar=("TRAIN", "TEST"), help="digits: number of scenes")
    t.add_argument("--subset", type=int, help="train on the first N training images only (smoke tests)")
    t.add_argument("--ema", type=float)
    t.add_argument("--val-every", type=int, help="validate after every k-th epoch and the last; 0: not while "
                   "training (detect: photos 4, digits 1; instance: 0)")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--device", choices=["cpu", "cuda"])
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--quiet", action="store_true")


def add_eval_predict(sub, eval_help: str, predict_help: str, run_eval, run_predict) -> None:
    e = sub.add_parser("eval", help=eval_help)
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--data-dir")
    e.add_argument("--format", default="table", choices=["table", "json"])
    e.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help=predict_help)
    q.add_argument("run", help="run folder or model.safetensors")
    q.add_argument("images", nargs="+")
    q.add_argument("--score", type=float, default=0.3, help="least score shown (default 0.3)")
    q.add_argument("--out-dir", help="where the PNGs go (default: <run>/predictions)")
    q.add_argument("--format", default="table", choices=["table", "json"])
    q.set_defaults(func=run_predict)


def config_args(args, *extra: str) -> dict:
    """The config fields given on the command line (the shared ones and ``extra``); --weights none -> None."""
    names = ("data", "backbone", "image_size", "epochs", "batch_size", "lr", "width", "subset", "ema",
             "val_every", "seed", "threads", "device", *extra)
    given = {k: getattr(args, k) for k in names
             if getattr(args, k) is not None and getattr(args, k) is not False}  # 0 is a value
    if args.data_dir:
        given["data_dir"] = str(Path(args.data_dir).expanduser().resolve())
    if args.scenes:
        given["scenes"] = tuple(args.scenes)
    if args.weights is not None:
        given["weights"] = None if args.weights.lower() == "none" else args.weights
    return given


def run_train(args) -> int:
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.train import train

    given = config_args(args)
    if args.data not in ("pennfudan", "digits"):
        given["data"] = str(Path(args.data).expanduser().resolve())
    return start_run(args, DetectConfig(**given), train, "detect")


def start_run(args, cfg, train, kind: str) -> int:
    """``train(cfg, out)`` in ``--out`` (default ``runs/KIND-DATA-TIME``), resuming with ``--resume``."""
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN_FOLDER (the run to continue)")
    out = args.out or f"runs/{kind}-{Path(args.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    train(cfg, out, resume=args.resume, quiet=args.quiet)
    return 0


def run_eval(args) -> int:
    from cnnkit.tasks.detect.evaluate import evaluate_run

    m = evaluate_run(args.run, args.data_dir)
    if args.format == "json":
        print(json.dumps(m))
        return 0
    print(f"{m['data']} {m['split']} ({m['images']} images): AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  "
          f"AP75 {m['AP75']:.3f}  AR100 {m['AR100']:.3f}  VOC AP50 {m['VOC_AP50']:.3f}")
    for name, ap in m["per_class_AP"].items():
        print(f"  {name}: AP {ap:.3f}")
    return 0


def run_predict(args) -> int:
    from cnnkit.data.detection import read_image
    from cnnkit.engine.runfolder import resolve
    from cnnkit.tasks.detect.load import load_detector
    from cnnkit.tasks.detect.predict import draw_detections, predict_images

    model = load_detector(args.run)
    size = model.info["input_size"][-1]
    paths = [Path(p) for p in args.images]
    images = [read_image(p) for p in paths]                # CnnkitError on a missing file, before any work
    results = predict_images(model, images, size, model.info["classes"], score_threshold=args.score)
    out_dir = Path(args.out_dir) if args.out_dir else resolve(args.run).parent / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, img, det in zip(paths, images, results):
        png = out_dir / f"{path.stem}_boxes.png"
        draw_detections(img, det, png)
        rows.append({"image": str(path), **det, "png": str(png)})
    if args.format == "json":                              # one JSON object per image, one per line
        for r in rows:
            print(json.dumps(r))
        return 0
    for r in rows:
        print(f"{r['image']}: {len(r['boxes'])} boxes -> {r['png']}")
        for b, s, name in zip(r["boxes"], r["scores"], r["labels"]):
            print(f"  {name} {s:.2f} [{', '.join(f'{v:.0f}' for v in b)}]")
    return 0

"""``cnnkit instance train|eval|predict``: thin wrappers over cnnkit.tasks.instance."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import CnnkitError


def register(subparsers) -> None:
    p = subparsers.add_parser("instance", help="instance segmentation (masks per object): train, eval, predict",
                              description="Train the anchor-free detector with a Mask R-CNN-style mask head on "
                                          "Penn-Fudan or digit scenes; evaluate it (COCO mask AP); draw its masks.")
    sub = p.add_subparsers(dest="instance_command", metavar="ACTION")

    t = sub.add_parser("train", help="train a mask detector (through the one training engine)")
    t.add_argument("--data", default="pennfudan", choices=["pennfudan", "digits"])
    t.add_argument("--data-dir", help="folder holding pennfudan/ and mnist/ (else $CNNKIT_DATA)")
    t.add_argument("--out", help="run folder (default: runs/instance-<data>-<time>)")
    t.add_argument("--backbone", help="zoo name (default: efficientnet_lite0 for photos, resnet18 for digits)")
    t.add_argument("--weights", help="backbone weights: imagenet | none | PATH (default: imagenet for photos)")
    t.add_argument("--image-size", type=int, help="square side images are letterboxed to (default 320; digits 96)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--width", type=int, help="channels of the neck and head (default 64)")
    t.add_argument("--mask-convs", type=int, help="3x3 convs of the mask head (default 4)")
    t.add_argument("--mask-width", type=int, help="channels of the mask head (default 64)")
    t.add_argument("--roi-jitter", type=int, help="jittered copies of each box the mask head trains on (default 2)")
    t.add_argument("--scenes", type=int, nargs=2, metavar=("TRAIN", "TEST"), help="digits: number of scenes")
    t.add_argument("--subset", type=int, help="train on the first N training images only (smoke tests)")
    t.add_argument("--validate", action="store_true", help="mask AP on the test split after every epoch")
    t.add_argument("--ema", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--device", choices=["cpu", "cuda"])
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="COCO mask AP (and box AP) on the run's test split")
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--data-dir")
    e.add_argument("--format", default="table", choices=["table", "json"])
    e.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help="instance masks and boxes of image files, drawn into PNGs")
    q.add_argument("run", help="run folder or model.safetensors")
    q.add_argument("images", nargs="+")
    q.add_argument("--score", type=float, default=0.3, help="least score shown (default 0.3)")
    q.add_argument("--out-dir", help="where the PNGs go (default: <run>/predictions)")
    q.add_argument("--format", default="table", choices=["table", "json"])
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_train(args) -> int:
    from ..tasks.instance import InstanceConfig, train

    given = {"data": args.data, "data_dir": str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None,
             "backbone": args.backbone, "image_size": args.image_size, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "width": args.width, "mask_convs": args.mask_convs,
             "mask_width": args.mask_width, "roi_jitter": args.roi_jitter,
             "scenes": tuple(args.scenes) if args.scenes else None, "subset": args.subset, "ema": args.ema,
             "seed": args.seed, "threads": args.threads, "device": args.device, "validate": args.validate or None}
    if args.weights is not None:
        given["weights"] = None if args.weights.lower() == "none" else args.weights
    cfg = InstanceConfig(**{k: v for k, v in given.items() if v is not None or k == "weights"})
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN_FOLDER (the run to continue)")
    out = args.out or f"runs/instance-{args.data}-{time.strftime('%Y%m%d-%H%M%S')}"
    train(cfg, out, resume=args.resume, quiet=args.quiet)
    return 0


def run_eval(args) -> int:
    from ..tasks.instance import evaluate_run

    m = evaluate_run(args.run, args.data_dir)
    if args.format == "json":
        print(json.dumps(m))
        return 0
    print(f"{m['data']} {m['split']} ({m['images']} images): mask AP {m['mask_AP']:.3f}  AP50 {m['mask_AP50']:.3f}  "
          f"AP75 {m['mask_AP75']:.3f}  AR100 {m['mask_AR100']:.3f}  box AP {m['box_AP']:.3f}  box AP50 {m['box_AP50']:.3f}")
    return 0


def run_predict(args) -> int:
    from ..tasks.instance import load_mask_detector, predict_files
    from ..train.checkpoint import resolve

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

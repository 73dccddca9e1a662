"""``cnnkit segment train|eval|predict``: thin wrappers over :mod:`cnnkit.tasks.segment`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnkit.errors import CnnkitError


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="semantic segmentation: train, eval, predict",
                              description="Per-pixel classes: FCN-32s/16s/8s, U-Net, DeepLab-v3 on zoo backbones.")
    sub = p.add_subparsers(dest="segment_command", metavar="ACTION")

    t = sub.add_parser("train", help="train a segmentation network (default data: Penn-Fudan)",
                       description="Train through the shared engine; the run folder holds model.safetensors, "
                                   "resume.safetensors, metrics.csv, curves.png and split.json.")
    t.add_argument("--data", default="pennfudan", help="pennfudan | digits | DIR (images/ + masks/)")
    t.add_argument("--data-dir", help="folder holding pennfudan/ and mnist/ (else $CNNKIT_DATA)")
    t.add_argument("--arch", help="fcn32s | fcn16s | fcn8s | unet | deeplabv3 (default: the data's recipe)")
    t.add_argument("--backbone", help="zoo name (resnet18, mobilenet_v2, ...) or unet (U-Net's own encoder)")
    t.add_argument("--weights", help="backbone weights: imagenet, a file or none (Penn-Fudan's default: imagenet)")
    t.add_argument("--output-stride", type=int, default=16, help="DeepLab: 16 or 8 (default 16)")
    t.add_argument("--width", type=int, help="U-Net's own encoder: channels of its first level")
    t.add_argument("--finest", type=int, help="U-Net on a zoo backbone: finest decoder stride, 2 or 4")
    t.add_argument("--freeze-to", type=int, help="zoo backbone: layers up to the map of this stride not trained (0: none)")
    t.add_argument("--encoder-lr", type=float, help="the encoder's learning rate as a fraction of --lr")
    t.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the encoder's batch-norm statistics (pretrained encoders: on)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC weights and batches (faster on CPUs; on for the built-in recipes)")
    for name, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("crop", int), ("max-side", int),
                       ("jitter", float), ("dice", float), ("lovasz", float), ("test-scale", float), ("canvas", int), ("scenes", int), ("seed", int),
                       ("threads", int), ("val-every", int)):
        t.add_argument(f"--{name}", type=kind)
    t.add_argument("--tta", choices=["flip", "none"], help="test-time augmentation (Penn-Fudan's default: flip)")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--device", choices=["cpu", "cuda"])
    t.add_argument("--out", help="run folder (default: runs/segment-<data>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="mIoU, pixel accuracy, per-class and boundary IoU of a run")
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--split", default="test", help="train | val | test (default: test)")
    e.add_argument("--data-dir")
    e.add_argument("--format", default="table", choices=["table", "json"])
    e.add_argument("--tta", choices=["flip", "none"], help="instead of the run's test-time augmentation")
    e.add_argument("--test-scale", type=float, help="instead of the run's test scale")
    e.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help="class-index PNG and colour overlay per image")
    q.add_argument("run", help="run folder or model.safetensors")
    q.add_argument("images", nargs="+", help="image files")
    q.add_argument("--out", required=True, help="folder for <stem>.png (grey class indices) and <stem>_overlay.png")
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args) -> int:
    import time

    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.train import train

    data = args.data if args.data in ("pennfudan", "digits") else str(Path(args.data).expanduser().resolve())
    cfg = SegmentConfig(data=data, data_dir=str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None,
                        arch=args.arch, backbone=args.backbone, weights=args.weights,
                        output_stride=args.output_stride, width=args.width, finest=args.finest,
                        freeze_to=args.freeze_to, encoder_lr=args.encoder_lr, freeze_bn=args.freeze_bn,
                        channels_last=args.channels_last, jitter=args.jitter, dice=args.dice, lovasz=args.lovasz,
                        tta=args.tta, test_scale=args.test_scale, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, crop=args.crop,
                        max_side=args.max_side, canvas=args.canvas, scenes=args.scenes,
                        seed=args.seed if args.seed is not None else 0, threads=args.threads,
                        val_every=args.val_every)
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN, the run folder to continue")
    out = args.out or f"runs/segment-{Path(data).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, out, resume=args.resume, quiet=args.quiet, device=args.device)
    t = result.test
    print(f"done: test mIoU {t['mIoU']:.4f}, pixel accuracy {t['pixel_accuracy']:.4f}, boundary IoU "
          f"{t['boundary_iou']:.4f} in {result.seconds:.1f} s -> {out}  (`cnnkit segment eval {out}`)")
    return 0


def run_eval(args) -> int:
    from cnnkit.tasks.segment.evaluate import evaluate_run

    out = evaluate_run(args.run, args.split, args.data_dir, args.tta, args.test_scale)
    if args.format == "json":
        print(json.dumps({k: v for k, v in out.items() if k != "confusion"}))
        return 0
    print(f"{out['data']} {out['split']} ({out['images']} images): mIoU {out['mIoU']:.4f}  pixel accuracy "
          f"{out['pixel_accuracy']:.4f}  boundary IoU {out['boundary_iou']:.4f}")
    for name, iou in out["iou"].items():
        print(f"  {name:>12}  IoU {'-' if iou is None else f'{iou:.4f}'}")
    return 0


def run_predict(args) -> int:
    from cnnkit.data.segmentation import read_image
    from cnnkit.tasks.segment.load import load_segmenter
    from cnnkit.tasks.segment.predict import predict_image, write_prediction

    model = load_segmenter(args.run)
    max_side = model.info.get("config", {}).get("max_side")
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CnnkitError(f"no such image file: {missing[0]}")
    for path in paths:
        image = read_image(path)
        if model.mean.shape[1] == 1:
            image = image.float().mean(0, keepdim=True).round().to(image.dtype)   # grey networks
        mask = predict_image(model, image, max_side)
        grey, colour = write_prediction(image, mask, len(model.classes), args.out, path.stem)
        print(f"{path}: {grey} {colour}")
    return 0

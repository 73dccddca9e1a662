"""``cnnkit train``, ``cnnkit eval`` and ``cnnkit predict``: thin wrappers over cnnkit.train."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from cnnkit.cli import add_trust_code, existing_data_dir, trust
from cnnkit.errors import CnnkitError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a CNN (default: MNIST, the `fast` preset)",
        description="Train a CNN on MNIST (default), another built-in dataset or an image folder. "
                    "Under `torchrun --nproc_per_node N -m cnnkit train ...` it trains with DDP.")
    p.add_argument("--dataset", default="mnist",
                   help="mnist | fashion_mnist | kmnist | emnist_digits | cifar10 | folder | PATH "
                        "of an image folder (default: mnist)")
    p.add_argument("--data-dir", help="data folder (else $CNNKIT_DATA, else ~/.cache/cnnkit/data); "
                                      "the image folder for --dataset folder")
    p.add_argument("--model", help="zoo name, spec.yaml/.json, or file.py:factory (default: the preset's)")
    p.add_argument("--preset", default="fast", help="fast | best (default: fast)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--optimizer", help="sgd | adamw | nadam")
    p.add_argument("--schedule", help="onecycle | cosine | constant")
    p.add_argument("--ema", type=float, help="EMA decay per step (0 = off)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation in the saved model")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="resize image folders to H W (default 224 224)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads per process (default: all cores)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="default: cuda (bf16 autocast) when PyTorch sees a GPU, else cpu")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast where the device has native bf16 arithmetic "
                        "(CUDA, AVX-512-BF16/AMX CPUs), else fp32")
    p.add_argument("--subset", type=int, help="train on the first N training images only (smoke tests)")
    p.add_argument("--trainval", action=argparse.BooleanOptionalAction, default=None,
                   help="the final refit: train on train + val (MNIST: all 60,000 images) once the "
                        "settings are chosen on val; the validation it prints is then of seen images")
    p.add_argument("--ensemble", type=int, help="train K members with seeds seed..seed+K-1")
    p.add_argument("--out", help="run folder (default: runs/<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--quiet", action="store_true", help="no summary and no progress bar")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="accuracy, per-class precision/recall, confusion matrix",
                              description="Evaluate a trained run or checkpoint on a dataset split.")
    e.add_argument("checkpoint", help="run folder or .safetensors file")
    e.add_argument("--dataset", help="default: the one it was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--split", default="test", help="train | val | test (default: test)")
    e.add_argument("--format", default="table", choices=["table", "json"])
    e.add_argument("--confusion", help="confusion-matrix PNG (default: <run>/confusion_<split>.png)")
    e.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast where the device has native bf16, else fp32")
    add_trust_code(e)
    e.set_defaults(func=run_eval)

    q = subparsers.add_parser("predict", help="top classes of image files",
                              description="Classify image files with a trained checkpoint, or with a "
                                          "zoo model's published ImageNet weights.")
    q.add_argument("checkpoint", help="run folder, .safetensors file, or zoo name with ImageNet weights "
                                      "(e.g. efficientnet_lite0)")
    q.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    q.add_argument("--top", type=int, help="classes shown per image (default: 3; 5 for a zoo model)")
    q.add_argument("--format", default="table", choices=["table", "json"])
    q.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast where the device has native bf16, else fp32")
    add_trust_code(q)
    q.set_defaults(func=run_predict)


def run_train(args) -> int:
    from cnnkit.tasks.classify.config import preset
    from cnnkit.tasks.classify.train import train

    if args.ensemble is not None and args.ensemble < 1:
        raise CnnkitError(f"--ensemble must be a positive integer; received {args.ensemble}")
    for flag, value in (("--subset", args.subset), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise CnnkitError(f"{flag} must be a positive integer; received {value}"
                              + (" (leave --subset out to train on every image)" if flag == "--subset" else ""))
    if args.image_size is not None and not all(1 <= v <= 8192 for v in args.image_size):
        raise CnnkitError(f"--image-size H W must be between 1 and 8192; received {' '.join(map(str, args.image_size))}")
    for flag in ("lr", "weight_decay", "label_smoothing", "ema"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise CnnkitError(f"--{flag.replace('_', '-')} must be a finite number; received {value}")
    existing_data_dir(args.data_dir)
    if Path(args.dataset).expanduser().is_dir():       # an image folder: stored absolute for `eval`
        args.dataset = str(Path(args.dataset).expanduser().resolve())
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    cfg = preset(args.preset, dataset=args.dataset, data_dir=data_dir, model=args.model,
                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                 optimizer=args.optimizer, schedule=args.schedule, ema=args.ema, tta=args.tta,
                 image_size=tuple(args.image_size) if args.image_size else None, seed=args.seed,
                 threads=args.threads, device=args.device, ensemble=args.ensemble, subset=args.subset,
                 trainval=args.trainval, precision=args.precision)
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN_FOLDER (the run to continue)")
    out = args.out or f"runs/{Path(cfg.model).stem.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    train(cfg, out, resume=args.resume, quiet=args.quiet)
    return 0


def run_eval(args) -> int:
    from rich.table import Table

    from cnnkit.console import console
    from cnnkit.data.datasets import load_dataset
    from cnnkit.engine.runfolder import resolve
    from cnnkit.tasks.classify.evaluate import evaluate
    from cnnkit.tasks.classify.load import load_classifier

    existing_data_dir(args.data_dir)
    model = load_classifier(args.checkpoint, **trust(args))
    info = model.info
    cfg = info.get("config") or (info.get("ensemble") or [{}])[0].get("config") or {}
    tuned = info.get("finetune") if not args.dataset else None
    if tuned and isinstance(tuned, dict) and tuned.get("data"):
        # `cnnkit finetune`: its image folder, split and cropped the way it was trained on
        import warnings

        from cnnkit.data.imagefolder import load_image_folder

        with warnings.catch_warnings():            # skipped files were reported when it trained
            warnings.simplefilter("ignore")
            data = load_image_folder(tuned["data"], args.split, tuple(model.input_size[1:]),
                                     model.input_size[0], tuned.get("val_fraction", 0.2),
                                     tuned.get("test_fraction", 0.0), seed=tuned.get("seed", 0),
                                     crop_fraction=tuned.get("crop_fraction", 1.0),
                                     interpolation=tuned.get("interpolation", "bilinear"))
    else:
        if not isinstance(cfg, dict) or not (args.dataset or cfg.get("dataset")):
            raise CnnkitError(f"{args.checkpoint} does not record the dataset it was trained on (a "
                              "converted model?); pass --dataset NAME or --dataset PATH")
        data = load_dataset(args.dataset or cfg["dataset"], args.split,
                            args.data_dir or (cfg.get("data_dir") if not args.dataset else None),
                            image_size=tuple(model.input_size[1:]), channels=model.input_size[0],
                            seed=cfg.get("seed", 0))
    if data.classes != model.classes:
        raise CnnkitError(f"{data.name} has classes {data.classes[:5]}..., the model "
                          f"{model.classes[:5]}...; evaluate on the dataset it was trained on")
    if args.split == "val" and cfg.get("trainval"):
        print("note: this model was trained on the val split too (--trainval): its val accuracy is "
              "not a held-out estimate", file=sys.stderr)
    result = evaluate(model, data, precision=args.precision)
    png = Path(args.confusion) if args.confusion else resolve(args.checkpoint).parent / f"confusion_{args.split}.png"
    from cnnkit.plots import confusion_matrix

    confusion_matrix(result.confusion, result.classes, png)
    if args.format == "json":
        print(json.dumps({**result.to_dict(), "split": args.split, "dataset": data.name,
                          "confusion_png": str(png)}))
        return 0
    table = Table(title=f"{data.name}: accuracy {result.accuracy:.2%} on {result.n:,} images "
                        f"({result.n - round(result.accuracy * result.n)} errors)")
    for col in ("class", "precision", "recall", "n"):
        table.add_column(col, justify="left" if col == "class" else "right")
    counts = result.confusion.sum(1)
    for k, name in enumerate(result.classes):
        table.add_row(name, f"{result.precision[k]:.2%}", f"{result.recall[k]:.2%}", f"{int(counts[k]):,}")
    console().print(table)
    print(f"confusion matrix: {png}")
    return 0


def run_predict(args) -> int:
    from cnnkit.engine.precision import autocast
    from cnnkit.tasks.classify.load import load_classifier
    from cnnkit.tasks.classify.predict import predict_files

    if args.top is not None and args.top < 1:
        raise CnnkitError(f"--top must be a positive integer; received {args.top}")
    loader = None
    if not Path(args.checkpoint).exists() and "/" not in args.checkpoint and not args.checkpoint.endswith(".safetensors"):
        from functools import partial

        from cnnkit.models.preprocess import load_photo, pretrained_classifier

        model = pretrained_classifier(args.checkpoint)  # a zoo name: its ImageNet weights and classes
        loader, top = partial(load_photo, pre=model.preprocess), args.top or 5
    else:
        model, top = load_classifier(args.checkpoint, **trust(args)), args.top or 3
    with autocast(args.precision, next(model.parameters()).device):
        rows = predict_files(model, args.images, top=top, loader=loader)
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    for row in rows:
        best = "  ".join(f"{c} {p:.1%}" for c, p in row["top"])
        print(f"{row['image']}: {best}")
    return 0

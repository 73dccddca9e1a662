"""``cnnkit finetune`` and ``cnnkit fcn``: transfer learning on an image folder, dense heads as convolutions."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from cnnkit.cli import add_trust_code, trust
from cnnkit.errors import CnnkitError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a (pretrained) zoo network on a folder of your own images",
        description="Replace the classifier for the folder's classes, train it with the base frozen, "
        "then unfreeze the top block (and optionally everything) with lower learning rates.")
    p.add_argument("--model", help="zoo name (`cnnkit zoo`); optional when --weights is a cnnkit checkpoint")
    p.add_argument("--weights", help="reference-format .pth/.safetensors file or URL, 'imagenet' for the "
                   "published weights (downloaded once), or a cnnkit checkpoint")
    p.add_argument("--data", help="DIR/<class>/* or DIR/{train,val}/<class>/* (required unless --resume)")
    p.add_argument("--freeze-until", help="first layer trained in stage 'top': layer4, features.24, "
                   "block5_conv1 (default: the last block)")
    p.add_argument("--stages", default="head", help="comma-separated subset of head,top,all (default head: "
                   "on hymenoptera and flowers the top stage lowered validation accuracy)")
    p.add_argument("--epochs", type=int, help="epochs of every stage (default: head 40 on cached "
                   "features of each image and its mirror image, top 2, all 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the head stage (cosine to 0); "
                   "'top' and 'all' use a thirtieth of it (default 3e-3)")
    p.add_argument("--image-size", type=int, help="square input size (default: the model's, e.g. 224; "
                   "with pretrained --weights 9/7 of it, e.g. 288: see cnnkit.models.preprocess.finetune_preprocess)")
    p.add_argument("--head", default="auto", choices=["auto", "features", "class_scores"],
                   help="the new classifier: a Linear on the pooled features, one on the pretrained "
                   "classifier's log-probabilities, or auto (default): both tried on the cached "
                   "features, the lower validation loss kept")
    p.add_argument("--augment", action="store_true", help="the notes' ImageDataGenerator augmentation "
                   "(rotation 40, shifts 0.2, zoom 0.2, flips)")
    p.add_argument("--train-bn", action="store_true", help="let unfrozen batch-norm layers update their statistics")
    p.add_argument("--val-fraction", type=float, default=0.15, help="held out when DIR has no val/ folder "
                   "(default 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="held out for a final test when DIR has "
                   "no split folders at all (default 0.15; evaluated once, after training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="run folder, written after every epoch "
                   "(default runs/finetune-MODEL-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly (its own "
                   "settings win over the ones given)")
    p.add_argument("--quiet", action="store_true", help="no summary and no progress bar")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast where the device has native bf16, else fp32")
    p.set_defaults(func=_finetune)

    f = subparsers.add_parser(
        "fcn", help="turn a checkpoint's Flatten+Linear head into convolutions (any input size)",
        description="Write a copy of a cnnkit checkpoint whose dense layers are convolutions: on a "
        "larger image it outputs a map of class scores.")
    f.add_argument("checkpoint", help="run folder or model.safetensors written by cnnkit train/finetune")
    f.add_argument("--out", required=True, help="run folder (or .safetensors file) to write")
    add_trust_code(f)
    f.set_defaults(func=_fcn)


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from cnnkit.data.augment import NOTES_AUGMENT
    from cnnkit.data.imagefolder import load_image_folder
    from cnnkit.models.preprocess import Preprocess, finetune_preprocess
    from cnnkit.tasks.classify.finetune import (
        FinetuneConfig,
        evaluate,
        finetune,
        load_backbone,
        save_finetuned,
    )

    if args.resume:
        args = _resumed_args(args)
    if not args.data:
        raise CnnkitError("--data DIR is required: a folder of <class>/ image folders (or of "
                          "train/ and val/ folders of them)")
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if (args.epochs is not None and args.epochs < 0) or args.batch_size < 2 or (args.image_size is not None and args.image_size < 8):
        raise CnnkitError(f"--epochs must be >= 0, --batch-size >= 2 and --image-size >= 8; received "
                          f"--epochs {args.epochs} --batch-size {args.batch_size} --image-size {args.image_size}")
    torch.manual_seed(args.seed)    # a random base (no --weights) and the new head: the same every run
    net, name, own = load_backbone(args.model, args.weights)
    if ":" in name or name.endswith((".yaml", ".yml", ".json")):
        raise CnnkitError(f"--model {name!r}: fine-tuning needs a zoo model; give --model NAME")
    size = (args.image_size,) * 2 if args.image_size else None
    pre = finetune_preprocess(name, args.weights is not None and own is None, size)
    if own is not None:  # a cnnkit checkpoint: keep the normalisation (and size) it was trained with
        pre = Preprocess(tuple(own["input_size"][:1]) + (size or tuple(own["input_size"][1:])),
                         tuple(own["mean"]), tuple(own["std"]), pre.crop_fraction)
    # a flat DIR/<class>/* folder gets a seeded, stratified train/val/test split (written to the run)
    flat = not any((Path(args.data) / d).is_dir() for d in ("train", "val", "valid", "validation", "test"))
    load = dict(image_size=pre.image_size, channels=pre.input_size[0], val_fraction=args.val_fraction,
                test_fraction=args.test_fraction if flat else 0.0, seed=args.seed,
                crop_fraction=pre.crop_fraction, interpolation=pre.interpolation)
    with warnings.catch_warnings(record=True) as caught:  # each data warning printed once, one line
        warnings.simplefilter("always")
        train = load_image_folder(args.data, "train", **load)
        has_val = any((Path(args.data) / d).is_dir() for d in ("val", "valid", "validation"))
        val = load_image_folder(args.data, "val", **load) if args.val_fraction > 0 or has_val else None
        has_test = (Path(args.data) / "test").is_dir() or (flat and args.test_fraction > 0)
        test = load_image_folder(args.data, "test", **load) if has_test else None
    main = os.environ.get("RANK", "0") == "0"          # under torchrun, rank 0 speaks
    for message in dict.fromkeys(str(w.message) for w in caught):
        if main:
            print(f"warning: {message}", file=sys.stderr)
    if main:
        print(f"{name}: {len(train)} train / {len(val) if val else 0} val images of {len(train.classes)} "
              f"classes {train.classes}, input {pre.input_size}, stages {','.join(stages)}")
    out = Path(args.out or f"runs/finetune-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    about = {"stages": list(stages), "freeze_until": args.freeze_until, "weights": args.weights,
             "data": str(args.data), "augment": args.augment, "val_fraction": args.val_fraction,
             "test_fraction": load["test_fraction"], "seed": args.seed, "crop_fraction": pre.crop_fraction,
             "interpolation": pre.interpolation}
    cli = {k: v for k, v in vars(args).items() if k not in ("func", "command", "resume", "quiet", "out")}
    finetune(net, train, val, stages=stages, freeze_until=args.freeze_until,
             augment=NOTES_AUGMENT if args.augment else None,
             epochs=args.epochs if args.epochs is not None else FinetuneConfig().epochs,
             batch_size=args.batch_size, head=getattr(args, "head", "auto"), lr_head=args.lr, lr_top=args.lr / 30,
             lr_all=args.lr / 30, train_bn=args.train_bn, mean=pre.mean, std=pre.std,
             seed=args.seed, device=args.device, out=out, resume=args.resume, quiet=args.quiet,
             precision=args.precision,
             info={"model": name, "dataset": {"name": str(args.data)}, "finetune": about,
                   "args": cli})
    path = out / "model.safetensors"
    if not main:
        return 0
    if not path.is_file():   # no epoch trained (--epochs 0): the network as it now is
        save_finetuned(out, net.cpu(), name, train.classes, pre.input_size, pre.mean, pre.std, [], about)
    split = {part: ds.meta["files"] for part, ds in (("train", train), ("val", val), ("test", test)) if ds}
    (out / "split.json").write_text(json.dumps({"seed": args.seed, "val_fraction": args.val_fraction,
                                                "test_fraction": load["test_fraction"], **split}, indent=1))
    tta = FinetuneConfig().tta            # as the checkpoint answers (cnnkit eval, predict)
    if val is not None:
        _, acc = evaluate(net.cpu(), val, pre.mean, pre.std, tta=tta)
        print(f"val accuracy {acc:.4f} on {len(val)} images (with {tta or 'no'} TTA)")
    if test is not None:  # once, after training: nothing was chosen by it
        _, acc = evaluate(net.cpu(), test, pre.mean, pre.std, tta=tta)
        (out / "test.json").write_text(json.dumps({"test_acc": acc, "n": len(test), "tta": tta}))
        print(f"test accuracy {acc:.4f} on {len(test)} held-out images (used for nothing else; "
              f"with {tta or 'no'} TTA)")
    print(f"wrote {path}")
    return 0


def _resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """On --resume the run's own settings win (different ones would not continue *exactly*)."""
    from cnnkit.engine.runfolder import resumed_config

    if not args.out:
        raise CnnkitError("--resume needs --out RUN_FOLDER (the run to continue)")
    return argparse.Namespace(**{**vars(args), **resumed_config(args.out)["args"]})


def _fcn(args: argparse.Namespace) -> int:
    from cnnkit.tasks.classify.fcn import convert_to_fcn

    path, fcn, info = convert_to_fcn(args.checkpoint, args.out, **trust(args))
    convs = sum(1 for m in fcn.modules() if type(m).__name__ == "Conv2d")
    print(f"{info['model']}: dense head converted ({convs} conv layers now), trained on "
          f"{tuple(info['input_size'])}; wrote {path}")
    return 0

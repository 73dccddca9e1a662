"""``cnnkit classify train|eval|predict|finetune|fcn`` (and the short forms ``cnnkit train|eval|predict``).

Thin: each mode parses, builds the run config from its fields (:mod:`cnnkit.engine.config`) and
calls the library function in :mod:`cnnkit.tasks.classify`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from cnnkit.cli import add_format, add_run_arguments, add_trust_code, existing_data_dir, print_json, trust
from cnnkit.engine.config import add_config_arguments, check_values, config_from_args
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.config import PRESETS, FinetuneConfig, TrainConfig, preset


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="image classification: train, eval, predict, finetune, fcn",
        description="Classify images: train a CNN (MNIST by default), evaluate or run "
        "it, fine-tune a pretrained network on your own photos, or turn "
        "a dense head into convolutions.",
    )
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    add_modes(modes, short=False)
    p.set_defaults(func=lambda args: p.print_help() or 2)
    add_modes(subparsers, short=True)


def add_modes(sub, short: bool) -> None:
    """The classification modes; ``short``: the top-level ``train``, ``eval`` and ``predict`` only."""
    t = sub.add_parser(
        "train",
        help="train a CNN (default: MNIST, the `fast` preset)" + (" = cnnkit classify train" if short else ""),
        description="Train a CNN on MNIST (default), another built-in data set or an image "
        "folder. Under `torchrun --nproc_per_node N -m cnnkit classify train ...` "
        "it trains with DDP. Unset options take the preset's values; a --model other than the "
        "preset's network trains with AdamW at 5e-3, batch 32, no pruning, validated every epoch.",
    )
    t.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="the tuned settings the other options change (default: fast)",
    )
    add_config_arguments(t, TrainConfig, presets=PRESETS)
    add_run_arguments(t, "runs/<model>-<time>")
    t.set_defaults(func=run_train)

    e = sub.add_parser(
        "eval",
        help="accuracy, per-class precision/recall, confusion matrix",
        description="Evaluate a trained classification run on a split of its data.",
    )
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--data", help="another data set name or image folder (default: the run's own)")
    e.add_argument("--data-dir", help="the folder holding the built-in data sets (default: the run's)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    add_format(e)
    e.add_argument("--confusion", help="confusion-matrix PNG (default: <run>/confusion_<split>.png)")
    e.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto (default): bf16 autocast where the device has native bf16, else fp32",
    )
    add_trust_code(e)
    e.set_defaults(func=run_eval)

    q = sub.add_parser(
        "predict",
        help="top classes of image files",
        description="Classify image files with a trained run, or with a zoo model's published ImageNet weights.",
    )
    q.add_argument(
        "run",
        help="run folder, model.safetensors, a .onnx file from `cnnkit export` (run by ONNX Runtime), "
        "or a zoo name with ImageNet weights (e.g. efficientnet_lite0)",
    )
    q.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    q.add_argument("--top", type=int, help="classes shown per image (default: 3; 5 for a zoo model)")
    add_format(q)
    q.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto (default): bf16 autocast where the device has native bf16, else fp32",
    )
    add_trust_code(q)
    q.set_defaults(func=run_predict)
    if short:
        return

    f = sub.add_parser(
        "finetune",
        help="fine-tune a (pretrained) zoo network on a folder of your own images",
        description="Replace the classifier for the folder's classes and train it with the last "
        "convolution on the cached activations of the frozen layers below (stage top); stages head "
        "(the classifier alone) and all (everything, lower learning rates) on request.",
    )
    add_config_arguments(f, FinetuneConfig)
    add_run_arguments(f, "runs/finetune-<model>-<time>")
    f.set_defaults(func=run_finetune)

    c = sub.add_parser(
        "fcn",
        help="turn a run's Flatten+Linear head into convolutions (any input size)",
        description="Write a copy of a classification run whose dense layers are "
        "convolutions: on a larger image it outputs a map of class scores.",
    )
    c.add_argument("run", help="run folder or model.safetensors written by classify train|finetune")
    c.add_argument("--out", required=True, help="run folder (or .safetensors file) to write")
    add_trust_code(c)
    c.set_defaults(func=run_fcn)


def run_train(args) -> int:
    from dataclasses import replace

    from cnnkit.engine.runfolder import RESUME_FREE, check_resume_settings
    from cnnkit.models.network import model_reference
    from cnnkit.tasks.classify.train import train

    values = config_from_args(TrainConfig, args, check=False)  # the command's own messages first
    for name in ("epochs", "batch_size", "subset", "threads", "ensemble", "eval_batch_size"):
        v = values.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v < (0 if name == "threads" else 1):
            raise CnnkitError(
                f"--{name.replace('_', '-')} must be a positive integer; received {values[name]}"
                + (" (leave --subset out to train on every image)" if name == "subset" else "")
            )
    size = values.get("image_size")
    if size is not None and not all(1 <= v <= 8192 for v in size):
        raise CnnkitError(f"--image-size H W must be between 1 and 8192; received {' '.join(map(str, size))}")
    for name in ("lr", "weight_decay", "label_smoothing", "ema", "momentum", "warmup"):
        if values.get(name) is not None and not math.isfinite(values[name]):
            raise CnnkitError(f"--{name.replace('_', '-')} must be a finite number; received {values[name]}")
    check_values(TrainConfig, values)
    existing_data_dir(values.get("data_dir"))
    data = values.get("data")
    if data and Path(data).expanduser().is_dir():  # an image folder: stored absolute for `eval`
        values["data"] = str(Path(data).expanduser().resolve())
    if values.get("data_dir"):
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    cfg = preset(args.preset or "fast", **values)
    out = args.out or f"runs/{Path(cfg.model).stem.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN_FOLDER (the run to continue)")
    if args.resume:  # the run continues with its own settings; the ones typed must equal them
        typed = {**values, **({"model": model_reference(values["model"])} if values.get("model") else {})}
        run = check_resume_settings(out, "classify", typed)  # where, how fast and how long: typed or the run's
        recipe = str(run.get("recipe") or "").split("+")[0]  # the run's own preset
        if args.preset and recipe and args.preset != recipe:
            raise CnnkitError(
                f"{out} was trained with --preset {recipe} (given {args.preset}); --resume continues a run with "
                "its own settings: leave that flag out, or start a new run in another --out"
            )
        cfg = replace(cfg, **{k: run[k] for k in RESUME_FREE if k in run})
    train(cfg, out, resume=args.resume, quiet=args.quiet)
    return 0


def run_eval(args) -> int:
    from rich.table import Table

    from cnnkit.console import console, shown
    from cnnkit.engine.runfolder import resolve
    from cnnkit.plots import check_output, confusion_matrix, save_figure
    from cnnkit.tasks.classify.evaluate import evaluate_run

    existing_data_dir(args.data_dir)
    png = Path(args.confusion) if args.confusion else resolve(args.run).parent / f"confusion_{args.split}.png"
    check_output(png, "--confusion")  # before the evaluation: a path that cannot be written is said at once
    if png.suffix.lower() != ".png":  # never a user's file (or the run's model) replaced by a PNG
        raise CnnkitError(f"--confusion must name a .png file (the matrix is a PNG). Received: --confusion {png}")
    result, data, _ = evaluate_run(args.run, args.split, args.data, args.data_dir, args.precision, **trust(args))
    save_figure(confusion_matrix(result.confusion, result.classes), png, "--confusion")
    if args.format == "json":
        print_json({**result.to_dict(), "split": args.split, "dataset": data.name, "confusion_png": str(png)})
        return 0
    table = Table(
        title=f"{shown(data.name)}: accuracy {result.accuracy:.2%} on {result.n:,} images "
        f"({result.n - round(result.accuracy * result.n)} errors)"
    )
    for col in ("class", "precision", "recall", "n"):
        table.add_column(col, justify="left" if col == "class" else "right")
    counts = result.confusion.sum(1)
    for k, name in enumerate(result.classes):
        table.add_row(shown(name), f"{result.precision[k]:.2%}", f"{result.recall[k]:.2%}", f"{int(counts[k]):,}")
    console().print(table)
    print(f"confusion matrix: {shown(png)}")
    return 0


def run_predict(args) -> int:
    from cnnkit.console import shown
    from cnnkit.engine.precision import autocast
    from cnnkit.export import model_device
    from cnnkit.tasks.classify.predict import predict_files, predictor

    if args.top is not None and args.top < 1:
        raise CnnkitError(f"--top must be a positive integer; received {args.top}")
    model, loader, top = predictor(args.run, args.top, **trust(args))
    with autocast(args.precision, model_device(model)):
        rows = predict_files(model, args.images, top=top, loader=loader)
    if args.format == "json":
        print_json(rows)
        return 0
    for row in rows:
        best = "  ".join(f"{shown(c)} {p:.1%}" for c, p in row["top"])
        print(f"{shown(row['image'])}: {best}")
    return 0


def run_finetune(args) -> int:
    from cnnkit.engine.runfolder import RESUME_FREE, check_resume_settings, resumed_config
    from cnnkit.tasks.classify.finetune import run_finetune as finetune_run

    values = config_from_args(FinetuneConfig, args)
    _check_weights_network(values.get("model"), values.get("weights"))
    if args.resume and args.out:  # the run continues with its own settings; the ones typed must equal them
        if "finetune" not in resumed_config(args.out, "classify"):
            raise CnnkitError(
                f"{args.out} is a `cnnkit classify train` run, not a fine-tuning one; resume it with "
                f"`cnnkit classify train --resume --out {args.out}`"
            )
        run = check_resume_settings(args.out, "classify", values, key="args")
        values = {**values, **{k: run[k] for k in RESUME_FREE if k in run}}  # typed, or the run's own
    cfg = FinetuneConfig(**values)
    finetune_run(cfg, args.out, resume=args.resume, quiet=args.quiet)
    return 0


def _check_weights_network(model: str | None, weights: str | None) -> None:
    """``--model`` beside ``--weights`` that is a cnnkit checkpoint must name the network it holds:
    fine-tuning starts from the checkpoint's network, so another name would be ignored and recorded wrongly."""
    from cnnkit.engine.runfolder import read_info
    from cnnkit.tasks.classify.finetune import is_cnnkit_checkpoint

    if not model or not weights or not is_cnnkit_checkpoint(weights):
        return
    info = read_info(weights)
    network = info.get("network") if isinstance(info.get("network"), dict) else {}
    held = info.get("model")
    if model not in (held, network.get("name")):
        shown = str(network.get("name") or held)[:60]
        raise CnnkitError(
            f"--weights {weights} is a {shown} checkpoint, but --model is {model}: fine-tuning starts from the "
            f"checkpoint's network; leave out --model, or give a {model} checkpoint"
        )


def run_fcn(args) -> int:
    from cnnkit.tasks.classify.fcn import convert_to_fcn

    path, fcn, info = convert_to_fcn(args.run, args.out, **trust(args))
    import torch.nn as nn

    convs = sum(1 for m in fcn.modules() if isinstance(m, nn.Conv2d))
    print(
        f"{info['model']}: dense head converted ({convs} conv layers now), trained on "
        f"{tuple(info['input_size'])}; wrote {path}"
    )
    return 0

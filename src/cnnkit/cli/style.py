"""``cnnkit style transfer|train|predict``: thin wrappers over :mod:`cnnkit.tasks.style`."""

from __future__ import annotations

from pathlib import Path

from cnnkit.cli import QUIET_HELP, add_run_arguments, finished, train_config
from cnnkit.engine.config import add_config_arguments, config_from_args, resolved_defaults
from cnnkit.errors import CnnkitError
from cnnkit.tasks.style.config import StyleTrainConfig, TransferConfig

NETWORK_EXAMPLES = {n: {"network": n} for n in ("efficientnet_lite0", "vgg19")}  # the help's defaults


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "style",
        help="neural style transfer: transfer, train, predict",
        description="Gatys et al.'s optimisation of one image (transfer), or Johnson et al.'s "
        "transformation network trained for one style (train) and applied to photos (predict).",
    )
    sub = p.add_subparsers(dest="style_command", metavar="ACTION")

    t = sub.add_parser(
        "transfer",
        help="optimise one image: the content photo in the style of the style image",
        description="Optimise the pixels of the content photo so that the loss network's features "
        "match it and its (robust) Gram matrices match the style image. Writes OUT and, beside it, "
        "OUT with .csv: the losses per step.",
    )
    t.add_argument("content", help="the content photo (PNG or JPEG)")
    t.add_argument("style", help="the style image (PNG or JPEG)")
    t.add_argument("--out", required=True, help="the image to write (.png or .jpg); never one of the inputs")
    t.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    add_config_arguments(t, TransferConfig, presets=resolved_defaults(TransferConfig, NETWORK_EXAMPLES))
    t.set_defaults(func=run_transfer)

    r = sub.add_parser(
        "train",
        help="train a transformation network for one style on a folder of photos",
        description="Train through the shared engine; the run folder holds model.safetensors, "
        "resume.safetensors, metrics.csv, curves.png and config.yaml.",
    )
    add_config_arguments(r, StyleTrainConfig, presets=resolved_defaults(StyleTrainConfig, NETWORK_EXAMPLES))
    add_run_arguments(r, "runs/style-<style>-<time>")
    r.set_defaults(func=run_train)

    q = sub.add_parser("predict", help="stylise photos with a trained network")
    q.add_argument("run", help="run folder or model.safetensors of `cnnkit style train`")
    q.add_argument("images", nargs="+", help="photos (PNG or JPEG)")
    q.add_argument("--out", required=True, help="folder for <stem>.png")
    q.add_argument("--max-side", type=int, help="shrink photos so their longer side is at most this (px)")
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_transfer(args) -> int:
    from cnnkit.tasks.style.transfer import transfer_files

    cfg = TransferConfig(**config_from_args(TransferConfig, args))
    result = transfer_files(args.content, args.style, args.out, cfg, quiet=args.quiet)
    last = result.history[-1]
    finished(
        args,
        f"done: {last['step']} steps in {result.seconds:.1f} s, loss {last['loss']:.4f} (content "
        f"{last['content']:.4f}, style {last['style']:.4f}) -> {args.out}, {Path(args.out).with_suffix('.csv')}",
    )
    return 0


def run_train(args) -> int:
    import time

    from cnnkit.engine.runfolder import RESUME_FREE, check_resume_settings
    from cnnkit.tasks.style.train import train

    values = train_config(StyleTrainConfig, args, recipe_weights=True)  # none: a random loss network; None: imagenet
    if values.get("style"):
        values["style"] = str(Path(values["style"]).expanduser().resolve())
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN, the run folder to continue")
    if args.resume:  # the run continues with its own settings; the ones typed must equal them
        run = check_resume_settings(args.out, "style", values)
        values = {**values, **{k: run[k] for k in RESUME_FREE if k in run}}  # typed, or the run's own
    cfg = StyleTrainConfig(**values)
    out = args.out or f"runs/style-{Path(cfg.style).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, out, resume=args.resume, quiet=args.quiet)
    last = result.history[-1] if result.history else {}
    finished(
        args,
        f"done: loss {last.get('train_loss', float('nan')):.4f} (style {last.get('train_style', float('nan')):.4f}) "
        f"in {result.seconds:.1f} s -> {out}  (`cnnkit style predict {out} PHOTO --out DIR`)",
    )
    return 0


def run_predict(args) -> int:
    from cnnkit.tasks.style.predict import predict_files

    if args.max_side is not None and args.max_side < 16:
        raise CnnkitError(f"--max-side must be at least 16. Received: --max-side {args.max_side}")
    for path, target in zip(args.images, predict_files(args.run, args.images, args.out, args.max_side)):
        print(f"{path}: {target}")
    return 0

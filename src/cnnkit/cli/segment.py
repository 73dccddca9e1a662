"""``cnnkit segment train|eval|predict``: thin wrappers over :mod:`cnnkit.tasks.segment`."""

from __future__ import annotations

from pathlib import Path

from cnnkit.cli import add_format, add_run_arguments, finished, print_json, train_config
from cnnkit.engine.config import add_config_arguments, resolved_defaults
from cnnkit.errors import CnnkitError
from cnnkit.tasks.segment.config import SegmentConfig, stored_settings

DATA_EXAMPLES = {
    "pennfudan": {"data": "pennfudan"},
    "digits": {"data": "digits"},
    "folders": {"data": "my_photos"},
}  # one of each kind of data: the help shows each one's defaults


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment",
        help="semantic segmentation: train, eval, predict",
        description="Per-pixel classes: FCN-32s/16s/8s, U-Net, DeepLab-v3 on zoo backbones.",
    )
    sub = p.add_subparsers(dest="segment_command", metavar="ACTION")

    t = sub.add_parser(
        "train",
        help="train a segmentation network (default data: Penn-Fudan)",
        description="Train through the shared engine; the run folder holds model.safetensors, "
        "resume.safetensors, metrics.csv, curves.png, config.yaml and split.json. "
        "Unset options take the data's recipe (DATA_DEFAULTS).",
    )
    add_config_arguments(t, SegmentConfig, presets=resolved_defaults(SegmentConfig, DATA_EXAMPLES))
    add_run_arguments(t, "runs/segment-<data>-<time>")
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="mIoU, pixel accuracy, per-class and boundary IoU of a run", allow_abbrev=False)
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--split", default="test", help="train | val | test (default: test)")
    e.add_argument(
        "--data-dir", help="the folder holding the built-in data sets (pennfudan, digits; default: the run's)"
    )
    add_format(e)
    e.add_argument("--tta", choices=["flip", "none"], help="instead of the run's test-time augmentation")
    e.add_argument(
        "--test-scale", type=float, nargs="+", help="instead of the run's test scales (several: answers averaged)"
    )
    e.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help="class-index PNG and colour overlay per image")
    q.add_argument("run", help="run folder, model.safetensors, or its .onnx from `cnnkit export RUN --dynamic-size`")
    q.add_argument("images", nargs="+", help="image files")
    q.add_argument("--out", required=True, help="folder for <stem>.png (grey class indices) and <stem>_overlay.png")
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args) -> int:
    import time

    from cnnkit.engine.runfolder import check_resume_settings
    from cnnkit.tasks.segment.train import train

    values = train_config(SegmentConfig, args, ("pennfudan", "digits"), recipe_weights=True)
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN, the run folder to continue")
    if args.resume:  # the run's own settings (as this version reads them), the ones typed checked against them
        values = check_resume_settings(args.out, "segment", values, read_settings=stored_settings)
    cfg = SegmentConfig.from_dict(values)
    out = args.out or f"runs/segment-{Path(cfg.data).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, out, resume=args.resume, quiet=args.quiet)
    t = _defined(result.test)
    finished(
        args,
        f"done: test mIoU {t['mIoU']:.4f}, pixel accuracy {t['pixel_accuracy']:.4f}, boundary IoU "
        f"{t['boundary_iou']:.4f} in {result.seconds:.1f} s -> {out}  (`cnnkit segment eval {out}`)",
    )
    return 0


def run_eval(args) -> int:
    from cnnkit.tasks.segment.evaluate import evaluate_run

    out = evaluate_run(args.run, args.split, args.data_dir, args.tta, args.test_scale)
    if args.format == "json":
        print_json({k: v for k, v in out.items() if k != "confusion"})
        return 0
    from cnnkit.console import shown

    m = _defined(out)
    print(
        f"{shown(out['data'])} {out['split']} ({out['images']} images): mIoU {m['mIoU']:.4f}  pixel accuracy "
        f"{m['pixel_accuracy']:.4f}  boundary IoU {m['boundary_iou']:.4f}"
    )
    for name, iou in out["iou"].items():
        print(f"  {shown(name):>12}  IoU {'-' if iou is None else f'{iou:.4f}'}")
    return 0


def _defined(metrics: dict) -> dict:
    """The summary metrics with None (undefined on the scored images: every pixel ignored, no class
    in their masks or answers) as NaN, which prints as ``nan``, as an undefined AP does in ``detect eval``
    and a validation row does in the epoch lines."""
    keys = ("mIoU", "pixel_accuracy", "boundary_iou")
    return {**metrics, **{k: float("nan") if metrics.get(k) is None else metrics[k] for k in keys}}


def run_predict(args) -> int:
    from cnnkit.console import shown
    from cnnkit.data.images import read_pixels
    from cnnkit.engine.runfolder import output_stems
    from cnnkit.errors import output_folder
    from cnnkit.tasks.segment.load import load_segmenter, onnx_segmenter
    from cnnkit.tasks.segment.predict import predict_image, write_prediction

    paths = [Path(p) for p in args.images]
    stems = output_stems(paths, args.out, (".png", "_overlay.png"))  # before any work: nothing overwritten
    model = onnx_segmenter(args.run) if args.run.lower().endswith(".onnx") else load_segmenter(args.run)
    channels = model.mean.shape[1] if hasattr(model, "mean") else model.input_size[0]
    max_side = model.info.get("config", {}).get("max_side")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CnnkitError(f"no such image file: {missing[0]}")
    output_folder(args.out, "--out")  # once the run is read, before the predictions
    for path, stem in zip(paths, stems):
        image = read_pixels(path)
        if channels == 1:
            image = image.float().mean(0, keepdim=True).round().to(image.dtype)  # grey networks
        mask = predict_image(model, image, max_side)
        grey, colour = write_prediction(image, mask, len(model.classes), args.out, stem)
        print(f"{shown(path)}: {shown(grey)} {shown(colour)}")
    return 0

"""``cnnkit explain`` (what a CNN sees in one image) and ``cnnkit plot`` (the figures of a run)."""

from __future__ import annotations

from pathlib import Path

from cnnkit.cli import add_trust_code, existing_data_dir, trust
from cnnkit.errors import CnnkitError, check_not_input

METHODS = ["featuremaps", "filters", "patterns", "gradcam", "saliency"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="feature maps, filters, filter patterns, Grad-CAM or saliency as a PNG",
        description="Look inside a CNN: a trained run / checkpoint or a zoo model, on one image file "
        "(grey or colour, converted to the model's channels; read as `cnnkit predict` reads it for a run "
        "trained on an image folder, else kept at its size unless --resize).",
    )
    p.add_argument("model", metavar="CKPT_OR_MODEL", help="run folder, .safetensors checkpoint, or zoo name")
    p.add_argument(
        "image", metavar="IMAGE", help="image file (PNG, JPEG, ...); for a sequence run, a series file (.ts/.tsv/.csv)"
    )
    p.add_argument("--method", choices=METHODS, default="gradcam", help="what to draw (default: gradcam)")
    p.add_argument(
        "--layer",
        help="layer name (see `cnnkit summary`); default: the last convolution "
        "(gradcam, patterns), the first (filters), every one (featuremaps)",
    )
    p.add_argument(
        "--class",
        dest="target_class",
        type=int,
        metavar="K",
        help="class index to explain (default: the predicted class)",
    )
    p.add_argument("--guided", action="store_true", help="saliency by guided backpropagation")
    p.add_argument(
        "--channels", type=int, nargs="+", metavar="C", help="patterns: the filters to draw (default: the first 16)"
    )
    p.add_argument("--steps", type=int, help="patterns: gradient-ascent steps (default: 40)")
    p.add_argument(
        "--resize",
        action="store_true",
        help="resize the image to the model's input size (a run trained on an image folder reads it as predict does)",
    )
    p.add_argument(
        "--weights",
        help="zoo models: imagenet (the published weights, with their input normalisation) or a weights file "
        "or URL (reference key names); unset: random weights",
    )
    p.add_argument(
        "--imagenet-norm",
        action="store_true",
        help="zoo models: normalise the input with ImageNet's mean/std (for ImageNet weights given as a file or URL; "
        "--weights imagenet does it already)",
    )
    p.add_argument("--index", type=int, help="sequence runs: which series of the file (default: 0)")
    p.add_argument("--out", help="PNG to write (default: <image>_<method>.png here)")
    add_trust_code(p)
    p.set_defaults(func=run_explain)

    q = subparsers.add_parser(
        "plot",
        help="training curves, confusion matrix and mistakes of a run",
        description="Draw a run's curves (from RUN/metrics.csv) and, when its "
        "checkpoint and dataset load, its confusion matrix and most "
        "confident mistakes, as PNGs in the run folder.",
    )
    q.add_argument("run", metavar="RUN", help="run folder written by `cnnkit train`")
    q.add_argument("--data-dir", help="where the run's dataset lives (default: the one it trained on)")
    q.add_argument("--split", help="test | val (default: test, else val)")
    q.add_argument(
        "--max-images",
        type=int,
        default=10000,
        help="images used for the confusion matrix and mistakes (default: 10000)",
    )
    add_trust_code(q)
    q.set_defaults(func=run_plot)


# the options each method reads; one given to a method that does not read it is refused, not ignored
_OPTION_METHODS = {
    "target_class": ("--class", ("gradcam", "saliency")),
    "guided": ("--guided", ("saliency",)),
    "channels": ("--channels", ("patterns",)),
    "steps": ("--steps", ("patterns",)),
    "layer": ("--layer", ("featuremaps", "filters", "patterns", "gradcam")),  # saliency: the pixels' gradient
}


def _check_options(args, sequence: bool = False) -> None:
    """Refuse an option the method given does not read (``--class`` with featuremaps would be ignored)."""
    if not sequence and args.index is not None:
        raise CnnkitError("--index picks a series of a sequence run's file; an image is explained whole: drop --index")
    for dest, (flag, methods) in _OPTION_METHODS.items():
        value = getattr(args, dest)
        if value is None or value is False:  # unset (--class 0 is set)
            continue
        if sequence and dest == "layer":
            raise CnnkitError(
                "--layer does not apply to a sequence run (its map is taken at the last convolution); drop --layer"
            )
        if sequence and dest != "target_class":
            raise CnnkitError(
                f"{flag} does not apply to a sequence run (it is explained by its class activation map); drop {flag}"
            )
        if not sequence and args.method not in methods:
            raise CnnkitError(
                f"{flag} applies to --method {' or '.join(methods)}, not {args.method}; drop {flag} or change --method"
            )


def run_explain(args) -> int:
    if _is_sequence_run(args.model):
        return run_explain_series(args)
    _check_options(args)
    from cnnkit import plots
    from cnnkit.console import shown
    from cnnkit.explain import (
        feature_maps,
        filter_patterns,
        filters,
        grad_cam,
        layer_names,
        saliency,
    )
    from cnnkit.explain.hooks import conv2d_layers, default_cam_layer, is_conv, no_convolution, torchscript_where
    from cnnkit.tasks.classify.explain import load_explainable, read_input
    from cnnkit.tasks.classify.load import check_finite_weights

    out = Path(args.out or f"{Path(args.image).stem}_{args.method}.png")
    if out.suffix.lower() != ".png":
        raise CnnkitError(f"--out must be a .png file, got {str(out)!r}")
    check_not_input([out], [args.image], "image")  # the picture never replaces the photo it explains
    plots.check_output(out)  # before any work: a folder, or a path under a file, is said at once
    target = load_explainable(
        args.model, weights=args.weights, imagenet_norm=args.imagenet_norm, factory=args.trust_code
    )
    check_finite_weights(target.model, args.model)  # NaN weights would explain nothing (p=nan)
    x = read_input(target, args.image, resize=args.resize)  # as `cnnkit predict` reads it for a folder-trained run
    target.check_accepts(x, f" ({args.image})")
    if args.method == "filters":  # weights are read and no layer runs: the convolutions inside TorchScript too
        layer = target.prefix + args.layer if args.layer else None  # checked by filters()
        convs = list(conv2d_layers(target.net))
    else:
        layer = target.layer(args.layer) if args.layer else None
        convs = [n for n in layer_names(target.net) if is_conv(target.net.get_submodule(n))]
    if not convs and layer is None and args.method != "saliency":
        if torchscript_where(target.net):  # its convolutions run inside compiled code, without hooks
            raise no_convolution(target.net, args.model)
        if args.method != "gradcam":  # Grad-CAM's default layer says so itself, listing the layers
            raise CnnkitError(f"{args.model} has no convolution; pass --layer NAME")
    if args.method == "featuremaps":
        names = [layer] if layer else [target.prefix + n for n in convs]
        maps = feature_maps(target.model, x, names)
        fig = plots.feature_map_grid(
            {target.user_name(k): v for k, v in maps.items()}, title=f"Feature maps of {Path(args.image).name}"
        )
        summary = f"{len(maps)} layer(s)"
    elif args.method == "filters":
        name = target.user_name(layer) if layer else convs[0]
        fig = plots.filter_grid(filters(target.net, name), title=f"Filters of {name}")
        summary = f"layer {name}"
    elif args.method == "patterns":
        name = layer or target.prefix + convs[-1]
        steps = 40 if args.steps is None else args.steps
        if not 1 <= steps <= 10_000:  # 0 would draw the untrained start image
            raise CnnkitError(f"--steps must be an integer from 1 to 10,000; received {steps}")
        pats = filter_patterns(target.model, name, channels=args.channels, size=tuple(x.shape[-2:]), steps=steps)
        chans = args.channels or list(range(pats.shape[0]))
        fig = plots.pattern_grid(pats, channels=chans, layer=target.user_name(name))
        summary = f"layer {target.user_name(name)}, {len(chans)} filter(s)"
    else:
        k = args.target_class
        if args.method == "gradcam":
            name = layer or default_cam_layer(target.model, x[None])
            heat, cls = grad_cam(target.model, x, k, name)
            label, where = "Grad-CAM", f" at {target.user_name(name)}"
        else:
            kind = "guided" if args.guided else "vanilla"
            heat, cls = saliency(target.model, x, k, method=kind)
            label, where = f"{kind} saliency", ""
        import torch

        with torch.no_grad():
            prob = float(target.model(x[None]).float().softmax(1)[0, cls])
        cname = target.classes[cls] if cls < len(target.classes) else str(cls)
        fig = plots.heatmap_overlay(
            x, heat, label=label, title=f"{label} for class {cls} ({cname!r}, p={prob:.2f}){where}"
        )
        summary = f"class {cls} ({shown(cname)}) p={prob:.3f}{where}"
    plots.save_figure(fig, out)
    print(f"{args.method}: {summary} -> {out}")
    if target.random_weights:
        print(
            f"note: {args.model} has random weights, so this shows an untrained network; pass --weights "
            "imagenet (or a weights file) to explain a trained one"
        )
    return 0


def _is_sequence_run(model: str) -> bool:
    """A run folder or checkpoint whose metadata names the sequence task (a zoo name is not a path)."""
    from cnnkit.engine.runfolder import read_metadata, resolve

    path = Path(model)
    if not (path.is_dir() and (path / "model.safetensors").is_file()) and not (
        path.is_file() and path.suffix == ".safetensors"
    ):
        return False
    return read_metadata(resolve(path)).get("task") == "sequence"


def run_explain_series(args) -> int:
    """``cnnkit explain RUN SERIES_FILE`` for a time-series run: the class activation map over the series."""
    from cnnkit import plots
    from cnnkit.cli.sequence import one_split_files
    from cnnkit.console import shown
    from cnnkit.tasks.sequence.explain import explain_series

    one_split_files([args.image], "cnnkit explain")
    index = 0 if args.index is None else args.index
    out = Path(args.out or f"{Path(args.image).stem}_{index}_cam.png")
    if out.suffix.lower() != ".png":
        raise CnnkitError(f"--out must be a .png file, got {str(out)!r}")
    if args.method != "gradcam":  # the default; a series run has one method
        raise CnnkitError(f"a sequence run is explained by its class activation map; drop --method {args.method}")
    _check_options(args, sequence=True)
    plots.check_output(out)  # after the refusals: it makes the output's folder
    r = explain_series(args.model, args.image, index, args.target_class)
    given = f", file's label {r['label']!r}" if r["label"] is not None else ""
    title = f"CAM for class {r['class']} ({r['class_name']!r}, p={r['probability']:.2f}{given})"
    # the series' own samples: the zeros that pad it to the training length are not in the file
    name = f"{Path(args.image).name}[{index}]"
    plots.series_cam(r["series"], r["cam"], out, title=f"{name}: {title}", lengths=r["length"])
    print(f"cam: class {r['class']} ({shown(r['class_name'])}) p={r['probability']:.3f} -> {out}")
    return 0


def run_plot(args) -> int:
    from cnnkit.tasks.classify.plot import plot_run

    existing_data_dir(args.data_dir)
    if args.max_images < 1:
        raise CnnkitError(f"--max-images must be a positive integer; received {args.max_images}")
    if args.split is not None and args.split not in ("test", "val", "train", "trainval"):  # a typo is no "note"
        raise CnnkitError(f"--split is test or val (or train, trainval). Received: --split {args.split}")
    written, notes = plot_run(
        args.run, data_dir=args.data_dir, split=args.split, max_images=args.max_images, **trust(args)
    )
    for note in notes:
        print(f"note: {note}")
    for path in written:
        print(f"wrote {path}")
    return 0

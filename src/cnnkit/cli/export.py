"""``cnnkit export RUN --format onnx --out FILE.onnx``: a trained run as one ONNX file, checked in ONNX Runtime."""

from __future__ import annotations

from cnnkit.cli import add_trust_code, trust


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="a trained run (or a zoo network) as one ONNX file that ONNX Runtime runs as PyTorch does",
        description="Load a run of any task (cnnkit.load), or build a zoo network by name with random weights, "
        "export it to ONE .onnx file (weights inside) with a dynamic batch axis, run it in ONNX Runtime on "
        "example inputs (the batch given and one more) and keep it only if its outputs match PyTorch's within "
        "--rtol of their scale. A classifier is exported with its input normalisation and without test-time "
        "augmentation: it takes [0, 1] pixels (N, C, H, W) and returns logits; its classes and input size "
        "go in the file's metadata, so `cnnkit predict FILE.onnx image.jpg` runs it. A detector is exported "
        "up to its raw outputs; decoding and NMS stay in Python (cnnkit.models.detection.decode).",
    )
    p.add_argument("run", metavar="RUN", help="a run folder, model.safetensors, or a zoo name (random weights)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="the only format: onnx")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the file to write")
    p.add_argument("--batch", type=int, default=1, help="batch of the example input (default: 1)")
    p.add_argument("--input", metavar="CxHxW", help="input size without the batch (default: the run's or zoo's)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to --batch")
    p.add_argument(
        "--dynamic-size",
        nargs="?",
        const="all",
        metavar="AXES",
        help="free the axes after the channels too (length, frames, height, width) where the network allows "
        "it, checked at other sizes; or only the input axes given, e.g. 3,4 for SimVP clips (N, T, C, H, W)",
    )
    p.add_argument(
        "--exporter",
        default="auto",
        choices=["auto", "dynamo", "torchscript"],
        help="auto: PyTorch's dynamo exporter, falling back to the TorchScript one",
    )
    p.add_argument(
        "--opset",
        type=int,
        metavar="N",
        help="the ONNX operator set to write, from 7 (default: the exporter's own); one the dynamo exporter "
        "cannot write falls back to the TorchScript one. A clip classifier's antialiased frame resize is ONNX "
        "Resize from 18 and two MatMuls from 11",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=1e-4,
        help="allowed max |onnxruntime - pytorch| as a fraction of the output's scale (default: 1e-4)",
    )
    p.add_argument("--no-check", action="store_true", help="do not run the file in ONNX Runtime (not recommended)")
    add_trust_code(p)
    p.set_defaults(func=run_export)


def _axes(text: str | None) -> bool | tuple[int, ...]:
    from cnnkit.errors import CnnkitError

    if text is None:
        return False
    if text == "all":
        return True
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CnnkitError(f"--dynamic-size takes input axes like 3,4 (or nothing). Received: {text}") from None


def run_export(args) -> int:
    from cnnkit.tasks.export import export_model, parse_size

    report = export_model(
        args.run,
        args.out,
        batch=args.batch,
        input_size=parse_size(args.input) if args.input is not None else None,
        dynamic_batch=not args.static_batch,
        dynamic_size=_axes(args.dynamic_size),
        check=not args.no_check,
        rtol=args.rtol,
        exporter=args.exporter,
        opset=args.opset,
        **trust(args),
    )
    print(report)
    return 0

"""``cnnkit export RUN --format onnx --out FILE.onnx``: a trained run as one ONNX file, checked in ONNX Runtime."""

from __future__ import annotations

import json

from cnnkit.cli import add_trust_code, trust


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="a trained run as one ONNX file that ONNX Runtime runs as PyTorch does",
        description="Load a run (cnnkit.load), export its deployable model to ONE .onnx file (weights inside) "
        "with a dynamic batch axis, run it in ONNX Runtime on example images (the batch given and one more) "
        "and keep it only if its outputs match PyTorch's within --rtol of their scale. A classifier is "
        "exported with its input normalisation and without test-time augmentation: it takes [0, 1] pixels "
        "(N, C, H, W) and returns logits. A detector is exported up to its raw outputs; decoding and NMS stay "
        "in Python (cnnkit.models.detection.decode).",
    )
    p.add_argument("run", metavar="RUN", help="a run folder or model.safetensors")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="the only format: onnx")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the file to write")
    p.add_argument("--batch", type=int, default=1, help="batch of the example input (default: 1)")
    p.add_argument("--input", metavar="CxHxW", help="input size when the run does not state one")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to --batch")
    p.add_argument(
        "--dynamic-size",
        action="store_true",
        help="free image size too, where the network allows it (checked at another size)",
    )
    p.add_argument(
        "--exporter",
        default="auto",
        choices=["auto", "dynamo", "torchscript"],
        help="auto: PyTorch's dynamo exporter, falling back to the TorchScript one",
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


def _size(model, text: str | None) -> tuple[int, ...]:
    from cnnkit.errors import CnnkitError

    if text is not None:
        try:
            return tuple(int(v) for v in text.replace(",", "x").split("x"))
        except ValueError:
            raise CnnkitError(f"--input takes sizes like 3x224x224. Received: --input {text}") from None
    size = getattr(model, "input_size", None)
    if size is None:
        raise CnnkitError("the run does not state its input size; give it with --input CxHxW")
    return tuple(int(v) for v in size)


def run_export(args) -> int:
    import contextlib

    import torch

    from cnnkit.errors import CnnkitError
    from cnnkit.export import export_onnx
    from cnnkit.tasks.load import load

    if args.batch < 1:
        raise CnnkitError(f"--batch must be at least 1. Received: --batch {args.batch}")
    model = load(args.run, **trust(args))
    size = _size(model, args.input)
    example = torch.rand(args.batch, *size, generator=torch.Generator().manual_seed(0))  # pixels in [0, 1)
    meta = {"cnnkit.input_size": json.dumps(list(size)), "cnnkit.source": str(args.run)}
    if getattr(model, "classes", None) is not None:
        meta["cnnkit.classes"] = json.dumps(list(model.classes))
    task = (getattr(model, "info", None) or {}).get("task", "classify")
    meta["cnnkit.task"] = str(task)
    no_tta = model.without_tta() if hasattr(model, "without_tta") else contextlib.nullcontext()
    with no_tta:
        report = export_onnx(
            model,
            example,
            args.out,
            dynamic_batch=not args.static_batch,
            dynamic_size=args.dynamic_size,
            check=not args.no_check,
            rtol=args.rtol,
            exporter=args.exporter,
            metadata=meta,
        )
    print(report)
    return 0

"""``cnnkit summary`` and ``cnnkit memory``: thin wrappers over :mod:`cnnkit.analysis`."""

from __future__ import annotations

from cnnkit.cli import add_format, print_json

_TARGET_HELP = (
    "a zoo model name, a .yaml/.json network spec, a Keras .keras/.h5 file, or path/to/file.py:factory "
    "(a function returning a torch.nn.Module)"
)


def _common(p) -> None:
    p.add_argument("target", help=_TARGET_HELP)
    p.add_argument(
        "--input",
        metavar="CxHxW",
        help="input size without the batch: 3x224x224, 3,224,224, CxL (1-D) or CxDxHxW (3-D); default: the model's own",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--optimizer",
        default="sgd",
        choices=["none", "sgd", "momentum", "adam", "adamw"],
        help="optimizer of the analysed training step (default: sgd)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="whose allocator to predict")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="shapes, parameters, MACs and memory of a CNN",
        description="Per layer: output shape, parameters, MACs. Totals. The peak memory of inference "
        "and of one training step at the batch, as PyTorch really allocates it, with the notes' "
        "textbook calculation beside it.",
    )
    _common(p)
    p.add_argument("--batch-size", "--batch", dest="batch", type=int, default=1, help="batch size (default: 1)")
    add_format(p, ("table", "json", "csv"))
    p.add_argument(
        "--time",
        nargs="?",
        const=5,
        type=int,
        metavar="STEPS",
        help="also run STEPS real training steps (default 5, after 2 untimed ones) on a random batch and "
        "time each layer's forward and backward pass: where a step's milliseconds go",
    )
    p.set_defaults(func=run_summary)

    f = subparsers.add_parser(
        "memory",
        help="the largest batch that fits in memory, and what each remedy saves",
        description="Largest batch for training and for inference within --memory; at --batch, "
        "whether it fits and, if not, what each of the notes' remedies would save.",
    )
    _common(f)
    f.add_argument("--memory", required=True, help="memory budget, e.g. 8GiB, 16GB, 500MB")
    f.add_argument("--batch-size", "--batch", dest="batch", type=int, help="the batch size you want to train with")
    f.add_argument("--devices", type=int, default=2, help="devices for the 'spread over N' remedy")
    add_format(f)
    f.set_defaults(func=run_memory)


def run_summary(args) -> int:
    from cnnkit.analysis import summary
    from cnnkit.analysis.report import render_csv

    s = summary(
        args.target,
        input_size=args.input,
        batch_size=args.batch,
        dtype=args.dtype,
        optimizer=args.optimizer,
        device=args.device,
        time_steps=args.time,
    )
    if args.format == "json":
        print_json(s.to_dict(), indent=2)
    elif args.format == "csv":
        print(render_csv(s), end="")
    else:
        from cnnkit.console import console

        console(min_width=120).print(s)
    return 0


def run_memory(args) -> int:
    from cnnkit.analysis import memory_plan
    from cnnkit.analysis.report import human_bytes
    from cnnkit.errors import CnnkitError

    if args.batch is not None and args.batch < 1:
        raise CnnkitError(f"--batch must be a positive integer; received: {args.batch}")
    r = memory_plan(
        args.target,
        input_size=args.input,
        memory=args.memory,
        batch_size=args.batch,
        dtype=args.dtype,
        optimizer=args.optimizer,
        device=args.device,
        devices=args.devices,
    )
    if args.format == "json":
        print_json(r, indent=2)
        return 0
    print(
        f"{r['model']}  input {'x'.join(map(str, r['input_size']))}  {r['dtype']}  "
        f"optimizer {r['optimizer']}  budget {r['memory_bytes']:,} B ({human_bytes(r['memory_bytes'])})"
    )
    for kind in ("training", "inference"):
        if kind in r:
            k = r[kind]
            line = (
                f"{kind:>9}: peak = {k['fixed_bytes']:,} + {k['per_sample_bytes']:,} x batch  ->  "
                f"largest batch that fits: {k['max_batch']:,}"
            )
            if "peak_bytes" in k:
                line += (
                    f"; at batch {r['batch_size']}: {k['peak_bytes']:,} B "
                    f"({human_bytes(k['peak_bytes'])}) {'fits' if k['fits'] else 'does NOT fit'}"
                )
            print(line)
    for rem in r.get("remedies", []):
        est = " (estimate)" if rem.get("estimate") else ""
        print(
            f"  - {rem['remedy']}: peak {human_bytes(rem['peak_bytes'])}, saves "
            f"{human_bytes(rem['saves_bytes'])}{est} -- {rem['detail']}"
        )
    return 0

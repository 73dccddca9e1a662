"""``cnnkit zoo``: the registered models with parameters, MACs, default input and paper."""

from __future__ import annotations

from cnnkit.cli import add_format, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "zoo",
        help="list the model zoo: parameters, MACs, input size, paper",
        description="Every registered model (or the NAMEs given) with its parameters, its MACs for one "
        "image at its default input size (from the analyser), that input size, its paper, and whether "
        "reference ImageNet weights are published (load them with --weights / load_weights).",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    p.add_argument("--family", help="only this family, e.g. resnet, mobilenet, notes")
    p.add_argument(
        "--task",
        default="classify",
        help="the models of this task: classify (default) | detect | segment | instance | generate | style | video | "
        "video_predict | all",
    )
    add_format(p)
    p.set_defaults(func=run_zoo)


def zoo_rows(names: list[str]) -> list[dict]:
    """One dict per model: name, family, params, macs (None if the analyser cannot take its input), ..."""

    from cnnkit.analysis import summary
    from cnnkit.errors import CnnkitError
    from cnnkit.models import create_model, model_info
    from cnnkit.models.meta import on_meta
    from cnnkit.models.weights import PRETRAINED

    rows = []
    for name in names:
        info = model_info(name)
        with on_meta():  # shapes only: nothing is allocated or initialised for real
            model = create_model(name)
        try:
            macs = summary(model, input_size=info.input_size, optimizer="none", backend_model=False).totals["macs"]
        except CnnkitError:  # e.g. a generator fed a latent vector: no image input to trace
            macs = None
        rows.append(
            {
                "name": name,
                "family": info.family,
                "params": sum(p.numel() for p in model.parameters()),
                "macs": macs,
                "input_size": list(info.input_size),
                "paper": info.paper,
                "weights": PRETRAINED[name].url if name in PRETRAINED else None,
            }
        )
    return rows


def run_zoo(args) -> int:
    from cnnkit.errors import CnnkitError
    from cnnkit.models import list_models, model_info

    if args.task != "all":
        tasks = sorted({model_info(n).task for n in list_models(None)})
        if args.task not in tasks:
            raise CnnkitError(f"unknown task {args.task[:40]!r}; --task is one of {', '.join(tasks)} or all")
    names = list(dict.fromkeys(args.names)) or list_models(None if args.task == "all" else args.task)
    for name in names:
        model_info(name)  # an unknown name fails here, with close matches
    if args.family:
        families = sorted({model_info(n).family for n in names})
        if args.family not in families:
            raise CnnkitError(
                f"unknown family {args.family!r}; families: {', '.join(families)}. Received: --family {args.family}"
            )
        names = [n for n in names if model_info(n).family == args.family]
    rows = sorted(zoo_rows(names), key=lambda r: (r["family"], r["name"]))
    if args.format == "json":
        print_json(rows, indent=2)
        return 0
    from rich.table import Table

    from cnnkit.console import console

    table = Table(title=f"cnnkit zoo: {len(rows)} model{'s' if len(rows) != 1 else ''}", title_justify="left")
    for col, justify in (
        ("name", "left"),
        ("family", "left"),
        ("params", "right"),
        ("MACs", "right"),
        ("input", "left"),
        ("paper", "left"),
        ("weights", "center"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            f"{r['params']:,}",
            _si(r["macs"]),
            "x".join(map(str, r["input_size"])),
            r["paper"],
            "yes" if r["weights"] else "",
        )
    console(min_width=130).print(table)
    return 0


def _si(n: int | None) -> str:
    """4_089_184_256 -> '4.09G'; None -> '-'."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)

"""``cnnkit serve``: the workbench, a local web page (thin: parse -> :func:`cnnkit.serve.serve`)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="the workbench: a local web page to see a CNN",
        description="Convolution arithmetic, the analyser (per-layer charts, the memory timeline of a "
        "training step, fit), your training runs and predict & explain, in the browser. "
        "Offline; bound to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--runs", metavar="DIR", help="folder holding run folders (written by `cnnkit train`)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from cnnkit.serve import serve

    serve(args.runs, args.host, args.port)
    return 0

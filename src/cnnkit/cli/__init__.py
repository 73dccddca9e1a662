"""The ``cnnkit`` command. Thin: it parses, builds the config, calls the library.

Each sub-module registers its sub-commands with ``register(subparsers)``; every
sub-command's handler takes the parsed ``args`` and returns an exit code.
A :class:`~cnnkit.errors.CnnkitError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from ..errors import CnnkitError

# sub-modules of cnnkit.cli, in the order their commands appear in --help
_COMMAND_MODULES = ["summary", "zoo", "train", "explain", "transfer", "segment"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkit",
        description="Convolutional neural networks, exact and fast: analyse, build, train, "
        "transfer and explain CNNs.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CnnkitError as exc:
        print(f"cnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cnnkit {args.command}: interrupted", file=sys.stderr)
        return 130

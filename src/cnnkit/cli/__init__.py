"""The ``cnnkit`` command. Thin: it parses, builds the config, calls the library.

Each sub-module registers its sub-commands with ``register(subparsers)``; every
sub-command's handler takes the parsed ``args`` and returns an exit code.
A :class:`~cnnkit.errors.CnnkitError` becomes one line on stderr and exit code 2 (under torchrun, said
by rank 0 alone; every process exits with 2). argparse's usage errors, ``--help`` and ``--version`` are
likewise printed by rank 0 alone, every process exiting with argparse's code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from importlib import import_module

from cnnkit.engine.config import keep_freed_memory, launched
from cnnkit.errors import (
    CnnkitError,
    disk_full,
    is_disk_full,
    is_name_too_long,
    is_out_of_memory,
    name_too_long,
    out_of_memory,
)

# sub-modules of cnnkit.cli, in the order their commands appear in --help
_COMMAND_MODULES = [
    "classify",
    "detect",
    "segment",
    "instance",
    "sequence",
    "video",
    "generate",
    "style",
    "summary",
    "zoo",
    "explain",
    "convert",
    "export",
    "serve",
]


def print_json(obj, indent: int | None = None) -> None:
    """``--format json``: ``obj`` printed as strict JSON, a NaN (a metric the data do not define) as
    ``null`` (:func:`~cnnkit.engine.runfolder.json_text`)."""
    from cnnkit.engine.runfolder import json_text

    print(json_text(obj, indent=indent))


def add_format(parser: argparse.ArgumentParser, choices: tuple[str, ...] = ("table", "json")) -> None:
    """``--format``: a table for people (the default) or JSON (or CSV) for programs, said the same way
    by every command."""
    parser.add_argument(
        "--format",
        default="table",
        choices=list(choices),
        help=f"{' | '.join(choices)}: a table to read, or {' / '.join(c.upper() for c in choices[1:])} for "
        "programs (default: table)",
    )


def add_trust_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-code FILE.py:FN``: the one way to load a checkpoint whose network only code builds."""
    parser.add_argument(
        "--trust-code",
        metavar="FILE.py:FN",
        dest="trust_code",
        help="load a checkpoint whose network is built by a Python factory, running "
        "FILE.py:FN as you name it (never the file the checkpoint names)",
    )


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """``--out``, ``--resume`` and ``--quiet``: where a training run goes, and how it talks."""
    parser.add_argument("--out", help=f"run folder, written after every epoch (default: {default_out})")
    given = parser._option_string_actions  # the settings added before: name only those that may change
    free = [flag for flag in ("--device", "--threads", "--data-dir", "--minutes") if flag in given]
    free = ", ".join(free[:-1]) + f" and {free[-1]}" if len(free) > 1 else "".join(free)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out exactly, with its own settings: a setting given that differs from "
        f"the run's is refused{f' ({free} may change)' if free else ''}",
    )
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


QUIET_HELP = "print nothing but warnings and errors (no summary, progress, epochs or final line)"


def finished(args, line: str) -> None:
    """A training command's final line, left out under ``--quiet`` as everything else it prints, and
    said once under torchrun (by rank 0)."""
    if not args.quiet and launched()[0] == 0:
        print(line)


def train_config(cls, args, builtin: tuple[str, ...] = (), recipe_weights: bool = False) -> dict:
    """The run config's values from ``--config`` and the typed flags, with paths made absolute (a run
    stores where its data is) and ``--weights none`` as None. ``builtin``: data names that are not
    paths; one that ends in ":" is a prefix of such names (``ucr:`` for ``ucr:GunPoint``).
    ``recipe_weights``: the config reads None as the recipe's own weights, so ``--weights none``
    stays "none" (no weights), which the config resolves."""
    from pathlib import Path

    from cnnkit.engine.config import config_from_args

    values = config_from_args(cls, args)
    existing_data_dir(values.get("data_dir"))
    if values.get("data_dir"):
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    data = values.get("data")
    named = data in builtin or any(b.endswith(":") and str(data).lower().startswith(b) for b in builtin)
    if data and not named:
        values["data"] = str(Path(data).expanduser().resolve())
    if isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
        values["weights"] = "none" if recipe_weights else None
    return values


def trust(args) -> dict:
    """The keyword arguments of cnnkit.load from ``--trust-code``."""
    factory = getattr(args, "trust_code", None)
    return {"trust_code": factory is not None, "factory": factory}


def existing_data_dir(data_dir: str | None) -> None:
    """A --data-dir the user typed must exist: a typo is reported, never created (downloads go in it)."""
    from pathlib import Path

    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise CnnkitError(
            f"--data-dir {data_dir} is not a folder; fix the path, or create it first to "
            "download the dataset into it (without --data-dir: $CNNKIT_DATA or ~/.cache/cnnkit/data)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkit",
        description="Convolutional neural networks, exact and fast: analyse, build, train, transfer and explain CNNs.",
    )
    from cnnkit import __version__

    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    with _said_by_rank_0():
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said with the usage of the command they were given to, not the top level's
            _command_parser(parser, argv).error(f"unrecognized arguments: {' '.join(unknown)}")
        if not getattr(args, "func", None):
            parser.print_help()
            if launched()[0] != 0:  # exit 2, as a usage error: rank 0 prints the help first
                _let_rank_0_speak()
            return 2
    keep_freed_memory()
    try:
        with plain_warnings():
            return int(args.func(args) or 0)
    except CnnkitError as exc:
        return _fail(args.command, exc)
    except MemoryError:
        return _fail(args.command, out_of_memory(f"running `cnnkit {args.command}`"), every_rank=True)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        return _fail(args.command, out_of_memory(f"running `cnnkit {args.command}`"), every_rank=True)
    except BrokenPipeError:
        if not _output_gone():
            raise  # a pipe other than the output broke: not the reader's doing
        devnull = os.open(os.devnull, os.O_WRONLY)  # the reader went away (`cnnkit ... | head`): no traceback
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would fail on the pipe again
        return 141  # 128 + SIGPIPE, as a shell reports a command the pipe stopped
    except OSError as exc:
        if is_name_too_long(exc):  # Path.exists() and is_file() raise it for a name over 255 bytes
            return _fail(args.command, name_too_long(exc.filename))
        if not is_disk_full(exc):
            raise
        return _fail(args.command, disk_full(exc.filename or "a file"))
    except KeyboardInterrupt:
        print(f"cnnkit {args.command}: interrupted", file=sys.stderr)
        return 130


def _output_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no file descriptor
        return True


@contextlib.contextmanager
def plain_warnings():
    """cnnkit's own warnings (a skipped file, a small class) print as one ``warning: ...`` line, not in
    Python's format with a source path and a code line; other libraries' keep theirs."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.startswith("cnnkit."):
                print(f"warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _said_by_rank_0():
    """What argparse prints while it reads the command line (a usage error, ``--help``, ``--version``),
    printed once under torchrun: every process reads the same command line, and a process other than
    rank 0 writes its standard output and error to nowhere meanwhile. It still exits as argparse
    says (2 for an error, 0 for ``--help``)."""
    if launched()[0] == 0:
        yield
        return
    try:
        with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), contextlib.redirect_stderr(nowhere):
            yield
    except SystemExit as stop:
        if stop.code:
            _let_rank_0_speak()
        raise


# Seconds a process other than rank 0 waits before it exits on bad input: torchrun stops every
# process as soon as one fails, and rank 0, the one that says why, may not have said it yet.
RANK_0_GRACE = 5.0


def _let_rank_0_speak() -> None:
    time.sleep(RANK_0_GRACE)


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub-)command that ``argv`` names (``segment train``: that of ``train``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for i, word in enumerate(argv):
                if word in action.choices:
                    return _command_parser(action.choices[word], argv[i + 1 :])
                if not word.startswith("-"):
                    break
    return parser


def _fail(command: str, exc: CnnkitError, every_rank: bool = False) -> int:
    """One line on stderr (a message never spans lines, nor runs past 2,000 characters), exit code 2.
    Under torchrun every process meets bad input alike and fails with code 2; rank 0 alone says why,
    once. ``every_rank``: a process's own failure (its memory ran out), said by whichever process met it."""
    if every_rank or launched()[0] == 0:
        text = " ".join(str(exc).split())
        print(f"cnnkit {command}: error: {text[:2000]}", file=sys.stderr)
    else:
        _let_rank_0_speak()
    return 2

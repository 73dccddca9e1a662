"""MkDocs hooks: the generated reference pages, written at build time (``hooks:`` in mkdocs.yml).

``reference/cli.md`` is generated from ``cnnkit.cli.build_parser()``: every command and sub-command,
its usage line and every option with its help, so the page cannot disagree with ``--help``. A copy
is committed so that the page also reads on a code host; the build replaces it with a fresh one, and
``tests/test_docs.py`` fails when the copy is stale (``python docs/hooks.py --write`` refreshes it).
``reference/config.md`` is generated from the run-config dataclasses by :func:`config_reference`
that :func:`task_configs` finds. In ``reference/api.md`` the ``<!-- api -->`` line becomes one
mkdocstrings block per name of :data:`PUBLIC_API`, taken from the module that defines it, so the page
follows the code when a function moves.

Run ``python docs/hooks.py`` to print the CLI reference without building the site.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CLI_PAGE = Path(__file__).resolve().parent / "reference" / "cli.md"
CONFIG_PAGE = CLI_PAGE.with_name("config.md")  # committed too, so that links to it work on a code host

# the top-level names the API page documents, in this order
PUBLIC_API = [
    "create_model",
    "list_models",
    "register_model",
    "summary",
    "Summary",
    "memory_plan",
    "load",
    "to_fcn",
    "load_keras",
    "export_onnx",
    "OnnxModel",
    "CnnkitError",
]


def task_configs() -> list[str]:
    """``"module:Class"`` of :class:`~cnnkit.engine.config.RunConfig` and of every settings dataclass
    (deriving from it, or declaring every field with ``option()``) in a task package's ``config.py``
    (or the classify fine-tuning module), in package order; within a module, the run configs first,
    each group in the order the module defines them.

    Returns:
        The specs, RunConfig first.
    """
    import dataclasses as dc
    import inspect
    import pkgutil

    import cnnkit.tasks
    from cnnkit.engine.config import RunConfig

    specs = ["cnnkit.engine.config:RunConfig"]
    for info in pkgutil.iter_modules(cnnkit.tasks.__path__):
        if not info.ispkg:
            continue
        for leaf in ("config", "finetune"):
            name = f"cnnkit.tasks.{info.name}.{leaf}"
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            classes = [(n, c) for n, c in vars(module).items() if inspect.isclass(c)]
            classes.sort(key=lambda item: not issubclass(item[1], RunConfig))  # stable: definition order
            for cls_name, cls in classes:
                if (
                    cls.__module__ == name
                    and dc.is_dataclass(cls)
                    and (issubclass(cls, RunConfig) or all("help" in f.metadata for f in dc.fields(cls)))
                    and not cls_name.startswith("_")
                ):
                    if cls_name.endswith("Recipe"):  # internal recipes are not run configs
                        continue
                    specs.append(f"{name}:{cls_name}")
    return specs


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """The (name, help, parser) of each sub-command of ``parser``, in the order --help lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias of a command already listed
                    continue
                seen.add(id(sub))
                found.append((name, helps.get(name, ""), sub))
    return found


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Markdown rows, one per argument of ``parser``: the flags (or the name) and the help."""
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + " ".join(parser._get_formatter()._format_args(action, action.dest.upper()).split())
            names = ", ".join(f"`{flag}{metavar}`" for flag in action.option_strings)
        else:
            names = f"`{action.metavar or action.dest}`"
        text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text = f"{text} (default: {action.default})".strip()
        rows.append(f"| {names} | {_cell(text)} |")
    return rows


def _cell(text: str) -> str:
    """One table cell: on one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _command(parser: argparse.ArgumentParser, path: list[str], summary: str, out: list[str]) -> None:
    """Append the section of one command, then of each of its sub-commands, depth first."""
    level = min(len(path) + 1, 6)
    out.append(f"{'#' * level} `{' '.join(path)}`\n")
    if summary:
        out.append(f"{summary[0].upper()}{summary[1:]}.\n" if not summary.endswith(".") else f"{summary}\n")
    if parser.description and parser.description != summary:
        out.append(" ".join(parser.description.split()) + "\n")
    usage = " ".join(parser.format_usage().split())
    out.append(f"```text\n{usage}\n```\n")
    rows = _options(parser)
    if rows:
        out.append("| argument | meaning |\n| --- | --- |")
        out.extend(rows)
        out.append("")
    for name, help_text, sub in _subparsers(parser):
        _command(sub, [*path, name], help_text, out)


def cli_reference() -> str:
    """The CLI reference page: every command and sub-command of ``cnnkit`` with usage and options.

    Returns:
        The page as Markdown.
    """
    from cnnkit.cli import build_parser

    parser = build_parser()
    parser.prog = "cnnkit"
    out = [
        "# Command-line reference\n",
        (
            "Generated from the argument parsers when the site is built (`docs/hooks.py`); "
            "`cnnkit COMMAND --help` prints the same text.\n"
        ),
    ]
    _command(parser, ["cnnkit"], "", out)
    return "\n".join(out) + "\n"


def config_reference(classes: list[type]) -> str:
    """The configuration reference page: one table per run-config dataclass.

    Each row is a field: its name (the same as the CLI flag with ``-`` for ``_`` and the key of
    ``--config FILE.yaml``), its type, its default and ``field.metadata["help"]``, the one place where
    an option is explained.

    Args:
        classes: dataclass types, base classes first (e.g. ``RunConfig`` then each task's config);
            a field inherited from a class already shown is not repeated.

    Returns:
        The page as Markdown.

    Raises:
        TypeError: if an entry of ``classes`` is not a dataclass.
    """
    out = [
        "# Configuration reference\n",
        (
            "Generated from the configuration dataclasses when the site is built (`docs/hooks.py`). "
            "A field is set on the command line by its flag (`--batch-size` for `batch_size`) and in "
            "`--config FILE.yaml` by its name.\n"
        ),
    ]

    def default_of(field) -> str:
        if field.default is not dataclasses.MISSING:
            return repr(field.default)
        if field.default_factory is not dataclasses.MISSING:
            return repr(field.default_factory())
        return "required"

    def help_of(klass, name: str) -> str:
        for k in klass.__mro__:  # a field declared again for another default keeps its help
            own = {f.name: f for f in dataclasses.fields(k)} if dataclasses.is_dataclass(k) else {}
            if name in own and own[name].metadata.get("help"):
                return own[name].metadata["help"]
        return ""

    for cls in classes:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"config_reference takes dataclasses; received {cls!r}")
        parent = next((b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)), None)
        inherited = {f.name: f for f in dataclasses.fields(parent)} if parent else {}
        out.append(f"## `{cls.__name__}`\n")
        doc = (cls.__doc__ or "").strip().splitlines()
        if doc and not doc[0].startswith(cls.__name__ + "("):  # a dataclass without a docstring gets its signature
            out.append(_rst_to_markdown(doc[0]) + "\n")
        if parent is not None:
            out.append(f"Every field of `{parent.__name__}`, with these added or given another default:\n")
        out.append("| field | type | default | meaning |\n| --- | --- | --- | --- |")
        for field in dataclasses.fields(cls):
            same = (
                field.name in inherited
                and default_of(inherited[field.name]) == default_of(field)
                and help_of(cls, field.name) == help_of(parent, field.name)
            )
            if field.name.startswith("_") or field.name in getattr(cls, "unsupported", ()) or same:
                continue
            kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
            out.append(
                f"| `{field.name}` | `{_cell(str(kind))}` | `{_cell(default_of(field))}` | "
                f"{_cell(_rst_to_markdown(help_of(cls, field.name)))} |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def api_blocks(names: list[str] = PUBLIC_API) -> str:
    """One mkdocstrings block (``::: module.name``) per top-level name of ``cnnkit``.

    ``import cnnkit`` re-exports its API lazily (``cnnkit._LAZY``: name -> package), which static
    analysis cannot follow, so each block names the module that defines the object (its
    ``__module__``): a package's name would not do where a module of the same name sits beside the
    function (``cnnkit.analysis.summary`` is the module ``summary.py``).

    Args:
        names: top-level names of ``cnnkit``.

    Returns:
        The blocks as Markdown, one per name.

    Raises:
        KeyError: if a name is not part of ``cnnkit``'s top-level API.
    """
    import cnnkit

    if missing := [name for name in names if name not in cnnkit.__all__]:
        raise KeyError(f"not part of cnnkit's top-level API: {missing}")
    return "\n\n".join(f"::: {getattr(cnnkit, name).__module__}.{name}" for name in names) + "\n"


def api_packages() -> list[str]:
    """The sub-packages the API page documents after the top-level names: the engine, then every
    task package (a new task's package is listed as soon as it exists and has ``__all__``).

    Returns:
        Dotted package names.
    """
    import pkgutil

    import cnnkit.tasks

    tasks = [f"cnnkit.tasks.{m.name}" for m in pkgutil.iter_modules(cnnkit.tasks.__path__) if m.ispkg]
    return ["cnnkit.engine", *tasks]


def package_blocks(packages: list[str] | None = None) -> str:
    """A section per package: its docstring's first line, then one mkdocstrings block per name of its
    ``__all__``, taken from the module that defines the name.

    Args:
        packages: dotted package names (default: :func:`api_packages`).

    Returns:
        The sections as Markdown.
    """
    out = []
    for name in packages or api_packages():
        package = importlib.import_module(name)
        names = getattr(package, "__all__", [])
        if not names:
            continue
        summary = (package.__doc__ or "").strip().splitlines()[0] if package.__doc__ else ""
        out.append(f"## `{name}`\n\n{summary}\n")
        for attr in names:
            obj = getattr(package, attr)
            module = getattr(obj, "__module__", name) if callable(obj) else name
            out.append(f"::: {module}.{attr}\n    options:\n      heading_level: 3\n")
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    """MkDocs event: fill the API page's ``<!-- api -->`` line with the mkdocstrings blocks of the
    top-level names, and ``<!-- api-packages -->`` with a section per sub-package."""
    if page.file.src_uri == "reference/api.md":
        markdown = markdown.replace("<!-- api -->", api_blocks())
        return markdown.replace("<!-- api-packages -->", package_blocks())
    return markdown


_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):<code>(~?)([^<]*)</code>")


def on_page_content(html, page, config, files):
    """MkDocs event: on the API page, a docstring's Sphinx role (``:func:`x```, which mkdocstrings
    leaves as the text ``:func:`` before the code) becomes the code alone; ``~a.b.C`` shows ``C``."""
    if page.file.src_uri != "reference/api.md":
        return html
    return _ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)


def _rst_to_markdown(text: str) -> str:
    """Docstring markup in Markdown: ``:func:`x``` and ````x```` become ```x```."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _import(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def on_files(files, config):
    """MkDocs event: add the generated pages to the site's files before the navigation is built."""
    from mkdocs.structure.files import File

    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    committed = files.get_file_from_path("reference/cli.md")
    if committed is not None:
        files.remove(committed)
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    committed = files.get_file_from_path("reference/config.md")
    if committed is not None:
        files.remove(committed)
    page = config_reference([_import(spec) for spec in task_configs()])
    files.append(File.generated(config, "reference/config.md", content=page))
    return files


if __name__ == "__main__":
    sys.path.insert(0, str(SRC))
    if sys.argv[1:] == ["--write"]:
        CLI_PAGE.write_text(cli_reference())
        CONFIG_PAGE.write_text(config_reference([_import(spec) for spec in task_configs()]))
    else:
        sys.stdout.write(cli_reference())

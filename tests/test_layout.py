"""The package's shape: dependencies point one way, and no import cycle hides behind a deferred import.

Layers, lowest first (a module may import from its own package and from lower layers; the packages
of one layer import each other only on the layers of errors, ops and cli: ``download`` raises
``errors``' CnnkitError, ``cli`` starts ``serve``):

    errors, console, download       the one error type, printing, the one module that touches the network
    _lazy                           lazy re-exports for package __init__ files
    ops, layers                     pure tensor functions, building blocks
    data                            readers, data sets, augmentation
    models, metrics                 the zoo and model building; scores
    plots                           the one module that imports matplotlib
    analysis, explain, engine, export   what takes a built model: analyse, explain, train, export
    tasks                           each task's config, engine task, recipes, loaders
    cli, serve                      parse, call a task's library function, print
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
RANK = {
    "errors": 0,
    "console": 0,
    "download": 0,
    "_lazy": 0,
    "ops": 1,
    "layers": 1,
    "data": 2,
    "models": 3,
    "metrics": 3,
    "plots": 4,
    "analysis": 5,
    "explain": 5,
    "engine": 5,
    "export": 5,
    "tasks": 6,
    "cli": 7,
    "serve": 7,
    "__main__": 7,
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "cnnkit").rglob("*.py")):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _lazy_names() -> dict[str, str]:
    """``cnnkit``'s lazily re-exported names -> the module each is imported from (``cnnkit._LAZY``)."""
    for node in ast.parse((SRC / "cnnkit" / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _walk(tree: ast.AST, top_only: bool) -> list[ast.AST]:
    """Every node of ``tree``; with ``top_only``, those that run on import (no function's body, nor
    what ``if TYPE_CHECKING:`` holds)."""
    if not top_only:
        return list(ast.walk(tree))
    found, todo = [], list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))
    return found


def _imports(path: Path, modules: dict[str, Path], top_only: bool, src: Path = SRC) -> set[tuple[str, int]]:
    """(cnnkit module imported, line) for every import in the file (those that run on import only:
    ``top_only``): absolute and relative imports, ``from cnnkit import NAME`` of a lazily re-exported
    name (the module that defines it), and ``import_module("cnnkit....")`` of a literal name."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(src).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    lazy = _lazy_names()
    found = set()
    for node in _walk(tree, top_only):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, one package up per further dot
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base == "cnnkit" or base.startswith("cnnkit."):
                names = [base] + [f"{base}.{a.name}" for a in node.names]
                names += [lazy[a.name] for a in node.names if base == "cnnkit" and a.name in lazy]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("cnnkit")]
        elif isinstance(node, ast.Call) and node.args:
            fn, arg = node.func, node.args[0]
            if getattr(fn, "attr", getattr(fn, "id", None)) == "import_module" and isinstance(arg, ast.Constant):
                names = [arg.value] if isinstance(arg.value, str) and arg.value.startswith("cnnkit") else []
        for n in names:
            if n in modules:
                found.add((n, node.lineno))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cnnkit"


def test_every_package_has_a_layer():
    layers = {_layer(m) for m in _modules()} - {"cnnkit"}
    assert layers <= set(RANK), f"give these a layer in RANK: {sorted(layers - set(RANK))}"


def test_every_form_of_import_is_read(tmp_path):
    """Relative imports, a lazily re-exported name and ``import_module`` count, deferred or not;
    what ``if TYPE_CHECKING:`` holds counts only with the deferred imports."""
    f = tmp_path / "cnnkit" / "models" / "fake.py"
    f.parent.mkdir(parents=True)
    f.write_text(
        "from typing import TYPE_CHECKING\n"
        "from importlib import import_module\n"
        "from ..data import images\n"
        "from . import resnet\n"
        "if TYPE_CHECKING:\n"
        "    from cnnkit.engine import loop\n"
        "PLOTS = import_module('cnnkit.plots')\n"
        "def later():\n"
        "    from cnnkit import load, CnnkitError\n"
        "    return import_module('cnnkit.tasks.export')\n"
    )
    modules = _modules()
    top = {m for m, _ in _imports(f, modules, top_only=True, src=tmp_path)}
    every = {m for m, _ in _imports(f, modules, top_only=False, src=tmp_path)}
    assert top == {"cnnkit.data", "cnnkit.data.images", "cnnkit.models", "cnnkit.models.resnet", "cnnkit.plots"}
    assert every - top == {"cnnkit", "cnnkit.engine", "cnnkit.engine.loop", "cnnkit.tasks.load", "cnnkit.tasks.export"}


def test_no_module_imports_from_a_layer_above_it():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        me = _layer(name)
        if me == "cnnkit":  # the package's lazy public API may name anything
            continue
        for other, line in _imports(path, modules, top_only=False):
            them = _layer(other)
            if them == "cnnkit" or them == me:
                continue
            if RANK[them] > RANK[me] or (RANK[them] == RANK[me] and RANK[me] in (3, 5)):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {other}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("top_only", [True, False], ids=["module-level", "with-deferred"])
def test_no_import_cycle(top_only):
    """Module-level imports form no cycle, and none would if every deferred import moved to the top."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for other, _ in _imports(path, modules, top_only):
            if other != name and not name.startswith(other + "."):  # a package's own __init__ is no cycle
                deps.add(other)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            pytest.fail("import cycle: " + " -> ".join(cycle))

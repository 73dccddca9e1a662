"""The package's shape: dependencies point one way, and no import cycle hides behind a deferred import.

Layers, lowest first (a module may import from its own layer's package and from lower layers only):

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


def _imports(path: Path, modules: dict[str, Path], top_only: bool) -> set[tuple[str, int]]:
    """(cnnkit module imported, line) for every import in the file (module level only: ``top_only``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("cnnkit"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("cnnkit")]
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

"""The examples in cnnkit's docstrings (``>>>`` lines, rendered in the Python API reference) run and stay true.

Each module whose source holds an example is one test, so the suite's workers share them out. The
examples run as ``python -m pytest --doctest-modules src/cnnkit`` runs them: in the module's own
namespace, with pytest's default flag (``ELLIPSIS``). An example that needs data, a trained run, a
download or minutes carries ``# doctest: +SKIP``; it is checked by hand when it changes.
"""

from __future__ import annotations

import doctest
import importlib
import types
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules_with_examples() -> list[str]:
    """Dotted names of the modules whose source has a ``>>>`` line (found without importing them)."""
    names = []
    for path in sorted((SRC / "cnnkit").rglob("*.py")):
        if path.name == "__main__.py" or ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(SRC).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run_examples(module: types.ModuleType) -> tuple[int, int, str]:
    """Run a module's docstring examples: (examples run, not counting skipped ones; failed; the failure report)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    failures: list[str] = []
    attempted = failed = 0
    for test in finder.find(module, module.__name__):
        result = runner.run(test, out=failures.append)
        attempted, failed = attempted + result.attempted, failed + result.failed
    return attempted, failed, "".join(failures)


MODULES = _modules_with_examples()


def test_the_modules_with_examples_are_found():
    assert "cnnkit.layers.padding" in MODULES and "cnnkit.models._registry" in MODULES
    assert len(MODULES) == len(set(MODULES)) >= 40


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # a module of an extra that this install lacks
        if exc.name and exc.name.split(".")[0] != "cnnkit":
            pytest.skip(f"{name} needs {exc.name} (an optional extra)")
        raise
    attempted, failed, report = run_examples(module)
    assert not failed, f"{failed} of {attempted} examples in {name} fail:\n{report}"


def test_the_runner_catches_a_false_example():
    module = types.ModuleType("fake")
    module.__doc__ = (
        ">>> 1 + 1\n3\n>>> 'skipped'  # doctest: +SKIP\n'not checked'\n>>> list(range(30))\n[0, 1, ..., 29]\n"
    )
    attempted, failed, report = run_examples(module)
    assert (attempted, failed) == (2, 1) and "Expected:\n    3\nGot:\n    2" in report

"""Every public function and class carries a Google-style docstring: a summary line, Args, Returns.

Public means named in ``cnnkit.__all__``, in any task package's ``__all__`` (``cnnkit.tasks.classify``,
``detect``, ...) or in ``cnnkit.engine.__all__``. A function needs ``Args:``
when it takes arguments and ``Returns:`` unless it is annotated to return None; a class needs
``Args:`` or ``Attributes:`` (a dataclass documents its fields) when its constructor takes arguments.
A run configuration (a :class:`~cnnkit.engine.config.RunConfig`) documents each field once, at the
field (``option(help=...)``): its docstring points to the configuration reference, and every field
it accepts has help text.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import cnnkit.tasks
from cnnkit.engine.config import RunConfig, field_help

# the top level, every task package (found, so that a new task is checked from its first commit), the engine
PACKAGES = [
    "cnnkit",
    *(f"cnnkit.tasks.{m.name}" for m in pkgutil.iter_modules(cnnkit.tasks.__path__) if m.ispkg),
    "cnnkit.engine",
]


def _public() -> list[tuple[str, object]]:
    out = []
    for name in PACKAGES:
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} defines no __all__"
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                out.append((f"{name}.{attr}", obj))
    return out


def _parameters(obj) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to document
        return []
    return [p for p in sig.parameters.values() if p.name not in ("self", "cls")]


def _returns_none(fn) -> bool:
    annotation = inspect.signature(fn).return_annotation
    return annotation in (None, type(None), "None")


def _is_settings(cls: type) -> bool:
    """A run config, or any other settings dataclass whose fields are all declared with option()."""
    if issubclass(cls, RunConfig):
        return True
    return dataclasses.is_dataclass(cls) and all("help" in f.metadata for f in dataclasses.fields(cls))


def _problems(qualname: str, obj) -> list[str]:
    doc = obj.__doc__  # the object's own docstring, never an inherited one
    if not doc or not doc.strip():
        return [f"{qualname}: no docstring"]
    doc = inspect.cleandoc(doc)
    problems = []
    if not doc.splitlines()[0].strip():
        problems.append(f"{qualname}: the docstring does not start with a summary line")
    if inspect.isclass(obj) and _is_settings(obj):
        if "configuration reference" not in " ".join(doc.split()):
            problems.append(f"{qualname}: the docstring does not point to the configuration reference")
        bare = [
            f.name
            for f in dataclasses.fields(obj)
            if f.name not in getattr(obj, "unsupported", ()) and not field_help(obj, f.name)["help"]
        ]
        if bare:
            problems.append(f"{qualname}: fields without option(help=...): {', '.join(bare)}")
        return problems
    if inspect.isclass(obj):
        protocol = getattr(obj, "_is_protocol", False)
        if (protocol or _parameters(obj)) and "Args:" not in doc and "Attributes:" not in doc:
            problems.append(f"{qualname}: no Args: or Attributes: section")
        return problems
    if _parameters(obj) and "Args:" not in doc:
        problems.append(f"{qualname}: no Args: section")
    if not _returns_none(obj) and "Returns:" not in doc:
        problems.append(f"{qualname}: no Returns: section")
    return problems


def test_public_api_is_listed():
    names = [q for q, _ in _public()]
    assert "cnnkit.load" in names and "cnnkit.tasks.classify.train" in names and "cnnkit.engine.fit" in names
    assert len(names) == len(set(names))


def test_every_public_symbol_has_args_and_returns():
    problems = [p for qualname, obj in _public() for p in _problems(qualname, obj)]
    assert not problems, f"{len(problems)} docstring problems:\n" + "\n".join(problems)


def test_the_check_catches_a_bare_function():
    def bare(x: int) -> int:
        return x

    def documented(x: int) -> None:
        """Do nothing.

        Args:
            x: ignored.
        """

    assert _problems("bare", bare) == ["bare: no docstring"]
    bare.__doc__ = "Return x."
    assert _problems("bare", bare) == ["bare: no Args: section", "bare: no Returns: section"]
    assert _problems("documented", documented) == []


def test_the_check_catches_a_config_field_without_help():
    @dataclasses.dataclass
    class Bare(RunConfig):
        """Settings; see the configuration reference."""

        undocumented: int = 3

    assert _problems("Bare", Bare) == ["Bare: fields without option(help=...): undocumented"]

"""Lazy re-exports for a package's ``__init__``: each public name's module is imported on first use.

A package that re-exports its modules' names with plain imports runs all of them (and torch) as soon
as any one of its modules is imported: building ``cnnkit``'s argument parsers needs only the
torch-free ``config`` modules, and ``cnnkit --help`` stays fast because the task packages and the
engine re-export lazily (PEP 562).

Example:
    In ``cnnkit/tasks/segment/__init__.py`` (with the same imports under ``if TYPE_CHECKING:`` for
    type checkers)::

        lazy_exports(__name__, {"config": ["SegmentConfig"], "train": ["train"]})
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType


class _LazyPackage(ModuleType):
    """A package module whose re-exported names are imported from their modules on first access."""

    def __getattr__(self, name: str):
        module = self.__dict__.get("_exports", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # importing a sub-module binds it on its package (``train.py`` -> ``package.train``); where
        # the package re-exports the same-named function from it, the package keeps the function,
        # as an eager ``from package.train import train`` does
        if isinstance(value, ModuleType) and self.__dict__.get("_exports", {}).get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_exports", {})))


def lazy_exports(package: str, exports: dict[str, list[str]]) -> None:
    """Make the package ``package`` import each re-exported name from its module on first access.

    Args:
        package: the package's ``__name__`` (its ``__init__`` calls this).
        exports: sub-module name (relative to the package) -> the names of it the package re-exports.
    """
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module.__dict__["_exports"] = {name: f"{package}.{sub}" for sub, names in exports.items() for name in names}

"""Turn what the user names (a module, a zoo name, a spec file, ``file.py:factory``) into a model."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch.nn as nn

from cnnkit.errors import CnnkitError


def parse_input_size(text) -> tuple[int, ...]:
    """``"3x224x224"``, ``"3,224,224"``, ``"1x100"`` (1-D), ``"1x16x64x64"`` (3-D) or ``"100"`` (a vector,
    e.g. a GAN generator's noise) -> a tuple, channels first."""
    if isinstance(text, (tuple, list)):
        dims = tuple(int(d) for d in text)
    else:
        parts = [p for p in re.split(r"[x,X*\s]+", str(text).strip()) if p]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise CnnkitError(f"--input must look like CxHxW (e.g. 3x224x224), CxL or CxDxHxW; "
                              f"received: {text!r}") from None
    if not 1 <= len(dims) <= 4:
        raise CnnkitError(f"--input needs 1 to 4 sizes (F for a vector, CxL, CxHxW or CxDxHxW); "
                          f"received: {text!r}")
    if any(d <= 0 for d in dims):
        raise CnnkitError(f"--input sizes must be positive; received: {text!r}")
    return dims


def resolve_target(target) -> tuple[nn.Module, tuple[int, ...] | None, str]:
    """Return ``(model, default_input_size or None, display_name)`` for any analysable target."""
    if isinstance(target, nn.Module):
        return target, getattr(target, "input_size", None), type(target).__name__
    if not isinstance(target, (str, Path)):
        raise CnnkitError(f"cannot analyse a {type(target).__name__}: give an nn.Module, a model name, "
                          "a .yaml/.json spec or file.py:factory")
    text = str(target)
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        from cnnkit.analysis.spec import build_from_spec

        model, input_size = build_from_spec(path)
        return model, input_size, path.stem
    m = re.match(r"^(?P<file>.+\.py):(?P<fn>[A-Za-z_]\w*)$", text)
    if m:
        return load_factory(Path(m["file"]), m["fn"]), None, f"{Path(m['file']).stem}:{m['fn']}"
    if text.endswith(".py"):
        raise CnnkitError(f"name the factory function too: {text}:FUNCTION (a function returning an nn.Module)")
    from cnnkit.models import create_model, model_info

    info = model_info(text)  # raises with close matches for an unknown name
    return create_model(text), info.input_size, text


def load_factory(path: Path, fn_name: str, **kwargs) -> nn.Module:
    """Import ``path`` and call ``fn_name`` with those of ``kwargs`` its signature accepts."""
    if not path.is_file():
        raise CnnkitError(f"no such Python file: {path}")
    name = f"_cnnkit_user_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report it in one line
        raise CnnkitError(f"{path} raised {type(exc).__name__} on import: {exc}") from None
    finally:
        sys.path.pop(0)
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise CnnkitError(f"{path} has no function {fn_name!r}; define `def {fn_name}(): return MyNet()`")
    import inspect

    try:
        accepted = inspect.signature(factory).parameters
        model = factory(**{k: v for k, v in kwargs.items() if k in accepted})
    except Exception as exc:
        raise CnnkitError(f"{path}:{fn_name}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise CnnkitError(f"{path}:{fn_name}() must return a torch.nn.Module; it returned "
                          f"{type(model).__name__}")
    return model

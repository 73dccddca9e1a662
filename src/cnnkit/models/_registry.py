"""A small, explicit model registry (in the spirit of torchvision's ``models/_api.py``).

Model files decorate one tiny builder function per variant with :func:`register_model`;
:func:`create_model` looks the name up, builds it, and optionally loads weights.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from cnnkit.errors import CnnkitError, is_out_of_memory, out_of_memory, short_error


@dataclass(frozen=True)
class ModelInfo:
    """A zoo entry: how to build a model and what it is.

    Attributes:
        name: the zoo name.
        builder: ``fn(num_classes=..., in_channels=..., **kw) -> nn.Module``.
        input_size: the default input, channels first, e.g. ``(3, 224, 224)``.
        paper: a short citation shown by ``cnnkit zoo``.
        family: groups the zoo table, e.g. ``"resnet"``.
        task: what the network's output means: classify | detect | segment | ...
    """

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, ...]  # default input, channels first, e.g. (3, 224, 224)
    paper: str  # short citation shown by `cnnkit zoo`
    family: str  # e.g. "resnet"; groups the zoo table
    task: str = "classify"  # what the network's output means: classify | detect | segment | ...


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None, *, input_size=(3, 224, 224), paper: str = "", family: str = "", task: str = "classify"
):
    """Decorator: register a builder ``fn(num_classes=..., in_channels=..., **kw) -> nn.Module``.

    Registering the same name twice is a bug and fails loudly. A model family's file must also be
    listed in ``_MODEL_MODULES`` of :mod:`cnnkit.models` so that importing the zoo registers it.

    Args:
        name: the zoo name (default: the builder's function name).
        input_size: the default input, channels first, e.g. ``(3, 224, 224)``; ``cnnkit summary``
            uses it when no input is given.
        paper: a short citation shown by ``cnnkit zoo``, e.g. ``"He et al. 2016"``.
        family: groups the zoo table (default: the module's file name).
        task: what the output means: classify | detect | segment | instance | sequence | ...

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        CnnkitError: the name is already registered, is not a name, or an argument is not what it
            should be (e.g. an ``input_size`` that is not ``(C, H, W)``).

    Example:
        >>> @register_model("tiny_net", input_size=(1, 28, 28), paper="", family="tiny")  # doctest: +SKIP
        ... def tiny_net(num_classes=10, in_channels=1):
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))
    """

    if callable(name) and not isinstance(name, str):
        raise CnnkitError(
            "register_model is called with the model's name: write @register_model() or "
            "@register_model('my_net') above the builder, not @register_model"
        )
    if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
        raise CnnkitError(
            f"a model name is letters, digits, '_', '-' and '.' (at most 100); received: name={str(name)[:60]!r}"
        )
    for arg, value in (("paper", paper), ("family", family), ("task", task)):
        if not isinstance(value, str) or len(value) > 200:
            raise CnnkitError(f"register_model's {arg} must be a short string; received: {arg}={str(value)[:60]!r}")
    if not task:
        raise CnnkitError("register_model's task must name a task, e.g. task='classify'")
    from cnnkit.models.spec import parse_input_size

    size = parse_input_size(input_size)

    def wrap(fn):
        if not callable(fn):
            raise CnnkitError(
                f"register_model decorates a builder function returning an nn.Module; received: a {type(fn).__name__}"
            )
        key = name or getattr(fn, "__name__", None)
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise CnnkitError(f"give the model a name: @register_model('my_net'); received: {str(key)[:60]!r}")
        if key in _REGISTRY:
            raise CnnkitError(f"model {key!r} is registered twice; give the new one another name")
        module = getattr(fn, "__module__", None) or "custom"
        _REGISTRY[key] = ModelInfo(key, fn, size, paper, family or module.rsplit(".", 1)[-1], task)
        return fn

    return wrap


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")


def list_models(task: str | None = "classify") -> list[str]:
    """Names of the registered models of one task, sorted.

    Args:
        task: classify | detect | segment | instance | ...; None for every task.

    Returns:
        The zoo names, each one :func:`create_model` builds.

    Example:
        >>> "resnet50" in list_models()
        True
    """
    _import_all()
    if task is not None:
        tasks = sorted({info.task for info in _REGISTRY.values()})
        if not isinstance(task, str) or task not in tasks:
            raise CnnkitError(f"unknown task {str(task)[:40]!r}; tasks: {', '.join(tasks)} (or None for all)")
    return sorted(k for k, info in _REGISTRY.items() if task is None or info.task == task)


def model_info(name: str) -> ModelInfo:
    _import_all()
    if not isinstance(name, str):
        raise CnnkitError(
            f"a model name is a string such as 'resnet50'; received: a {type(name).__name__} "
            f"({str(name)[:40]!r}); `cnnkit zoo` lists them"
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `cnnkit zoo` lists them all"
        raise CnnkitError(f"unknown model name {name!r}{hint}") from None


def create_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    weights: str | None = None,
    strict: bool = True,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        num_classes: size of the classifier output (the model's default when None).
        in_channels: image channels (the model's default when None; 1 for MNIST).
        weights: a local ``.pth`` / ``.safetensors`` file, an ``http(s)://`` URL of weights in the
            reference implementation's format, or ``"imagenet"`` for the reference's published weights
            (downloaded once and checksummed; see :mod:`cnnkit.models.weights`).
        strict: require every state-dict key to match when loading ``weights``.
        **kwargs: the builder's own arguments (e.g. ``dropout``).

    Returns:
        The network, in training mode, with random or the given weights.

    Raises:
        CnnkitError: an unknown name (the error suggests close ones), arguments the builder does not
            take or of another type than its signature says (:func:`_check_builder_args`), or weights
            that cannot be read or do not fit.

    Example:
        >>> import torch
        >>> net = create_model("resnet18", num_classes=10)
        >>> net(torch.rand(2, 3, 224, 224)).shape
        torch.Size([2, 10])
    """
    info = model_info(name)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise CnnkitError(
            f"weights must be a file, an http(s) URL or 'imagenet'; received: a {type(weights).__name__} "
            f"({str(weights)[:40]!r})"
        )
    if not isinstance(strict, bool):
        raise CnnkitError(f"strict must be True or False; received: strict={str(strict)[:40]!r}")
    _check_builder_args(name, info.builder, kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    try:
        model = info.builder(**kwargs)
    except TypeError as exc:
        raise CnnkitError(f"model {name!r} does not take these arguments: {short_error(exc)}") from None
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(f"building model {name!r}") from None
    if not isinstance(model, nn.Module):
        raise CnnkitError(
            f"the builder registered as {name!r} returned a {type(model).__name__}, not a torch.nn.Module; "
            "fix its return value"
        )
    if weights is not None:
        weights = os.fspath(weights)
        from cnnkit.models.weights import load_weights, pretrained_url

        if weights == "imagenet":  # the reference implementation's published weights
            weights = pretrained_url(name)
        load_weights(model, weights, strict=strict)
    return model


# the types a builder's signature names, each as said in an error and its test (a bool is no number;
# a path is a string: a builder's file, backbone_weights, is read through os.fspath as create_model's weights)
_KINDS = {
    "int": ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "bool": ("True or False", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, (str, os.PathLike))),
    "None": ("None", lambda v: v is None),
}


def _check_builder_args(name: str, builder: Callable, kwargs: dict) -> None:
    """Refuse an argument of another type than the builder's signature gives it (``frames=2.5`` for an
    ``int``), before the builder runs: a builder that received one fails deep inside PyTorch ("in_channels
    must be divisible by groups", "manual_seed expected a long"), or builds a network it did not mean.

    Only parameters annotated with ``int``, ``float``, ``bool``, ``str``, ``None`` or a union of them
    are checked; an ``int`` is a ``float`` too, a path (``os.PathLike``) a ``str``. ``num_classes`` and ``in_channels`` have their
    own check (:func:`cnnkit.models._common.check_args`), with their ranges.

    Raises:
        CnnkitError: naming the model, the argument, the type it takes, its default and the value.
    """
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): the builder checks for itself
        return
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None:
            continue
        ann = param.annotation
        kinds = [k.strip() for k in (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))).split("|")]
        if not all(k in _KINDS for k in kinds) or any(_KINDS[k][1](value) for k in kinds):
            continue
        want = " or ".join(_KINDS[k][0] for k in kinds)
        default = "" if param.default is inspect.Parameter.empty else f" (default {param.default!r})"
        raise CnnkitError(f"model {name!r} takes {key} as {want}{default}; received: {key}={repr(value)[:40]}")


def _import_all() -> None:
    from cnnkit.models import _import_model_modules

    _import_model_modules()

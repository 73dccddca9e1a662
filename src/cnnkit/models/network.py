"""A checkpoint's network written down as data, and rebuilt from it without running any code.

The ``"network"`` entry of a checkpoint's metadata is one of
- ``{"kind": "zoo", "name": "resnet18"}``: a registered model (``num_classes``/``input_size`` beside it);
- ``{"kind": "spec", "spec": {...}, "version": 2}``: the Keras-style spec itself (not the path of its
  file) and the spec version it was built with (``cnnkit.models.spec.SPEC_VERSION``; none: 1);
- ``{"kind": "modules", "tree": {...}}``: a tree of plain ``torch.nn`` layers (``Sequential``,
  ``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``Linear``...) with their constructor arguments -- what a
  ``file.py:factory`` returning an ``nn.Sequential`` is saved as, so it loads without its file;
- ``{"kind": "factory", "factory": "/abs/net.py:build"}``: only a Python factory can build it.
  The stored path is for the message only: loading it needs ``trust_code=True`` and the factory
  named by the person loading it (``factory="net.py:build"``, CLI ``--trust-code net.py:build``).

Nothing here imports a file named by a checkpoint: a zoo name is looked up in the registry, a spec
goes through the spec builder, module names through the allow-list :data:`LAYERS`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError, check_fits, human_bytes, short_error
from cnnkit.layers.bf16 import plain_type
from cnnkit.models.keras import build_from_keras_config, load_keras
from cnnkit.models.meta import on_meta

TRUST_HINT = (
    "if you trust that code, load with trust_code=True, factory='FILE.py:FN' "
    "(CLI: --trust-code FILE.py:FN), naming the file yourself"
)

_CONV = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "bias",
    "padding_mode",
)
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
# class name -> constructor arguments read back from the module's attributes (an allow-list)
LAYERS: dict[str, tuple[str, ...]] = {
    "Sequential": (),
    "Identity": (),
    "Flatten": ("start_dim", "end_dim"),
    "Conv1d": _CONV,
    "Conv2d": _CONV,
    "Conv3d": _CONV,
    "ConvTranspose2d": _CONV[:5] + ("output_padding", "groups", "bias", "dilation"),
    "Linear": ("in_features", "out_features", "bias"),
    "BatchNorm1d": _BN,
    "BatchNorm2d": _BN,
    "BatchNorm3d": _BN,
    "GroupNorm": ("num_groups", "num_channels", "eps", "affine"),
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine"),
    "MaxPool1d": _POOL,
    "MaxPool2d": _POOL,
    "MaxPool3d": _POOL,
    "AvgPool2d": _AVG,
    "AdaptiveAvgPool2d": ("output_size",),
    "AdaptiveMaxPool2d": ("output_size",),
    "Dropout": ("p",),
    "Dropout2d": ("p",),
    "ReLU": ("inplace",),
    "ReLU6": ("inplace",),
    "SiLU": ("inplace",),
    "Hardswish": ("inplace",),
    "Hardsigmoid": ("inplace",),
    "ELU": ("alpha", "inplace"),
    "LeakyReLU": ("negative_slope", "inplace"),
    "GELU": ("approximate",),
    "Tanh": (),
    "Sigmoid": (),
    "Softmax": ("dim",),
    "LogSoftmax": ("dim",),
}
_MAX_DEPTH = 32
_MAX_LAYERS = 10_000


# ----------------------------------------------------------------------------- describing


def describe(model: str, net: nn.Module | None = None) -> dict:
    """The ``"network"`` entry for a network built from ``model`` (what the user typed at training)."""
    if model.endswith((".yaml", ".yml", ".json")):
        from cnnkit.models.spec import SPEC_VERSION, load_spec

        return {"kind": "spec", "spec": load_spec(model), "version": SPEC_VERSION}
    if ".py:" in model:
        tree = describe_modules(net) if net is not None else None
        if tree is not None:
            return {"kind": "modules", "tree": tree, "factory": model}
        return {"kind": "factory", "factory": model}
    from cnnkit.models.heads import head_kind

    head = head_kind(net) if net is not None else None
    return {"kind": "zoo", "name": model, **({"head": head} if head else {})}


def spec_network(model: str) -> dict | None:
    """The ``"network"`` entry of a run trained from the spec file ``model``, read from the file once,
    when the run starts: the run stores this copy, and every later save and ``--resume`` use it, so
    an edit of the file changes no run already started. None where ``model`` is no spec file.

    Raises:
        CnnkitError: the spec file is missing or is not a spec.
    """
    if not model.endswith((".yaml", ".yml", ".json")):
        return None
    if not Path(model).is_file():
        raise CnnkitError(f"--model spec file not found: {model}; give a .yaml/.json network spec")
    return json.loads(json.dumps(describe(model)))  # as the run's files hold it


def describe_modules(net: nn.Module) -> dict | None:
    """``net`` as a JSON tree of allow-listed layers, or None when some part is not one."""

    def tree(m: nn.Module, depth: int) -> dict | None:
        name = type(m).__name__
        if depth > _MAX_DEPTH or name not in LAYERS or plain_type(m) is not getattr(nn, name):
            return None
        node: dict = {"type": name}
        if name == "Sequential":
            children = [tree(c, depth + 1) for c in m]
            if any(c is None for c in children):
                return None
            node["layers"] = children
            return node
        for arg in LAYERS[name]:
            value = getattr(m, arg)
            if arg == "bias" and not isinstance(value, bool):
                value = value is not None
            if arg == "elementwise_affine":
                value = bool(value)
            node[arg] = list(value) if isinstance(value, tuple) else value
        return node

    try:
        out = tree(net, 0)
        if out is None:
            return None
        with on_meta():  # a round trip that allocates nothing and draws no random numbers
            rebuilt = build_modules(out)
    except (CnnkitError, TypeError, ValueError, AttributeError):
        return None
    same = repr(rebuilt) == repr(net) and [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in net.state_dict().items()
    ]
    return out if same else None


# ----------------------------------------------------------------------------- building


def build_modules(tree: dict) -> nn.Module:
    """Rebuild what :func:`describe_modules` wrote; anything outside :data:`LAYERS` is refused."""
    count = [0]

    def build(node, depth: int) -> nn.Module:
        count[0] += 1
        if depth > _MAX_DEPTH or count[0] > _MAX_LAYERS:
            raise CnnkitError(f"the network tree is deeper than {_MAX_DEPTH} or has more than {_MAX_LAYERS} layers")
        if not isinstance(node, dict) or node.get("type") not in LAYERS:
            kind = node.get("type") if isinstance(node, dict) else type(node).__name__
            raise CnnkitError(
                f"layer type {str(kind)[:60]!r} is not one of the plain torch.nn layers a checkpoint may name"
            )
        name = node["type"]
        if name == "Sequential":
            layers = node.get("layers")
            if not isinstance(layers, list):
                raise CnnkitError("a Sequential needs a list of 'layers'")
            return nn.Sequential(*[build(c, depth + 1) for c in layers])
        args = {}
        for arg in LAYERS[name]:
            if arg not in node:
                raise CnnkitError(f"{name} lacks its argument {arg!r}")
            value = node[arg]
            if not isinstance(value, (int, float, str, bool, list)) or (
                isinstance(value, list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            ):
                raise CnnkitError(f"{name} argument {arg}={str(value)[:40]!r} is not a number, flag or word")
            args[arg] = tuple(value) if isinstance(value, list) else value
        try:
            return getattr(nn, name)(**args)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            called = f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
            raise CnnkitError(f"{called}: {short_error(exc)}") from None

    return build(tree, 0)


def legacy(model: str) -> dict:
    """The description of a checkpoint written before ``"network"`` existed (model string only)."""
    if ".py:" in model:
        return {"kind": "factory", "factory": model}
    if model.endswith((".yaml", ".yml", ".json")):
        return {"kind": "spec_file", "path": model}  # a spec file is data: read, never run
    return {"kind": "zoo", "name": model}


def build(
    network: dict,
    num_classes: int,
    in_channels: int,
    source: str,
    trust_code: bool = False,
    factory: str | None = None,
    input_size: tuple[int, ...] | None = None,
) -> nn.Module:
    """An ``nn.Module`` from a ``"network"`` description (``source`` names the checkpoint in errors).

    Sizes are checked on the meta device first: a network whose parameters would not fit in memory
    is reported with its size, not allocated; one that does not run at ``input_size`` (C, H, W) is
    refused before any weight is read.
    """
    if not isinstance(network, dict):
        raise CnnkitError(f"{source}: the checkpoint's network description is not a mapping")
    kind = network.get("kind")
    if kind == "factory" or factory is not None:
        return _from_factory(network, num_classes, in_channels, source, trust_code, factory)
    if kind == "zoo":
        from cnnkit.models import create_model, list_models

        name = network.get("name")
        if name not in list_models():
            raise CnnkitError(
                f"{source}: the checkpoint names the model {str(name)[:60]!r}, which is not in "
                "the zoo (`cnnkit zoo` lists them)"
            )
        head = network.get("head")
        if head is None:
            make = lambda: create_model(name, num_classes=num_classes, in_channels=in_channels)  # noqa: E731
        else:  # a fine-tuned head on the pretrained classifier's scores (cnnkit.models.heads)
            n = head.get("source_classes") if isinstance(head, dict) else None
            if (
                not isinstance(head, dict)
                or head.get("kind") != "class_scores"
                or not isinstance(n, int)
                or isinstance(n, bool)
                or not 1 <= n <= 100_000
            ):
                raise CnnkitError(
                    f"{source}: the network's head {str(head)[:60]!r} is not "
                    "{'kind': 'class_scores', 'source_classes': 1..100000}"
                )
            make = lambda: _class_scores(name, n, num_classes, in_channels)  # noqa: E731
    elif kind in ("spec", "spec_file"):
        from cnnkit.models.spec import build_from_spec

        spec = network.get("spec") if kind == "spec" else network.get("path")
        if kind == "spec_file" and not Path(str(spec)).is_file():
            raise CnnkitError(
                f"{source}: the network's spec file {spec} is gone; this checkpoint (from an "
                "older cnnkit) stored only its path: restore the file or retrain"
            )
        version = spec_version(network, source)
        make = lambda: build_from_spec(spec, logits=True, version=version)[0]  # noqa: E731
    elif kind == "modules":
        make = lambda: build_modules(network.get("tree"))  # noqa: E731
    elif kind == "keras":  # a converted Keras model: its own config, rebuilt by the Keras reader (no code run)
        make = lambda: build_from_keras_config(network.get("config"), logits=bool(network.get("logits", True)))  # noqa: E731
    else:
        raise CnnkitError(f"{source}: unknown network kind {str(kind)[:40]!r}; expected zoo, spec, modules or keras")
    return _sized(make, source, input_size)


def spec_version(network: dict, source: str) -> int:
    """The spec version a spec run's network was built with: the one it names, 1 where it names none
    (cnnkit 0.1.0's runs); one this cnnkit does not build is refused."""
    from cnnkit.models.spec import SPEC_VERSIONS

    version = network.get("version", 1) if network.get("kind") == "spec" else 1
    if type(version) is not int or version not in SPEC_VERSIONS:
        raise CnnkitError(
            f"{source}: the network's spec version {str(version)[:20]!r} is not one this cnnkit builds "
            f"({', '.join(map(str, SPEC_VERSIONS))}); load it with the cnnkit that trained it"
        )
    return version


def check_resumable(network: dict, source: str) -> None:
    """Refuse to train on a spec run whose spec version builds its network otherwise than this
    cnnkit's (:data:`cnnkit.models.spec.SPEC_VERSION`): the run trains what its spec file builds."""
    if not isinstance(network, dict) or network.get("kind") not in ("spec", "spec_file"):
        return
    from cnnkit.models.spec import SPEC_VERSION, build_from_spec

    version = spec_version(network, source)
    if version == SPEC_VERSION:
        return
    spec = network.get("spec") if network.get("kind") == "spec" else network.get("path")
    with on_meta():
        built, now = (repr(build_from_spec(spec, logits=True, version=v)[0]) for v in (version, SPEC_VERSION))
    if built != now:
        raise CnnkitError(
            f"{source} was trained with spec version {version}, where a 'valid' conv2d_transpose whose stride "
            f"exceeds its kernel is shorter than Keras' (this cnnkit trains version {SPEC_VERSION}): it cannot be "
            "resumed; start a new run without --resume (a model file it saved evaluates, predicts and exports as it is)"
        )


def _class_scores(name: str, source_classes: int, num_classes: int, in_channels: int) -> nn.Module:
    """A zoo model whose classifier is a ClassScoresHead of ``num_classes`` on ``source_classes``."""
    from cnnkit.models import create_model
    from cnnkit.models.heads import attach_class_scores

    net = create_model(name, num_classes=source_classes, in_channels=in_channels)
    attach_class_scores(net, num_classes)
    return net


# An input of at most this many numbers is checked by a forward pass of the real network: PyTorch's
# first operation on the meta device imports about 1.3 s of its own modules (2 Zen 3 cores), longer
# than a real pass of one such input through a zoo network
REAL_CHECK_NUMBERS = 1 << 20


def _sized(make, source: str, input_size: tuple[int, ...] | None) -> nn.Module:
    """Build on the meta device first, its size checked against memory; then one forward pass at
    ``input_size``: of the real network for an input of at most :data:`REAL_CHECK_NUMBERS`
    numbers, on the meta device for a larger one (nothing allocated)."""
    with on_meta():
        probe = make()
    nbytes = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    stored = _file_bytes(source)
    if stored is not None and nbytes > MAX_GROWTH * stored + (16 << 20):
        raise CnnkitError(
            f"{source}: its network description needs {human_bytes(nbytes)} of weights, but the file "
            f"holds only {human_bytes(stored)}; the file is damaged or was edited: {CHECKPOINT_HINT_SHORT}"
        )
    check_fits(nbytes, f"the network of {source}")
    if input_size is None:
        return make()
    sizes = list(input_size)
    real = all(type(v) is int and v > 0 for v in sizes) and math.prod(sizes) <= REAL_CHECK_NUMBERS
    net = make() if real else probe
    try:
        with torch.no_grad():
            training = net.training
            net.eval()(torch.zeros(1, *sizes) if real else torch.empty(1, *sizes, device="meta"))
            net.train(training)
    except Exception as exc:  # noqa: BLE001 -- any failure: the description does not fit its input
        text = short_error(exc)
        raise CnnkitError(
            f"{source}: its network does not run on its own input size "
            f"{'x'.join(map(str, input_size))} ({text}); the file is damaged or was edited"
        ) from None
    return net if real else make()


# a checkpoint's network has at most this many times the bytes of the file (weights stored in 16
# bits, built in 32): a description claiming more is not the file's, and is not allocated
MAX_GROWTH = 4
CHECKPOINT_HINT_SHORT = "give a checkpoint written by cnnkit"


def _file_bytes(source) -> int | None:
    """The size of the checkpoint file ``source`` names, or None when it names no file."""
    try:
        p = Path(str(source))
        return p.stat().st_size if p.is_file() else None
    except (OSError, ValueError):
        return None


def _from_factory(
    network: dict, num_classes: int, in_channels: int, source: str, trust_code: bool, factory: str | None
) -> nn.Module:
    stored = str(network.get("factory", "a Python file"))[:200]
    if not trust_code:
        raise CnnkitError(
            f"{source}: its network is built by Python code ({stored}); loading it would run "
            f"that code, so it is not loaded: {TRUST_HINT}"
        )
    if factory is None or ".py:" not in factory:
        raise CnnkitError(
            f"trust_code=True needs factory='FILE.py:FN' (CLI: --trust-code FILE.py:FN): the "
            f"file to run is the one you name, never the checkpoint's ({stored})"
        )
    from cnnkit.models.network import load_factory

    path, _, fn = factory.rpartition(":")
    return load_factory(Path(path), fn, num_classes=num_classes, in_channels=in_channels)


def build_network(model: str, num_classes: int, in_channels: int) -> nn.Module:
    """A zoo name, a ``spec.yaml``/``.json`` file, or ``file.py:factory`` -> an ``nn.Module``."""
    if model.endswith((".yaml", ".yml", ".json")):
        if not Path(model).is_file():
            raise CnnkitError(f"--model spec file not found: {model}; give a .yaml/.json network spec")
        from cnnkit.models.spec import build_from_spec

        return build_from_spec(model, logits=True)[0]  # a final softmax is the loss's job
    if ".py:" in model:
        from cnnkit.models.network import load_factory

        path, _, factory = model.rpartition(":")
        return load_factory(Path(path), factory, num_classes=num_classes, in_channels=in_channels)
    from cnnkit.models import create_model

    return create_model(model, num_classes=num_classes, in_channels=in_channels)


def model_reference(model: str) -> str:
    """The model string to store, for messages: file paths made absolute. (The network itself is
    stored as data in ``info["network"]``; loading never goes back to these files.)"""
    if model.endswith((".yaml", ".yml", ".json")):
        return str(Path(model).resolve())
    if ".py:" in model:
        path, _, factory = model.rpartition(":")
        return f"{Path(path).resolve()}:{factory}"
    return model


def trusted_resume_model(stored: str, typed: str | None) -> str:
    """The model a ``--resume`` rebuilds: a Python factory only when the user names it again."""
    if ".py:" not in stored:
        return stored
    if typed is not None and model_reference(typed) == stored:
        return typed
    raise CnnkitError(
        f"this run's network is built by Python code ({stored}); resuming would run it: if "
        f"you trust that code, pass --model {stored} again to resume"
    )


def resolve_target(target, meta: bool = True) -> tuple[nn.Module, tuple[int, ...] | None, str]:
    """Return ``(model, default_input_size or None, display_name)`` for any analysable target.

    A zoo name or a spec file is built on the meta device (shapes only) unless ``meta`` is False:
    then its weights are allocated and initialised, to run it for real."""
    if isinstance(target, nn.Module):
        return target, getattr(target, "input_size", None), type(target).__name__
    if not isinstance(target, (str, Path)):
        raise CnnkitError(
            f"cannot analyse a {type(target).__name__}: give an nn.Module, a model name, "
            "a .yaml/.json spec, a .keras/.h5 file or file.py:factory"
        )
    text = str(target)
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        from cnnkit.models.spec import build_from_spec

        with on_meta() if meta else contextlib.nullcontext():  # on meta: its weights are never allocated
            model, input_size = build_from_spec(path)
        return model, input_size, path.stem
    if path.suffix.lower() in (".keras", ".h5"):  # read as data: no code in the file runs
        model, input_size = load_keras(path)
        return model, input_size, path.stem
    m = re.match(r"^(?P<file>.+\.py):(?P<fn>[A-Za-z_]\w*)$", text)
    if m:
        return load_factory(Path(m["file"]), m["fn"]), None, f"{Path(m['file']).stem}:{m['fn']}"
    if text.endswith(".py"):
        raise CnnkitError(f"name the factory function too: {text}:FUNCTION (a function returning an nn.Module)")
    from cnnkit.models import create_model, model_info

    try:
        info = model_info(text)  # raises with close matches for an unknown name
    except CnnkitError:
        if path.exists():  # a run folder, a checkpoint, a data file: not a name
            raise CnnkitError(
                f"{text} is a {'folder' if path.is_dir() else 'file'}, not a network: give a zoo name, a .yaml/.json "
                "spec, a .keras/.h5 file or file.py:FUNCTION (a run's network is the `model` of its config.yaml)"
            ) from None
        raise
    with on_meta() if meta else contextlib.nullcontext():  # on meta: nothing is allocated or initialised
        model = create_model(text)
    return model, info.input_size, text


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
        raise CnnkitError(f"{path} raised {type(exc).__name__} on import: {short_error(exc)}") from None
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
        raise CnnkitError(f"{path}:{fn_name}() raised {type(exc).__name__}: {short_error(exc)}") from None
    if not isinstance(model, nn.Module):
        raise CnnkitError(f"{path}:{fn_name}() must return a torch.nn.Module; it returned {type(model).__name__}")
    return model

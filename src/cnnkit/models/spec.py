"""Networks written down as the notes write them: Keras layer names and arguments, in YAML or JSON.

A spec is a mapping with an ``input`` (channels first: ``[3, 200, 300]`` or ``"3x200x300"``) and a list
of ``layers``. Each layer is either ``{conv2d: {filters: 100, kernel_size: 3}}`` or
``{type: conv2d, filters: 100, kernel_size: 3}``; it may have a ``name`` (default: Keras-style
``conv2d_1``, ``max_pooling2d_1``...) and ``inputs`` (names of earlier layers, default: the previous
one; ``input`` is the network's input), so ResNet, Inception and DenseNet blocks can be written with
``add`` and ``concatenate``. Input channels are inferred; every layer is checked as it is added, so a
bad layer is reported by name with the shapes involved. Example (the notes' exercise 2)::

    input: 3x200x300
    layers:
      - conv2d: {filters: 100, kernel_size: 3, strides: 2, padding: same}
      - conv2d: {filters: 200, kernel_size: 3, strides: 2, padding: same}
      - conv2d: {filters: 400, kernel_size: 3, strides: 2, padding: same}

Shapes are PyTorch's, channels first; ``reshape``'s ``target_shape`` is channels first too.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit import layers as L
from cnnkit.errors import CnnkitError, brief, check_fits, short_error
from cnnkit.layers.act import LEAKY_RELU_SLOPE
from cnnkit.layers.padding import _ntuple
from cnnkit.models.meta import on_meta

# the functional form of every activation cnnkit.layers.act knows by its Keras name (same names, same slopes)
_ACTIVATIONS = {
    None: None,
    "linear": None,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": partial(F.softmax, dim=1),
    "log_softmax": partial(F.log_softmax, dim=1),
    "elu": F.elu,
    "selu": F.selu,
    "swish": F.silu,
    "silu": F.silu,
    "gelu": F.gelu,
    "mish": F.mish,
    "leaky_relu": partial(F.leaky_relu, negative_slope=LEAKY_RELU_SLOPE),
    "softplus": F.softplus,
    "softsign": F.softsign,
    "hard_sigmoid": F.hardsigmoid,
    "hard_swish": F.hardswish,
    "hard_silu": F.hardswish,
}


class GlobalPool(nn.Module):
    """Keras GlobalAveragePooling / GlobalMaxPooling: (B, C, *spatial) -> (B, C)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        return x.mean(dims) if self.kind == "avg" else x.amax(dims)


class Activation(nn.Module):
    """Keras ``Activation(name)`` as a layer of its own."""

    def __init__(self, activation: str):
        super().__init__()
        if not isinstance(activation, str) or activation not in _ACTIVATIONS:
            close = difflib.get_close_matches(str(activation)[:64], [a for a in _ACTIVATIONS if a], n=3)
            raise CnnkitError(
                f"unknown activation {brief(repr(activation))}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        self.name = activation
        self.fn = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.fn is None else self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class Add(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concatenate(nn.Module):
    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class SpecNet(nn.Module):
    """A network built from a spec: named layers evaluated in order, each on its named inputs."""

    def __init__(self, graph: list[tuple[str, list[str]]], modules: dict[str, nn.Module], input_size: tuple[int, ...]):
        super().__init__()
        self.graph = graph
        self.input_size = input_size
        for name, mod in modules.items():
            self.add_module(name, mod)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {"input": x}
        out = x
        for name, inputs in self.graph:
            out = getattr(self, name)(*[values[i] for i in inputs])
            values[name] = out
        return out


def _with_activation(module: nn.Module, activation) -> nn.Module:
    """Apply a Keras ``activation=`` inside the layer (a forward hook), so the layer stays one row."""
    if not (activation is None or isinstance(activation, str)) or activation not in _ACTIVATIONS:
        close = difflib.get_close_matches(str(activation)[:64], [a for a in _ACTIVATIONS if a], n=3)
        raise CnnkitError(
            f"unknown activation {brief(repr(activation))}" + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    fn = _ACTIVATIONS[activation]
    if fn is not None:
        module.activation_hook = module.register_forward_hook(lambda mod, inp, out: fn(out))
        module.activation = activation
    return module


# attributes every SpecNet instance holds (nn.Module's own state): a layer cannot be named so
_RESERVED_NAMES = frozenset(vars(nn.Module()).keys()) | {"graph", "input_size"}


def _drop_output_activation(model: SpecNet) -> None:
    """Keras networks end in softmax/sigmoid; PyTorch's losses take logits: remove that last step."""
    last = getattr(model, model.graph[-1][0])
    if isinstance(last, Activation) and last.name in ("softmax", "sigmoid"):
        last.fn = None
    elif getattr(last, "activation", None) in ("softmax", "sigmoid"):
        last.activation_hook.remove()
        last.activation = None


def _conv(
    rank: int, c: int, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, groups=1, use_bias=True
):
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    same = {1: L.Conv1dSame, 2: L.Conv2dSame, 3: L.Conv3dSame}[rank]
    if c % groups or filters % groups:
        raise CnnkitError(f"groups={groups} must divide both the input channels ({c}) and filters ({filters})")
    if padding in ("same", "caffe"):
        return same(c, filters, kernel_size, strides, dilation_rate, groups, use_bias, mode=padding)
    if padding == "valid":
        padding = 0
    return cls(c, filters, kernel_size, strides, padding, dilation_rate, groups, use_bias)


def _conv_transpose(
    c: int, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, use_bias=True, kernel_initializer=None
):
    """Keras ``Conv2DTranspose`` ("valid" and "same"; a number is PyTorch's ``padding``);
    ``kernel_initializer: bilinear`` starts it as FCN's bilinear upsampling."""
    if padding == "same":
        conv = L.ConvTranspose2dSame(c, filters, kernel_size, strides, dilation_rate, bias=use_bias)
    elif isinstance(padding, str) and padding != "valid":
        raise CnnkitError(f"conv2d_transpose's padding is 'valid', 'same' or a number; received: {brief(padding)}")
    elif padding == "valid":
        # Keras' output is (L - 1) s + max(k', s) (k' the dilated kernel): past the kernel's reach when the
        # stride is longer, positions of the bias alone, PyTorch's output_padding (nothing is cut)
        ks, ss, ds = (_ntuple(v, 2) for v in (kernel_size, strides, dilation_rate))
        _, grow, _ = L.transpose_geometry(ks, ss, ds, "valid")
        conv = nn.ConvTranspose2d(
            c, filters, kernel_size, strides, 0, output_padding=grow, bias=use_bias, dilation=dilation_rate
        )
    else:  # a number: PyTorch's padding
        pad = tuple(padding) if isinstance(padding, list) else padding
        conv = nn.ConvTranspose2d(c, filters, kernel_size, strides, pad, bias=use_bias, dilation=dilation_rate)
    if kernel_initializer not in (None, "bilinear"):
        raise CnnkitError(
            f"conv2d_transpose's kernel_initializer is the default or 'bilinear'. "
            f"Received: kernel_initializer={kernel_initializer!r}"
        )
    return L.init_bilinear_(conv) if kernel_initializer == "bilinear" else conv


def _pool(kind: str, rank: int, pool_size=2, strides=None, padding="valid"):
    if padding == "same":
        return getattr(L, f"{'Max' if kind == 'max' else 'Avg'}Pool{rank}dSame")(pool_size, strides)
    if padding != "valid":
        raise CnnkitError(f"pooling padding must be 'valid' or 'same'; received: {brief(repr(padding))}")
    cls = getattr(nn, f"{'Max' if kind == 'max' else 'Avg'}Pool{rank}d")
    return cls(pool_size, strides if strides is not None else pool_size)


def _batch_norm(shape, momentum=0.99, epsilon=1e-3, center=True, scale=True):
    if not center == scale:
        raise CnnkitError("batch_normalization supports center and scale both on or both off")
    return L.batch_normalization(shape, momentum, epsilon, affine=center)


def _dense(shape, units, use_bias=True):
    if len(shape) != 1:
        raise CnnkitError(
            f"dense needs a flat input, got shape {tuple(shape)}: put a flatten (or global pooling) layer before it"
        )
    return nn.Linear(shape[0], units, bias=use_bias)


# layer type -> (builder(shape, **args) -> module, Keras-style base name for automatic names)
_BUILDERS = {
    **{f"conv{r}d": (lambda s, r=r, **a: _conv(r, s[0], **a), f"conv{r}d") for r in (1, 2, 3)},
    "separable_conv2d": (
        lambda s, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, depth_multiplier=1, use_bias=True: (
            L.SeparableConv2d(s[0], filters, kernel_size, strides, padding, dilation_rate, depth_multiplier, use_bias)
        ),
        "separable_conv2d",
    ),
    "depthwise_conv2d": (
        lambda s, kernel_size, strides=1, padding="valid", dilation_rate=1, depth_multiplier=1, use_bias=True: (
            L.DepthwiseConv2d(s[0], kernel_size, strides, padding, dilation_rate, depth_multiplier, use_bias)
        ),
        "depthwise_conv2d",
    ),
    "conv2d_transpose": (lambda s, **a: _conv_transpose(s[0], **a), "conv2d_transpose"),
    **{f"max_pooling{r}d": (lambda s, r=r, **a: _pool("max", r, **a), f"max_pooling{r}d") for r in (1, 2, 3)},
    **{f"average_pooling{r}d": (lambda s, r=r, **a: _pool("avg", r, **a), f"average_pooling{r}d") for r in (1, 2, 3)},
    **{
        f"global_average_pooling{r}d": (lambda s, **a: GlobalPool("avg"), f"global_average_pooling{r}d")
        for r in (1, 2, 3)
    },
    **{f"global_max_pooling{r}d": (lambda s, **a: GlobalPool("max"), f"global_max_pooling{r}d") for r in (1, 2, 3)},
    "upsampling2d": (
        lambda s, size=2, interpolation="nearest": nn.Upsample(
            scale_factor=tuple(size) if isinstance(size, list) else size,  # [rows, columns] as Keras' (2, 3)
            mode=L.check_mode(interpolation),
            **({"align_corners": False} if interpolation == "bilinear" else {}),
        ),
        "up_sampling2d",
    ),
    "batch_normalization": (lambda s, **a: _batch_norm(s, **a), "batch_normalization"),
    "local_response_normalization": (
        lambda s, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5: L.LocalResponseNorm(depth_radius, bias, alpha, beta),
        "lrn",
    ),
    "dropout": (lambda s, rate=0.5: L.Dropout(rate), "dropout"),
    "flatten": (lambda s: nn.Flatten(), "flatten"),
    "reshape": (lambda s, target_shape: L.Reshape(target_shape, channels_last=False), "reshape"),
    "dense": (lambda s, **a: _dense(s, **a), "dense"),
    "activation": (lambda s, activation: Activation(activation), "activation"),
    "add": (lambda s: Add(), "add"),
    "concatenate": (lambda s, axis=1: Concatenate(axis), "concatenate"),
}
_ALIASES = {
    "conv": "conv2d",
    "maxpool2d": "max_pooling2d",
    "max_pool2d": "max_pooling2d",
    "maxpooling2d": "max_pooling2d",
    "avg_pooling2d": "average_pooling2d",
    "avgpool2d": "average_pooling2d",
    "avg_pool2d": "average_pooling2d",
    "max_pool1d": "max_pooling1d",
    "max_pool3d": "max_pooling3d",
    "avg_pooling1d": "average_pooling1d",
    "avg_pooling3d": "average_pooling3d",
    "global_avg_pooling2d": "global_average_pooling2d",
    "batch_norm": "batch_normalization",
    "batchnorm": "batch_normalization",
    "lrn": "local_response_normalization",
    "upsampling": "upsampling2d",
    "up_sampling2d": "upsampling2d",
    "linear": "dense",
    "concat": "concatenate",
    "separableconv2d": "separable_conv2d",
    "depthwiseconv2d": "depthwise_conv2d",
    "conv2dtranspose": "conv2d_transpose",
}


def _pytorch_valid(conv: nn.Module, padding) -> nn.Module:
    """A "valid" transposed convolution without the positions past its kernel's reach (spec version 1)."""
    if padding == "valid":
        conv.output_padding = (0, 0)
    return conv


# The spec version a network is built with, saved with each run, so that a run is rebuilt as it was
# trained: 1 (cnnkit 0.1.0) builds a "valid" conv2d_transpose as PyTorch's ConvTranspose2d,
# (L - 1) s + k' long (k' the dilated kernel); 2 as Keras' Conv2DTranspose, (L - 1) s + max(k', s).
# The two differ only where the stride exceeds the dilated kernel.
SPEC_VERSION = 2
# version -> the builders that differ from :data:`_BUILDERS`
SPEC_VERSIONS: dict[int, dict] = {
    1: {"conv2d_transpose": lambda s, **a: _pytorch_valid(_conv_transpose(s[0], **a), a.get("padding", "valid"))},
    2: {},
}
_TAKES_ACTIVATION = {"conv1d", "conv2d", "conv3d", "separable_conv2d", "depthwise_conv2d", "conv2d_transpose", "dense"}
for _act in [a for a in _ACTIVATIONS if a]:
    _BUILDERS.setdefault(_act, (lambda s, _a=_act: Activation(_a), _act))


def layer_types() -> list[str]:
    return sorted(_BUILDERS)


MAX_SPEC_BYTES = 4 << 20  # a spec is a page of text; 4 MB is not one
MAX_SPEC_NODES = 200_000  # values after YAML aliases are expanded ("billion laughs" stops here)


def load_spec(path) -> dict:
    """A spec file (YAML or JSON) as a mapping; every failure is a one-line CnnkitError."""
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"no such spec file: {path}")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise CnnkitError(
                f"{path} is {path.stat().st_size:,} bytes; a network spec is at most "
                f"{MAX_SPEC_BYTES:,}: is it the right file?"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnkitError(
            f"cannot read the spec {path} ({exc.__class__.__name__}: {brief(exc, 80)}); "
            "give a UTF-8 .yaml or .json file"
        ) from None
    try:
        if kind == "JSON":
            spec = json.loads(text)
        else:
            import yaml

            _check_yaml_size(yaml.compose(text, Loader=yaml.SafeLoader), path)
            spec = yaml.safe_load(text)
    except CnnkitError:
        raise
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError / RecursionError: one line
        # the whole reason: a YAML error names where the parser was and where the problem is
        raise CnnkitError(f"{path} is not valid {kind}: {short_error(exc)}") from None
    if not isinstance(spec, dict) or "layers" not in spec:
        raise CnnkitError(f"{path}: a spec is a mapping with 'input' (e.g. 3x224x224) and a list of 'layers'")
    return spec


def _check_yaml_size(root, path) -> None:
    """Refuse a document whose aliases expand to more than MAX_SPEC_NODES values (counted, not built)."""
    import yaml

    memo: dict[int, int] = {}

    def size(node, depth=0) -> int:
        if id(node) in memo:
            return memo[id(node)]
        if depth > 200:
            raise CnnkitError(f"{path} nests deeper than 200 levels; a network spec does not")
        memo[id(node)] = 1  # a recursive alias counts once (safe_load refuses it)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(c, depth + 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        else:
            n = 1 + len(node.value) // 64  # long strings count by length
        memo[id(node)] = n
        return n

    if root is not None and size(root) > MAX_SPEC_NODES:
        raise CnnkitError(
            f"{path} expands (through YAML aliases &/*) to more than {MAX_SPEC_NODES:,} values; "
            "a network spec needs no aliases: write the layers out"
        )


def build_from_spec(
    spec, logits: bool = False, version: int = SPEC_VERSION
) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Build the network of a spec (a path or an already loaded mapping). Returns (model, input size).

    ``logits=True`` drops a final softmax/sigmoid (for training with a cross-entropy loss).
    ``version`` is the meaning the spec is built with (:data:`SPEC_VERSION`; a saved run names its own).
    """
    if type(version) is not int or version not in SPEC_VERSIONS:
        raise CnnkitError(
            f"spec version {brief(repr(version))} is not one this cnnkit builds ({', '.join(map(str, SPEC_VERSIONS))})"
        )
    if not isinstance(spec, dict):
        if not isinstance(spec, (str, Path)):
            raise CnnkitError(
                f"a network spec is a .yaml/.json file or a mapping with 'input' and 'layers'; "
                f"received: a {type(spec).__name__}"
            )
        spec = load_spec(spec)
    if "layers" not in spec:
        raise CnnkitError("a spec is a mapping with 'input' (e.g. 3x224x224) and a list of 'layers'")
    if "input" not in spec:
        raise CnnkitError("the spec needs an 'input' size, channels first, e.g. input: 3x224x224")
    input_size = parse_input_size(spec["input"])
    entries = spec["layers"]
    if not isinstance(entries, list) or not entries:
        raise CnnkitError("'layers' must be a non-empty list")
    shapes = {"input": input_size}
    graph, modules, counters = [], {}, {}
    total = [0]  # parameter bytes so far
    previous = "input"
    for i, entry in enumerate(entries, 1):
        kind, args = _split_entry(entry, i)
        kind = _ALIASES.get(kind, kind)
        if kind not in _BUILDERS:
            close = difflib.get_close_matches(kind, layer_types(), n=3) if len(kind) < 64 else []
            raise CnnkitError(
                f"layer {i}: unknown layer type {brief(repr(kind))}"
                + (f"; did you mean {', '.join(close)}?" if close else f"; known types: {', '.join(layer_types())}")
            )
        builder, base = _BUILDERS[kind]
        builder = SPEC_VERSIONS[version].get(kind, builder)
        counters[base] = counters.get(base, 0) + 1
        name = str(args.pop("name", f"{base}_{counters[base]}"))
        if name in shapes:
            raise CnnkitError(f"layer {i}: the name {brief(repr(name))} is used twice; give each layer its own name")
        if not name.isidentifier():
            raise CnnkitError(f"layer {i}: name {brief(repr(name))} must be an identifier (letters, digits, _)")
        if hasattr(SpecNet, name) or name in _RESERVED_NAMES:
            raise CnnkitError(
                f"layer {i}: name {brief(repr(name))} is taken by the network itself; give the layer another name"
            )
        inputs = args.pop("inputs", [previous])
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs:
            raise CnnkitError(f"layer {name}: 'inputs' must name earlier layers; received {brief(inputs)}")
        for src in inputs:
            if not isinstance(src, str) or src not in shapes:
                raise CnnkitError(
                    f"layer {name}: input {brief(repr(src))} is not an earlier layer (known: {', '.join(shapes)})"
                )
        activation = args.pop("activation", None) if kind in _TAKES_ACTIVATION else None
        in_shapes = [shapes[s] for s in inputs]
        module = _build_layer(builder, kind, name, in_shapes[0], args, total)
        if activation is not None:
            _with_activation(module, activation)
        shapes[name] = _infer_shape(module, kind, name, in_shapes)
        graph.append((name, inputs))
        modules[name] = module
        previous = name
    model = SpecNet(graph, modules, input_size)
    if logits:
        _drop_output_activation(model)
    return model, input_size


def _split_entry(entry, i: int) -> tuple[str, dict]:
    if isinstance(entry, str):
        return entry.lower(), {}
    if not isinstance(entry, dict) or not entry:
        raise CnnkitError(
            f"layer {i}: expected a mapping like {{conv2d: {{filters: 32, kernel_size: 3}}}}; received: {brief(entry)}"
        )
    if "type" in entry:
        args = dict(entry)
        return str(args.pop("type")).lower(), args
    if len(entry) == 1:
        ((kind, args),) = entry.items()
        if args is not None and not isinstance(args, dict):
            raise CnnkitError(
                f"layer {i}: the arguments of {brief(str(kind))} must be a mapping like "
                f"{{filters: 32, kernel_size: 3}}; received: {brief(args)}"
            )
        return str(kind).lower(), dict(args or {})
    keys = [k for k in entry if isinstance(entry[k], dict) or entry[k] is None]
    if len(keys) == 1:  # {conv2d: {...}, name: c1, inputs: [...]}
        args = dict(entry[keys[0]] or {})
        args.update({k: v for k, v in entry.items() if k != keys[0]})
        return str(keys[0]).lower(), args
    raise CnnkitError(f"layer {i}: give the layer type as 'type: conv2d' or as the only key; received: {brief(entry)}")


# argument -> (smallest value, what it is); a list/tuple of such integers is accepted for sizes
_INT_ARGS = {
    "filters": 1,
    "units": 1,
    "kernel_size": 1,
    "strides": 1,
    "dilation_rate": 1,
    "groups": 1,
    "depth_multiplier": 1,
    "pool_size": 1,
    "size": 1,
    "depth_radius": 0,
}
# argument -> (is the number right, what it must be): the arguments that are numbers, not sizes
_NUMBER_ARGS = {
    "rate": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "momentum": (lambda v: 0 <= v <= 1, "a number in [0, 1] (Keras' momentum: 0.99 keeps 99% of the statistics)"),
    "epsilon": (lambda v: v >= 0, "a number >= 0"),
    "bias": (lambda v: True, "a number"),
    "alpha": (lambda v: True, "a number"),
    "beta": (lambda v: True, "a number"),
}
_MAX_INT = 1 << 24  # 16 M: no layer of a network has more filters, units or kernel taps
_RANK = {
    **{f"conv{r}d": r for r in (1, 2, 3)},
    "separable_conv2d": 2,
    "depthwise_conv2d": 2,
    "conv2d_transpose": 2,
    "upsampling2d": 2,
    **{f"{k}_pooling{r}d": r for r in (1, 2, 3) for k in ("max", "average", "global_average", "global_max")},
}


def _check_args(kind: str, name: str, shape: tuple, args: dict) -> None:
    """Every number a layer takes, checked where it enters (before PyTorch sees it)."""

    def bad(arg, value, want):
        return CnnkitError(f"layer {name} ({kind}): {arg} must be {want}; received {arg}={brief(value)}")

    for arg, low in _INT_ARGS.items():
        if arg not in args:
            continue
        value = args[arg]
        items = value if isinstance(value, (list, tuple)) else [value]
        want = f"an integer >= {low}" + (
            " (or a list of them)" if arg in ("kernel_size", "strides", "dilation_rate", "pool_size", "size") else ""
        )
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= _MAX_INT for v in items):
            raise bad(arg, value, want + f" and at most {_MAX_INT:,}")
    if "padding" in args:
        p = args["padding"]
        ok = (
            p in ("valid", "same", "caffe")
            if isinstance(p, str)
            else all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_INT
                for v in (p if isinstance(p, (list, tuple)) and p else [p])
            )
        )
        if not ok:
            raise bad("padding", p, "'valid', 'same' or a non-negative integer")
    rank = _RANK.get(kind)
    for arg in ("kernel_size", "strides", "dilation_rate", "pool_size", "size", "padding"):
        value = args.get(arg)
        if isinstance(value, (list, tuple)) and rank is not None and len(value) != rank:
            raise bad(arg, value, f"one integer or a list of {rank} (one per spatial dimension of {kind})")
    for arg in ("use_bias", "center", "scale"):
        if arg in args and not isinstance(args[arg], bool):
            raise bad(arg, args[arg], "true or false")
    for arg, (ok, want) in _NUMBER_ARGS.items():
        value = args.get(arg)
        if arg in args and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok(value)
        ):
            raise bad(arg, value, want)
    if kind == "concatenate" and "axis" in args:
        axis = args["axis"]
        if not (isinstance(axis, int) and not isinstance(axis, bool) and 1 <= axis <= len(shape)):
            raise bad(
                "axis",
                axis,
                f"a dimension from 1 to {len(shape)}, channels first: 1 is the channels (Keras' -1), 0 the batch",
            )
    if "target_shape" in args:
        t = args["target_shape"]
        if (
            not isinstance(t, (list, tuple))
            or not t
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in t)
        ):
            raise bad("target_shape", t, "a list of positive sizes, channels first")
    if rank is not None and len(shape) != rank + 1:
        got = "a vector" if len(shape) == 1 else f"a {len(shape) - 1}-D map"
        raise CnnkitError(
            f"layer {name} ({kind}) needs a ({['C, L', 'C, H, W', 'C, D, H, W'][rank - 1]}) "
            f"input; it receives {got} {_fmt(shape)}: a global pooling, flatten or dense layer "
            "before it removed the spatial sizes"
        )
    if kind == "batch_normalization" and not 1 <= len(shape) <= 4:
        raise CnnkitError(f"layer {name} (batch_normalization) cannot normalise shape {_fmt(shape)}")


def _build_layer(builder, kind, name, shape, args, total: list[int]) -> nn.Module:
    """The layer, built for real only once its parameters (counted on the meta device) fit in memory."""
    _check_args(kind, name, shape, args)
    try:
        with on_meta():
            probe = builder(shape, **dict(args))
        total[0] += sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
        check_fits(total[0], f"the parameters up to layer {name} ({kind})")
        return builder(shape, **args)
    except CnnkitError as exc:
        raise CnnkitError(f"layer {name} ({kind}): {exc}") from None
    except TypeError as exc:
        msg = str(exc).split(")", 1)[-1].strip() or str(exc)
        raise CnnkitError(f"layer {name} ({kind}): {msg}; check its arguments") from None
    except (ValueError, RuntimeError) as exc:
        raise CnnkitError(f"layer {name} ({kind}) on input {_fmt(shape)}: {short_error(exc)}") from None


def _infer_shape(module, kind, name, in_shapes) -> tuple[int, ...]:
    if kind in ("add", "concatenate") and len(in_shapes) < 2:
        raise CnnkitError(f"layer {name} ({kind}) needs at least two inputs; list them in 'inputs'")
    if kind == "add" and len(set(in_shapes)) > 1:
        raise CnnkitError(
            f"layer {name} (add): input shapes differ: {', '.join(_fmt(s) for s in in_shapes)}; "
            "add needs equal shapes (use a 1x1 conv to match channels)"
        )
    if kind == "concatenate":
        a = module.axis - 1  # the axis in a shape without the batch
        rest = {s[:a] + s[a + 1 :] for s in in_shapes}
        if len(rest) > 1:
            raise CnnkitError(
                f"layer {name} (concatenate): sizes other than {'channels' if a == 0 else f'axis {module.axis}'} differ: {', '.join(_fmt(s) for s in in_shapes)}"
            )
    xs = [torch.empty((1, *s), device="meta") for s in in_shapes]
    try:
        with torch.no_grad():
            module.eval()  # shapes only: batch-norm on a batch of one is fine in eval mode
            y = _meta_forward(module, xs)
            module.train()
    except Exception as exc:  # noqa: BLE001 -- turned into one line naming the layer
        detail = short_error(exc, clause=True)
        ks = getattr(module, "kernel_size", None)
        hint = (
            (
                f"kernel {ks} is larger than the padded input {_fmt(in_shapes[0][1:])}: use padding 'same' "
                "or a smaller kernel"
            )
            if ks is not None and "size" in detail.lower()
            else "check its arguments"
        )
        raise CnnkitError(f"layer {name} ({kind}) fails on input {_fmt(in_shapes[0])}: {detail}; {hint}") from None
    shape = tuple(y.shape[1:])
    if any(d <= 0 for d in shape):
        raise CnnkitError(
            f"layer {name} ({kind}) turns input {_fmt(in_shapes[0])} into {_fmt(shape)}: the input is too small for it"
        )
    return shape


def _meta_forward(module: nn.Module, xs):
    from torch.func import functional_call

    state = {n: torch.empty_like(t, device="meta") for n, t in [*module.named_parameters(), *module.named_buffers()]}
    return functional_call(module, state, tuple(xs), strict=False)


def _fmt(shape) -> str:
    return "x".join(str(d) for d in shape)


MAX_INPUT_SIZE = (1 << 31) - 1  # per size of an input: more is a typo (and overflows PyTorch's indexing)


def parse_input_size(text) -> tuple[int, ...]:
    """``"3x224x224"``, ``"3,224,224"``, ``"1x100"`` (1-D), ``"1x16x64x64"`` (3-D) or ``"100"`` (a vector,
    e.g. a GAN generator's noise) -> a tuple, channels first."""
    bad = CnnkitError(
        f"--input must look like CxHxW (e.g. 3x224x224), CxL or CxDxHxW: whole positive numbers; "
        f"received: {brief(repr(text))}"
    )
    if isinstance(text, (tuple, list, torch.Size)):
        dims = []
        for d in text:
            if isinstance(d, bool):
                raise bad
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str) and re.fullmatch(r"\s*-?[0-9]{1,30}\s*", d):
                dims.append(int(d))
            else:  # floats (32.7 is not a size), None, nested lists ...
                raise bad
        dims = tuple(dims)
    elif isinstance(text, bool) or not isinstance(text, (str, int)):
        raise bad
    else:
        parts = [p for p in re.split(r"[x,X*\s]+", str(text).strip()) if p]
        if not all(re.fullmatch(r"-?[0-9]{1,30}", p) for p in parts):
            raise bad
        dims = tuple(int(p) for p in parts)
    if not 1 <= len(dims) <= 4:
        raise CnnkitError(
            f"--input needs 1 to 4 sizes (F for a vector, CxL, CxHxW or CxDxHxW); received: {brief(repr(text))}"
        )
    if any(d <= 0 for d in dims):
        raise CnnkitError(f"--input sizes must be positive; received: {brief(repr(text))}")
    if any(d > MAX_INPUT_SIZE for d in dims):
        raise CnnkitError(f"--input sizes must be at most {MAX_INPUT_SIZE:,} each; received: {brief(repr(text))}")
    return dims

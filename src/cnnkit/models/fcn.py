"""Dense heads turned into convolutions: a classifier trained on small images becomes a fully
convolutional network (FCN) that slides over a larger image in one pass.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation" (2015),
https://arxiv.org/abs/1411.4038 ; Géron, *Hands-On ML*, ch. 14, exercise 7.

The recipe: in an ``nn.Sequential`` holding ``Flatten -> Linear -> (ReLU/Dropout...) -> Linear ...``
-- or in a network whose forward only runs its named layers one after another (cnnkit's Keras-style
``KerasNet``, a network spec's ``SpecNet``, a Keras file's ``KerasNetwork``) -- the first ``Linear`` becomes a ``Conv2d`` whose kernel is the size of the map the ``Flatten``
received (no padding), and every later ``Linear`` a 1x1 ``Conv2d``; their trained weights are
reshaped, not retrained (a Keras ``Flatten``, channels last, has its first ``Linear``'s columns
permuted from (h, w, C) to (C, h, w)); a ``Linear``'s own activation (Keras' ``activation=``) stays
after its convolution. ``Flatten`` goes away. An adaptive pooling layer right before the
``Flatten`` is made a fixed-size pooling so that a larger image gives a larger map.
On the training size the converted network's output is a 1x1 map equal to the original's
logits; on a larger image it is a map of class scores, one per window at the network's
total stride -- the same numbers as classifying every window separately, computed once, as long
as the convolutions do not pad (padding makes a window's border differ from the image's inside).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError, short_error
from cnnkit.models.deploy import Classifier, Ensemble
from cnnkit.models.keras import Flatten as KerasFlatten
from cnnkit.models.scripted import ROOT, add_hooks, torchscript_parts
from cnnkit.models.spec import Activation as SpecActivation

# layers that act on each feature independently: they work unchanged on (B, C, H, W) maps
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.PReLU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,
    nn.LogSigmoid,
    nn.Dropout,
    nn.Identity,
    SpecActivation,  # a spec's activation layer: elementwise, or a softmax over dim 1
)
_FLATTEN = (nn.Flatten, KerasFlatten)
_SOFTMAX = (nn.Softmax, nn.LogSoftmax)


_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def to_fcn(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> nn.Module:
    """A copy of ``model`` with every Flatten+Linear head turned into convolutions.

    Args:
        model: an ``nn.Sequential``; any module whose dense head sits in an ``nn.Sequential`` that
            starts with (or contains) a ``Flatten``; or a network whose forward only runs its direct
            children one after another, each on the output of the one before (cnnkit's
            ``keras_mnist_convnet``, a network spec, a Keras file read by ``cnnkit convert``): that one
            is converted as an ``nn.Sequential`` of its children, named as in the model. A
            :class:`~cnnkit.models.deploy.Classifier` (what :func:`cnnkit.load` returns for a
            classification run) has its ``net`` converted and comes back as a ``Classifier`` with
            the same normalisation and padding, without test-time augmentation. The model is not
            modified.
        input_size: ``(C, H, W)`` the model was trained on; a forward pass at this size finds the
            size of each map a ``Flatten`` receives. Defaults to ``model.input_size`` if it has one.

    Returns:
        The converted model, in the mode ``model`` was in. Its output is ``(B, classes, h, w)``:
        ``(B, classes, 1, 1)`` on ``input_size`` and larger on a larger image. Before it is returned
        it is checked on a random input of ``input_size`` against ``model``.

    Raises:
        CnnkitError: a ``Linear`` not reached through a ``Flatten``, a layer between them that is
            not elementwise, a forward that does work between its layers, or no dense head at all;
            the message names the layers.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        >>> to_fcn(net, (1, 8, 8))(torch.zeros(1, 1, 12, 12)).shape
        torch.Size([1, 10, 5, 5])
    """
    if isinstance(model, Ensemble):
        raise CnnkitError("an ensemble cannot be converted as one network; convert each member (ensemble.members[i])")
    if isinstance(model, Classifier):
        c, h, w = _check_input_size(model, input_size)
        fcn = to_fcn(model.net, (c, h + 2 * model.pad, w + 2 * model.pad))
        mean, std = model.normalisation()
        return Classifier(fcn, mean, std, model.classes, (c, h, w), pad=model.pad).train(model.training)
    input_size = _check_input_size(model, input_size)
    if not any(isinstance(m, (nn.Linear, *_FLATTEN)) for m in model.modules()):
        scripted = torchscript_parts(model)
        if scripted:
            what = "it is TorchScript" if scripted == [ROOT] else f"its TorchScript part {', '.join(scripted[:3])} is"
            raise CnnkitError(
                f"{type(model).__name__} has no Flatten+Linear head outside TorchScript ({what} compiled code, "
                "whose layers cannot be rewritten); convert the network before it is scripted or traced"
            )
        raise CnnkitError(
            f"{type(model).__name__} has no Flatten+Linear head to convert (it may already be fully convolutional)"
        )
    trace = _trace(model, input_size)  # map sizes, the chain of children (or why not), the output
    fcn, leftover = _convert(model, trace.map_sizes)
    if leftover and trace.chain is not None:  # a layered network: convert the chain of its children
        chain = nn.Sequential(OrderedDict((name, model._modules[name]) for name in trace.chain))
        chain.training = model.training  # the flag only: children keep their own modes
        fcn, leftover = _convert(chain, trace.map_sizes)
        for attr in ("input_size", "num_classes"):
            if hasattr(model, attr):
                setattr(fcn, attr, copy.deepcopy(getattr(model, attr)))
    if leftover:
        why = f" ({type(model).__name__}'s forward {trace.why})" if trace.why else ""
        raise CnnkitError(
            f"cannot convert layers {', '.join(leftover)}: a Linear must follow a Flatten in an "
            f"nn.Sequential, or in a network whose forward only runs its layers one after another{why}, "
            "with only elementwise layers (ReLU, Dropout, ...) between the Linears; restructure the "
            "head that way (a flatten or pooling inside forward(), like torchvision's ResNet, cannot be converted)"
        )
    _check_equal(model, fcn, trace)
    return fcn


def _convert(model: nn.Module, map_sizes) -> tuple[nn.Module, list[str]]:
    """A converted deep copy of ``model`` and the names of the Flatten/Linear layers left unconverted."""
    fcn = copy.deepcopy(model)
    names = {id(m): n for n, m in model.named_modules()}
    originals = dict(zip((id(m) for m in fcn.modules()), model.modules()))  # copy id -> original
    converted: set[int] = set()
    for container in list(fcn.modules()):
        if isinstance(container, nn.Sequential):
            _convert_sequential(container, map_sizes, originals, names, converted)
    leftover = [
        names[id(originals[id(m)])]
        for m in fcn.modules()
        if isinstance(m, (nn.Linear, *_FLATTEN)) and id(m) not in converted
    ]
    return fcn, leftover


def total_stride(model: nn.Module) -> int:
    """Product of the strides of a chain of conv and pooling layers: the step, in input pixels,
    between neighbouring cells of a converted network's output map (valid for sequential chains)."""
    stride = 1
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            s = m.stride if isinstance(m.stride, (tuple, list)) else (m.stride, m.stride)
            if s[0] != s[1]:
                raise CnnkitError(f"total_stride needs square strides, got {tuple(s)} in {m}")
            stride *= int(s[0])
    return stride


def _check_input_size(model, input_size):
    input_size = input_size if input_size is not None else getattr(model, "input_size", None)
    if input_size is None:
        raise CnnkitError("to_fcn needs the training input size: pass input_size=(C, H, W), e.g. (1, 28, 28) for MNIST")
    if len(tuple(input_size)) != 3 or any(int(v) <= 0 for v in input_size):
        raise CnnkitError(
            f"input_size must be (C, H, W) with positive sizes, got input_size={tuple(input_size)}; e.g. (3, 224, 224)"
        )
    return tuple(int(v) for v in input_size)


class _Trace:
    """What one forward at the training size showed: the map each Flatten/adaptive pool received
    (by module id), the direct children in the order the forward ran them when the forward is exactly
    a chain of them (else None, and ``why`` says what broke the chain), and the input and output."""

    def __init__(self):
        self.map_sizes: dict[int, tuple[int, ...]] = {}
        self.chain: list[str] | None = None
        self.why = ""
        self.x: torch.Tensor | None = None
        self.out = None


def _trace(model, input_size) -> _Trace:
    """Run one forward at ``input_size`` (eval mode, no grad) with hooks on the Flatten/adaptive pools
    and on the model's direct children."""
    trace = _Trace()

    def record(module, inputs, output):
        trace.map_sizes[id(module)] = tuple(inputs[0].shape[1:])

    children = {id(m): n for n, m in model._modules.items() if m is not None}
    events: list[tuple] = []  # ("in", name, args, kwargs, versions) / ("out", name, output, version)

    def before(module, args, kwargs):  # runs before the child's own pre-hooks (prepended)
        events.append(("in", children[id(module)], args, kwargs, _version(args[0]) if len(args) == 1 else None))

    def after(module, args, output):  # runs after the child's own forward hooks (appended)
        events.append(("out", children[id(module)], output, _version(output)))

    watched = [m for m in model.modules() if isinstance(m, (*_FLATTEN, *_ADAPTIVE))]
    direct = [m for m in model._modules.values() if m is not None]
    modes = _modes(model)
    param = next(model.parameters(), None)
    g = torch.Generator().manual_seed(0)
    trace.x = torch.randn(1, *input_size, generator=g).to(
        device=param.device if param is not None else "cpu",
        dtype=param.dtype if param is not None and param.dtype.is_floating_point else torch.float32,
    )
    handles = []
    try:
        model.eval()
        for m in watched:
            handles += add_hooks(m, None, record)
        if not isinstance(model, nn.Sequential):  # a TorchScript child is called from Python: its hooks run
            for m in direct:
                handles += add_hooks(m, before, after, with_kwargs=True, prepend=True)
        with torch.no_grad():
            trace.out = model(trace.x)
    except RuntimeError as exc:
        raise CnnkitError(
            f"a forward pass at input_size={input_size} failed ({short_error(exc)}); pass the "
            "(C, H, W) size the model was trained on"
        ) from None
    finally:
        for h in handles:
            h.remove()
        _restore(modes)
    if not isinstance(model, nn.Sequential):
        trace.chain, trace.why = _chain(events, [n for n, m in model._modules.items() if m is not None], trace)
    return trace


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore(modes) -> None:
    for m, training in modes:
        m.training = training


def _version(value):
    return value._version if isinstance(value, torch.Tensor) else None


def _chain(events, names, trace) -> tuple[list[str] | None, str]:
    """The children in call order if the forward was exactly child_1(x) -> child_2 -> ... -> output."""
    order: list[str] = []
    previous, version, last = trace.x, _version(trace.x), "its input"
    for k in range(0, len(events), 2):
        call, done = events[k], events[k + 1] if k + 1 < len(events) else None
        name = call[1]
        if done is None or done[0] != "out" or done[1] != name:
            return None, f"runs {name} inside another layer"
        if name in order:
            return None, f"runs {name} twice"
        _, _, args, kwargs, v_in = call
        if kwargs or len(args) != 1 or args[0] is not previous or v_in != version:
            where = f"before {name}" if not order else f"between {order[-1]} and {name}"
            return None, f"does work {where}"
        order.append(name)
        previous, version, last = done[2], done[3], name
    if trace.out is not previous or _version(trace.out) != version:
        return None, f"does work after {last}"
    unused = [n for n in names if n not in order]
    if unused:
        return None, f"does not run {', '.join(unused)}"
    return order, ""


def _check_equal(model, fcn, trace) -> None:
    """The converted network's 1x1 map at the training size must be the original's output."""
    if not isinstance(trace.out, torch.Tensor) or not trace.out.is_floating_point():
        return
    modes = _modes(fcn)
    try:
        fcn.eval()
        with torch.no_grad():
            got = fcn(trace.x)
    except RuntimeError as exc:
        raise CnnkitError(
            f"the converted {type(model).__name__} fails at its training size ({short_error(exc)})"
        ) from None
    finally:
        _restore(modes)
    want = trace.out
    if not isinstance(got, torch.Tensor) or got.numel() != want.numel():
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise CnnkitError(
            f"the converted {type(model).__name__} gives {shape} at its training size, not the "
            f"{tuple(want.shape)} of the original: something after its head reshapes the output"
        )
    tol = 1e-3 if want.dtype in (torch.float32, torch.float64) else 5e-2
    err = (got.reshape(want.shape).float() - want.float()).abs().max().item()
    if not err <= tol * max(1.0, want.float().abs().max().item()):
        raise CnnkitError(
            f"the converted {type(model).__name__} differs from the original at its training size "
            f"(max abs difference {err:.3g}); a layer or hook in its head does not work on maps"
        )


def _convert_sequential(seq: nn.Sequential, map_sizes, originals, names, converted) -> None:
    """Rewrite one Sequential in place: [AdaptivePool] Flatten Linear (elementwise*) Linear ..."""
    children = list(seq._modules.items())
    i = 0
    while i < len(children):
        key, flat = children[i]
        original = originals[id(flat)]
        if not isinstance(flat, _FLATTEN) or id(original) not in map_sizes:
            i += 1
            continue
        where = names[id(original)]
        if isinstance(flat, nn.Flatten) and (flat.start_dim != 1 or flat.end_dim != -1):
            raise CnnkitError(
                f"cannot convert {where} (Flatten(start_dim={flat.start_dim}, "
                f"end_dim={flat.end_dim})): only Flatten(1, -1) before a Linear is supported"
            )
        if len(map_sizes[id(original)]) != 3:
            raise CnnkitError(
                f"cannot convert {where}: the Flatten receives a {tuple(map_sizes[id(original)])} input "
                "at the training size, not a (C, H, W) map"
            )
        c, h, w = map_sizes[id(original)]  # the map the Flatten received, e.g. (64, 3, 3)
        channels_last = isinstance(flat, KerasFlatten)  # Keras flattens (h, w, C)
        if i > 0 and isinstance(children[i - 1][1], _ADAPTIVE):
            pkey, pool = children[i - 1]
            seq._modules[pkey] = _fixed_pool(pool, map_sizes[id(originals[id(pool)])], names[id(originals[id(pool)])])
        seq._modules[key] = nn.Identity()
        converted.add(id(flat))
        first, j = True, i + 1
        while j < len(children):
            jkey, layer = children[j]
            if isinstance(layer, nn.Linear):
                kernel = (h, w) if first else (1, 1)
                seq._modules[jkey] = _linear_to_conv(
                    layer, kernel, names[id(originals[id(layer)])], channels_last and first
                )
                converted.add(id(layer))
                first = False
            elif _over_features(layer):  # over the class dimension: dim -1 of (B, K) is dim 1 of (B, K, h, w)
                seq._modules[jkey] = _on_dim1(layer)
            elif isinstance(layer, nn.BatchNorm1d):
                seq._modules[jkey] = _bn1d_to_bn2d(layer)
            elif not isinstance(layer, _ELEMENTWISE):
                if first:
                    raise CnnkitError(
                        f"cannot convert {names[id(originals[id(layer)])]} "
                        f"({type(layer).__name__}) between {where} (Flatten) and the "
                        "first Linear: only elementwise layers (ReLU, Dropout) may sit there"
                    )
                break  # the head ends here; what follows works on maps by itself or fails loudly
            j += 1
        if first:
            raise CnnkitError(f"cannot convert {where}: the Flatten is not followed by a Linear in its nn.Sequential")
        i = j
    for key, layer in children:  # the new layers take the modes of the ones they replace
        if seq._modules[key] is not layer:
            seq._modules[key].train(layer.training)


def _over_features(layer: nn.Module) -> bool:
    """A softmax / log-softmax over the features of a (B, K) tensor."""
    return isinstance(layer, _SOFTMAX) and layer.dim in (1, -1)


def _on_dim1(layer: nn.Module) -> nn.Module:
    if layer.dim == 1:
        return layer
    return type(layer)(dim=1)


class ActivatedConv2d(nn.Conv2d):
    """A ``Conv2d`` followed by the ``activation`` a Keras-style ``Dense`` carried (same state-dict keys)."""

    def __init__(self, *args, activation: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


def _linear_to_conv(linear: nn.Linear, kernel: tuple[int, int], where: str, channels_last: bool = False) -> nn.Conv2d:
    """Linear(C*h*w -> K) == Conv2d(C -> K, kernel (h, w), no padding) on a (C, h, w) map.

    The Linear's ``activation`` submodule (a Keras-style Dense) stays after the convolution, and its
    forward hooks (a network spec's ``activation=``) move to the convolution."""
    out_f, in_f = linear.weight.shape
    kh, kw = kernel
    if in_f % (kh * kw):
        raise CnnkitError(
            f"cannot convert {where} (Linear in_features={in_f}): it does not match "
            f"a flattened map of size {kh}x{kw}; check input_size"
        )
    activation = linear._modules.get("activation")
    extra = {}
    if activation is not None and not isinstance(activation, nn.Identity):
        if _over_features(activation):
            activation = _on_dim1(activation)
        elif not isinstance(activation, _ELEMENTWISE):
            raise CnnkitError(
                f"cannot convert {where}: its activation {type(activation).__name__} does not work on maps; "
                "only elementwise activations and a softmax over the features are converted"
            )
        extra["activation"] = activation
    conv = (ActivatedConv2d if extra else nn.Conv2d)(
        in_f // (kh * kw),
        out_f,
        kernel,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
        **extra,
    )
    with torch.no_grad():
        if channels_last:  # Keras' Flatten ordered the features (h, w, C)
            weight = linear.weight.reshape(out_f, kh, kw, in_f // (kh * kw)).permute(0, 3, 1, 2)
        else:  # Flatten orders features (C, h, w) row-major, exactly the layout of a conv kernel
            weight = linear.weight.reshape(out_f, in_f // (kh * kw), kh, kw)
        conv.weight.copy_(weight)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    _move_hooks(linear, conv)
    conv.train(linear.training)
    return conv


def _move_hooks(old: nn.Module, new: nn.Module) -> None:
    """Register ``old``'s forward (pre-)hooks on ``new``; handles stored on ``old`` follow them."""
    handles = {}
    for hid, hook in old._forward_pre_hooks.items():
        handles[hid] = new.register_forward_pre_hook(hook, with_kwargs=hid in old._forward_pre_hooks_with_kwargs)
    for hid, hook in old._forward_hooks.items():
        handles[hid] = new.register_forward_hook(
            hook,
            with_kwargs=hid in old._forward_hooks_with_kwargs,
            always_call=hid in old._forward_hooks_always_called,
        )
    for attr, value in vars(old).items():
        if attr.startswith("_") or attr in ("training",):
            continue
        if isinstance(value, torch.utils.hooks.RemovableHandle) and value.id in handles:
            setattr(new, attr, handles[value.id])
        elif attr == "activation" and isinstance(value, str):  # a spec's activation name, for summaries
            new.activation = value


def _bn1d_to_bn2d(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device=bn.weight.device if bn.affine else None,
    )
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    return new


def _fixed_pool(pool: nn.Module, in_size: tuple[int, ...], where: str) -> nn.Module:
    """An adaptive pool as a fixed one that equals it on the training size and slides on larger maps."""
    _, h, w = in_size
    out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
    oh, ow = (h if out[0] is None else out[0]), (w if out[1] is None else out[1])
    if (oh, ow) == (h, w):
        return nn.Identity()  # e.g. VGG's AdaptiveAvgPool2d(7) on a 7x7 map
    cls = nn.AvgPool2d if isinstance(pool, nn.AdaptiveAvgPool2d) else nn.MaxPool2d
    if (oh, ow) == (1, 1):
        return cls((h, w), stride=1)  # global pooling -> a window of the training map, sliding by 1
    if h % oh or w % ow:
        raise CnnkitError(
            f"cannot convert {where} ({type(pool).__name__}({out})): its {h}x{w} input "
            f"at the training size is not a multiple of its output; use a fixed pooling"
        )
    return cls((h // oh, w // ow), stride=(h // oh, w // ow))

"""Finding layers by name, and context managers that hook into a model and always clean up.

Every hook registered here is removed in a ``finally`` block, and every change to the model's
state (training mode, ``requires_grad``, a torch-function mode) is undone on the way out, also when
the forward raises. The layers are those whose hooks run
(:func:`~cnnkit.models.scripted.hook_points`): a TorchScript module is one layer, and the layers
inside it, which its compiled forward calls without hooks, are refused by name. Only a
convolution's weights are read inside TorchScript (:func:`conv2d_layers`): that needs no hook.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cnnkit.errors import CnnkitError, brief
from cnnkit.explain.base import run_model
from cnnkit.models.scripted import ROOT, add_hooks, compiled_ops, hook_points, is_torchscript

_CONV = (nn.modules.conv._ConvNd,)


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, _CONV)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's sub-modules whose hooks run (none inside TorchScript): convolutions first
    (in model order), then every other one."""
    named = [(name, m) for name, m, _ in hook_points(model) if name != ROOT]
    return [n for n, m in named if is_conv(m)] + [n for n, m in named if not is_conv(m)]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (as in ``model.named_modules()``), or a CnnkitError listing them;
    one inside a TorchScript module is refused naming that module."""
    modules = {n: m for n, m, _ in hook_points(model) if n != ROOT}
    if name and name in modules:
        return modules[name]
    names = layer_names(model)
    scripted = _scripted_around(model, name)
    if scripted is not None:
        where = "the network, TorchScript as a whole" if scripted == ROOT else f"the TorchScript module {scripted!r}"
        pick = f"pick one of: {', '.join(names[:12])}" if names else "explain it with saliency, which needs no layer"
        raise CnnkitError(
            f"layer {brief(repr(name), 100)} is inside {where}, whose compiled forward runs it without hooks, so its "
            f"output cannot be seen; {pick}"
        )
    raise _unknown_layer(name, names, "valid layers (convolutions first)")


def _unknown_layer(name: str, names: list[str], listed: str) -> CnnkitError:
    """The error for a layer name that is none of ``names``: the close ones, then the first twelve
    under the heading ``listed``."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "") or "(none)"
    return CnnkitError(f"unknown layer {brief(repr(name), 100)}; {hint}{listed}: {shown}")


def _scripted_around(model: nn.Module, name: str) -> str | None:
    """The TorchScript module (``"(model)"``: the network) that holds the sub-module ``name``, if any."""
    if not name:
        return None
    if is_torchscript(model):
        return ROOT if name in dict(model.named_modules()) else None
    for outer, m, _ in hook_points(model):
        if is_torchscript(m) and name.startswith(outer + ".") and name in dict(m.named_modules(prefix=outer)):
            return outer
    return None


def torchscript_where(model: nn.Module) -> str | None:
    """Where TorchScript hides layers of ``model`` from hooks, in words: ``"the network is TorchScript"``,
    ``"TorchScript: a, b"`` (its TorchScript modules, at most three named); None without TorchScript."""
    scripted = [n for n, m, _ in hook_points(model) if is_torchscript(m)]
    if not scripted:
        return None
    return "the network is TorchScript" if scripted == [ROOT] else f"TorchScript: {', '.join(scripted[:3])}"


def no_convolution(model: nn.Module, source: str | None = None) -> CnnkitError:
    """The error for a model with no convolution outside TorchScript, where an explanation needs one
    (Grad-CAM's default layer, feature maps, filters, filter patterns): with TorchScript it says so,
    and what works instead (saliency needs no layer; guided saliency's ReLUs are hidden too).
    ``source`` names the model (default ``model <class name>``)."""
    source = source or f"model {type(model).__name__}"
    where = torchscript_where(model)
    if where:
        filters = ", or with filters, which reads its convolutions' weights" if conv2d_layers(model) else ""
        return CnnkitError(
            f"{source} has no convolutional layer outside TorchScript ({where}, whose layers run without "
            "hooks, so their outputs cannot be seen); explain it with saliency (vanilla, not guided), which "
            f"needs no layer{filters}, or build it from plain nn modules"
        )
    return CnnkitError(
        f"{source} has no convolutional layer; pass layer=NAME, one of: {', '.join(layer_names(model)[:12])}"
    )


def conv_layers(model: nn.Module) -> list[str]:
    """The names of the model's convolutions outside TorchScript, whose hooks run, in registration
    order: the layers feature maps show by default; the last is Grad-CAM's default (:func:`last_conv_layer`).

    Raises:
        CnnkitError: the model has none (:func:`no_convolution`, naming TorchScript where it hides them).
    """
    convs = [name for name, m, _ in hook_points(model) if name != ROOT and is_conv(m)]
    if not convs:
        raise no_convolution(model)
    return convs


def last_conv_layer(model: nn.Module) -> str:
    """The name of the model's last convolution (registration order) outside TorchScript, Grad-CAM's
    default layer."""
    return conv_layers(model)[-1]


def conv2d_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's 2-D convolutions by name (as in ``model.named_modules()``, in that order), those
    inside TorchScript included: the layers whose filters can be drawn. Their weights are read and
    nothing runs, so no hook is needed. Outside TorchScript a layer is an ``nn.Conv2d`` (or a
    subclass); inside, where the class is gone, a module with a 4-D ``weight`` of its own whose
    compiled forward runs a 2-D convolution (not a transposed one)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name and (_scripted_conv2d(module) if is_torchscript(module) else isinstance(module, nn.Conv2d)):
            found[name] = module
    return found


def _scripted_conv2d(module: nn.Module) -> bool:
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    if weight is None or weight.dim() != 4:
        return False
    # torch.jit.script keeps aten::conv2d; torch.jit.trace records aten::_convolution(..., transposed, ...)
    return any(
        kind == "aten::conv2d" or (kind == "aten::_convolution" and consts[6] is False)
        for kind, consts in compiled_ops(module)
    )


def conv_layer(model: nn.Module, name: str) -> nn.Module:
    """The 2-D convolution called ``name`` (:func:`conv2d_layers`: one inside TorchScript too), for its
    weights; a CnnkitError if it is something else, or no layer."""
    convs = conv2d_layers(model)
    if name in convs:
        return convs[name]
    module = dict(model.named_modules()).get(name) if name else None
    if module is None:
        raise _unknown_layer(name, list(convs), "2-D convolutions")
    kind = getattr(module, "original_name", "TorchScript module") if is_torchscript(module) else type(module).__name__
    raise CnnkitError(
        f"layer {name!r} is a {kind}, not a Conv2d; pick one of: {', '.join(list(convs)[:12]) or '(none)'}"
    )


def default_cam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Grad-CAM's default layer: the last convolution with a spatial (not 1x1) output, followed
    through the layers right after it that keep its output shape (its norm and activation), as
    Keras' ``Conv2D(activation=...)`` and Caffe's in-place ReLU give the rectified maps the paper
    uses. A module called more than once (a shared ``self.relu``) is not followed.

    Runs one forward pass of ``x`` (no gradients) to see the order the layers execute in.
    """
    calls: list[tuple[str, nn.Module, tuple]] = []
    handles = []

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                calls.append((name, module, tuple(output.shape)))

        return hook

    try:
        for name, module, leaf in hook_points(model):
            if leaf:  # leaves only: containers repeat their last child
                handles += add_hooks(module, None, hook_for(name))
        with torch.no_grad():
            run_model(model, x)
    finally:
        for handle in handles:
            handle.remove()
    convs = [i for i, (_, m, shape) in enumerate(calls) if is_conv(m)]
    spatial = [i for i in convs if len(calls[i][2]) == 4 and calls[i][2][-2:] != (1, 1)]
    if not convs:
        return last_conv_layer(model)  # raises the "no convolution" error
    last = (spatial or convs)[-1]  # a 1x1 output (LeNet's C5) is a dense layer in disguise
    times_called = {}
    for call_name, _, _ in calls:
        times_called[call_name] = times_called.get(call_name, 0) + 1
    name, _, shape = calls[last]
    for follower, _, out_shape in calls[last + 1 :]:
        # stop at a shape change, or at a module used more than once (its record is its last call)
        if out_shape != shape or times_called[follower] > 1:
            break
        name = follower
    return name


@contextmanager
def frozen(model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """Put every sub-module in eval (or train) mode, stop parameter gradients and test-time
    augmentation; restore all three after.

    Parameters keep their ``.grad``: explanation methods differentiate with respect to the input or
    to activations only, so no parameter gradient is accumulated. A deployable classifier's
    test-time augmentation (``tta``: its network run again on shifted or flipped copies) is off
    inside: an explanation is of one forward pass of the image itself, every layer called once.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    ttas = [(m, m.tta) for m in model.modules() if isinstance(getattr(m, "tta", None), str)]
    try:
        model.train(train)
        for p, _ in flags:
            p.requires_grad_(False)
        for m, _ in ttas:
            m.tta = ""
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, tta in ttas:
            m.tta = tta


@contextmanager
def recording(model: nn.Module, names: list[str], grads: bool = False) -> Iterator[dict]:
    """Record the outputs (and, with ``grads``, their gradients) of the named layers.

    Yields ``{"activations": {name: Tensor}, "gradients": {name: Tensor}}``, filled by the
    forward (and backward) passes run inside the ``with`` block; activations are detached copies,
    gradients are with respect to the layer's output. A layer called several times keeps its last call.
    """
    record: dict = {"activations": {}, "gradients": {}}
    modules = {name: resolve_layer(model, name) for name in names}
    handles = []
    calls: dict[str, int] = {}  # forward calls of each layer so far

    def hook_for(name):
        def forward_hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise CnnkitError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; pick a "
                    f"layer whose output is one image tensor (a convolution, say)"
                )
            calls[name] = call = calls.get(name, 0) + 1
            # a copy: an in-place op after this layer (ReLU(inplace=True)) would overwrite the output
            record["activations"][name] = output.detach().clone()
            if grads and output.requires_grad:

                def save_grad(grad):  # a tensor hook: lives and dies with this output tensor
                    # the backward pass reaches the calls last to first: keep the gradient of the
                    # call whose activation is kept, never an earlier call's
                    if call == calls[name]:
                        record["gradients"][name] = grad

                output.register_hook(save_grad)

        return forward_hook

    try:
        for name, module in modules.items():
            handles += add_hooks(module, None, hook_for(name))
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _positive(grad: torch.Tensor) -> torch.Tensor:
    """Guided backpropagation's rule at a rectifier's output: only positive gradients go back; the
    rectifier's own backward then masks them where it was flat (input <= 0, or >= 6 for ReLU6)."""
    return grad.clamp(min=0)


def _guide(out, kind: str, calls: Counter) -> None:
    """Guide the gradient that reaches the rectifier output ``out``, and count it in ``calls[kind]``.

    A tensor hook, not a new output: an in-place rectifier (``F.relu_``, ``nn.ReLU(inplace=True)``)
    returns its input, which the caller keeps using; a hook registered after the in-place call fires
    with the gradient of this value, the rectifier's output.
    """
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.register_hook(_positive)
        calls[kind] += 1


# the rectifiers as a forward calls them: nn.ReLU calls F.relu, nn.ReLU6 F.hardtanh(x, 0.0, 6.0)
_RELUS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)  # F.relu_ is torch.relu_
_RELU6S = (F.relu6, torch._C._nn.relu6, torch._C._nn.relu6_)
_HARDTANHS = (F.hardtanh, F.hardtanh_)  # a rectifier where min_val is 0: ReLU6 is hardtanh(0, 6)
_SCRIPTED_RELUS = ("aten::relu", "aten::relu_", "aten::relu6", "aten::relu6_")
_SCRIPTED_HARDTANHS = ("aten::hardtanh", "aten::hardtanh_")


def _rectifier_kind(func, args: tuple, kwargs: dict) -> str | None:
    """``"ReLU"``, ``"ReLU6"`` or ``"hardtanh"`` (``min_val`` 0, another top) for a call of a rectifier;
    None for any other function."""
    if func in _RELUS:
        return "ReLU"
    if func in _RELU6S:
        return "ReLU6"
    if func in _HARDTANHS:
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        if low == 0 and high > 0:
            return "ReLU6" if high == 6 else "hardtanh"
    return None


class _GuidedRectifiers(TorchFunctionMode):
    """While active, guides the output of every rectifier called from Python (:func:`_guide`)."""

    def __init__(self, calls: Counter):
        super().__init__()
        self.calls = calls
        self.paused = 0  # inside a leaky rectifier built of relu calls: its relus are not guided

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside: F.relu's own torch.relu is not seen again
        kind = None if self.paused else _rectifier_kind(func, args, kwargs)
        if kind is not None:
            _guide(out, kind, self.calls)
        return out


def _pause(mode: _GuidedRectifiers, step: int) -> None:
    mode.paused += step


def _scripted_rectifier(module: nn.Module) -> bool:
    """A ReLU or ReLU6 module made TorchScript (its class's name kept as ``original_name``)."""
    return is_torchscript(module) and getattr(module, "original_name", None) in ("ReLU", "ReLU6")


def _runs_rectifier(module: nn.Module) -> bool:
    """Whether the compiled forward of the TorchScript ``module`` runs a rectifier (a hardtanh whose
    bottom is computed counts: it may be 0)."""
    return any(
        kind in _SCRIPTED_RELUS or (kind in _SCRIPTED_HARDTANHS and consts[1] in (0, None))
        for kind, consts in compiled_ops(module)
    )


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[Counter]:
    """Guide the backward of every rectifier the model's forward runs inside the block (guided
    backpropagation, Springenberg et al. 2014, https://arxiv.org/abs/1412.6806): ReLU and ReLU6, as
    modules or as functional calls (``F.relu``, ``torch.relu``, ``Tensor.relu_``, ``F.relu6``,
    ``F.hardtanh`` with ``min_val=0``). Each rectifier's own backward masks by where its input was
    active; a hook on its output adds ``grad > 0``. The calls are caught by a torch-function mode
    (``nn.ReLU``'s forward calls ``F.relu``), and a TorchScript ReLU or ReLU6 module that Python calls
    by its forward hook. Other activations (tanh, SiLU, LeakyReLU, sigmoid gates) keep their own
    gradient: guided backpropagation defines none for them; so does a leaky rectifier computed from
    relu calls, a module whose ``leaky_rectifier`` is true (Keras' PReLU, ReLU with a negative slope).

    Yields:
        A Counter of the rectifier calls guided so far, by kind (``"ReLU"``, ``"ReLU6"``,
        ``"hardtanh"``), filled as forward passes run in the block: empty after one, the model has
        no rectifier to guide.

    Raises:
        CnnkitError: a rectifier inside TorchScript (other than a ReLU or ReLU6 module that Python
            calls), whose compiled forward runs it out of Python's reach: its backward cannot be
            guided, and the map would be partly vanilla.
    """
    points = [m for _, m, _ in hook_points(model)]
    if any(is_torchscript(m) and not _scripted_rectifier(m) and _runs_rectifier(m) for m in points):
        raise CnnkitError(
            f"guided backpropagation guides the gradient at each rectifier (ReLU, ReLU6), and "
            f"{type(model).__name__} runs rectifiers inside TorchScript ({torchscript_where(model)}), whose "
            "compiled forward calls them out of Python's reach; explain it with vanilla saliency (drop --guided; "
            "method='vanilla' in Python), or build it from plain nn modules"
        )
    calls: Counter = Counter()
    handles = []
    try:
        mode = _GuidedRectifiers(calls)
        for module in points:
            if _scripted_rectifier(module):  # called from Python, it runs the hooks nn.Module gives it
                kind = module.original_name
                handles += add_hooks(module, None, lambda m, i, out, kind=kind: _guide(out, kind, calls))
            elif getattr(module, "leaky_rectifier", False):
                handles += add_hooks(module, lambda m, i: _pause(mode, 1), lambda m, i, out: _pause(mode, -1))
        with mode:
            yield calls
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def run_until(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """The output of layer ``name`` for input ``x``, without running the layers after it."""
    module = resolve_layer(model, name)
    box: list[torch.Tensor] = []

    def hook(m, inputs, output):
        box.append(output)
        raise _StopForward

    (handle,) = add_hooks(module, None, hook)
    try:
        run_model(model, x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not box:
        raise CnnkitError(f"layer {name!r} did not run in the forward pass; pick a layer the model uses")
    return box[0]

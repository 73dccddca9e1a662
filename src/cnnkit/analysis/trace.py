"""Record what a model really executes, on the meta device: every op, its layer, its MACs, and memory.

The model is run through :func:`torch.func.functional_call` with *meta* copies of its parameters and
buffers, so nothing is computed and nothing is allocated: ResNet-152 at batch 256 traces in about a
second. A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every ATen op that PyTorch
dispatches (functional calls such as ``F.conv2d``, ``x @ w``, ``torch.cat`` and ``+`` included), and a
weak reference on every storage tells the moment PyTorch frees it. Because the Python code, autograd's
saved tensors and the reference counts are the same as in a real run, the sequence of live bytes is
the sequence a real run produces at the ATen level; :mod:`cnnkit.analysis.backend` adds what the
backend allocates *inside* some ops (oneDNN's reorders on CPU).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten

# ops that do no arithmetic worth reporting (views, copies of metadata, allocation)
_NO_WORK = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze",
    "detach", "alias", "as_strided", "slice", "select", "split", "split_with_sizes", "unbind",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like",
    "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "scalar_tensor", "lift_fresh",
    "_to_copy", "clone", "copy_", "contiguous", "flatten", "_reshape_alias", "lift_fresh_copy",
    "fill_", "zero_", "sym_size", "sym_stride", "is_same_size", "_local_scalar_dense", "item",
}


@dataclass
class OpRecord:
    """One ATen op as dispatched."""

    name: str                 # e.g. "convolution"
    func: object              # the OpOverload
    module: str               # innermost module running it ("" = top level or backward engine)
    phase: str                # "forward", "backward" or "optimizer"
    live_before: int          # bytes live when the op started
    out_bytes: int            # bytes of the new storages it returned
    macs: int                 # multiply-accumulates (conv / matmul family), 0 otherwise
    elements: int             # output elements (the "other ops" work measure)
    out_shape: tuple = ()     # shape of the first output, batch dimension dropped
    backend_key: tuple | None = None  # set when the backend may allocate inside this op
    args_meta: tuple = ()     # (shape, stride, dtype) of tensor args, for the backend model


@dataclass
class LayerRecord:
    """One row of the summary: a module (or a container's own functional ops)."""

    name: str
    type: str
    output_shape: tuple = ()
    params: int = 0
    trainable_params: int = 0
    macs: int = 0
    other_ops: int = 0                    # elements produced by norms, pooling, elementwise ops
    op_names: list = field(default_factory=list)
    saved_bytes: int = 0                  # activations saved for backward (training trace)
    order: int = 0                        # index of its first op: rows are shown in execution order
    is_leaf: bool = True                  # False for a container (shown only through its ":ops" row)


@dataclass
class Trace:
    ops: list[OpRecord]
    layers: dict[str, LayerRecord]
    baseline: dict[str, int]              # bytes live before the step, by category
    peak_index: int                       # index in ops where the ATen-level peak happened
    peak_bytes: int                       # ATen-level peak (outputs only, no backend temporaries)
    peak_breakdown: dict[str, int]        # live bytes at that moment, by category
    saved_bytes: int = 0                  # all activations saved for backward


class _Storages:
    """Live bytes, tracked per storage with weak references (a storage counts once, however many views)."""

    def __init__(self):
        self.live = 0
        self.sizes: dict[int, int] = {}      # storage key -> bytes
        self.category: dict[int, str] = {}  # storage key -> category label
        self._finalizers = []

    @staticmethod
    def key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def add(self, t: torch.Tensor, category: str) -> int:
        st = t.untyped_storage()
        k = st._cdata
        if k in self.sizes:
            return 0
        n = st.nbytes()
        self.sizes[k] = n
        self.category[k] = category
        self.live += n
        self._finalizers.append(weakref.finalize(st, self._free, k))
        return n

    def _free(self, k: int) -> None:
        self.live -= self.sizes.pop(k, 0)
        self.category.pop(k, None)

    def relabel(self, t: torch.Tensor, category: str) -> None:
        k = self.key(t)
        if k in self.category:
            self.category[k] = category

    def close(self) -> None:
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()


def _freeze(a):
    """A hashable description of an op argument: tensors become (shape, stride, dtype)."""
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), tuple(a.stride()), a.dtype)
    if isinstance(a, (list, tuple)):
        return tuple(_freeze(x) for x in a)
    return a


def _tensors(x):
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


class _Recorder(TorchDispatchMode):
    def __init__(self, storages: _Storages, stack: list[str], phase: list[str], backend_ops: set):
        super().__init__()
        self.storages = storages
        self.stack = stack
        self.phase = phase
        self.backend_ops = backend_ops
        self.ops: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = self.storages.live
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        name = packet.__name__
        new = 0
        outs = _tensors(out)
        for t in outs:
            new += self.storages.add(t, "temporary")
        macs = 0
        if packet in flop_registry:
            macs = int(flop_registry[packet](*args, **kwargs, out_val=out)) // 2
        elements = 0
        if not macs and name.rstrip("_") not in _NO_WORK and outs:
            elements = sum(t.numel() for t in outs if t.dtype.is_floating_point)
        rec = OpRecord(name, func, self.stack[-1] if self.stack else "", self.phase[0], before, new,
                       macs, elements, tuple(outs[0].shape[1:]) if outs else ())
        if packet in self.backend_ops:
            rec.args_meta = tuple(_freeze(a) for a in args)
            rec.backend_key = (name, rec.args_meta)
        self.ops.append(rec)
        return out


@contextmanager
def _module_hooks(model: nn.Module, stack: list[str], layers: dict[str, LayerRecord], phase: list[str],
                  op_count):
    """Forward pre/post hooks that keep the stack of running modules and record output shapes."""
    handles = []
    seen_params: set[int] = set()
    first_op: dict[str, int] = {}

    def pre(name):
        def hook(mod, inp):
            if phase[0] == "forward":
                stack.append(name)
                first_op.setdefault(name, op_count())
        return hook

    def post(name):
        def hook(mod, inp, out):
            if phase[0] != "forward":
                return
            stack.pop()
            rec = layers.get(name)
            if rec is None:
                rec = layers[name] = LayerRecord(name, type(mod).__name__, order=first_op[name],
                                                 is_leaf=not any(True for _ in mod.children()))
                for p in mod.parameters(recurse=False):
                    if id(p) not in seen_params:
                        seen_params.add(id(p))
                        rec.params += p.numel()
                        rec.trainable_params += p.numel() if p.requires_grad else 0
            first = next(iter(_tensors(out)), None)
            if first is not None:
                rec.output_shape = tuple(first.shape[1:])
        return hook

    try:
        for name, mod in model.named_modules():
            if mod is model:
                continue
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(post(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def meta_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Meta copies of the parameters and buffers, floating ones in ``dtype``, same requires_grad."""
    state = {}
    for name, p in model.named_parameters():
        state[name] = torch.empty(p.shape, dtype=dtype if p.is_floating_point() else p.dtype,
                                  device="meta").requires_grad_(p.requires_grad)
    for name, b in model.named_buffers():
        state[name] = torch.empty(b.shape, dtype=dtype if b.is_floating_point() else b.dtype,
                                  device="meta")
    return state


def make_optimizer(name: str, params: list[torch.Tensor], foreach: bool | None = None):
    """The optimizer of a training step: none | sgd | momentum | adam | adamw (default hyper-parameters)."""
    if name == "none":
        return None
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.01, foreach=foreach)
    if name == "momentum":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)
    if name == "adam":
        return torch.optim.Adam(params, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(params, foreach=foreach)
    raise ValueError(name)


def step_loss(out) -> torch.Tensor:
    """The loss of an analysed training step: cross-entropy for (B, K) logits, else the mean."""
    out = _tensors(out)[0]
    if out.dim() == 2 and out.shape[1] > 1:
        target = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
        return nn.functional.cross_entropy(out, target)
    return out.float().mean()


def training_step(forward, optimizer) -> None:
    """One optimizer step exactly as analysed and as measured: forward, loss, backward, step, zero_grad."""
    loss = step_loss(forward())
    loss.backward()
    del loss
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def trace(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype, training: bool,
          optimizer: str = "sgd", backend_ops: set | None = None) -> Trace:
    """Run ``model`` on a meta input of ``input_shape`` (batch included) and record everything.

    Inference: eval mode under ``torch.no_grad``. Training: train mode, one warm-up step (so that the
    optimizer state exists, as in every step after the first), then the recorded step.
    The model's own parameters are never touched; its train/eval mode is restored.
    """
    backend_ops = backend_ops or set()
    storages = _Storages()
    stack: list[str] = []
    phase = ["forward"]
    layers: dict[str, LayerRecord] = {}
    state = meta_state(model, dtype)
    x = torch.empty(input_shape, dtype=dtype, device="meta")
    params = [t for t in state.values() if t.requires_grad]
    was_training = model.training
    model.train(training)
    saved: dict[int, tuple[str, int]] = {}

    def forward():
        return functional_call(model, state, (x,), strict=False)

    opt = None
    try:
        if training:
            opt = make_optimizer(optimizer, params)
            if not params:
                opt = None
            training_step(forward, opt)  # warm-up: creates the optimizer state, not recorded
        for name, t in state.items():
            storages.add(t, "parameters" if name in dict(model.named_parameters()) else "buffers")
        storages.add(x, "input")
        if opt is not None:
            for st in opt.state.values():
                for v in st.values():
                    if isinstance(v, torch.Tensor) and v.device.type == "meta":
                        storages.add(v, "optimizer state")
        baseline = _by_category(storages)
        recorder = _Recorder(storages, stack, phase, backend_ops)

        def pack(t):
            if t.device.type == "meta":
                k = storages.key(t)
                if k not in saved and k in storages.sizes and storages.category.get(k) == "temporary":
                    saved[k] = (stack[-1] if stack else "", storages.sizes[k])
                    storages.category[k] = "activations"
            return t

        with _module_hooks(model, stack, layers, phase, lambda: len(recorder.ops)), recorder:
            if training:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = forward()
                loss = step_loss(out)
                del out
                phase[0] = "backward"
                loss.backward()
                del loss
                for p in params:  # gradients exist now: label them
                    if p.grad is not None:
                        storages.relabel(p.grad, "gradients")
                if opt is not None:
                    phase[0] = "optimizer"
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    out = forward()
                del out
        ops = recorder.ops
    finally:
        model.train(was_training)
        storages.close()

    peak_i, peak = 0, 0
    for i, op in enumerate(ops):
        total = op.live_before + op.out_bytes
        if total > peak:
            peak_i, peak = i, total
    breakdown = _replay_breakdown(ops, peak_i, baseline, saved)
    # parameters of the model itself (not of a sub-module) belong to the top-level row
    own = [p for p in model.parameters(recurse=False)]
    if own:
        layers["(model)"] = LayerRecord("(model)", type(model).__name__, (), sum(p.numel() for p in own),
                                        sum(p.numel() for p in own if p.requires_grad), order=-1)
    for name, nbytes in saved.values():
        if name in layers:
            layers[name].saved_bytes += nbytes
    _attribute_ops(ops, layers, model)
    return Trace(ops, layers, baseline, peak_i, peak, breakdown, sum(n for _, n in saved.values()))


def _by_category(storages: _Storages) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, n in storages.sizes.items():
        c = storages.category[k]
        out[c] = out.get(c, 0) + n
    return out


def _replay_breakdown(ops, peak_i, baseline, saved) -> dict[str, int]:
    """Live bytes by category at the peak: baseline + saved activations + the rest (temporaries)."""
    op = ops[peak_i] if ops else None
    total = (op.live_before + op.out_bytes) if op else sum(baseline.values())
    out = dict(baseline)
    # activations saved for backward are alive from their creation until backward frees them;
    # at a forward/backward peak the saved ones created so far are what autograd holds
    act = 0
    if op is not None and op.phase in ("forward", "backward"):
        act = sum(n for _, n in saved.values()) if op.phase == "backward" else 0
    rest = total - sum(out.values())
    if act:
        act = min(act, rest)
        out["activations"] = act
        rest -= act
    out["temporaries"] = max(rest, 0)
    return out


def _attribute_ops(ops: list[OpRecord], layers: dict[str, LayerRecord], model: nn.Module) -> None:
    """Add each forward op's MACs and element-work to the row of the module that ran it.

    Ops run directly by a container's ``forward`` (``x + identity``, ``torch.cat``, ``F.conv2d``)
    get a row of their own, named after the container, so that nothing is silently dropped.
    """
    for i, op in enumerate(ops):
        if op.phase != "forward":
            continue
        name = op.module
        owner = layers.get(name)
        if owner is None or not owner.is_leaf:
            key = f"{name}:ops" if name else "(model):ops"
            rec = layers.get(key)
            if rec is None:
                if not (op.macs or op.elements):
                    continue
                rec = layers[key] = LayerRecord(key, "functional", order=i)
            if op.name not in rec.op_names:
                rec.op_names.append(op.name)
            rec.output_shape = op.out_shape
        else:
            rec = owner
        rec.macs += op.macs
        rec.other_ops += op.elements

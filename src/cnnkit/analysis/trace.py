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

import math
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from cnnkit.analysis.fastpath import cpu_fast_paths
from cnnkit.models.scripted import ROOT as _ROOT
from cnnkit.models.scripted import add_hooks, hook_points, is_torchscript

aten = torch.ops.aten


def _conv_backward_macs(grad_out, x, weight, *args, **kwargs) -> int:
    """A convolution's backward: each of the gradients it computes (input, weight) costs the forward's
    multiply-adds. ``torch.utils.flop_counter`` counts the weight gradient of a grouped convolution
    ``groups`` times over (it treats it as one ungrouped convolution): a depthwise 3x3 on 672
    channels would cost 672x what it does."""
    transposed, mask = args[4], args[7]
    forward = math.prod(x.shape if transposed else grad_out.shape) * math.prod(weight.shape[1:])
    return forward * (int(bool(mask[0])) + int(bool(mask[1])))


# multiply-adds of ops whose formula in torch.utils.flop_counter is wrong (grouped convolutions'
# backward) or missing (matrix-vector and vector-vector products: ``x @ v`` with a 1-D ``v``)
_MACS = {
    aten.convolution_backward: _conv_backward_macs,
    aten.mv: lambda m, v, **kw: math.prod(m.shape),
    aten.addmv: lambda b, m, v, **kw: math.prod(m.shape),
    aten.dot: lambda a, b, **kw: math.prod(a.shape),
    aten.vdot: lambda a, b, **kw: math.prod(a.shape),
    aten.addbmm: lambda c, a, b, **kw: math.prod(a.shape) * b.shape[-1],
    aten._addmm_activation: lambda c, a, b, **kw: math.prod(a.shape) * b.shape[-1],
    # the CPU kernel of scaled_dot_product_attention (flash), which the FLOP counter does not know:
    # Q K^T and A V forward; backward recomputes Q K^T, then four products (as the CUDA kernels)
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: (
        sdpa_flop_count(q.shape, k.shape, v.shape) // 2
    ),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *a, **kw: (
        sdpa_backward_flop_count(g.shape, q.shape, k.shape, v.shape) // 2
    ),
}

# ops that do no arithmetic worth reporting (views, copies of metadata, allocation)
_NO_WORK = {
    "view",
    "_unsafe_view",
    "reshape",
    "t",
    "transpose",
    "permute",
    "expand",
    "squeeze",
    "unsqueeze",
    "detach",
    "alias",
    "as_strided",
    "slice",
    "select",
    "split",
    "split_with_sizes",
    "unbind",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "zeros",
    "zeros_like",
    "ones",
    "ones_like",
    "full",
    "full_like",
    "new_zeros",
    "new_ones",
    "scalar_tensor",
    "lift_fresh",
    "_to_copy",
    "clone",
    "copy_",
    "contiguous",
    "flatten",
    "_reshape_alias",
    "lift_fresh_copy",
    "fill_",
    "zero_",
    "constant_pad_nd",
    "sym_size",
    "sym_stride",
    "is_same_size",
    "_local_scalar_dense",
    "item",
}


@dataclass
class OpRecord:
    """One ATen op as dispatched."""

    name: str  # e.g. "convolution"
    func: object  # the OpOverload
    module: str  # innermost module running it ("" = top level or backward engine)
    phase: str  # "forward", "backward" or "optimizer"
    live_before: int  # bytes live when the op started
    out_bytes: int  # bytes of the new storages it returned
    macs: int  # multiply-accumulates (conv / matmul family), 0 otherwise
    elements: int  # output elements (the "other ops" work measure)
    out_shape: tuple = ()  # shape of the first output, batch dimension dropped
    backend_key: tuple | None = None  # set when the backend may allocate inside this op
    args_meta: tuple = ()  # (shape, stride, dtype) of tensor args, for the backend model


@dataclass
class LayerRecord:
    """One row of the summary: a module (or a container's own functional ops)."""

    name: str
    type: str
    output_shape: tuple = ()
    input_shape: tuple = ()
    params: int = 0
    trainable_params: int = 0
    macs: int = 0
    other_ops: int = 0  # elements produced by norms, pooling, elementwise ops
    op_names: list = field(default_factory=list)
    saved_bytes: int = 0  # activations saved for backward (training trace)
    output_id: int | None = None  # the storage of its (first) output: a container returns its child's
    order: int = 0  # index of its first op: rows are shown in execution order
    is_leaf: bool = True  # False for a container (shown only through its ":ops" row)
    calls: list = field(default_factory=list)  # (op index at its end, output shape) of every call


@dataclass
class Trace:
    ops: list[OpRecord]
    layers: dict[str, LayerRecord]
    baseline: dict[str, int]  # bytes live before the step, by category
    peak_index: int  # index in ops where the ATen-level peak happened
    peak_bytes: int  # ATen-level peak (outputs only, no backend temporaries)
    storages: _Storages  # allocation history, to replay the live set at any op
    saved_bytes: int = 0  # all activations saved for backward

    def peak(self, op_bytes: dict[tuple, int] | None = None) -> tuple[int, int]:
        """(peak bytes, op index): ATen-level, or with ``op_bytes`` replacing the outputs of backend ops."""
        op_bytes = op_bytes or {}
        best, best_i = sum(self.baseline.values()), -1
        for i, op in enumerate(self.ops):
            during = op_bytes.get(op.backend_key, op.out_bytes) if op.backend_key else op.out_bytes
            if op.live_before + during > best:
                best, best_i = op.live_before + during, i
        return best, best_i

    def breakdown(self, op_index: int, op_bytes: dict[tuple, int] | None = None) -> dict[str, int]:
        """Live bytes by category while op ``op_index`` runs; its outputs and workspace as their own line."""
        if op_index < 0:
            return dict(self.baseline)
        out = self.storages.live_by_category(op_index)
        op = self.ops[op_index]
        during = (op_bytes or {}).get(op.backend_key, op.out_bytes) if op.backend_key else op.out_bytes
        out["running op: outputs + workspace"] = during
        return out


class _Storages:
    """Live bytes, tracked per storage with weak references (a storage counts once, however many views).

    Every allocation gets a unique id; allocation and free events are kept (with the index of the op
    they happened before) so that the live set at any op can be replayed once every storage's final
    role (gradient, saved activation, optimizer state...) is known.
    """

    def __init__(self, op_count):
        self.live = 0
        self.uid_of: dict[int, int] = {}  # live storage key -> uid
        self.size: dict[int, int] = {}  # uid -> bytes
        self.category: dict[int, str] = {}  # uid -> category label
        self.events: list[tuple[int, int, int, int]] = []  # (op index, 0 before / 1 its outputs, +1/-1, uid)
        self._op_count = op_count
        self._finalizers = []

    @staticmethod
    def key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def uid(self, t: torch.Tensor) -> int | None:
        return self.uid_of.get(self.key(t))

    def add(self, t: torch.Tensor, category: str, output_of_op: bool = False) -> int:
        st = t.untyped_storage()
        k = st._cdata
        if k in self.uid_of:
            return 0
        n = st.nbytes()
        uid = len(self.size)
        self.uid_of[k] = uid
        self.size[uid] = n
        self.category[uid] = category
        self.live += n
        self.events.append((self._op_count(), int(output_of_op), 1, uid))
        self._finalizers.append(weakref.finalize(st, self._free, k))
        return n

    def _free(self, k: int) -> None:
        uid = self.uid_of.pop(k, None)
        if uid is not None:
            self.live -= self.size[uid]
            self.events.append((self._op_count(), 0, -1, uid))

    def relabel(self, t: torch.Tensor, category: str) -> None:
        uid = self.uid(t)
        if uid is not None:
            self.category[uid] = category

    def live_by_category(self, op_index: int, include_op: bool = False) -> dict[str, int]:
        """Bytes live just before op ``op_index`` ran (or just after, with its outputs), by category."""
        live: set[int] = set()
        for i, sub, sign, uid in self.events:
            if i > op_index or (i == op_index and sub == 1 and not include_op):
                continue
            if sign > 0:
                live.add(uid)
            else:
                live.discard(uid)
        out: dict[str, int] = {}
        for uid in live:
            c = self.category[uid]
            out[c] = out.get(c, 0) + self.size[uid]
        return out

    def close(self) -> None:
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()


def _describe(out):
    if isinstance(out, torch.Tensor):
        return ("t", tuple(out.shape), tuple(out.stride()), out.dtype, out.requires_grad)
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return (type(out).__name__, tuple(_describe(o) for o in out))
    return None


def _rebuild(desc):
    if desc[0] == "t":
        _, shape, stride, dtype, _ = desc
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    items = [_rebuild(d) for d in desc[1]]
    return tuple(items) if desc[0] == "tuple" else items


def _freeze(a):
    """A hashable description of an op argument: tensors become (shape, stride, dtype)."""
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), tuple(a.stride()), a.dtype)
    if isinstance(a, (list, tuple)):
        return tuple(_freeze(x) for x in a)
    return a


def schema_arguments(func, args: tuple, kwargs: dict) -> list:
    """Every argument of the ATen op ``func`` in its schema's order, keyword-only ones and defaults
    included (the Python dispatcher leaves out trailing defaults and passes keyword-only ones by name)."""
    out = []
    for i, a in enumerate(func._schema.arguments):
        if i < len(args) and not a.kwarg_only:
            out.append(args[i])
        else:
            out.append(kwargs.get(a.name, a.default_value if a.has_default_value() else None))
    return out


def schema_call(func, args: list):
    """Call the ATen op ``func`` with every argument in its schema's order (:func:`schema_arguments`)."""
    schema = func._schema.arguments
    positional = [a for a, s in zip(args, schema) if not s.kwarg_only]
    named = {s.name: a for a, s in zip(args, schema) if s.kwarg_only}
    return func(*positional, **named)


def tensor_leaves(x) -> list[torch.Tensor]:
    """The tensors in ``x`` (a tensor, or tuples, lists and dicts of them), in order."""
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def _is_pure(func) -> bool:
    """True for ops that neither mutate nor alias their arguments: their outputs are fresh tensors."""
    schema = func._schema
    if schema.is_mutable or any(r.alias_info is not None for r in schema.returns):
        return False
    return all(r.type.kind() == "TensorType" for r in schema.returns) or (
        len(schema.returns) > 0 and all(str(r.type) in ("Tensor", "Tensor[]") for r in schema.returns)
    )


def _check_one_dtype(name: str, args) -> None:
    """Raise as a real run does where a convolution or matrix product gets floating operands of two
    dtypes: the CPU and CUDA kernels refuse them, and some meta kernels (``mm``, ``addmm``) do not."""
    dtypes = {t.dtype for t in tensor_leaves(args) if t.is_floating_point()}
    if len(dtypes) > 1:
        raise RuntimeError(f"{name} takes operands of one dtype; received: {', '.join(sorted(map(str, dtypes)))}")


# ops that run another op's kernels, measured as it (the op, how many of their first arguments are its):
# a traced TorchScript graph calls ``_convolution``, ``convolution``'s arguments and cuDNN's four flags
_MEASURED_AS = {aten._convolution: (aten.convolution, 9)}


class _Recorder(TorchDispatchMode):
    """Sees every ATen op. Pure ops with the same argument metadata as before are not re-run through
    their (Python) meta kernels: their outputs are made directly with the recorded shapes and strides."""

    def __init__(self, storages: _Storages, stack: list[str], phase: list[str], backend_ops: set | dict):
        super().__init__()
        self._pure: dict = {}
        self._memo: dict = {}
        self.storages = storages
        self.stack = stack
        self.phase = phase
        self.backend_ops = backend_ops
        self.ops: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet in _MACS or packet in flop_registry:
            _check_one_dtype(packet.__name__, (args, kwargs))
        before = self.storages.live
        out = self._run(func, args, kwargs)
        name = packet.__name__
        new = 0
        outs = tensor_leaves(out)
        for t in outs:
            new += self.storages.add(t, "outputs in flight", output_of_op=True)
        macs = 0
        if packet in _MACS:
            macs = int(_MACS[packet](*args, **kwargs))
        elif packet in flop_registry:
            macs = int(flop_registry[packet](*args, **kwargs, out_val=out)) // 2
        elements = 0
        if not macs and name.rstrip("_") not in _NO_WORK and outs:
            elements = sum(t.numel() for t in outs if t.dtype.is_floating_point)
        rec = OpRecord(
            name,
            func,
            self.stack[-1] if self.stack else "",
            self.phase[0],
            before,
            new,
            macs,
            elements,
            tuple(outs[0].shape[1:]) if outs else (),
        )
        kind, first = _MEASURED_AS.get(packet, (packet, None))
        if kind in self.backend_ops and (
            not isinstance(self.backend_ops, dict)
            or self.backend_ops[kind] is None
            or (outs and outs[0].dtype in self.backend_ops[kind])
        ):
            rec.args_meta = tuple(_freeze(a) for a in schema_arguments(func, args, kwargs)[:first])
            overload = "default" if first else func._overloadname
            key = kind.__name__
            rec.backend_key = (key if overload == "default" else f"{key}.{overload}", rec.args_meta)
        self.ops.append(rec)
        return out

    def _run(self, func, args, kwargs):
        pure = self._pure.get(func)
        if pure is None:
            pure = self._pure[func] = _is_pure(func)
        if not pure:
            return func(*args, **kwargs)
        try:
            key = (func, _freeze(args), _freeze(tuple(sorted(kwargs.items()))))
            hash(key)
        except TypeError:
            return func(*args, **kwargs)
        desc = self._memo.get(key)
        if desc is not None:
            return _rebuild(desc)
        out = func(*args, **kwargs)
        desc = _describe(out)
        outs = tensor_leaves(out)
        if desc is not None and all(t.device.type == "meta" for t in outs):
            # an op whose schema claims a fresh result may still return a view (``_unsafe_view``):
            # rebuilt, its result would count as a new allocation, so it is never rebuilt
            inputs = {self.storages.key(t) for t in tensor_leaves((args, kwargs))}
            if any(self.storages.key(t) in inputs for t in outs):
                self._pure[func] = False
            else:
                self._memo[key] = desc
        return out


def _cpu_proxy(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with ``t``'s shape, dtype and last stride (0, 1 or another) in a few bytes of storage:
    what PyTorch's choice of attention kernel reads."""
    if t.dim() == 0:
        return torch.empty((), dtype=t.dtype)
    last = t.stride(-1) if t.stride(-1) in (0, 1) else 2
    stride = [0] * (t.dim() - 1) + [last]
    return torch.empty(1 + max(t.shape[-1] - 1, 0) * last, dtype=t.dtype).as_strided(t.shape, stride)


_cpu_attention = threading.local()  # .on: the trace runs on this thread and predicts a CPU
_attention_lock = threading.Lock()
_attention_lib: list = []  # the registration lives as long as the process


def _sdpa_on_meta(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` on meta tensors, as a CPU runs it (during a CPU trace).

    On meta, PyTorch always takes the attention's math path (``Q K^T``, softmax, ``A V`` as separate
    ops), which saves the N x N scores and probabilities for backward. A CPU runs its flash kernel
    wherever it can (``torch._fused_sdp_choice``: no dropout, 4-D inputs, equal head sizes, unit last
    strides...), which saves the output and a logsumexp of one number per query instead. That same
    choice is asked of CPU stand-ins with the inputs' shapes, dtypes and last strides; where it is
    the flash kernel, its meta function runs (a boolean mask made additive first, as PyTorch does),
    and otherwise, or outside a CPU trace, PyTorch's own decomposition.
    """
    args = (query, key, value, attn_mask, dropout_p, is_causal)
    if getattr(_cpu_attention, "on", False):
        with _disable_current_modes():  # the stand-ins are not the model's: the trace does not see them
            proxies = [_cpu_proxy(t) if isinstance(t, torch.Tensor) else t for t in args[:4]]
            choice = torch._fused_sdp_choice(
                *proxies, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
            )
        if choice == torch.nn.attention.SDPBackend.FLASH_ATTENTION.value:
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                minus_inf = torch.scalar_tensor(-math.inf, dtype=query.dtype, device=attn_mask.device)
                attn_mask = torch.where(attn_mask, 0.0, minus_inf)
            return aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
            )[0]
    return aten.scaled_dot_product_attention.default.decompose(*args, scale=scale, enable_gqa=enable_gqa)


@contextmanager
def _cpu_attention_kernels(on: bool):
    """While active on this thread (``on``), attention on meta tensors runs as on a CPU (:func:`_sdpa_on_meta`)."""
    if on:
        with _attention_lock:
            if not _attention_lib:  # PyTorch's composite, replaced for meta tensors that need autograd
                lib = torch.library.Library("aten", "IMPL")
                lib.impl("scaled_dot_product_attention", _sdpa_on_meta, "AutogradMeta")
                _attention_lib.append(lib)
    before = getattr(_cpu_attention, "on", False)
    _cpu_attention.on = on
    try:
        yield
    finally:
        _cpu_attention.on = before


def layer_type(module: nn.Module) -> str:
    """A row's type: the class name, a TorchScript module's the class it was made from
    (``"Conv2d (TorchScript)"``)."""
    if is_torchscript(module):
        return f"{getattr(module, 'original_name', None) or type(module).__name__} (TorchScript)"
    return type(module).__name__


class _Root(nn.Module):
    """A TorchScript network as the one child of a plain module: :func:`torch.func.functional_call`
    refuses a TorchScript module at the top, not below it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.add_module(_ROOT, net)

    def forward(self, *args):
        return self._modules[_ROOT](*args)


def stateless_root(model: nn.Module) -> nn.Module:
    """``model`` as :func:`torch.func.functional_call` takes it: a TorchScript network inside a
    :class:`_Root` (its state's names then start with ``"(model)."``), any other as it is."""
    return _Root(model) if is_torchscript(model) else model


@contextmanager
def _module_hooks(
    model: nn.Module, stack: list[str], layers: dict[str, LayerRecord], phase: list[str], op_count, storages=None
):
    """Forward pre/post hooks that keep the stack of running modules and record output shapes (on
    :func:`hook_points`: a TorchScript module is one row)."""
    handles = []
    seen_params: set[int] = set()
    first_op: dict[str, int] = {}
    first_in: dict[str, tuple] = {}
    leaves: dict[str, bool] = {}

    def pre(name):
        def hook(mod, inp):
            if phase[0] == "forward":
                stack.append(name)
                if name not in first_op:
                    first_op[name] = op_count()
                    first = next(iter(tensor_leaves(inp)), None)
                    first_in[name] = tuple(first.shape[1:]) if first is not None else ()

        return hook

    def post(name):
        def hook(mod, inp, out):
            if phase[0] != "forward":
                return
            stack.pop()
            rec = layers.get(name)
            if rec is None:
                act = getattr(mod, "activation", None)  # a Keras-style fused activation (spec layers)
                kind = layer_type(mod) + (f"+{act}" if isinstance(act, str) else "")
                rec = layers[name] = LayerRecord(
                    name, kind, input_shape=first_in[name], order=first_op[name], is_leaf=leaves[name]
                )
                # a TorchScript module's row holds its sub-modules' parameters: they have no row
                for p in mod.parameters(recurse=is_torchscript(mod)):
                    if id(p) not in seen_params:
                        seen_params.add(id(p))
                        rec.params += p.numel()
                        rec.trainable_params += p.numel() if p.requires_grad else 0
            first = next(iter(tensor_leaves(out)), None)
            if first is not None:
                if not rec.calls:  # a module called again keeps the shapes of its first call, in and out
                    rec.output_shape = tuple(first.shape[1:])
                rec.calls.append((op_count(), tuple(first.shape[1:])))
                if rec.output_id is None and storages is not None:
                    rec.output_id = storages.uid(first)

        return hook

    try:
        for name, mod, leaf in hook_points(model):
            leaves[name] = leaf
            handles += add_hooks(mod, pre(name), post(name))
        yield
    finally:
        for h in handles:
            h.remove()


def meta_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Meta copies of the parameters and buffers, floating ones in ``dtype``, same requires_grad."""
    state = {}
    for name, p in model.named_parameters():
        state[name] = torch.empty(
            p.shape, dtype=dtype if p.is_floating_point() else p.dtype, device="meta"
        ).requires_grad_(p.requires_grad)
    for name, b in model.named_buffers():
        state[name] = torch.empty(b.shape, dtype=dtype if b.is_floating_point() else b.dtype, device="meta")
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
    """The loss of an analysed training step, over every floating output that needs a gradient (a
    detector's class scores, boxes and centre-ness all train): cross-entropy for (B, K) logits, else
    the mean; their sum."""
    leaves = tensor_leaves(out)
    outs = [t for t in leaves if t.is_floating_point() and t.requires_grad] or leaves[:1]
    loss = None
    for o in outs:
        if o.dim() == 2 and o.shape[1] > 1:
            target = torch.zeros(o.shape[0], dtype=torch.long, device=o.device)
            term = nn.functional.cross_entropy(o, target)
        else:
            term = o.float().mean()
        loss = term if loss is None else loss + term
    return loss


def training_step(forward, optimizer) -> None:
    """One optimizer step exactly as analysed and as measured: forward, loss, backward, step, zero_grad."""
    loss = step_loss(forward())
    loss.backward()
    del loss
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def trace(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype,
    training: bool,
    optimizer: str = "sgd",
    backend_ops: set | dict | None = None,
    device: str = "cpu",
) -> Trace:
    """Run ``model`` on a meta input of ``input_shape`` (batch included) and record everything.

    Inference: eval mode under ``torch.no_grad``. Training: train mode, one warm-up step (so that the
    optimizer state exists, as in every step after the first), then the recorded step.
    The model's own parameters are never touched; its train/eval mode is restored. On ``device``
    ``cpu``, attention runs the kernel the CPU picks (:func:`_sdpa_on_meta`), and multi-head attention
    and encoder layers their inference fast path where the CPU takes it
    (:func:`cnnkit.analysis.fastpath.cpu_fast_paths`); on ``cuda``, the math path and the Python path.
    A TorchScript module (scripted or traced, the whole network or a part) runs its compiled code,
    whose ops the trace sees, and is one row (:func:`hook_points`).
    """
    backend_ops = backend_ops or set()
    ops: list[OpRecord] = []
    storages = _Storages(lambda: len(ops))
    stack: list[str] = []
    phase = ["forward"]
    layers: dict[str, LayerRecord] = {}
    net = stateless_root(model)
    state = meta_state(net, dtype)
    x = torch.empty(input_shape, dtype=dtype, device="meta")
    param_names = {name for name, _ in net.named_parameters()}
    params = [t for name, t in state.items() if name in param_names and t.requires_grad]
    was_training = model.training
    model.train(training)
    saved: dict[int, str] = {}  # uid -> module that saved it for backward

    def forward():
        return functional_call(net, state, (x,), strict=False)

    opt = None
    try:
        if training:
            opt = make_optimizer(optimizer, params) if params else None
            if opt is not None:  # the state every step after the first starts with, without a warm-up pass
                for p in params:
                    p.grad = torch.empty_like(p)
                opt.step()
                opt.zero_grad(set_to_none=True)
        for name, t in state.items():
            storages.add(t, "parameters" if name in param_names else "buffers")
        storages.add(x, "input")
        if opt is not None:
            for st in opt.state.values():
                for v in st.values():
                    if isinstance(v, torch.Tensor) and v.device.type == "meta":
                        storages.add(v, "optimizer state")
        baseline = storages.live_by_category(0)
        recorder = _Recorder(storages, stack, phase, backend_ops)
        recorder.ops = ops

        def pack(t):
            uid = storages.uid(t) if t.device.type == "meta" else None
            if uid is not None and uid not in saved and storages.category[uid] == "outputs in flight":
                saved[uid] = stack[-1] if stack else ""
                storages.category[uid] = "activations"
            return t

        kernels = _cpu_attention_kernels(device == "cpu")
        fast = cpu_fast_paths(model, device == "cpu")  # before the trace's hooks: those the model has are its own
        with fast, _module_hooks(net, stack, layers, phase, lambda: len(ops), storages), kernels, recorder:
            if training:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = forward()
                    phase[0] = "loss"
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
    finally:
        model.train(was_training)
        storages.close()

    peak_i, peak = 0, sum(baseline.values())
    for i, op in enumerate(ops):
        total = op.live_before + op.out_bytes
        if total > peak:
            peak_i, peak = i, total
    for uid, name in saved.items():
        if name in layers:
            layers[name].saved_bytes += storages.size[uid]
    own = list(net.parameters(recurse=False))
    if own:  # parameters of the model itself (not of a sub-module) get a row of their own
        layers[_ROOT] = LayerRecord(
            _ROOT,
            type(model).__name__,
            params=sum(p.numel() for p in own),
            trainable_params=sum(p.numel() for p in own if p.requires_grad),
            order=-1,
        )
    _attribute_ops(ops, layers)
    return Trace(ops, layers, baseline, peak_i, peak, storages, sum(storages.size[uid] for uid in saved))


def _attribute_ops(ops: list[OpRecord], layers: dict[str, LayerRecord]) -> None:
    """Add each forward op's MACs and element-work to the row of the module that ran it.

    Ops run directly by a container's ``forward`` (``x + identity``, ``torch.cat``, ``F.conv2d``)
    go to the container's own row where it has one (it has parameters: a Keras ``Conv2D`` whose
    activation is a child module), else to a row of their own named after it, so that nothing is
    silently dropped.
    """
    for i, op in enumerate(ops):
        if op.phase != "forward":
            continue
        name = op.module
        owner = layers.get(name)
        if owner is None or (not owner.is_leaf and not owner.params):
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

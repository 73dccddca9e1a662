"""``cnnkit.summary``: shapes, parameters, MACs and memory of any CNN, before training it.

Record (``trace.py``) -> aggregate (here) -> format (``report.py``). The :class:`Summary` is plain data:
``to_dict()`` is the JSON interface people script against; ``str()`` is the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnnkit.analysis import backend
from cnnkit.analysis.textbook import textbook_memory
from cnnkit.analysis.trace import layer_type, trace
from cnnkit.errors import CnnkitError, check_fits, is_out_of_memory, out_of_memory, short_error
from cnnkit.models.network import resolve_target
from cnnkit.models.scripted import add_hooks, hook_points, is_torchscript, torchscript_parts
from cnnkit.models.spec import parse_input_size

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPTIMIZERS = ("none", "sgd", "momentum", "adam", "adamw")
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of 512 bytes


@dataclass
class Summary:
    """Everything ``cnnkit summary`` reports, for the given input and batch.

    ``str(summary)`` is the text table ``cnnkit summary`` prints; :meth:`to_dict` the JSON of
    ``--format json``.

    Attributes:
        model: the model's name (zoo name, spec file or class name).
        input_size: one input's shape, channels first, without the batch.
        batch_size: the batch the MACs and memory are counted for.
        dtype: ``float32`` | ``float16`` | ``bfloat16`` of parameters and activations.
        optimizer: the optimizer whose state the training memory includes (``none``: none).
        device: ``cpu`` | ``cuda``: whose allocator the memory figures predict.
        layers: one row per layer: name, type, output shape, parameters, MACs, activation bytes.
        totals: ``params``, ``trainable_params``, ``non_trainable_params``, ``macs``, ``other_ops``,
            ``training_macs`` (None without a training step), ``param_bytes``, ``buffer_bytes``.
        memory: peak memory of inference and of a training step, and what makes it up.
        textbook: the textbook estimate (parameters plus every layer's output) beside the measured peak.
        notes: lines explaining the figures (e.g. why no training step could be traced).
    """

    model: str
    input_size: tuple[int, ...]  # channels first, without the batch
    batch_size: int
    dtype: str
    optimizer: str
    device: str
    layers: list[dict]
    totals: dict
    memory: dict
    textbook: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "device": self.device,
            "layers": self.layers,
            "totals": self.totals,
            "memory": self.memory,
            "textbook": self.textbook,
            "notes": self.notes,
        }

    def __str__(self) -> str:
        from cnnkit.analysis.report import render_text

        return render_text(self)

    def __rich_console__(self, console, options):
        from cnnkit.analysis.report import renderables

        yield from renderables(self)


def summary(
    target,
    input_size=None,
    batch_size: int = 1,
    dtype: str = "float32",
    optimizer: str = "sgd",
    device: str = "cpu",
    backend_model: bool = True,
    time_steps: int | None = None,
) -> Summary:
    """Analyse a network: shapes, parameters, MACs and memory of inference and of a training step.

    The network runs on the meta device (no memory is allocated for real), so any size can be asked.

    Args:
        target: an ``nn.Module``, a zoo name, a ``.yaml``/``.json`` spec, a Keras ``.keras``/``.h5``
            file or ``file.py:factory``.
        input_size: ``(C, H, W)`` / ``"3x224x224"`` (also ``CxL`` and ``CxDxHxW``); defaults to the
            model's own default input size where it has one.
        batch_size: the batch for MACs and memory.
        dtype: ``float32``, ``float16`` or ``bfloat16`` for parameters and activations.
        optimizer: the optimizer of the training step (``none`` = forward and backward only).
        device: ``cpu`` or ``cuda``: which allocator's behaviour to predict.
        backend_model: measure what the CPU backend (oneDNN) allocates inside convolutions; off, the
            peak is the ATen-level one (what the tensors alone add up to).
        time_steps: also run this many real training steps (after two untimed ones) on a random batch
            and time each layer's forward and backward pass (:func:`cnnkit.analysis.measure.measure_times`):
            the rows get ``forward_ms`` and ``backward_ms``, the totals ``time``. None: not run.

    Returns:
        The :class:`Summary`: ``print()`` it for the table, ``.totals`` / ``.to_dict()`` for numbers.

    Raises:
        CnnkitError: for bad arguments, or a model that fails on the given input (naming the layer).

    Example:
        >>> s = summary("keras_mnist_convnet", input_size="1x28x28")  # doctest: +SKIP
    >>> s.totals["params"]                                         # doctest: +SKIP
    93322
    """
    check_options(batch_size, dtype, optimizer, device)
    if time_steps is not None:
        _check_time(time_steps, device)
    model, default_size, name = resolve_target(target)
    if input_size is None:
        if default_size is None:
            raise CnnkitError(f"{name} has no default input size: pass --input CxHxW (e.g. 3x224x224)")
        input_size = default_size
    input_size = parse_input_size(input_size)
    check_elements(batch_size, input_size)
    torch_dtype = DTYPES[dtype]
    shape = (batch_size, *input_size)
    use_backend = backend_model and device == "cpu"
    ops = backend.CPU_BACKEND_OPS if use_backend else set()

    inf = _run_trace(model, shape, torch_dtype, False, optimizer, ops, name, device)
    has_trainable = any(p.requires_grad for p in model.parameters())
    tr, train_error = None, None
    if has_trainable:
        try:
            tr = _run_trace(model, shape, torch_dtype, True, optimizer, ops, name, device)
        except CnnkitError as exc:  # e.g. batch-norm on a batch of one: inference is still reported
            train_error = f"no training step at batch {batch_size}: {exc}"

    op_bytes, unmeasured = {}, 0
    if use_backend:
        all_ops = inf.ops + (tr.ops if tr else [])
        with backend.quiet_stderr():
            op_bytes = backend.op_peaks(all_ops)
        unmeasured = len({op.backend_key for op in all_ops if op.backend_key is not None} - set(op_bytes))

    rows = _rows(inf)
    if tr is not None:
        saved = {r.name: r.saved_bytes for r in tr.layers.values()}
        for row in rows:
            row["saved_bytes"] = saved.get(row["name"], 0)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    param_bytes = sum(p.numel() * (itemsize if p.is_floating_point() else p.element_size()) for p in model.parameters())
    totals = {
        "params": params,
        "trainable_params": trainable,
        "non_trainable_params": params - trainable,
        "macs": sum(op.macs for op in inf.ops),
        "other_ops": sum(op.elements for op in inf.ops),
        "training_macs": sum(op.macs for op in tr.ops) if tr else None,
        "param_bytes": param_bytes,
        "buffer_bytes": inf.baseline.get("buffers", 0),
    }
    memory = _memory(inf, tr, op_bytes, device)
    same = _same_output(inf, rows)  # once: it compares every pair of rows
    outputs = [(n, shape) for n, shape in _outputs(inf, rows) if n not in same]
    textbook = textbook_memory(rows, input_size, batch_size, itemsize, params, outputs)
    notes = _explain(memory, textbook, use_backend, device)
    if unmeasured:
        notes.append(
            f"{unmeasured} backend op(s) were too large (or too odd) to measure cheaply on this CPU: their "
            "figure is the ATen-level one, without oneDNN's copies"
        )
    unused = _unused_params(model, inf)
    if unused:
        n = sum(unused.values())
        names = ", ".join(list(unused)[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
        notes.append(
            f"{n:,} parameters belong to layers this input never runs ({names}): they are in the total "
            "and the parameter bytes, in no row"
        )
    hidden = torchscript_parts(model)
    if hidden:
        names = ", ".join(hidden[:3]) + (f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        if is_torchscript(model):
            what = "the network is"
        else:
            what = f"layers {names} are" if len(hidden) > 1 else f"layer {names} is"
        notes.append(
            f"{what} TorchScript: compiled code, which runs its layers without the hooks that tell them apart, "
            "so it is one row, with their parameters, MACs and memory"
        )
    if train_error:
        notes.insert(0, train_error)
    if time_steps is not None:
        peak = memory["training_peak_bytes"] or memory["inference_peak_bytes"]
        totals["time"], layer_ms = _time_layers(
            target, model, shape, torch_dtype, optimizer, device, time_steps, peak, tr is not None
        )
        for row in rows:
            t = layer_ms.get(row["name"], {})
            row["forward_ms"], row["backward_ms"] = t.get("forward_ms"), t.get("backward_ms")
        notes.append(_time_note(totals["time"]))
    return Summary(name, input_size, batch_size, dtype, optimizer, device, rows, totals, memory, textbook, notes)


MAX_BATCH = (1 << 31) - 1
# numbers in one batch of inputs: PyTorch indexes tensors with 64-bit integers, and the layers
# multiply the input's numbers by their channels, so a batch beyond 2**48 numbers is refused
MAX_ELEMENTS = 1 << 48


def check_options(batch_size, dtype, optimizer, device) -> None:
    """Raise a one-line :class:`CnnkitError` for a bad batch, dtype, optimizer or device."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CnnkitError(f"--dtype must be one of {', '.join(DTYPES)}; received: {str(dtype)[:40]!r}")
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise CnnkitError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; received: {str(optimizer)[:40]!r}")
    if not isinstance(device, str) or device not in ("cpu", "cuda"):
        raise CnnkitError(f"--device must be cpu or cuda; received: {str(device)[:40]!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise CnnkitError(f"--batch must be an integer from 1 to {MAX_BATCH:,}; received: {str(batch_size)[:40]}")


def check_elements(batch_size: int, input_size: tuple[int, ...]) -> None:
    """Refuse a batch of inputs too large for PyTorch to index (it would overflow, not be analysed)."""
    n = batch_size
    for d in input_size:
        n *= d
    if n > MAX_ELEMENTS:
        raise CnnkitError(
            f"a batch of {batch_size:,} inputs of {'x'.join(map(str, input_size))} is {n:,} numbers, more "
            f"than the {MAX_ELEMENTS:,} the analyser can index; use a smaller --batch or --input"
        )


def _run_trace(model, shape, dtype, training, optimizer, ops, name, device):
    try:
        return trace(model, shape, dtype, training, optimizer, ops, device)
    except CnnkitError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        if dtype != torch.float32 and _runs_in_float32(model, shape, training, device):
            line = short_error(exc)
            dtype_name = str(dtype).removeprefix("torch.")
            raise CnnkitError(
                f"{name} does not run with its parameters and input in {dtype_name} ({line}), though it runs in "
                "float32: analyse it with --dtype float32"
            ) from None
        raise CnnkitError(_failure_message(model, shape, exc, name)) from None


def _runs_in_float32(model, shape, training, device) -> bool:
    """Whether the same step traces in float32: a failure only in a 16-bit dtype is the dtype's (a network
    that computes in float32 whatever its input, as MultiRocket does), not the layers' sizes'."""
    try:
        trace(model, shape, torch.float32, training, "none", set(), device)
    except Exception:  # noqa: BLE001 -- any failure: it is not the dtype's alone
        return False
    return True


def _failure_message(model: nn.Module, shape, exc: Exception, name: str) -> str:
    """One line naming the layer where the forward failed, the shapes involved, and the fix."""
    layer, again = _failing_layer(model, shape)
    msg = short_error(exc, clause=True)
    if msg.endswith(":") and again is not None:
        # TorchScript loses the reason of an error raised under the trace's dispatch mode
        # ("RuntimeError:" and nothing); the same forward without it keeps the reason
        msg = short_error(again, clause=True)
    where = f" at layer {layer[0]!r} ({layer[1]}) with input {layer[2]}" if layer else ""
    if layer and layer[3]:
        where += f" (it expects {layer[3]})"
    return f"{name} fails on input {tuple(shape[1:])}{where}: {msg}; fix the layer's sizes or pass another --input"


def _failing_layer(model: nn.Module, shape):
    """Re-run on meta with hooks to find the innermost module whose forward raised: ``((name, type,
    input shapes, what it expects) or None, the exception or None)``."""
    from torch.func import functional_call

    from cnnkit.analysis.trace import meta_state, stateless_root

    found = []
    handles = []
    raised = None

    def pre(name):
        def hook(mod, inp):
            expects = ", ".join(
                f"{a}={getattr(mod, a)}"
                for a in ("in_channels", "in_features", "num_features")
                if isinstance(getattr(mod, a, None), int)
            )
            found.append(
                (name, layer_type(mod), [tuple(t.shape[1:]) for t in inp if isinstance(t, torch.Tensor)], expects)
            )

        return hook

    def post(mod, inp, out):
        found.pop()

    net = stateless_root(model)
    try:
        for n, m, _ in hook_points(net):
            handles += add_hooks(m, pre(n), post)
        state = meta_state(net, torch.float32)
        try:
            with torch.no_grad():
                functional_call(net, state, (torch.empty(shape, device="meta"),), strict=False)
        except Exception as exc:  # noqa: BLE001 -- we only want where it fails
            raised = exc
    finally:
        for h in handles:
            h.remove()
    if not found:
        return None, raised
    name, typ, shapes, expects = found[-1]
    return (name, typ, shapes[0] if len(shapes) == 1 else shapes, expects), raised


def _same_output(inf, rows: list[dict]) -> set[str]:
    """Rows whose output is the output of a row around them (a Keras layer's activation, the last
    layer of a block with parameters): one tensor, which the textbook counts once."""
    ids = {name: rec.output_id for name, rec in inf.layers.items()}
    names = [r["name"] for r in rows]
    return {
        n
        for n in names
        if ids.get(n) is not None and any(n.startswith(f"{p}.") and ids.get(p) == ids[n] for p in names)
    }


def _outputs(inf, rows: list[dict]) -> list[tuple[str, tuple]]:
    """(row name, output shape) of every output the rows' layers produce, in execution order: a module
    called three times (a ResNet block's ReLU) produces three outputs."""
    out = []
    for r in rows:
        rec = inf.layers[r["name"]]
        if rec.calls:
            out += [(i, r["name"], shape) for i, shape in rec.calls]
        elif r["output_shape"]:
            out.append((rec.order, r["name"], tuple(r["output_shape"])))
    return [(name, shape) for _, name, shape in sorted(out, key=lambda t: t[0])]


def _rows(inf) -> list[dict]:
    rows = []
    for r in sorted(inf.layers.values(), key=lambda r: r.order):
        if not r.is_leaf and not r.params:
            continue
        rows.append(
            {
                "name": r.name,
                "type": r.type if not r.op_names else f"{r.type}({', '.join(r.op_names)})",
                "input_shape": list(r.input_shape),
                "output_shape": list(r.output_shape),
                "params": r.params,
                "trainable_params": r.trainable_params,
                "macs": r.macs,
                "other_ops": r.other_ops,
            }
        )
    return rows


def _unused_params(model: nn.Module, inf) -> dict[str, int]:
    """Module name -> parameters of the modules whose forward never ran (a detector's mask head
    without detections, a backbone's unused classifier): counted in the totals, in no row. A
    TorchScript module that ran ran all of its sub-modules (which have no rows of their own)."""
    ran = {
        id(p)
        for name, mod in model.named_modules()
        if name == "" or name in inf.layers
        for p in mod.parameters(recurse=is_torchscript(mod))
    }
    out: dict[str, int] = {}
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False) if id(p) not in ran]
        ran.update(id(p) for p in own)  # a parameter shared by two idle modules counts once
        if own:
            out[name] = sum(p.numel() for p in own)
    return out


MAX_TIME_STEPS = 1000


def _check_time(steps, device: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TIME_STEPS:
        raise CnnkitError(f"--time takes a number of steps from 1 to {MAX_TIME_STEPS}. Received: {steps!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CnnkitError("--time runs the network for real, and this machine has no CUDA device: use --device cpu")


def _time_layers(target, model, shape, dtype, optimizer, device, steps, peak, training) -> tuple[dict, dict]:
    """:func:`~cnnkit.analysis.measure.measure_times` on a real copy of the network, in milliseconds:
    the step's figures, and layer name -> ``{"forward_ms", "backward_ms"}``."""
    import copy

    from cnnkit.analysis.measure import measure_times

    what = f"{'a training step' if training else 'a forward pass'} at batch {shape[0]} (--time)"
    if isinstance(target, nn.Module):
        if any(t.device.type == "meta" for t in [*target.parameters(), *target.buffers()]):
            raise CnnkitError(
                "--time runs the network for real: give a network whose weights are not on the meta device"
            )
        real = copy.deepcopy(target)  # the caller's network is left as it is
    else:
        real = resolve_target(target, meta=False)[0]
    if device == "cpu":
        check_fits(peak, f"timing {what}")
    try:
        t = measure_times(real, shape, dtype, optimizer, device, steps, training=training)
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(f"timing {what}") from None
        line = short_error(exc, clause=True)
        raise CnnkitError(
            f"the network failed when run for real while timing {what}: {line}; run without --time"
        ) from None
    ms = lambda d: {k: 1000 * v for k, v in d.items()}  # noqa: E731
    step = {
        **{k: t[k] for k in ("steps", "threads", "device", "layout", "training")},
        **{f"{k}_ms": v for k, v in ms(t["step"]).items()},
        "outside_forward_ms": 1000 * t["outside"]["forward"],
        "outside_backward_ms": 1000 * t["outside"]["backward"],
    }
    return step, {name: {f"{k}_ms": v for k, v in ms(d).items()} for name, d in t["layers"].items()}


def _time_note(t: dict) -> str:
    what = "training step" if t["training"] else "inference pass"
    n = t["steps"]
    runs = f"the median of {n} real {what}{'es' if what.endswith('s') else 's'}" if n > 1 else f"one real {what}"
    return (
        f"times: {runs}{'' if t['training'] else ' (nothing trains)'} on a random batch, after 2 untimed ones, "
        f"{t['threads']} threads on {t['device']}, {t['layout'].replace('_', '-')} layout; a layer's backward "
        "runs from its output gradient's arrival to the next layer's, so it includes the functional "
        "operations (additions, concatenations) between them"
    )


def _round_cuda(n: int) -> int:
    return -(-n // CUDA_BLOCK) * CUDA_BLOCK


def _memory(inf, tr, op_bytes, device) -> dict:
    inf_peak, inf_i = inf.peak(op_bytes)
    mem = {
        "inference_peak_bytes": inf_peak,
        "inference_breakdown": inf.breakdown(inf_i, op_bytes),
        "inference_peak_at": _where(inf, inf_i),
        "training_peak_bytes": None,
        "training_breakdown": None,
        "training_peak_at": None,
        "saved_activation_bytes": None,
        "aten_level": {"inference_peak_bytes": inf.peak_bytes, "training_peak_bytes": tr.peak_bytes if tr else None},
    }
    if tr is not None:
        tr_peak, tr_i = tr.peak(op_bytes)
        mem.update(
            training_peak_bytes=tr_peak,
            training_breakdown=tr.breakdown(tr_i, op_bytes),
            training_peak_at=_where(tr, tr_i),
            saved_activation_bytes=tr.saved_bytes,
        )
        top = sorted(tr.layers.values(), key=lambda r: -r.saved_bytes)[:5]
        mem["dominant_layers"] = [
            {"name": r.name, "type": r.type, "saved_bytes": r.saved_bytes} for r in top if r.saved_bytes
        ]
    if device == "cuda":  # the caching allocator's 512-byte blocks
        for k in ("inference_peak_bytes", "training_peak_bytes"):
            if mem[k] is not None:
                mem[k] = _round_cuda(mem[k])
    return mem


def _where(tr, i: int) -> dict:
    if i < 0:
        return {"op": None, "phase": None, "layer": None}
    op = tr.ops[i]
    return {"op": op.name, "phase": op.phase, "layer": op.module or None}


def _explain(memory: dict, textbook: dict, backend_on: bool, device: str) -> list[str]:
    notes = []
    for kind in ("inference", "training"):
        real = memory[f"{kind}_peak_bytes"]
        book = textbook[f"{kind}_bytes"]
        if real is None:
            continue
        ratio = real / book if book else float("inf")
        bd = memory[f"{kind}_breakdown"]
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(bd.items(), key=lambda kv: -kv[1]) if v)
        at = memory[f"{kind}_peak_at"]
        where = (
            f" during {at['phase']} op {at['op']}" + (f" in {at['layer']}" if at["layer"] else "") if at["op"] else ""
        )
        notes.append(
            f"{kind}: real peak {real:,} B is {ratio:.2f}x the textbook's {book:,} B{where}; live then: {parts}."
        )
    if memory["training_peak_bytes"] is not None:
        notes.append(
            "why they differ: the textbook counts each layer's output once; PyTorch also holds "
            "gradients, optimizer state, what autograd saves (inputs of convolutions, "
            "batch-norm statistics, pooling indices, dropout masks), backward's temporaries"
            + (
                ", and oneDNN's blocked copies of inputs, weights and outputs inside each convolution"
                if backend_on
                else ""
            )
            + "; it also frees some outputs the textbook "
            "keeps (in-place ReLU, views)."
        )
    if device == "cuda":
        notes.append(
            "cuda: predicted from the ATen-level trace with the caching allocator's 512-byte "
            "rounding; cuDNN workspaces are not included (no GPU was measured)."
        )
    return notes

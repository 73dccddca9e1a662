"""ONNX out: one ``.onnx`` file that ONNX Runtime runs, checked against PyTorch before it is kept.

:func:`export_onnx` writes any ``nn.Module`` that maps one tensor to a tensor, a tuple of tensors or
a dict of tensors (a detector's raw ``cls``/``box``/``ctr`` maps) as ONE self-contained file
(weights inside, no ``.onnx.data``) with a dynamic batch axis. It first tries PyTorch's dynamo
exporter (``torch.export`` + onnxscript), then the TorchScript one, and says which it used. Before
the file is given its name, ONNX Runtime runs it on the example and on a batch of another size and
its outputs must match PyTorch's: ``max |ort - torch| <= atol + rtol * max |torch|`` per output.
Otherwise nothing is left behind (the export goes to a temporary file in the same folder and is
renamed only when it passed).

:class:`OnnxModel` runs such a file for prediction: a callable from a tensor to what the PyTorch
model returned (a tensor, a tuple, or a dict with the same keys).

>>> report = export_onnx(model, torch.rand(1, 3, 224, 224), "model.onnx")   # doctest: +SKIP
>>> OnnxModel("model.onnx")(torch.rand(8, 3, 224, 224)).shape                 # doctest: +SKIP
torch.Size([8, 1000])
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError

OUTPUTS_KEY = "cnnkit.outputs"  # metadata_props entry: {"kind": "tensor" | "tuple" | "dict", "names": [...]}


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime reproduced PyTorch."""

    path: Path  # the .onnx file
    exporter: str  # "dynamo" (torch.export + onnxscript) or "torchscript"
    fallback: str | None  # why the dynamo exporter was not used (None when it was)
    outputs: list[str]  # the ONNX output names, in order
    dynamic_batch: bool
    dynamic_size: bool  # the spatial axes are free too
    checked: bool  # ONNX Runtime ran it and agreed with PyTorch
    input_shapes: tuple[tuple[int, ...], ...]  # the inputs it was checked on
    max_diff: float  # the largest max|ort - torch| / max|torch| over outputs and batches
    size_bytes: int

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        check = (
            f"ONNX Runtime matches PyTorch (max diff {self.max_diff:.1e} of the output scale, inputs {shapes})"
            if self.checked
            else "not checked"
        )
        via = self.exporter + (f" (dynamo failed: {self.fallback})" if self.fallback else "")
        free = [axis for axis, on in (("batch", self.dynamic_batch), ("size", self.dynamic_size)) if on]
        return (
            f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, exporter {via}, outputs "
            f"{', '.join(self.outputs)}{', dynamic ' + ' and '.join(free) if free else ''}); {check}"
        )

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes it was checked on."""
        return tuple(s[0] for s in self.input_shapes)


class _Flat(nn.Module):
    """The model with its outputs as a flat tuple in a fixed order (dict keys, tuple items)."""

    def __init__(self, model: nn.Module, keys: list | None):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, dict):
            return tuple(out[k] for k in self.keys)
        return tuple(out)


def _structure(out) -> tuple[str, list[str], list[torch.Tensor]]:
    """(kind, output names, tensors) of a model's output."""
    if isinstance(out, torch.Tensor):
        return "tensor", ["output"], [out]
    if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        names = [str(k) for k in out]
        if len(set(names)) != len(names):
            raise CnnkitError(f"the model's output keys {names} are not distinct as strings")
        return "dict", names, list(out.values())
    if isinstance(out, (tuple, list)) and out and all(isinstance(v, torch.Tensor) for v in out):
        return "tuple", [f"output_{i}" for i in range(len(out))], list(out)
    raise CnnkitError(
        f"ONNX export needs a model that returns a tensor, a tuple or a dict of tensors; this one "
        f"returns {type(out).__name__}"
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    first = text.split(". ")[0]
    return first if len(first) <= 200 else first[:197] + "..."


EXPORTERS = ("auto", "dynamo", "torchscript")


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines, warnings and log records kept off the console."""
    sink, logger = io.StringIO(), logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(
    flat: nn.Module,
    example: torch.Tensor,
    tmp: str,
    names: list[str],
    batched: list[bool],
    dynamic_batch: bool,
    dynamic_size: bool,
    opset: int | None,
    exporter: str,
) -> tuple[str, str | None]:
    """Write ``flat`` to ``tmp``; returns (the exporter used, why dynamo was not).

    ``exporter="auto"`` tries the dynamo exporter (``torch.export`` + onnxscript, PyTorch's default)
    and falls back to the TorchScript one; ``batched[i]`` says whether output i has the batch axis.
    """
    common = {"input_names": ["input"], "output_names": names, "external_data": False}
    if opset is not None:
        common["opset_version"] = opset
    why = None
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet():
                dims = {0: torch.export.Dim("batch", min=1, max=1 << 16)} if dynamic_batch else {}
                if dynamic_size:  # AUTO: torch.export finds the sizes the network allows (or specialises)
                    dims.update({i: torch.export.Dim.AUTO for i in range(2, example.dim())})
                shapes = (dims,) if dims else None
                torch.onnx.export(flat, (example,), tmp, dynamo=True, dynamic_shapes=shapes, verbose=False, **common)
            return "dynamo", None
        except Exception as exc:  # noqa: BLE001 -- any failure of the new exporter: try the TorchScript one
            why = _short(exc)
            if exporter == "dynamo":
                raise CnnkitError(f"the dynamo ONNX exporter failed: {why}; try exporter='torchscript'") from None
    axes = None
    if dynamic_batch or dynamic_size:
        axes = {
            "input": {
                **({0: "batch"} if dynamic_batch else {}),
                **({i: f"size_{i}" for i in range(2, example.dim())} if dynamic_size else {}),
            }
        }
        for n, b in zip(names, batched):
            if b and dynamic_batch:
                axes[n] = {0: "batch"}
    try:
        with _quiet():
            torch.onnx.export(flat, (example,), tmp, dynamo=False, dynamic_axes=axes, **common)
    except Exception as exc:  # noqa: BLE001 -- the model cannot be exported: say why, with both exporters' reasons
        before = f"dynamo exporter: {why}; " if why else ""
        raise CnnkitError(
            f"the model cannot be exported to ONNX: {before}TorchScript exporter: {_short(exc)}"
        ) from None
    return "torchscript", why


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise CnnkitError("running ONNX files needs onnxruntime: pip install 'cnnkit[onnx]'") from None
    return onnxruntime


def _session(path, threads: int | None = None):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- InvalidProtobuf, Fail, ...: not an ONNX model ORT can run
        raise CnnkitError(
            f"{path} is not an ONNX model ONNX Runtime can run ({_short(exc)}); give a file written by `cnnkit export`"
        ) from None


def _add_metadata(path: str, props: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise CnnkitError("writing ONNX metadata needs onnx: pip install 'cnnkit[onnx]'") from None
    model = onnx.load(path)
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        entry = existing.get(k) or model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, path)


def _compare(
    sess, flat: nn.Module, x: torch.Tensor, rtol: float, atol: float, names: list[str], optional: bool = False
) -> float | None:
    """The worst max|ort - torch| / max|torch| over the outputs; CnnkitError past ``atol + rtol * scale``.

    ``optional``: an input PyTorch itself cannot run (a size the network does not take) gives None.
    """
    try:
        with torch.no_grad():
            ref = flat(x)
    except RuntimeError:
        if optional:
            return None
        raise
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    try:
        got = sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().float().numpy()})
    except Exception as exc:  # noqa: BLE001 -- ORT's Fail / InvalidArgument: the graph fixed a size that varies
        raise CnnkitError(
            f"ONNX Runtime cannot run the export on an input of shape {tuple(x.shape)} ({_short(exc)}); "
            "the export was not kept (without dynamic_size / --dynamic-size the image size is fixed)"
        ) from None
    worst = 0.0
    for name, r, g in zip(names, ref, got, strict=True):
        r = r.detach().cpu().float().numpy()
        if r.shape != g.shape:
            raise CnnkitError(
                f"ONNX Runtime's output {name} has shape {g.shape} for a batch of {len(x)}, PyTorch's "
                f"{r.shape}; the export is wrong and was not kept"
            )
        diff = float(np.abs(r - g).max()) if r.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 0.0
        if not np.isfinite(diff) or diff > atol + rtol * scale:
            raise CnnkitError(
                f"ONNX Runtime's output {name} differs from PyTorch's by {diff:.3g} (output scale "
                f"{scale:.3g}, allowed {atol + rtol * scale:.3g}) on a batch of {len(x)}; the export "
                "was not kept"
            )
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    opset: int | None = None,
    exporter: str = "auto",
    metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Write ``model`` (in eval mode) to one ONNX file and prove ONNX Runtime gives PyTorch's outputs.

    Args:
        model: a module from one tensor to a tensor, a tuple of tensors, or a dict of tensors (its
            keys become the ONNX output names; a tuple's items are ``output_0``, ``output_1``...).
        example: a real input (N, C, ...) (a batch of images as the model expects them).
        path: the ``.onnx`` file to write; its folder is created.
        dynamic_batch: the batch axis is free (checked on the example and a batch of another size).
        dynamic_size: the spatial axes are free too, where the network allows it (checked on the
            example resized by +32 per axis; a network that fixes its size fails the check).
        check: run the file in ONNX Runtime and compare with PyTorch before keeping it.
        rtol: allowed ``max |ort - torch|`` as a fraction of ``max |torch|``, per output.
        atol: allowed absolute difference on top (for outputs that are all near zero).
        opset: the ONNX opset (default: the exporter's).
        exporter: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript" (faster to
            export; the ONNX Runtime check holds either way).
        metadata: extra ``metadata_props`` stored in the file (e.g. classes, input size).

    Returns:
        An :class:`ExportReport` (``str()`` gives one line for the console).

    Raises:
        CnnkitError: the model cannot be exported, or ONNX Runtime disagrees with PyTorch; no file is left.
    """
    if not isinstance(example, torch.Tensor) or example.dim() < 1 or example.shape[0] < 1:
        raise CnnkitError(
            f"export_onnx needs an example input tensor with a batch axis. Received: "
            f"{type(example).__name__} {tuple(getattr(example, 'shape', ()))}"
        )
    path = Path(path)
    if path.is_dir():
        raise CnnkitError(f"{path} is a folder; give the .onnx file to write (--out model.onnx)")
    if exporter not in EXPORTERS:
        raise CnnkitError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}. Received: {exporter!r}")
    if check:
        _ort()
    was_training = model.training
    model.eval()
    example = example.detach().float().cpu()
    try:
        with torch.no_grad():
            # torch.export specialises a dimension of size 1: trace a batch of 2 when the batch is dynamic
            traced = torch.cat([example, example[:1].flip(-1)]) if dynamic_batch and len(example) == 1 else example
            kind, names, outs = _structure(model(traced))
        flat = _Flat(model, names if kind == "dict" else None).eval()
        batched = [o.dim() > 0 and o.shape[0] == len(traced) for o in outs]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
        except OSError as exc:
            raise CnnkitError(f"cannot write in {path.parent} ({exc.strerror or exc}); choose another --out") from None
        try:
            used, why = _export(flat, traced, tmp, names, batched, dynamic_batch, dynamic_size, opset, exporter)
            _add_metadata(tmp, {OUTPUTS_KEY: json.dumps({"kind": kind, "names": names}), **(metadata or {})})
            checked: tuple[tuple[int, ...], ...] = ()
            worst = 0.0
            if check:
                sess = _session(tmp)
                inputs = [(example, False)]
                if dynamic_batch:  # another batch size, real values
                    inputs.append((torch.cat([example, example[:1].flip(-1)]), False))
                if dynamic_size:  # other sizes: +32 keeps a multiple of the network's total stride, +33
                    for extra in (32, 33):  # changes the parity (a padding computed once would show)
                        size = [s + extra for s in example.shape[2:]]
                        inputs.append((F.interpolate(example, size=size, mode="nearest"), True))
                for x, optional in inputs:
                    try:
                        diff = _compare(sess, flat, x, rtol, atol, names, optional)
                    except CnnkitError as exc:
                        via = used + (f" (dynamo failed: {why})" if why else "")
                        raise CnnkitError(f"{exc}; exporter: {via}") from None
                    if diff is not None:
                        worst = max(worst, diff)
                        checked += (tuple(x.shape),)
                if dynamic_size and len(checked) == len(inputs) - 2:
                    raise CnnkitError(
                        f"the network runs only at its example's size {tuple(example.shape[2:])} "
                        "(PyTorch itself fails at others); export it without dynamic_size"
                    )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        model.train(was_training)
    return ExportReport(path, used, why, names, dynamic_batch, dynamic_size, check, checked, worst, path.stat().st_size)


class OnnxModel:
    """An ``.onnx`` file run by ONNX Runtime on the CPU, called like the PyTorch model it came from.

    Args:
        path: a file written by :func:`export_onnx` (any single-input ONNX model runs; its outputs
            then come back as a tensor, or a tuple for several).
        threads: ONNX Runtime's intra-op threads (default: its own choice).

    Attributes:
        path: the ONNX file.
        input_name: the name of the model's one input.
        output_names: the names of its outputs, in order.
        metadata: the file's ``metadata_props`` (e.g. classes, input size).

    Raises:
        CnnkitError: no file at ``path``, or a model with more than one input.

    Example:
        >>> model = OnnxModel("model.onnx")             # doctest: +SKIP
        >>> model(torch.rand(2, 3, 224, 224)).shape     # doctest: +SKIP
        torch.Size([2, 1000])
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise CnnkitError(f"no ONNX file at {path}; give a file written by `cnnkit export`")
        self.path = path
        self.session = _session(path, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CnnkitError(f"{path} takes {len(inputs)} inputs; OnnxModel runs models with one input")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            spec = json.loads(self.metadata.get(OUTPUTS_KEY, "{}"))
        except ValueError:
            spec = {}
        self.kind = spec.get("kind") if isinstance(spec, dict) else None
        if self.kind not in ("tensor", "tuple", "dict"):
            self.kind = "tensor" if len(self.output_names) == 1 else "tuple"

    def __call__(self, x: torch.Tensor):
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})
        tensors = [torch.from_numpy(o) for o in out]
        if self.kind == "tensor":
            return tensors[0]
        if self.kind == "dict":
            return dict(zip(self.output_names, tensors))
        return tuple(tensors)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, outputs={self.output_names})"

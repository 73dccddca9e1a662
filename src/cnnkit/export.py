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
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnkit.data.datasets import crop_shares, folder_reading
from cnnkit.errors import CnnkitError, as_new_file, disk_full, is_disk_full, short_error, special_file, temp_prefix

OUTPUTS_KEY = "cnnkit.outputs"  # metadata_props entry: {"kind": "tensor" | "tuple" | "dict", "names": [...]}
# what predict needs, as metadata_props entries (JSON values): the class names, the input size without
# the batch axis, the task, whether digit-like images are inverted to white on black, and what the
# graph takes (a classifier's normalisation is inside it: it takes [0, 1] pixels)
CLASSES_KEY, SIZE_KEY, TASK_KEY = "cnnkit.classes", "cnnkit.input_size", "cnnkit.task"
DARK_KEY, INPUT_KEY, MAX_SIDE_KEY = "cnnkit.dark_background", "cnnkit.input", "cnnkit.max_side"
DECODE_KEY = "cnnkit.decode"  # a detector run's decoding settings and flip: run in Python around the graph
TEST_TIME_KEY = "cnnkit.test_time"  # a segmenter run's flip and scales: not in the graph, applied around it
READING_KEY = "cnnkit.reading"  # how a run on an image folder read its photos (shorter side, centre crop)
# --dynamic-size: the sizes checked that the network itself refuses, though the free axes admit them
REFUSED_KEY = "cnnkit.sizes_refused"
# cnnkit.input of the tasks whose networks take pixels or noise as they are (no normalisation to carry);
# formatted with the input size without the batch
TASK_INPUTS = {
    "video_predict": "clips (N, {0}, {1}, H, W): {0} frames of pixels in [0, 1], as the network takes them (no "
    "normalisation); the frame count is fixed",
    "generate": "noise (N, {0}) drawn from the standard normal distribution (torch.randn), one image per row",
    "style": "images (N, {0}, H, W) of pixels in [0, 1], as the network takes them (no normalisation)",
}
MAX_META_CHARS = 1 << 20  # a metadata value longer than this is refused, not parsed
MAX_CLASSES = 100_000


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime reproduced PyTorch."""

    path: Path  # the .onnx file
    exporter: str  # "dynamo" (torch.export + onnxscript) or "torchscript"
    fallback: str | None  # why the dynamo exporter was not used (None when it was)
    outputs: list[str]  # the ONNX output names, in order
    dynamic_batch: bool
    dynamic_size: bool  # axes besides the batch are free too (size_axes)
    checked: bool  # ONNX Runtime ran it and agreed with PyTorch
    input_shapes: tuple[tuple[int, ...], ...]  # the inputs it was checked on
    max_diff: float  # the largest max|ort - torch| / max|torch| over outputs and batches
    size_bytes: int
    size_axes: tuple[int, ...] = ()  # the free input axes besides the batch
    refused: tuple[tuple[int, ...], ...] = ()  # inputs of other sizes PyTorch itself refused (not checked)
    refused_note: dict | None = None  # PyTorch's reason and what ONNX Runtime does there (cnnkit.sizes_refused)

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        check = (
            f"ONNX Runtime matches PyTorch (max diff {self.max_diff:.1e} of the output scale, inputs {shapes})"
            if self.checked
            else "not checked"
        )
        via = self.exporter + (f" (dynamo failed: {self.fallback})" if self.fallback else "")
        free = [axis for axis, on in (("batch", self.dynamic_batch), ("size", self.dynamic_size)) if on]
        refused = ""
        if self.refused:  # the free axes admit sizes the network does not take: said, not skipped silently
            shown = ", ".join("x".join(map(str, s)) for s in self.refused)
            note = self.refused_note or {}
            refused = (
                f"; the free axes admit sizes the network refuses: PyTorch fails on {shown} ({note.get('reason')}), "
                f"and ONNX Runtime {note.get('onnxruntime')}"
            )
        return (
            f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, exporter {via}, outputs "
            f"{', '.join(self.outputs)}{', dynamic ' + ' and '.join(free) if free else ''}); {check}{refused}"
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


EXPORTERS = ("auto", "dynamo", "torchscript")


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines, warnings and log records kept off the console -- also what their
    C++ parts write to the process's own stdout and stderr (the TorchScript exporter prints the whole
    graph when an operator has no ONNX counterpart)."""
    sink, logger = io.StringIO(), logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
        logger.setLevel(level)


RESIZE_OPSET = 18  # ONNX Resize with antialias=1
MATMUL_RESIZE_OPSET = 11  # Range, which builds the resize's weights from the input's size


def _resize_antialiased(g, x, output_size, align_corners, scale_factors):
    """The TorchScript exporter's translation of ``aten::_upsample_bilinear2d_aa`` to an output size
    (``F.interpolate(x, size=..., mode="bilinear", antialias=True)``), which it lacks.

    From opset 18: ONNX ``Resize`` with ``antialias=1``, the node the dynamo exporter writes for it.
    Opsets 11 to 17 have no antialiased Resize: the resize is a linear map along each axis, so it is
    written as two MatMuls, ``A_h @ x @ A_w^T``, whose weight matrices the graph builds from the
    input's height and width by PyTorch's own formula (:func:`_resize_weights`), so the graph takes
    any input size (``dynamic_size`` too). Scale factors (ONNX Runtime rounds some output sizes
    otherwise) and ``align_corners=True`` (its values differ) are refused.
    """
    from torch.onnx import symbolic_helper

    if symbolic_helper._is_none(output_size) or symbolic_helper._maybe_get_const(align_corners, "b") is not False:
        raise torch.onnx.errors.OnnxExporterError(
            "an antialiased bilinear resize is exported to a size given, without align_corners"
        )
    if g.opset < RESIZE_OPSET:
        size = symbolic_helper._maybe_get_const(output_size, "is")
        if g.opset < MATMUL_RESIZE_OPSET or symbolic_helper._is_value(size):
            raise torch.onnx.errors.OnnxExporterError(
                f"an antialiased bilinear resize is written from opset {MATMUL_RESIZE_OPSET} (as MatMuls) or "
                f"{RESIZE_OPSET} (ONNX Resize), to a constant size; opset {g.opset} was asked for: export at "
                f"opset {MATMUL_RESIZE_OPSET} or later"
            )
        shape = g.op("Shape", x)
        rows, cols = (g.op("Gather", shape, g.op("Constant", value_t=torch.tensor(i)), axis_i=0) for i in (2, 3))
        across = g.op("Transpose", _resize_weights(g, cols, int(size[1])), perm_i=[1, 0])  # (W, out_w)
        return g.op("MatMul", _resize_weights(g, rows, int(size[0])), g.op("MatMul", x, across))
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    lead = g.op(  # (N, C) of the input, then the sizes asked for
        "Slice",
        g.op("Shape", x),
        g.op("Constant", value_t=torch.tensor([0])),
        g.op("Constant", value_t=torch.tensor([2])),
    )
    sizes = g.op("Concat", lead, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: INT64
    return g.op(
        "Resize",
        x,
        empty,
        empty,
        sizes,
        mode_s="linear",
        antialias_i=1,
        exclude_outside_i=1,
        coordinate_transformation_mode_s="half_pixel",
    )


def _resize_weights(g, length, out: int):
    """(out, length) weights of PyTorch's antialiased bilinear resize along one axis, as graph nodes.

    ``length``: the input's size along the axis (a 0-d int64 value). As ATen computes them
    (``_compute_indices_min_size_weights_aa``): output ``o`` is centred at ``c = scale (o + 0.5)``
    with ``scale = length / out``; input ``i`` weighs the triangle ``max(0, 1 - |(i - c + 0.5) /
    max(scale, 1)|)`` (as wide as the step when shrinking, one pixel when enlarging), and each row is
    divided by its sum (the edges: only the pixels inside count). ATen's window of pixels around
    ``c`` holds every pixel with a weight above 0, so summing over all of them gives the same weights.
    """
    from torch.onnx import symbolic_helper

    def const(t):
        return g.op("Constant", value_t=t)

    scale = g.op("Div", g.op("Cast", length, to_i=1), const(torch.tensor(float(out))))  # 1: FLOAT
    invscale = g.op("Reciprocal", g.op("Max", scale, const(torch.tensor(1.0))))
    centre = g.op("Mul", const(torch.arange(out, dtype=torch.float32).add(0.5).unsqueeze(1)), scale)  # (out, 1)
    source = g.op("Cast", g.op("Range", const(torch.tensor(0)), length, const(torch.tensor(1))), to_i=1)
    offset = g.op("Mul", g.op("Add", g.op("Sub", source, centre), const(torch.tensor(0.5))), invscale)
    weights = g.op("Relu", g.op("Sub", const(torch.tensor(1.0)), g.op("Abs", offset)))  # (out, length)
    return g.op("Div", weights, symbolic_helper._reducesum_helper(g, weights, axes_i=[1], keepdims_i=1))


def _export(
    flat: nn.Module,
    example: torch.Tensor,
    tmp: str,
    names: list[str],
    batched: list[bool],
    dynamic_batch: bool,
    size_axes: tuple[int, ...],
    opset: int | None,
    exporter: str,
    target: Path,
) -> tuple[str, str | None]:
    """Write ``flat`` to ``tmp`` (which becomes ``target``); returns (the exporter used, why dynamo was not).

    ``exporter="auto"`` tries the dynamo exporter (``torch.export`` + onnxscript, PyTorch's default)
    and falls back to the TorchScript one; ``batched[i]`` says whether output i has the batch axis;
    ``size_axes``: the input axes besides the batch that stay free.
    """
    common = {"input_names": ["input"], "output_names": names, "external_data": False}
    if opset is not None:
        common["opset_version"] = opset
    why = None
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet():
                dims = {0: torch.export.Dim("batch", min=1, max=1 << 16)} if dynamic_batch else {}
                # AUTO: torch.export finds the sizes the network allows (or specialises)
                dims.update({i: torch.export.Dim.AUTO for i in size_axes})
                shapes = (dims,) if dims else None
                torch.onnx.export(flat, (example,), tmp, dynamo=True, dynamic_shapes=shapes, verbose=False, **common)
            written = _opset(tmp)
            if opset is None or written == opset:
                return "dynamo", None
            # the dynamo exporter writes its own opset and converts down only where it can, silently
            raise ValueError(f"it wrote opset {written}, not the opset {opset} asked for")
        except Exception as exc:  # noqa: BLE001 -- any failure of the new exporter: try the TorchScript one
            if is_disk_full(exc):  # the file did not fit: the other exporter writes the same bytes
                raise disk_full(target) from None
            why = short_error(exc, clause=True)
            if exporter == "dynamo":
                raise CnnkitError(f"the dynamo ONNX exporter failed: {why}; try exporter='torchscript'") from None
    axes = None
    if dynamic_batch or size_axes:
        axes = {"input": {**({0: "batch"} if dynamic_batch else {}), **{i: f"size_{i}" for i in size_axes}}}
        for n, b in zip(names, batched):
            if b and dynamic_batch:
                axes[n] = {0: "batch"}
    # an antialiased bilinear resize (a clip classifier's frames to its size): ONNX Resize from opset 18,
    # MatMuls before it (the exporter uses the registration of the highest opset up to the one it writes)
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _resize_antialiased, 7)
    try:
        with _quiet():
            torch.onnx.export(flat, (example,), tmp, dynamo=False, dynamic_axes=axes, **common)
    except Exception as exc:  # noqa: BLE001 -- the model cannot be exported: say why, with both exporters' reasons
        if is_disk_full(exc):
            raise disk_full(target) from None
        before = f"dynamo exporter: {why}; " if why else ""
        raise CnnkitError(
            f"the model cannot be exported to ONNX: {before}TorchScript exporter: {short_error(exc)}"
        ) from None
    return "torchscript", why


def _opset(path: str) -> int | None:
    """The version of the default ONNX operator set that the file at ``path`` uses."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise CnnkitError("running ONNX files needs onnxruntime: pip install 'cnnkit[onnx]'") from None
    return onnxruntime


def _session(path, threads: int | None = None, spin: bool = True):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:  # idle worker threads sleep instead of busy-waiting for the next run
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- InvalidProtobuf, Fail, ...: not an ONNX model ORT can run
        raise CnnkitError(
            f"{path} is not an ONNX model ONNX Runtime can run ({short_error(exc)}); give a file written by `cnnkit export`"
        ) from None


def _onnx():
    try:
        import onnx
    except ImportError:
        raise CnnkitError("writing ONNX files needs onnx: pip install 'cnnkit[onnx]'") from None
    return onnx


MIN_OPSET = 7  # the oldest opset PyTorch's exporters write


def _check_opset(opset) -> None:
    """An opset from the oldest PyTorch writes to the newest the installed onnx package knows."""
    newest = _onnx().defs.onnx_opset_version()
    if not (isinstance(opset, int) and not isinstance(opset, bool) and MIN_OPSET <= opset <= newest):
        raise CnnkitError(
            f"opset (--opset) is the ONNX operator set to write: a whole number from {MIN_OPSET} to {newest}, or "
            f"none for the exporter's own. Received: opset={opset!r}"
        )


def _add_metadata(path: str, props: dict[str, str]) -> None:
    model = _onnx().load(path)
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        entry = existing.get(k) or model.metadata_props.add()
        entry.key, entry.value = k, v
    _onnx().save(model, path)


def _run_quiet(sess, feeds: dict) -> list:
    """``sess.run(None, feeds)`` without ONNX Runtime's own error log: a failure is raised (and said
    once, by the caller), not also printed to stderr."""
    quiet = _ort().RunOptions()
    quiet.log_severity_level = 4
    return sess.run(None, feeds, quiet)


def _compare(
    sess, flat: nn.Module, x: torch.Tensor, rtol: float, atol: float, names: list[str], optional: bool = False
) -> float | dict:
    """The worst max|ort - torch| / max|torch| over the outputs; CnnkitError past ``atol + rtol * scale``.

    ``optional``: an input PyTorch itself cannot run (a size the network does not take) gives
    ``{"reason": PyTorch's, "onnxruntime": what ONNX Runtime does with it}`` instead.
    """
    feeds = {sess.get_inputs()[0].name: x.detach().cpu().float().numpy()}
    try:
        with torch.no_grad():
            ref = flat(x)
    except (RuntimeError, ValueError, CnnkitError) as exc:
        if not optional:
            raise
        try:
            _run_quiet(sess, feeds)
        except Exception as ort_exc:  # noqa: BLE001 -- ORT's Fail / InvalidArgument: it fails there too
            return {"reason": short_error(exc), "onnxruntime": f"fails on them too ({short_error(ort_exc)})"}
        return {"reason": short_error(exc), "onnxruntime": "answers them, with nothing to check the answer against"}
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    fixed = (  # optional: an input of another size, checked because the size axes were freed
        "the exporter fixed a size inside the network that --dynamic-size frees (a pooling, or a branch on the "
        "input's size): export it without --dynamic-size, or try the other --exporter"
        if optional
        else "without dynamic_size / --dynamic-size the image size is fixed"
    )
    try:
        got = _run_quiet(sess, feeds)
    except Exception as exc:  # noqa: BLE001 -- ORT's Fail / InvalidArgument: the graph fixed a size that varies
        raise CnnkitError(
            f"ONNX Runtime cannot run the export on an input of shape {tuple(x.shape)} ({short_error(exc)}); "
            f"the export was not kept ({fixed})"
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
                f"{scale:.3g}, allowed {atol + rtol * scale:.3g}) on a batch of {len(x)}"
                + (
                    f" of shape {tuple(x.shape)}; the export was not kept ({fixed})"
                    if optional
                    else "; the export was not kept"
                )
            )
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool | Sequence[int] = False,
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
        path: the ``.onnx`` file to write; its folder is created (and removed again when the export is
            not kept).
        dynamic_batch: the batch axis is free (checked on the example and a batch of another size).
        dynamic_size: True: every axis after the channels (``2 ..``: length, frames, height,
            width) is free too, where the network allows it; or the input axes to free, e.g.
            ``(3, 4)`` for clips (N, T, C, H, W) whose frame count the network fixes. Checked on the
            example resized by +32 and +33 along those axes (a network that fixes them fails the check;
            a size the network itself refuses is named in the report and in the file's
            ``cnnkit.sizes_refused``, with what ONNX Runtime does there).
        check: run the file in ONNX Runtime and compare with PyTorch before keeping it.
        rtol: allowed ``max |ort - torch|`` as a fraction of ``max |torch|``, per output.
        atol: allowed absolute difference on top (for outputs that are all near zero).
        opset: the ONNX opset, 7 to the newest the installed onnx knows (default: the exporter's
            own); a dynamo export that cannot write it falls back to the TorchScript exporter
            (``exporter="dynamo"``: refused). A clip classifier's antialiased frame resize is
            ONNX ``Resize`` from opset 18 and two MatMuls from opset 11 to 17.
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
    special = special_file(path)
    if special:  # the rename at the end would put a file where the pipe or device was
        raise CnnkitError(
            f"cannot write {path}: it is {special}, not a file; choose another --out (nothing was written)"
        )
    if exporter not in EXPORTERS:
        raise CnnkitError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}. Received: {exporter!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise CnnkitError(f"{name} must be a finite number above 0 (e.g. 1e-4). Received: {name}={value}")
    if opset is not None:
        _check_opset(opset)
    _refuse_unexportable(model)
    _refuse_non_finite(model)
    lower = sorted({str(t.dtype).replace("torch.", "") for t in model.parameters() if t.dtype != torch.float32})
    if lower:  # the example and the check are fp32: the network would fail on it, not on its size
        raise CnnkitError(
            f"the model's weights are {' and '.join(lower)}; the ONNX file is written and checked in float32: "
            "export model.float() (a run's weights load as float32 whatever precision it trained in)"
        )
    size_axes = _size_axes(dynamic_size, example.dim())
    if check:
        _ort()
    was_training = model.training
    model.eval()
    example = example.detach().float().cpu()
    try:
        with torch.no_grad():
            # torch.export specialises a dimension of size 1: trace a batch of 2 when the batch is dynamic
            traced = torch.cat([example, example[:1].flip(-1)]) if dynamic_batch and len(example) == 1 else example
            try:
                result = model(traced)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise CnnkitError(
                    f"the network fails on an input of size {'x'.join(map(str, example.shape[1:]))} "
                    f"({short_error(exc)}); give an --input size it runs at (the run's own by default)"
                ) from None
            kind, names, outs = _structure(result)
        flat = _Flat(model, names if kind == "dict" else None).eval()
        batched = [o.dim() > 0 and o.shape[0] == len(traced) for o in outs]
        made = [f for f in (path.parent, *path.parent.parents) if not f.exists()]  # removed again if not kept
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
            os.close(fd)
        except OSError as exc:
            raise CnnkitError(f"cannot write in {path.parent} ({exc.strerror or exc}); choose another --out") from None
        try:
            used, why = _export(flat, traced, tmp, names, batched, dynamic_batch, size_axes, opset, exporter, path)
            props = {
                OUTPUTS_KEY: json.dumps({"kind": kind, "names": names}),
                **deploy_metadata(model, example, size_axes),
            }
            props.update(metadata or {})
            checked: tuple[tuple[int, ...], ...] = ()
            refused: tuple[tuple[int, ...], ...] = ()
            note = None
            worst = 0.0
            if check:
                sess = _session(tmp)
                inputs = [(example, False)]
                if dynamic_batch:  # another batch size, real values
                    inputs.append((torch.cat([example, example[:1].flip(-1)]), False))
                if size_axes:  # other sizes: +32 keeps a multiple of the network's total stride, +33
                    for extra in (32, 33):  # changes the parity (a padding computed once would show)
                        inputs.append((_resized(example, size_axes, extra), True))
                for x, optional in inputs:
                    try:
                        diff = _compare(sess, flat, x, rtol, atol, names, optional)
                    except CnnkitError as exc:
                        via = used + (f" (dynamo failed: {why})" if why else "")
                        raise CnnkitError(f"{exc}; exporter: {via}") from None
                    if isinstance(diff, dict):  # PyTorch refuses this size: the free axes still admit it
                        refused, note = (*refused, tuple(x.shape)), note or diff
                    else:
                        worst = max(worst, diff)
                        checked += (tuple(x.shape),)
                if size_axes and len(checked) == len(inputs) - 2:
                    raise CnnkitError(
                        f"the network runs only at its example's size {tuple(example.shape[1:])} along axes "
                        f"{list(size_axes)} (PyTorch itself fails at others); export it without dynamic_size, or free "
                        "fewer axes (--dynamic-size 3,4: a clip's height and width)"
                    )
                if refused:
                    props[REFUSED_KEY] = json.dumps({"inputs": [list(r[1:]) for r in refused], **note})
            _add_metadata(tmp, props)
            try:
                as_new_file(tmp)
                os.replace(tmp, path)
            except OSError as exc:  # a file there that may not be replaced (another user's, immutable, ...)
                raise CnnkitError(
                    f"cannot write {path} ({exc.strerror or exc}); the export passed its check but was not kept: "
                    "choose another --out"
                ) from None
        except OSError as exc:  # the metadata's rewrite of the temporary file did not fit
            if is_disk_full(exc):
                raise disk_full(path) from None
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
                for folder in made:  # deepest first; a folder something else wrote into stays
                    with contextlib.suppress(OSError):
                        folder.rmdir()
    finally:
        model.train(was_training)
    size = path.stat().st_size
    return ExportReport(
        path, used, why, names, dynamic_batch, bool(size_axes), check, checked, worst, size, size_axes, refused, note
    )


def _refuse_non_finite(model: nn.Module) -> None:
    """NaN or infinite weights make every output NaN: say which, rather than "ONNX Runtime differs by nan"."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CnnkitError(
                f"the model's {name} holds NaN or infinite values, so every output is NaN: the run is damaged "
                "(restore it from a copy, or train it again); nothing was written"
            )


def _refuse_unexportable(model: nn.Module) -> None:
    """Refuse at once a network no exporter can write (rather than a TorchScript trace that runs for minutes)."""
    from cnnkit.models.rocket import MultiRocket1d

    if any(isinstance(m, MultiRocket1d) for m in model.modules()):
        raise CnnkitError(
            "a MultiRocket network (multirocket, multirocket_hydra) cannot be exported: its longest-stretch "
            "pool has no ONNX operator; export a run trained with --model fcn1d, resnet1d or inception_time"
        )


def _size_axes(dynamic_size: bool | Sequence[int], dims: int) -> tuple[int, ...]:
    """The free input axes besides the batch: True means all after the channels."""
    if dynamic_size is True:
        return tuple(range(2, dims))
    if dynamic_size is False or dynamic_size is None:
        return ()
    axes = tuple(dynamic_size)
    if not all(isinstance(a, int) and 1 <= a < dims for a in axes) or len(set(axes)) != len(axes):
        raise CnnkitError(
            f"dynamic_size names input axes 1..{dims - 1} (0 is the batch), each once. Received: {list(axes)}"
        )
    return tuple(sorted(axes))


def _resized(x: torch.Tensor, axes: tuple[int, ...], extra: int) -> torch.Tensor:
    """``x`` stretched by ``extra`` along each of ``axes`` (nearest neighbour: real values, other sizes)."""
    for axis in axes:
        n = x.shape[axis]
        x = x.index_select(axis, torch.arange(n + extra) * n // (n + extra))
    return x


def deploy_metadata(model: nn.Module, example: torch.Tensor, size_axes: Sequence[int] = ()) -> dict[str, str]:
    """What a deployed file needs besides its graph, read off the model, as ONNX ``metadata_props``.

    Args:
        model: the exported module; its ``classes``, ``input_size`` and ``info`` (a run's metadata:
            ``task``, ``dataset.dark_background``) are used where it has them.
        example: the example input; its shape without the batch is the input size otherwise.
        size_axes: the input axes besides the batch that the graph leaves free (``cnnkit.input`` of a
            network with nothing said about its input names them "any").

    Returns:
        JSON strings under ``cnnkit.classes``, ``cnnkit.input_size``, ``cnnkit.task``,
        ``cnnkit.dark_background``, ``cnnkit.max_side`` (a segmenter's photo size), ``cnnkit.decode`` (a
        detector's decoding settings and flip), ``cnnkit.test_time``
        (a segmenter's flip and scales), ``cnnkit.reading`` (how a classifier trained on an image
        folder read its photos: ``crop_fraction`` and ``interpolation``) and
        ``cnnkit.input`` (what the graph takes).
    """
    info = getattr(model, "info", None)
    info = info if isinstance(info, dict) else {}
    size = getattr(model, "input_size", None) or info.get("input_size") or tuple(example.shape[1:])
    props = {SIZE_KEY: json.dumps([int(v) for v in size]), TASK_KEY: json.dumps(str(info.get("task", "classify")))}
    classes = getattr(model, "classes", None) or info.get("classes")
    if classes:  # an unconditional generator's [] names none: OnnxModel reads a list of 1 or more
        props[CLASSES_KEY] = json.dumps([str(c) for c in classes])
    config = info.get("config")
    if isinstance(config, dict) and isinstance(config.get("max_side"), int):  # a segmenter's photo size
        props[MAX_SIDE_KEY] = json.dumps(config["max_side"])
    if info.get("task") == "segment" and ("tta" in info or "test_scale" in info):  # the run's (the graph has one view)
        props[TEST_TIME_KEY] = json.dumps({"tta": info.get("tta", ""), "test_scale": info.get("test_scale", [1.0])})
    if info.get("task") == "detect" and isinstance(info.get("decode"), dict):  # NMS settings and flip: Python's
        props[DECODE_KEY] = json.dumps(info["decode"])
    # a classifier's photos: the shorter side resized, the centre cropped (not in the graph)
    reading = folder_reading(info) if info.get("task") in (None, "classify") else None
    if reading is not None:
        props[READING_KEY] = json.dumps({"crop_fraction": reading[0], "interpolation": reading[1]})
    dataset = info.get("dataset")
    if isinstance(dataset, dict) and "dark_background" in dataset:
        props[DARK_KEY] = json.dumps(bool(dataset["dark_background"]))
    parts = list(getattr(model, "members", None) or [model])  # an ensemble: its members' normalisations
    if all((hasattr(m, "mean") and hasattr(m, "std")) or hasattr(m, "normalise") for m in parts):  # in the graph
        props[INPUT_KEY] = json.dumps("pixels in [0, 1]; the normalisation is inside the graph")
    elif info.get("task") == "sequence":  # the reader z-normalises (cnnkit.data.series.znormalise), not the graph
        config = info.get("config") if isinstance(info.get("config"), dict) else {}
        props[INPUT_KEY] = json.dumps(
            "series z-normalised per channel (minus the mean over time, over the population std; a constant "
            "channel becomes zeros) before the graph: the normalisation is not inside it"
            if config.get("znorm", True)
            else "series as read (the run did not z-normalise them)"
        )
    elif info.get("task") in TASK_INPUTS and info.get("weights") != "random":  # a run's frames, noise, images
        with contextlib.suppress(IndexError):  # a size of fewer axes than the task's input has: not described
            props[INPUT_KEY] = json.dumps(TASK_INPUTS[info["task"]].format(*(int(v) for v in size)))
    if INPUT_KEY not in props:  # a zoo network (random weights) or a module with nothing said about its input
        shape = ", ".join(["N", *("any" if i in size_axes else str(int(v)) for i, v in enumerate(size, 1))])
        props[INPUT_KEY] = json.dumps(
            f"tensors ({shape}) as the network itself takes them, unnormalised: "
            + (
                "a zoo network with random weights has no normalisation inside and no run has defined its input's scale"
                if info.get("weights") == "random"
                else "nothing exported with it says how they are scaled or normalised"
            )
        )
    return props


def model_device(model) -> torch.device:
    """Where a model's inputs go: its weights' device, the CPU for an :class:`OnnxModel` or no weights.

    Args:
        model: an ``nn.Module`` or an :class:`OnnxModel`.

    Returns:
        The device.
    """
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


class OnnxModel:
    """An ``.onnx`` file run by ONNX Runtime on the CPU, called like the PyTorch model it came from.

    Args:
        path: a file written by :func:`export_onnx` (any single-input ONNX model runs; its outputs
            then come back as a tensor, or a tuple for several).
        threads: ONNX Runtime's intra-op threads (default: its own choice).
        spin: let idle worker threads busy-wait for the next run (ONNX Runtime's default; False
            leaves the cores free between calls, for a process that also runs PyTorch).

    Attributes:
        path: the ONNX file.
        input_name: the name of the model's one input.
        output_names: the names of its outputs, in order.
        metadata: the file's ``metadata_props`` (e.g. classes, input size).
        classes: the class names (``cnnkit.classes``), or None.
        input_size: the input without the batch axis (``cnnkit.input_size``, else the graph's own
            input shape where it is fixed), or None.
        task: the task it was trained for (``cnnkit.task``), or None.
        info: ``{"task", "input_size", "classes", "dataset": {"dark_background"}}`` as a run's
            metadata has them, and ``reading`` (``cnnkit.reading``: how an image folder's photos
            are read) where the file has it.
        training: always False: the graph is the model in eval mode (``eval()`` and ``train()``
            are accepted and change nothing, so code written for a module runs it).

    Raises:
        CnnkitError: no file at ``path``, a model with more than one input, or metadata that is not
            what ``cnnkit export`` writes (too long, not JSON, wrong types).

    Example:
        >>> model = OnnxModel("model.onnx")             # doctest: +SKIP
        >>> model(torch.rand(2, 3, 224, 224)).shape     # doctest: +SKIP
        torch.Size([2, 1000])
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spin: bool = True):
        path = Path(path)
        if not path.is_file():
            raise CnnkitError(f"no ONNX file at {path}; give a file written by `cnnkit export`")
        self.path = path
        self.session = _session(path, threads, spin)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CnnkitError(f"{path} takes {len(inputs)} inputs; OnnxModel runs models with one input")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        spec = self.meta_value(OUTPUTS_KEY, dict)
        self.kind = spec.get("kind") if spec else None
        if self.kind not in ("tensor", "tuple", "dict"):
            self.kind = "tensor" if len(self.output_names) == 1 else "tuple"
        self.classes = self._classes()
        self.input_size = self._input_size(inputs[0].shape)
        self.task = self.meta_value(TASK_KEY, str)
        if self.task is not None and not 0 < len(self.task) <= 40:
            raise self._bad(TASK_KEY, "a task name of 1 to 40 characters")
        dark = self.meta_value(DARK_KEY, bool)
        self.info = {
            "task": self.task,
            "input_size": self.input_size,
            "classes": self.classes,
            "dataset": {"dark_background": bool(dark)},
        }
        reading = self.meta_value(READING_KEY, dict)
        if reading is not None:
            try:
                folder_reading({"reading": reading}, self.input_size)
            except CnnkitError:
                raise self._bad(
                    READING_KEY,
                    f'a crop_fraction in {crop_shares(self.input_size)} and an interpolation "bilinear" or "bicubic"',
                ) from None
            self.info["reading"] = reading
        self.training = False

    def eval(self) -> OnnxModel:
        """The graph is already the eval-mode model: returns itself."""
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        """Nothing to switch (the graph cannot train): returns itself."""
        return self

    def _bad(self, key: str, expected: str) -> CnnkitError:
        value = self.metadata.get(key, "")
        shown = value if len(value) <= 60 else value[:57] + "..."
        return CnnkitError(
            f"{self.path}: metadata {key} is not {expected} (received {shown!r}); export the model again "
            "with `cnnkit export`"
        )

    def meta_value(self, key: str, kind: type):
        """The JSON value stored in the file's metadata under ``key``, checked to be a ``kind``.

        Args:
            key: the ``metadata_props`` key, e.g. ``"cnnkit.classes"``.
            kind: the Python type the JSON value must have (``list``, ``dict``, ``str``, ``int``, ``bool``).

        Returns:
            The value, or None when the file has no such entry.

        Raises:
            CnnkitError: a value longer than ``MAX_META_CHARS``, not JSON, or not a ``kind``.
        """
        if key not in self.metadata:
            return None
        text = self.metadata[key]
        if len(text) > MAX_META_CHARS:
            raise CnnkitError(
                f"{self.path}: metadata {key} is {len(text)} characters long (at most {MAX_META_CHARS} "
                "are read); export the model again with `cnnkit export`"
            )
        try:
            value = json.loads(text)
        except ValueError:
            raise self._bad(key, "JSON") from None
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self._bad(key, f"a JSON {kind.__name__}")
        return value

    def _classes(self) -> list[str] | None:
        classes = self.meta_value(CLASSES_KEY, list)
        if classes is None:
            return None
        if not 0 < len(classes) <= MAX_CLASSES or not all(isinstance(c, str) and len(c) <= 200 for c in classes):
            raise self._bad(CLASSES_KEY, f"a list of 1 to {MAX_CLASSES} class names of at most 200 characters")
        out = self.session.get_outputs()[0].shape
        if self.kind == "tensor" and len(out) == 2 and isinstance(out[1], int) and out[1] != len(classes):
            raise self._bad(CLASSES_KEY, f"a list of {out[1]} class names (the model's outputs)")
        return classes

    def _input_size(self, graph_shape) -> tuple[int, ...] | None:
        size = self.meta_value(SIZE_KEY, list)
        if size is None:  # the graph's own shape, where it is fixed
            fixed = list(graph_shape[1:])
            return tuple(fixed) if fixed and all(isinstance(v, int) and v > 0 for v in fixed) else None
        if not 0 < len(size) <= 4 or not all(type(v) is int and 0 < v <= 1 << 16 for v in size):
            raise self._bad(SIZE_KEY, "a list of 1 to 4 sizes from 1 to 65536")
        return tuple(size)

    def __call__(self, x: torch.Tensor):
        data = x.detach().cpu().float().numpy()
        fixed = self.session.get_inputs()[0].shape[0]  # an int: the file was exported with --static-batch
        if isinstance(fixed, int) and fixed > 0 and len(data) != fixed:
            if len(data) % fixed:
                raise CnnkitError(
                    f"{self.path} takes batches of exactly {fixed} (it was exported with --static-batch); "
                    f"received {len(data)}: export it without --static-batch"
                )
            parts = [self._run(data[i : i + fixed]) for i in range(0, len(data), fixed)]
            # outputs with the batch axis are joined; the others (a detector's points) are the same for each part
            out = [
                np.concatenate([p[k] for p in parts]) if o.ndim and o.shape[0] == fixed else o
                for k, o in enumerate(parts[0])
            ]
        else:
            out = self._run(data)
        tensors = [torch.from_numpy(o) for o in out]
        if self.kind == "tensor":
            return tensors[0]
        if self.kind == "dict":
            return dict(zip(self.output_names, tensors))
        return tuple(tensors)

    def _run(self, data: np.ndarray) -> list[np.ndarray]:
        try:
            return _run_quiet(self.session, {self.input_name: data})
        except Exception as exc:  # noqa: BLE001 -- ORT's InvalidArgument / Fail: an input the graph cannot take
            refused = self.meta_value(REFUSED_KEY, dict)
            known = (  # the export found sizes the network refuses: say which, from the file
                f"; the network refuses some sizes its free axes admit ({str(refused.get('reason'))[:200]})"
                if refused
                else ""
            )
            raise CnnkitError(
                f"ONNX Runtime cannot run {self.path} on an input of shape {tuple(data.shape)} ({short_error(exc)}){known}; "
                f"give an input of the size it takes ({'x'.join(map(str, self.input_size or ())) or 'see its inputs'})"
            ) from None

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, outputs={self.output_names})"

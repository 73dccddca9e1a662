"""What ``cnnkit export`` runs: a trained run of any task, or a zoo network, as one checked ONNX file.

A run is loaded with :func:`cnnkit.load` (its task's deployable: a classifier with its normalisation
inside and test-time augmentation off, a detector up to its raw maps, a segmenter, a series or video
network); a zoo name builds that network with its registered input size and random weights (an
architecture to deploy or time before training). The file carries what ``cnnkit predict`` needs as
metadata (:func:`cnnkit.export.deploy_metadata`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.data.video import MovingMnistSpec
from cnnkit.errors import CnnkitError, counted
from cnnkit.export import ExportReport, export_onnx
from cnnkit.models import create_model, model_info
from cnnkit.tasks.load import load


def export_source(source: str, trust_code: bool = False, factory: str | None = None) -> nn.Module:
    """The model ``cnnkit export`` exports: a run's deployable, or a zoo network by name.

    Args:
        source: a run folder or ``model.safetensors``, or a zoo name (``cnnkit zoo``) when no such
            path exists.
        trust_code: allow building a classifier's network by running ``factory`` (as :func:`cnnkit.load`).
        factory: ``FILE.py:FUNCTION`` that builds the network (with ``trust_code``).

    Returns:
        The model in eval mode; a zoo network has ``input_size`` (its registered one) and an
        ``info`` with its task, and random weights.

    Raises:
        CnnkitError: neither a checkpoint nor a zoo name, or a checkpoint that cannot be loaded.
    """
    if not Path(source).exists() and "/" not in source and not source.endswith(".safetensors"):
        try:
            spec = model_info(source)
        except CnnkitError as exc:
            raise CnnkitError(f"no run folder or .safetensors file at {source}, and {exc}") from None
        model = create_model(source).eval()
        model.input_size = tuple(spec.input_size)
        model.info = {"task": spec.task, "input_size": list(spec.input_size), "weights": "random"}
        return model
    return load(source, trust_code=trust_code, factory=factory)


def parse_size(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``: an input size without the batch axis.

    Args:
        text: sizes joined by ``x`` (or commas), 1 to 4 of them, each from 1 to 65536.

    Returns:
        The sizes.

    Raises:
        CnnkitError: anything else.
    """
    try:
        size = tuple(int(v) for v in text.replace(",", "x").split("x"))
    except ValueError:
        size = ()
    if not 0 < len(size) <= 4 or not all(0 < v <= 1 << 16 for v in size):
        raise CnnkitError(f"--input takes 1 to 4 sizes like 3x224x224 (each 1..65536). Received: --input {text}")
    return size


RUN_FILES = ("model.safetensors", "resume.safetensors", "config.yaml", "metrics.csv")


def check_out(source: str, out: str | Path) -> None:
    """Before anything is loaded or written: ``out`` must be a ``.onnx`` file outside the input run.

    Raises:
        CnnkitError: ``out`` lacks the ``.onnx`` suffix, is the input checkpoint, or lies in the
            input run folder (writing it could replace the run's own files).
    """
    out, src = Path(out), Path(source)
    if src.exists():  # not a zoo name
        folder = src if src.is_dir() else src.parent
        is_run = src.is_dir() or any((folder / name).exists() for name in RUN_FILES if name != src.name)
        target = out.resolve()
        if target == src.resolve() or (is_run and folder.resolve() in target.parents):
            raise CnnkitError(
                f"--out {out} is inside the run {folder} you export (it could replace the run's files); "
                "write the .onnx file outside the run folder (nothing was written)"
            )
    if out.suffix.lower() != ".onnx":
        raise CnnkitError(f"--out names the ONNX file to write; give it the .onnx suffix. Received: --out {out}")


def _check_tolerance(rtol: float) -> None:
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol > 0):
        raise CnnkitError(f"--rtol must be a finite number above 0, e.g. 1e-4. Received: --rtol {rtol}")


def _clips_first(model: nn.Module, task: str) -> bool:
    """Whether the model takes clips as (N, T, C, H, W): a clip classifier's run or a frame predictor
    (the zoo's clip networks take (N, C, T, H, W))."""
    from cnnkit.tasks.video.predict import VideoClassifier

    return task == "video_predict" or isinstance(model, VideoClassifier)


def _task_input_size(model: nn.Module, info: dict) -> tuple[int, ...] | None:
    """The input (without the batch) of a run whose metadata gives it in its task's own words."""
    task = info.get("task")
    try:
        if task == "video":  # the clips it reads: the frames it sees and their resize to size x size are inside
            frames, stride, size, channels = (int(info[k]) for k in ("frames", "stride", "size", "channels"))
            need = (frames - 1) * stride + 1
            config = info.get("config") if isinstance(info.get("config"), dict) else {}
            if config.get("data") == "moving_mnist" and int(config.get("frames", 0)) >= need:  # its data's clips
                side = MovingMnistSpec().image_size
                return (int(config["frames"]), channels, side, side)
            return (need, channels, size, size)  # the frames its stride reaches, at the network's size
        if task == "video_predict":
            return (int(info["frames"]), int(info["channels"]), *(int(v) for v in info["size"]))
        if task == "style":  # any size: the zoo's
            return (3, 256, 256)
        if task == "generate":  # noise
            return (int(model.latent_dim),)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return None


def _check_input(given: Sequence[int], stated, task: str, clips_first: bool = False) -> None:
    """``--input`` against the run's own input size: the same number of axes and the same channels."""
    if not stated:
        return
    stated = tuple(int(v) for v in stated)
    shown = "x".join(map(str, given))
    if len(stated) == 1 and task == "segment":  # a segmenter: channels only, any H and W
        if len(given) != 3 or given[0] != stated[0]:
            raise CnnkitError(
                f"the run takes {stated[0]}-channel images of any size; --input {shown} does not: "
                f"give --input {stated[0]}xHxW"
            )
        return
    layout = {1: "Z", 2: "CxL", 3: "CxHxW", 4: "TxCxHxW" if clips_first else "CxTxHxW"}.get(len(stated), "")
    like = "x".join(map(str, stated))
    if len(given) != len(stated):
        raise CnnkitError(
            f"the run takes inputs of {len(stated)} axes ({layout} {like}); --input {shown} has "
            f"{len(given)}: give --input like {like}"
        )
    axis = 1 if clips_first else 0
    if given[axis] != stated[axis]:
        n, what = stated[axis], ("noise values" if task == "generate" else "channels")
        raise CnnkitError(
            f"the run takes {n} {what if n != 1 else what[:-1]}; --input {shown} gives {given[axis]}: "
            f"keep the {what}, e.g. --input {like}"
        )


def _segment_size(info: dict, channels: int) -> str:
    """The ``--input`` a segmenter run needs (it states only its channels), at a size it trained at."""
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    for key, what in (("canvas", "the side of its digit scenes"), ("crop", "its training crop")):
        side = config.get(key)
        if isinstance(side, int) and not isinstance(side, bool) and side > 0:
            return f"give the example's size with --input {channels}x{side}x{side} ({what})"
    return f"give the example's size with --input {channels}xHxW (the height and width of an image it segments)"


def _refuse_partial(model: nn.Module, source: str) -> None:
    """A model whose file would hold only part of what it predicts is refused, not written."""
    from cnnkit.models.instance import MaskDetector

    if isinstance(model, MaskDetector):
        raise CnnkitError(
            f"{source} is an instance-segmentation model: its masks come from RoIAlign on the boxes that "
            "decoding and NMS find in Python, so an .onnx file would hold the boxes' raw maps only, without "
            "the masks; cnnkit export does not write it (nothing was written). For the boxes alone: "
            "cnnkit.export_onnx(model.detector, example, path)"
        )


def export_model(
    source: str,
    out: str | Path,
    *,
    batch: int = 1,
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    dynamic_size: bool | Sequence[int] = False,
    check: bool = True,
    rtol: float = 1e-4,
    exporter: str = "auto",
    opset: int | None = None,
    trust_code: bool = False,
    factory: str | None = None,
) -> ExportReport:
    """Export a run or a zoo network to one ONNX file, checked in ONNX Runtime against PyTorch.

    Args:
        source: a run folder, ``model.safetensors``, or a zoo name (random weights).
        out: the ``.onnx`` file to write.
        batch: the example's batch size.
        input_size: the input without the batch axis (default: the run's or the zoo entry's).
        dynamic_batch: the batch axis stays free.
        dynamic_size: free the axes after the channels too (True), or the input axes given.
        check: run the file in ONNX Runtime and compare with PyTorch before keeping it.
        rtol: allowed difference as a fraction of each output's scale.
        exporter: "auto", "dynamo" or "torchscript".
        opset: the ONNX opset (default: the exporter's; :func:`~cnnkit.export.export_onnx`).
        trust_code: allow a classifier's Python factory (as :func:`cnnkit.load`).
        factory: ``FILE.py:FUNCTION`` (with ``trust_code``).

    Returns:
        The :class:`~cnnkit.export.ExportReport`.

    Raises:
        CnnkitError: a bad source, size or batch, or an export that fails its check (no file is left).

    Example:
        >>> print(export_model("runs/mnist", "mnist.onnx"))   # doctest: +SKIP
        wrote mnist.onnx (0.3 MB, exporter dynamo, outputs output, dynamic batch); ONNX Runtime matches PyTorch (...)
    """
    from cnnkit.analysis.summary import MAX_BATCH  # the largest batch the analyser (and `summary --batch`) takes

    if not 1 <= batch <= MAX_BATCH:  # past int64 torch's own overflow would be a traceback
        raise CnnkitError(f"--batch must be an integer from 1 to {MAX_BATCH:,}. Received: --batch {batch}")
    _check_tolerance(rtol)
    check_out(source, out)
    model = export_source(source, trust_code, factory)
    _refuse_partial(model, source)
    info = getattr(model, "info", None) or {}
    task = str(info.get("task", "classify"))
    if task == "generate" and getattr(model, "classes", None):
        raise CnnkitError(
            f"{source} is a conditional generator: it takes noise and a class, two inputs, and an .onnx file of "
            "cnnkit export has one; export an unconditional generator (nothing was written)"
        )
    if task == "generate" and getattr(model, "codes", 0):  # unconditional, but the draw is Python's
        config = info.get("config") if isinstance(info.get("config"), dict) else {}
        flag = "--clusters" if config.get("clusters") else "--codes"
        raise CnnkitError(
            f"{source} is a generator trained with {flag}: beside its noise it takes the one-hot of a "
            f"{flag[2:-1]} drawn at random in Python, two inputs, and an .onnx file of cnnkit export has one; "
            "export a generator trained without --conditional, --codes and --clusters (nothing was written)"
        )
    clips_first = _clips_first(model, task)
    stated = getattr(model, "input_size", None) or info.get("input_size") or _task_input_size(model, info)
    if input_size:
        _check_input(tuple(int(v) for v in input_size), stated, task, clips_first)
    size = input_size or stated
    if size is None:
        raise CnnkitError("the run does not state its input size; give it with --input (the sizes without the batch)")
    size = tuple(int(v) for v in size)
    if dynamic_size is True and clips_first:  # (N, T, C, H, W): the axes after the channels, and the frames
        dynamic_size = (3, 4) if task == "video_predict" else (1, 3, 4)  # SimVP fixes its frame count
    if len(size) == 1 and task == "segment":  # a segmenter states only its channels: it takes any H, W
        raise CnnkitError(
            f"the run takes images of {counted(size[0], 'channel')} at any size; {_segment_size(info, size[0])}"
        )
    model.input_size = size  # what the file states (a --input given wins)
    example = torch.rand(batch, *size, generator=torch.Generator().manual_seed(0))  # pixels in [0, 1)
    meta = {"cnnkit.source": json.dumps(str(source))}
    no_tta = model.without_tta() if hasattr(model, "without_tta") else contextlib.nullcontext()
    with no_tta:
        return export_onnx(
            model,
            example,
            out,
            dynamic_batch=dynamic_batch,
            dynamic_size=dynamic_size,
            check=check,
            rtol=rtol,
            exporter=exporter,
            opset=opset,
            metadata=meta,
        )

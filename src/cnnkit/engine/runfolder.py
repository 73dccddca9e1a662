"""Checkpoints without pickles: safetensors weights with their JSON description in the metadata.

A run folder holds
- ``model.safetensors``: the deployable model (EMA weights when EMA is on). Its metadata key
  ``"cnnkit"`` is a JSON document: model spec, classes, input size, normalisation, TTA, config,
  history. :func:`load` rebuilds an eval-mode :class:`Classifier` from it.
- ``resume.safetensors``: everything ``--resume`` needs (weights, EMA, the state of every optimizer,
  RNG states, epoch, history, the network's description where the task gives one, and what the model
  file holds of the run's data: its classes, input size and data files' digests), self-contained so
  it never disagrees with itself.
- ``metrics.csv`` and ``curves.png``.
Every file is written to a temporary file beside it, then renamed: never half-written.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cnnkit.engine.ema import EMA
from cnnkit.errors import (
    NAME_MAX,
    CnnkitError,
    CnnkitWarning,
    as_new_file,
    check_not_input,
    disk_full,
    is_disk_full,
    short_error,
    special_file,
    temp_prefix,
)
from cnnkit.models.deploy import Classifier
from cnnkit.models.meta import on_meta
from cnnkit.models.network import describe

FORMAT = "cnnkit.checkpoint/1"


MODEL_FILE = "model.safetensors"


RESUME_FILE = "resume.safetensors"
CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"  # the image names a run trained, validated and tested on
# what a resume state keeps of the description its model file is about to hold (the task's
# ``describe``): what ``--resume`` reads a user's data with and checks it against, so that a run
# stopped before its first model file resumes on the data it started with (:func:`run_info`)
RECORDED = ("classes", "input_size", "data_files")
# what each task's deployable is called in messages
TASK_MODELS = {
    "classify": "a classifier",
    "detect": "a detection model",
    "segment": "a segmentation model",
    "instance": "an instance-segmentation model",
    "sequence": "a time-series classifier",
    "video": "a clip classifier",
    "video_predict": "a frame predictor",
    "generate": "a generator",
    "style": "a style transformation network",
}  # the resolved settings, readable by --config


RUN_RECORDS = ("metrics.csv", "curves.png")  # what a run writes after its model and resume state


METRICS_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it: never half-written.

    A ``.<name>.*.tmp`` left by an earlier save that was killed is removed first; a full disk is
    a :class:`CnnkitError` naming the size (the previous version of ``path`` stays as it was).
    """
    path = Path(path)
    kind = special_file(path)
    if kind:  # a rename would put a file where the pipe or device was
        raise CnnkitError(f"cannot write {path}: it is {kind}, not a file; choose another --out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnkitError(f"cannot create the folder {path.parent} ({exc.strerror}); choose another --out") from None
    for stale in path.parent.glob(f"{glob.escape(temp_prefix(path))}*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        as_new_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, len(data)) from None
        raise CnnkitError(
            f"cannot write {path} ({exc.strerror or exc}); check the folder's permissions or choose another --out"
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def json_text(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON, each NaN or infinite float (in dicts, lists and tuples at any depth) as ``null``.

    Python's :func:`json.dumps` writes such floats as the bare tokens ``NaN`` and ``Infinity``, which
    are not JSON: JavaScript's ``JSON.parse`` and other strict readers refuse the whole document.
    A number cnnkit computes is NaN where the data do not define it (the VOC AP50 of images in which
    no class has a ground-truth box, a metric of a class absent from a split); ``null`` tells a reader
    exactly that: not defined on this data (an infinity is null too: JSON has no number for it).
    Every JSON document cnnkit hands to a reader goes through here: ``--format json`` output, the
    JSON files of a run folder and the metadata of its model file, the workbench's answers.
    ``resume.safetensors`` is the exception: only ``--resume`` reads it, and it keeps the run's state
    exactly as it was. cnnkit's readers (:func:`json.loads`) accept the ``NaN`` tokens of files
    written by plain :func:`json.dumps`.

    Args:
        obj: dicts, lists, tuples, strings, numbers, booleans and None.
        indent: as :func:`json.dumps`'s.

    Returns:
        The JSON text, written with ``allow_nan=False``: a NaN or infinite float used as a dict key
        raises ``ValueError`` rather than writing a non-JSON token.

    Example:
        >>> json_text({"AP50": float("nan"), "AP": [0.5, float("inf")]})
        '{"AP50": null, "AP": [0.5, null]}'
    """
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    """``obj`` with each NaN or infinite float replaced by None (tuples become lists, as JSON writes them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def save_png(image, path) -> None:
    """A Pillow image, or a uint8 tensor (C, H, W) or (H, W), as a PNG at ``path``, written atomically
    (:func:`atomic_write_bytes`: a full disk or an unwritable folder is a one-line CnnkitError, never
    half a file)."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        pixels = image.permute(1, 2, 0) if image.dim() == 3 else image
        image = Image.fromarray((pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).numpy())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def cpu_tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_model(path, model: Classifier, info: dict) -> None:
    """Write a Classifier's weights + ``info`` (JSON) to ``path`` atomically.

    ``info["network"]`` (added from ``info["model"]`` when absent) describes the network as data,
    so that :func:`load` never has to run code (:mod:`cnnkit.models.network`). A task's module that
    is not a classifier (no ``info["model"]``) is stored as its task describes it.
    """
    if "network" not in info and "model" in info:
        info = {**info, "network": describe(info["model"], model.net)}
    data = st_save(cpu_tensors(model.state_dict()), metadata={"cnnkit": json_text(info)})
    atomic_write_bytes(path, data)


def write_metrics_csv(path, history: list[dict], columns: list[str] | None = None) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or METRICS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def _optim_keys(j: int) -> tuple[str, str, str]:
    """(tensor prefix, param-groups key, scalars key) of the ``j``-th optimizer in a resume file; the
    first one's are those of a file with a single optimizer, so either kind of file reads as the other."""
    return (
        ("optim.", "param_groups", "optim_scalars")
        if j == 0
        else (f"optim{j}.", f"param_groups{j}", f"optim_scalars{j}")
    )


def save_resume(
    path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
    ema: EMA | None,
    generator: torch.Generator,
    epoch: int,
    history: list[dict],
    config: dict,
    task_state: dict[str, torch.Tensor] | None = None,
    task: str | None = None,
    network: dict | None = None,
    record: dict | None = None,
) -> None:
    """Everything needed to continue exactly after ``epoch`` epochs.

    Args:
        path: the resume file.
        model: the model in training (all its weights and buffers).
        optimizer: the phase's optimizer, or all of them in order (a task with its own ``step``).
        ema: the weights' moving average (its tensors and its count of steps), or None.
        generator: the data-order generator.
        epoch: epochs completed.
        history: one row per epoch.
        config: the run's settings.
        task_state: the task's own tensors (its ``state_dict()``: what training built besides the
            weights, such as the per-image losses that pruning reads), or None.
        task: the task's name (``"detect"``): :func:`resumed_config` refuses the file in another
            task's run folder.
        network: the network's description as the model file holds it (a spec run's spec and spec
            version), or None: the resume state is written before the first model file, so a run
            killed between the two resumes with the network it started with.
        record: what the model file is about to hold of the run's data (:data:`RECORDED`: its
            classes, input size and data files' digests, those the task describes), or None;
            :func:`run_info` reads it where the folder has no model file yet.
    """
    tensors = cpu_tensors(model.state_dict(), "model.")
    tensors.update(cpu_tensors(task_state or {}, "task."))
    meta = {"format": FORMAT, "epoch": epoch, "history": history, "config": config, **({"task": task} if task else {})}
    if ema is not None:
        tensors.update(cpu_tensors(ema.state_dict(), "ema."))
        meta["ema_updates"] = ema.updates  # the warm-up continues where it was
    if network is not None:
        meta["network"] = network
    if record is not None:
        meta["record"] = record
    meta["generator"] = generator.device.type  # where the data order's random numbers come from
    for j, one in enumerate(optimizer if isinstance(optimizer, list) else [optimizer]):
        prefix, groups_key, scalars_key = _optim_keys(j)
        opt = one.state_dict()
        scalars = {}
        for idx, st in opt["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{prefix}{idx}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{idx}.{k}"] = v
        meta[groups_key], meta[scalars_key] = opt["param_groups"], scalars
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state().cpu()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    # json.dumps, not json_text: --resume alone reads this file, and the state comes back as it was
    # (a NaN metric of the history stays NaN, as in the run that was never stopped)
    atomic_write_bytes(path, st_save(tensors, metadata={"cnnkit": json.dumps(meta)}))


def load_resume(
    path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer] | None,
    ema: EMA | None,
    generator: torch.Generator,
    task=None,
) -> tuple[int, list[dict], dict]:
    """Restore what :func:`save_resume` wrote; returns (epochs done, history, config).

    ``optimizer=None`` skips its state: a run resumed where a new phase (a new optimizer) begins.
    A list restores each optimizer saved in that order. A ``task`` with ``load_state_dict`` gets
    its own tensors back."""
    tensors, meta = read_checkpoint(path)
    _check_generator_device(path, meta, tensors, generator)
    try:
        epoch, history = meta.get("epoch", 0), meta.get("history", [])
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch {str(epoch)[:40]!r} is not a count of epochs")
        if not isinstance(history, list) or len(history) != epoch:
            raise ValueError(f"the history does not hold one row for each of the {epoch} epochs")
        for row in history:
            if not isinstance(row, dict) or not all(
                isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) for k in ("epoch", "seconds")
            ):
                raise ValueError("a history row lacks its epoch or seconds")
        model.load_state_dict(_without_dropped(model, strip_prefix(tensors, "model.")))
        if hasattr(task, "load_state_dict"):
            task.load_state_dict(strip_prefix(tensors, "task."))
        if ema is not None:
            ema.load_state_dict(_without_dropped(model, strip_prefix(tensors, "ema.")))
            updates = meta.get("ema_updates")
            if updates is None:
                ema.skip_warmup()
            elif isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
                raise ValueError(f"ema_updates {str(updates)[:40]!r} is not a count of steps")
            else:
                ema.updates = updates
        optimizers = [] if optimizer is None else optimizer if isinstance(optimizer, list) else [optimizer]
        for j, one in enumerate(optimizers):
            prefix, groups_key, scalars_key = _optim_keys(j)
            state: dict = {}
            for key, v in strip_prefix(tensors, prefix).items():
                idx, name = key.split(".", 1)
                state.setdefault(int(idx), {})[name] = v
            for key, v in meta[scalars_key].items():
                idx, name = key.split(".", 1)
                state.setdefault(int(idx), {})[name] = v
            one.load_state_dict(_without_unrun({"state": state, "param_groups": meta[groups_key]}, one))
            _check_optimizer_state(one)
        torch.set_rng_state(tensors["rng.torch"])
        generator.set_state(tensors["rng.generator"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
        raise CnnkitError(
            f"{path}: the resume state is damaged or does not match this run ({short_error(exc)}); "
            "start a new run without --resume, or resume the run that wrote it"
        ) from None

    return epoch, history, meta.get("config", {})


def _without_unrun(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """``saved`` (an optimizer's state dict) renumbered for ``optimizer`` where its groups list more
    parameters: a run saved with backbone modules that never run (which this network lacks, see
    :func:`_without_dropped`) has their parameters in its groups, but no state for them, as they never
    had a gradient. The parameters that have state, in their order in each group, are ``optimizer``'s;
    a group that has no state at all (SGD without momentum keeps none) gives any of them, as none has
    state to carry; a group where they are not as many is left as it is, for ``load_state_dict`` to refuse."""
    groups, state = saved["param_groups"], saved["state"]
    have = [len(g["params"]) for g in optimizer.param_groups]
    if len(groups) != len(have) or all(len(g["params"]) == n for g, n in zip(groups, have)):
        return saved
    kept = [
        ([i for i in g["params"] if i in state] or g["params"][:n]) if len(g["params"]) > n else g["params"]
        for g, n in zip(groups, have)
    ]
    if any(len(k) != n for k, n in zip(kept, have)):
        return saved
    number = {old: new for new, old in enumerate(i for k in kept for i in k)}
    return {
        "state": {number[i]: v for i, v in state.items() if i in number},
        "param_groups": [{**g, "params": [number[i] for i in k]} for g, k in zip(groups, kept)],
    }


def _check_generator_device(path, meta: dict, tensors: dict, generator: torch.Generator) -> None:
    """A run continues its data order only on the kind of device that drew it (a GPU's generator is
    another algorithm than a CPU's, with a state of another size): another is a one-line error."""
    saved = meta.get("generator")
    state = tensors.get("rng.generator")
    if saved is None and torch.is_tensor(state) and state.numel() != generator.get_state().numel():
        saved = "cuda" if generator.device.type == "cpu" else "cpu"  # a file without the key: told by the size
    if isinstance(saved, str) and saved != generator.device.type:
        where = " on a machine with a GPU" if saved == "cuda" else ""
        raise CnnkitError(
            f"{path}: the run was trained on {saved[:20]}, and its random data order continues only there; "
            f"resume it with --device {saved[:20]}{where}, or start a new run on {generator.device.type}"
        )


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every per-parameter tensor of a restored optimizer state has its parameter's shape (a scalar,
    such as Adam's step count, is left alone); ValueError naming the first that does not."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(
                        f"the optimizer's {name} has shape {tuple(value.shape)} for a parameter of shape {tuple(p.shape)}"
                    )


def strip_prefix(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


CHECKPOINT_HINT = (
    "give a run folder or model.safetensors written by a `cnnkit ... train` command (restore a damaged one "
    "from a copy, or train it again)"
)


def resolve(path: str | os.PathLike) -> Path:
    """A run folder or a checkpoint file -> the ``model.safetensors`` to read."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if p.suffix.lower() == ".onnx" and p.is_file():  # not a damaged checkpoint: a file of `cnnkit export`
        raise CnnkitError(
            f"{path} is an ONNX file (from `cnnkit export`); this command reads a run folder or its "
            f"{MODEL_FILE}. ONNX files run in `cnnkit predict`, `cnnkit detect predict` and `cnnkit segment predict`"
        )
    if p.suffix.lower() in (".keras", ".h5") and p.is_file():  # a Keras model: converted first, into a run
        raise CnnkitError(
            f"{path} is a Keras file; this command reads a run folder: convert it first with "
            f"`cnnkit convert {path} --out RUN`, then give RUN"
        )
    if not p.is_file():
        raise CnnkitError(
            f"no checkpoint at {path}: give a run folder (holding {MODEL_FILE}) or a "
            ".safetensors file written by `cnnkit train`"
        )
    return p


def model_file(path: str | os.PathLike) -> Path:
    """:func:`resolve` for a reader of a run's model: a run's resume state given instead (what
    ``--resume`` reads, the weights with the optimizer's state) names the model to give."""
    p = resolve(path)
    if p.name == RESUME_FILE:
        raise CnnkitError(
            f"{path} is a run's resume state (what --resume reads), not its model: give the run folder "
            f"{p.parent} or its {MODEL_FILE}"
        )
    return p


def read_metadata(path) -> dict:
    """The ``"cnnkit"`` JSON of a safetensors file, read from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("cnnkit")
    except Exception as exc:  # noqa: BLE001 -- SafetensorError, OSError, ...: the file is not ours
        raise CnnkitError(
            f"{path} is not a readable safetensors file ({short_error(exc)}); {CHECKPOINT_HINT}"
        ) from None
    if text is None:
        raise CnnkitError(
            f"{path} is a safetensors file without cnnkit's description (plain weights?); "
            f"{CHECKPOINT_HINT}, or pass plain weights as --weights with --model NAME"
        )
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CnnkitError(
            f"{path}: its cnnkit description is not valid JSON ({short_error(exc)}); {CHECKPOINT_HINT}"
        ) from None
    if not isinstance(meta, dict):
        raise CnnkitError(f"{path}: its cnnkit description is not a JSON object; {CHECKPOINT_HINT}")
    if meta.get("format") != FORMAT:
        raise CnnkitError(f"{path}: unknown checkpoint format {str(meta.get('format'))[:40]!r}; expected {FORMAT}")
    return meta


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = read_metadata(path)
    try:
        tensors = st_load(Path(path).read_bytes())
    except MemoryError:
        from cnnkit.errors import out_of_memory

        raise out_of_memory(f"reading {path}", Path(path).stat().st_size) from None
    except Exception as exc:  # noqa: BLE001 -- truncated data, bad offsets: SafetensorError
        raise CnnkitError(f"{path} is damaged ({short_error(exc)}); {CHECKPOINT_HINT}") from None
    return tensors, meta


def read_split(run: str | os.PathLike, required: tuple[str, ...] = ("train", "test")) -> dict[str, list[str]] | None:
    """The images a run trained, validated and tested on: its ``split.json``, checked.

    Evaluation and resumption read the run's own split, so images added to a folder after training
    never land in its test split, and a training image is never scored as a test one.

    Args:
        run: a run folder, or a file in it (its ``model.safetensors``).
        required: the parts the file must hold (a fine-tuning run may have no test part).

    Returns:
        ``{"train": names, "val": names, "test": names}``, the parts the run has, or None where it
        has no ``split.json``. Other keys of the file (a fine-tuning run's seed and fractions) are
        left out.

    Raises:
        CnnkitError: the file is not JSON, lacks a required part, holds a part that is not a list of
            names, names a path outside the data folder, or names an image in two parts.
    """
    folder = Path(run)
    path = (folder if folder.is_dir() else folder.parent) / SPLIT_FILE
    if not path.is_file():
        return None
    fix = "restore it from a copy of the run, or train again"
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CnnkitError(f"{path} is not readable JSON ({short_error(exc)}); {fix}") from None
    parts = {k: split[k] for k in ("train", "val", "test") if k in split} if isinstance(split, dict) else {}
    if not (
        set(required) <= set(parts)
        and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in parts.values())
    ):
        raise CnnkitError(
            f"{path} is not a run's split (lists of image names under {', '.join(required)}"
            f"{' and val' if 'val' not in required else ''}); {fix}"
        )
    seen: dict[str, str] = {}
    for part, names in parts.items():
        for name in names:
            if not name or Path(name).is_absolute() or ".." in Path(name).parts:  # names inside the data folder
                raise CnnkitError(f"{path} names {name!r}, not an image inside the data folder; {fix}")
            if seen.setdefault(name, part) != part:
                raise CnnkitError(f"{path} names {name!r} in both {seen[name]} and {part}; {fix}")
    return {k: list(v) for k, v in parts.items()}


def run_photos(run: str | os.PathLike, data: str) -> dict[str, list[str]] | None:
    """The photos a run on ``data`` trained, validated and tested on (:func:`read_split`), or None for
    generated digit scenes, whose split.json records how the scenes were drawn rather than names."""
    return None if data == "digits" else read_split(run)


def run_info(run: str | os.PathLike, strict: bool = True) -> dict | None:
    """What the run in folder ``run`` records of its data, for ``--resume`` to read and check a
    user's data by: its model file's metadata, or, where the run stopped before its first model file
    (between its first resume state and that file), what its resume state recorded of the description
    that file was about to hold (:data:`RECORDED`: classes, input size, data files' digests).

    Args:
        run: the run folder.
        strict: a resume state without a model file that records nothing (an earlier cnnkit wrote it)
            is an error; False: None, for a check that has nothing to compare then (the digests of
            :func:`check_training_data`).

    Returns:
        The metadata (or the record), or None where the folder holds neither file.

    Raises:
        CnnkitError: with ``strict``, a resume state without a model file that records nothing of the
            run's data: the run's classes cannot be known.
    """
    model, resume = Path(run) / MODEL_FILE, Path(run) / RESUME_FILE
    if model.is_file():
        return read_info(model)
    if not resume.is_file():
        return None
    record = read_info(resume).get("record")
    if not isinstance(record, dict) and not strict:
        return None
    if not isinstance(record, dict):
        raise CnnkitError(
            f"{run} stopped before its first model file, and its resume state does not record the run's "
            "classes and data (an earlier cnnkit wrote it); start a new run without --resume"
        )
    return record


def run_classes(run: str | os.PathLike) -> list[str] | None:
    """The class names of the run in folder ``run``, as it recorded them (:func:`run_info`: its model
    file's, or its resume state's before its first model file): what ``--resume`` reads a user's data
    with, so that it decodes the photos of the run's split alone, leaves out a class added to the data
    since, and refuses data whose classes are no longer the run's. None where the folder holds no run
    or the run names no classes.

    Raises:
        CnnkitError: a run stopped before its first model file whose resume state records no classes
            (:func:`run_info`).
    """
    info = run_info(run)
    classes = (info or {}).get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return None
    return list(classes)


def data_files(files: dict[str, tuple[str | os.PathLike, str] | None]) -> dict:
    """What a run's metadata records of its data (``data_files``, one of :data:`RECORDED`): for each
    role, the name of what it was read from and the sha256 of its values as read
    (:func:`~cnnkit.data.digest.values_digest`). A sequence run's roles are its files (``train``: TRAIN,
    whose validation part is carved from it; ``test``); a photo run's are the parts of its data it
    read (``train``, ``val``, ``test``), named by the data (an image folder's name, ``mnist``).
    :func:`check_training_data` and :func:`warn_if_changed` check data by it: they tell what the
    classes and input size cannot, values that changed.

    Args:
        files: role -> (the file or data read, its digest), or None where the run has no such part.

    Example:
        >>> data_files({"train": ("ucr/Toy_TRAIN.tsv", "3f1c0a9e"), "test": None})
        {'train': {'file': 'Toy_TRAIN.tsv', 'sha256': '3f1c0a9e'}}
    """
    return {role: {"file": Path(v[0]).name, "sha256": v[1]} for role, v in files.items() if v is not None}


def _changed(unit: str, role: str) -> tuple[str, str]:
    """(what a message calls the data, what changed in it) for a ``unit`` of data (``"file"``: a
    series file; ``"images"``: a part of a photo run's data) of ``role``."""
    if unit == "file":
        return "file", "its values changed"
    return "data", f"the {unit} of its {role} part changed"


def check_training_data(source, digests: dict[str, str], info: dict, run, unit: str = "file") -> None:
    """Refuse to resume on data whose values are not those the run trained on: the sha256 of a role
    read now (``digests``) differs from the one the run recorded (``data_files``, :func:`data_files`).
    ``--resume`` continues a run exactly, on its own data. A run that recorded no digest (an earlier
    cnnkit wrote it), or none for a role, is not checked.

    Args:
        source: what was read (the file, the data's name or folder), named in the message.
        digests: role -> the sha256 of its values as read now (``train``; a photo run's ``val`` too).
        info: the run's metadata (:func:`run_info`).
        run: the run folder, named in the message.
        unit: ``"file"`` (a series file) or what a photo run's parts hold (``"images"``).

    Raises:
        CnnkitError: naming the data, the part that changed, both digests and the fix.
    """
    files = info.get("data_files")
    if not isinstance(files, dict):
        return
    for role, now in digests.items():
        was = files.get(role)
        if not isinstance(was, dict) or now == was.get("sha256"):
            continue
        noun, changed = _changed(unit, role)
        raise CnnkitError(
            f"{source} is not the {noun} the run in {run} trained on: {changed} (sha256 {now[:12]}..., "
            f"the run's {str(was.get('sha256'))[:12]}...); --resume continues a run exactly on its own data: "
            f"put back the {noun if unit == 'file' else unit} it trained on, or start a new run in another --out"
        )


def check_resumed_data(source, files: dict, run, unit: str) -> None:
    """What ``--resume`` checks a photo run's data by: the parts it trains and validates on must hold
    the values the run recorded (:func:`check_training_data`), and a test part it scores at its end
    is scored as it is, said where it changed (:func:`warn_if_changed`). A run that recorded no
    digest (an earlier cnnkit wrote it) is not checked.

    Args:
        source: the data read (its name or folder), named in the messages.
        files: :func:`data_files` of the parts read now.
        run: the run folder being resumed.
        unit: what the parts hold, as the messages name it (``"images"``, ``"photos"``).

    Raises:
        CnnkitError: a training or validation part whose values changed.
    """
    recorded = run_info(run, strict=False) or {}
    check_training_data(source, {k: files[k]["sha256"] for k in ("train", "val") if k in files}, recorded, run, unit)
    if "test" in files:
        warn_if_changed(source, files["test"]["sha256"], recorded, run, "test", unit)


def warn_if_changed(source, digest, info: dict, run, role: str | None = None, unit: str = "file") -> None:
    """One warning (:class:`~cnnkit.errors.CnnkitWarning`) where ``source`` has the name of data the run
    recorded (``data_files``, :func:`data_files`) and other values: its scores are of the data as it
    is, not of the data the run recorded. Nothing for a run that recorded no digest, or data of
    another name.

    Args:
        source: the file or data scored (its name is compared with the recorded ones).
        digest: the sha256 of its values as read, or a function giving it (called only where a
            recorded name matches).
        info: the run's metadata.
        run: the run folder, named in the message.
        role: the role ``source`` stands for where it is known (a sequence ``.npz`` is the TRAIN and
            TEST file at once; a photo run's part scored); None: any of the run's of that name.
        unit: ``"file"`` (a series file) or what a photo run's parts hold (``"images"``).
    """
    files = info.get("data_files")
    if not isinstance(files, dict):
        return
    now = None
    for name, was in files.items():
        if role not in (None, name) or not isinstance(was, dict) or was.get("file") != Path(source).name:
            continue
        now = now or (digest() if callable(digest) else digest)
        if now != was.get("sha256"):
            _, changed = _changed(unit, name)
            what = f"the {name.upper()} file" if unit == "file" else "the data"
            warnings.warn(
                f"{source} is not {what} the run in {run} recorded: {changed} (sha256 {now[:12]}..., the "
                f"run's {str(was.get('sha256'))[:12]}...); {'it is' if unit == 'file' else 'they are'} scored "
                f"as {'it is' if unit == 'file' else 'they are'}",
                CnnkitWarning,
                stacklevel=2,
            )
            return


def output_stems(inputs: list, out_dir, suffixes: tuple[str, ...], option: str = "--out") -> list[str]:
    """The file stem each input's outputs get in ``out_dir``: no two outputs share a name (two ``x.png``
    from different folders become ``x`` and ``x_2``; with ``(".png", "_overlay.png")``, ``x.png`` and
    ``x_overlay.png`` become ``x`` and ``x_overlay_2``, whose map would be ``x``'s overlay), and never
    the name of an input itself.

    Args:
        inputs: the input files, in order.
        out_dir: the folder the outputs go to.
        suffixes: what each input's outputs add to the stem and extension, e.g. ``(".png", "_overlay.png")``.
        option: the flag that chose ``out_dir`` (``"--out-dir"``), named in the error.

    Returns:
        One stem per input.

    Raises:
        CnnkitError: an output would replace one of the inputs (``out_dir`` is the images' own folder
            and an output keeps an input's name): nothing is written.
    """
    stems: list[str] = []
    taken: set[str] = set()  # the file names given out so far
    for path in map(Path, inputs):
        stem, k = path.stem, 2
        while stem in stems or any(f"{stem}{suffix}" in taken for suffix in suffixes):
            stem, k = f"{path.stem}_{k}", k + 1
        stems.append(stem)
        taken.update(f"{stem}{suffix}" for suffix in suffixes)
    for path, stem in zip(map(Path, inputs), stems):  # said before the work, not by the writer after it
        sizes = {f"{stem}{suffix}": len(f"{stem}{suffix}".encode(errors="surrogateescape")) for suffix in suffixes}
        longest = max(sizes, key=sizes.__getitem__)
        if sizes[longest] > NAME_MAX:
            raise CnnkitError(
                f"{path}: its output {longest[:40]}...{longest[-16:]} would have a {sizes[longest]}-byte name, more "
                f"than a file system allows ({NAME_MAX}); rename the file shorter (nothing was written)"
            )
    targets = [(Path(out_dir) / f"{stem}{suffix}").resolve() for stem in stems for suffix in suffixes]
    check_not_input(targets, inputs, "image", f"{option} folder")
    return stems


def check_new_run(out, resume: bool) -> None:
    """Before anything is written to ``out``: a new run must not go where a run is (``--resume``
    continues one), nor over files it would replace, and ``--resume`` needs one there.

    A run writes ``metrics.csv`` and ``curves.png`` only once its model or resume state is there; a
    folder holding either without those holds someone else's files, which a new run would overwrite.

    Raises:
        CnnkitError: ``out`` holds a run, or a ``metrics.csv`` or ``curves.png`` of no run, and ``resume``
            is False; or holds no run and ``resume`` is True.
    """
    if out is None:
        return
    path = Path(out) / RESUME_FILE
    if not resume and path.exists():
        raise CnnkitError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    model = Path(out) / MODEL_FILE
    if not resume and model.exists() and not _cut_in_first_epoch(model):  # a finished run without resume state
        raise CnnkitError(f"{out} already holds a trained model; choose another --out")
    theirs = [] if resume or model.exists() else [name for name in RUN_RECORDS if (Path(out) / name).exists()]
    if theirs:
        raise CnnkitError(
            f"{out} holds a {' and a '.join(theirs)} of no run, which a new run would replace; choose another "
            "--out (a new or empty folder)"
        )
    if resume and not path.is_file():
        raise CnnkitError(f"nothing to resume in {out}: no {RESUME_FILE}; start a new run without --resume")


def _cut_in_first_epoch(model: Path) -> bool:
    """Whether ``model`` is what Ctrl-C leaves before a run's first resume state (none beside it): the
    weights of a first epoch cut short (epoch 0), or of the first epoch cut while its resume state was
    being written (epoch 1), which a new run in that folder replaces."""
    try:
        info = read_metadata(model)
    except CnnkitError:
        return False
    return info.get("interrupted") is True and info.get("epoch") in (0, 1)


def read_info(path: str | os.PathLike) -> dict:
    """The JSON description stored in a checkpoint (without building the model)."""
    return read_metadata(resolve(path))


def stored_config(cls: Any, info: dict, file) -> Any:
    """The settings a run stored in its checkpoint's metadata (``info["config"]``) as ``cls`` (a
    :class:`~cnnkit.engine.config.RunConfig`): what evaluation reads the run's data by.

    Raises:
        CnnkitError: ``config`` missing or not an object, or a setting that ``cls`` refuses (a null
            where a value is needed, a value of the wrong type): one line naming the file.
    """
    config = info.get("config")
    if isinstance(config, dict):
        try:
            return cls.from_dict(config, strict=False)
        except (CnnkitError, TypeError, ValueError):
            pass
    raise CnnkitError(
        f"{file}: its metadata (the run's settings, 'config') is not what cnnkit wrote; the file is damaged "
        "or was edited: restore the run from a copy or train it again"
    )


def resumed_config(out: str | os.PathLike, task: str | None = None) -> dict:
    """The settings the run in folder ``out`` was started with (what ``--resume`` continues), read
    from its resume file's metadata without loading its tensors.

    Args:
        out: the run folder.
        task: the task resuming it: another task's run is refused.

    Raises:
        CnnkitError: no run to resume, a damaged resume file, or a run of another task.
    """
    path = Path(out) / RESUME_FILE
    if not path.is_file() and (Path(out) / "member0" / RESUME_FILE).is_file():  # an ensemble: member 0's
        path = Path(out) / "member0" / RESUME_FILE
    if not path.is_file():
        raise CnnkitError(f"nothing to resume in {out}: no {RESUME_FILE}; start a new run without --resume")
    model = Path(out) / MODEL_FILE
    info = read_info(model) if model.is_file() else {}
    found = str(info.get("task", "classify"))[:20] if model.is_file() else None
    if task is not None and found is not None and found != task:
        command = "classify finetune" if "finetune" in info else f"{found.replace('_', '-')} train"
        raise CnnkitError(
            f"{out} is a {found!r} run, not a {task!r} one; resume it with `cnnkit {command} --resume --out {out}`"
        )
    info = read_info(path)
    kind = info.get("task")  # None in a file written by an earlier version
    if task is not None and isinstance(kind, str) and kind != task:
        raise CnnkitError(
            f"{path} is the resume state of a {kind[:20]!r} run, not a {task!r} one (copied from another "
            "run folder?); start a new run without --resume"
        )
    config = info.get("config")
    if not isinstance(config, dict):
        raise CnnkitError(f"{path}: the resume state holds no settings; start a new run")
    return config


# settings that change where, how fast or how long a run computes, not what an epoch computes: a resumed
# run may change them (``minutes``: a run stopped by its time budget trains on with a larger one)
RESUME_FREE = ("device", "threads", "data_dir", "minutes")


def with_free_settings(stored: Any, given: Any, free: tuple[str, ...] = RESUME_FREE) -> Any:
    """The config a resumed run trains with: the run's own (``stored``), with the settings of
    ``given`` that a resumed run may change (``free``: where, how fast and how long it computes)
    where ``given`` sets them (not None). Both are dataclass configs of one task.

    A command line gives :func:`check_resume_settings`'s answer as ``given``: the run's own value of
    each free setting unless a flag changed it.
    """
    import dataclasses

    names = {f.name for f in dataclasses.fields(stored)}
    moved = {k: getattr(given, k) for k in free if k in names and getattr(given, k, None) is not None}
    return dataclasses.replace(stored, **moved)


def check_resume_settings(
    out: str | os.PathLike,
    task: str,
    given: dict,
    key: str | None = None,
    free: tuple[str, ...] = RESUME_FREE,
    read_settings: Callable[[dict], dict] | None = None,
) -> dict:
    """The one rule of ``--resume`` in every task: the run continues with its own settings, and a
    setting the user gave (a flag or a ``--config`` key) must equal the run's, else nothing runs.

    Args:
        out: the run folder.
        task: the task resuming it (another task's run is refused).
        given: the settings the user typed, as the command line parsed them.
        key: where in the stored config the settings are (``"args"`` for fine-tuning), None for the top.
        free: settings that may differ (where the run computes, not what).
        read_settings: how the task reads a run's stored settings (the values an earlier version
            stored, as this version's), applied before the comparison; None: as stored.

    Returns:
        The run's stored settings (as ``read_settings`` reads them), with the ``free`` ones the user gave.

    Raises:
        CnnkitError: one line naming every changed setting with the run's value and the one given.
    """
    stored = resumed_config(out, task)
    if key is not None:
        if not isinstance(stored.get(key), dict):
            raise CnnkitError(f"{out}: the resume state holds no '{key}' settings; start a new run")
        stored = stored[key]
    if read_settings is not None:
        stored = read_settings(stored)
    changed = [k for k, v in given.items() if k not in free and k in stored and _plain(v) != _plain(stored[k])]
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} {_brief(stored[k])} (given {_brief(given[k])})" for k in changed)
        raise CnnkitError(
            f"{out} was trained with {shown}; --resume continues a run with its own settings: leave "
            "those flags out, or start a new run in another --out"
        )
    return {**stored, **{k: v for k, v in given.items() if k in free}}


def _plain(value):
    """Tuples as lists (JSON's view), so a parsed flag and a stored value compare."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _brief(value) -> str:
    text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def run_commands(task: str) -> str:
    """The commands that use a run of ``task``: ``cnnkit video-predict eval|predict`` (a style network
    has nothing to score: ``cnnkit style predict``)."""
    return f"cnnkit {task.replace('_', '-')} {'predict' if task == 'style' else 'eval|predict'}"


def load_run_model(path: str | os.PathLike, task: str, build, device: str | torch.device = "cpu") -> nn.Module:
    """The deployable of a ``cnnkit TASK train`` run, rebuilt from data and never from code.

    Args:
        path: a run folder or its ``model.safetensors``.
        task: the task the run must have been trained for (its metadata's ``"task"``).
        build: ``build(info) -> nn.Module``: the task's network, built from the metadata alone.
        device: where the model goes.

    Returns:
        The model in eval mode, with its metadata as ``.info``.

    Raises:
        CnnkitError: not a checkpoint, another task's run, metadata that builds nothing, or weights
            that do not fit the network the metadata describes.
    """
    file = model_file(path)
    info = read_metadata(file)
    if info.get("task", "classify") != task:
        found = str(info.get("task", "classify"))[:20]
        raise CnnkitError(
            f"{file} is not {TASK_MODELS.get(task, f'a {task} model')} (task {found!r}); give a run folder "
            f"written by `cnnkit {task.replace('_', '-')} train`, or use `{run_commands(found)}` for this one"
        )
    tensors, _ = read_checkpoint(file)
    limit = 8 * len(tensors) + 1000  # modules a network with this many weight tensors may have
    model: Any = _build_from_metadata(build, info, file, task, meta=True, limit=limit)
    if model is not None:  # sizes compared before any memory is given to the network
        tensors = _without_dropped(model, tensors)
        _check_shapes(model, tensors, file)
        want = model.state_dict()
        model.load_state_dict({k: v.to(want[k].dtype) for k, v in tensors.items()}, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            model = None  # state the checkpoint does not hold (e.g. a computed buffer): built for real
    if model is None:
        model = _build_from_metadata(build, info, file, task, meta=False, limit=limit)  # the network or a raise
        load_checked(model, _without_dropped(model, tensors), file)
    model.info = info
    return model.to(device).eval()


def _without_dropped(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` less the weights of backbone modules that are never run, which ``model`` does not
    have (:func:`cnnkit.models.features.dropped_keys`); a checkpoint may hold them."""
    from cnnkit.models.features import dropped_keys

    dropped = dropped_keys(model)
    return {k: v for k, v in tensors.items() if k not in dropped} if dropped else tensors


class _TooManyModules(Exception):
    """Raised while building when the metadata asks for more layers than the file has weights for."""


def _build_from_metadata(build, info: dict, file, task: str, meta: bool, limit: int) -> nn.Module | None:
    """``build(info)``, on the meta device when ``meta`` (no memory; None where a builder needs real
    tensors), stopped once it has made ``limit`` modules (metadata asking for millions of layers);
    what the metadata cannot build is a one-line error."""
    made = [0]

    def count(module, name, submodule):
        made[0] += 1
        if made[0] > limit:
            raise _TooManyModules

    hook = torch.nn.modules.module.register_module_module_registration_hook(count)
    try:
        if meta:
            with on_meta():
                return build(info)
        return build(info)
    except _TooManyModules:
        reason = f"it asks for more than {limit:,} layers for {(limit - 1000) // 8:,} weight tensors"
    except CnnkitError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, ZeroDivisionError) as exc:
        reason = short_error(exc)
    except MemoryError:
        reason = "it describes a network too large for this machine's memory"
    except RuntimeError as exc:  # sizes the metadata gives that do not fit together (e.g. channels)
        if meta and (isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()):
            return None  # the builder needs real tensors: it is built once, for real
        reason = short_error(exc)
    finally:
        hook.remove()
    raise CnnkitError(
        f"{file}: its metadata does not describe a {task} model ({reason}); "
        f"the file is damaged or was edited: {CHECKPOINT_HINT}"
    )


def _check_shapes(model: nn.Module, tensors: dict[str, torch.Tensor], file) -> None:
    """The checkpoint's keys and shapes equal ``model``'s, else a one-line error naming ``file``."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    if want == have:
        return
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    wrong = [k for k in sorted(want.keys() & have.keys()) if want[k] != have[k]]
    if wrong:
        reason = f"{wrong[0]} has shape {list(have[wrong[0]])}, the network {list(want[wrong[0]])}"
    elif missing:
        reason = f"{len(missing)} weights missing, e.g. {missing[0]}"
    else:
        reason = f"{len(extra)} unexpected weights, e.g. {extra[0]}"
    raise CnnkitError(
        f"{file}: its weights do not fit the network it describes ({reason[:160]}); "
        f"the file is damaged or was edited: {CHECKPOINT_HINT}"
    )


def load_checked(model: nn.Module, tensors: dict[str, torch.Tensor], file) -> None:
    """``model.load_state_dict(tensors)``, strict; weights that do not fit are a one-line error naming ``file``."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:  # missing/unexpected keys, wrong shapes
        raise CnnkitError(
            f"{file}: its weights do not fit the network it describes ({short_error(exc)}); "
            f"the file is damaged or was edited: {CHECKPOINT_HINT}"
        ) from None

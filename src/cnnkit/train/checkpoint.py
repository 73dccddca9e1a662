"""Checkpoints without pickles: safetensors weights with their JSON description in the metadata.

A run folder holds
- ``model.safetensors``: the deployable model (EMA weights when EMA is on). Its metadata key
  ``"cnnkit"`` is a JSON document: model spec, classes, input size, normalisation, TTA, config,
  history. :func:`load` rebuilds an eval-mode :class:`Classifier` from it.
- ``resume.safetensors``: everything ``--resume`` needs (weights, EMA, optimizer state, RNG states,
  epoch, history), self-contained so it never disagrees with itself.
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
from importlib import import_module
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cnnkit.errors import CnnkitError, disk_full, is_disk_full
from cnnkit.train import network as netdesc

FORMAT = "cnnkit.checkpoint/1"
MODEL_FILE = "model.safetensors"
RESUME_FILE = "resume.safetensors"
METRICS_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


class Classifier(nn.Module):
    """A network with its input normalisation inside: float (N, C, H, W) in [0, 1] -> logits.

    Attributes: ``net`` (the bare network), ``classes``, ``input_size`` (C, H, W), ``tta``
    ("" | "shift" | "flip": test-time augmentation applied in eval mode).
    """

    def __init__(self, net: nn.Module, mean, std, classes: list[str], input_size, tta: str = ""):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.classes = list(classes)
        self.input_size = tuple(input_size)
        self.tta = tta

    @contextlib.contextmanager
    def without_tta(self):
        """Within the block the model answers from the image alone (cheap per-epoch validation)."""
        tta, self.tta = self.tta, ""
        try:
            yield self
        finally:
            self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.tta and not self.training:
            return tta_logits(self.net, x, self.tta)
        return self.net(x)


class Ensemble(nn.Module):
    """Members' probabilities averaged; returns their log (valid logits)."""

    def __init__(self, members: list[Classifier]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.net = nn.ModuleList(m.net for m in members)
        self.classes = members[0].classes
        self.input_size = members[0].input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def tta_logits(net: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Average the probabilities of the image and shifted (by 1 px) or flipped copies."""
    views = [x]
    if kind == "shift":
        p = F.pad(x, (1, 1, 1, 1))                                   # (N, C, H+2, W+2)
        h, w = x.shape[-2:]
        views += [p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in
                  ((-1, 0), (1, 0), (0, -1), (0, 1))]
    elif kind == "flip":
        views.append(x.flip(-1))
    probs = torch.stack([net(v).float().softmax(1) for v in views]).mean(0)
    return probs.clamp_min(1e-12).log()


# ----------------------------------------------------------------------------- building networks

def build_network(model: str, num_classes: int, in_channels: int) -> nn.Module:
    """A zoo name, a ``spec.yaml``/``.json`` file, or ``file.py:factory`` -> an ``nn.Module``."""
    if model.endswith((".yaml", ".yml", ".json")):
        if not Path(model).is_file():
            raise CnnkitError(f"--model spec file not found: {model}; give a .yaml/.json network spec")
        from cnnkit.analysis.spec import build_from_spec

        return build_from_spec(model, logits=True)[0]     # a final softmax is the loss's job
    if ".py:" in model:
        from cnnkit.analysis.target import load_factory

        path, _, factory = model.rpartition(":")
        return load_factory(Path(path), factory, num_classes=num_classes, in_channels=in_channels)
    from cnnkit.models import create_model

    return create_model(model, num_classes=num_classes, in_channels=in_channels)


def model_reference(model: str) -> str:
    """The model string to store, for messages: file paths made absolute. (The network itself is
    stored as data in ``info["network"]``; loading never goes back to these files.)"""
    if model.endswith((".yaml", ".yml", ".json")):
        return str(Path(model).resolve())
    if ".py:" in model:
        path, _, factory = model.rpartition(":")
        return f"{Path(path).resolve()}:{factory}"
    return model


# ----------------------------------------------------------------------------- atomic files

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it: never half-written.

    A ``.<name>.*.tmp`` left by an earlier save that was killed is removed first; a full disk is
    a :class:`CnnkitError` naming the size (the previous version of ``path`` stays as it was).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnkitError(f"cannot create the folder {path.parent} ({exc.strerror}); choose another --out") from None
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, len(data)) from None
        raise CnnkitError(f"cannot write {path} ({exc.strerror or exc}); check the folder's permissions "
                          "or choose another --out") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_model(path, model: Classifier, info: dict) -> None:
    """Write a Classifier's weights + ``info`` (JSON) to ``path`` atomically.

    ``info["network"]`` (added from ``info["model"]`` when absent) describes the network as data,
    so that :func:`load` never has to run code (:mod:`cnnkit.train.network`). A task's module that
    is not a classifier (no ``info["model"]``) is stored as its task describes it.
    """
    if "network" not in info and "model" in info:
        info = {**info, "network": netdesc.describe(info["model"], model.net)}
    data = st_save(_tensors(model.state_dict()), metadata={"cnnkit": json.dumps(info)})
    atomic_write_bytes(path, data)


def save_ensemble(path, member_files: list[Path]) -> None:
    """One file holding every member's weights (``members.<i>.``) and their descriptions."""
    tensors, infos = {}, []
    for i, f in enumerate(member_files):
        t, info = _read(f)
        if info.get("ensemble"):
            raise CnnkitError(f"{f} is already an ensemble; give single-model checkpoints")
        tensors.update({f"members.{i}.{k}": v for k, v in t.items()})
        infos.append(info)
    head = {k: infos[0][k] for k in ("format", "classes", "input_size", "dataset")}
    meta = {**head, "ensemble": infos}
    atomic_write_bytes(path, st_save(tensors, metadata={"cnnkit": json.dumps(meta)}))


def write_metrics_csv(path, history: list[dict], columns: list[str] | None = None) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or METRICS_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


# ----------------------------------------------------------------------------- resume state

def save_resume(path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None,
                generator: torch.Generator, epoch: int, history: list[dict], config: dict) -> None:
    """Everything needed to continue exactly after ``epoch`` epochs."""
    tensors = _tensors(model.state_dict(), "model.")
    if ema is not None:
        tensors.update(_tensors(ema.state_dict(), "ema."))
    opt = optimizer.state_dict()
    scalars = {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state().cpu()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"format": FORMAT, "epoch": epoch, "history": history, "config": config,
            "param_groups": opt["param_groups"], "optim_scalars": scalars}
    atomic_write_bytes(path, st_save(tensors, metadata={"cnnkit": json.dumps(meta)}))


def load_resume(path, model: nn.Module, optimizer: torch.optim.Optimizer | None, ema: nn.Module | None,
                generator: torch.Generator) -> tuple[int, list[dict], dict]:
    """Restore what :func:`save_resume` wrote; returns (epochs done, history, config).

    ``optimizer=None`` skips its state: a run resumed where a new phase (a new optimizer) begins."""
    tensors, meta = _read(path)
    try:
        model.load_state_dict(_strip(tensors, "model."))
        if ema is not None:
            ema.load_state_dict(_strip(tensors, "ema."))
        state: dict = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        for key, v in meta["optim_scalars"].items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
        if optimizer is not None:
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        generator.set_state(tensors["rng.generator"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise CnnkitError(f"{path}: the resume state is damaged or does not match this run ({_short(exc)}); "
                          "start a new run without --resume, or resume the run that wrote it") from None

    return meta.get("epoch", 0), meta.get("history", []), meta.get("config", {})


def _strip(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- loading

MAX_CLASSES = 1_000_000     # a checkpoint claiming more is corrupt, not ambitious
MAX_SIDE = 16_384           # pixels per input side stored in a checkpoint
MAX_PIXELS = 1 << 25        # 33.5 M values per input image (C x H x W): 3 x 3344 x 3344
_HINT = "give a run folder or model.safetensors written by `cnnkit train`, `finetune` or `fcn`"


def resolve(path: str | os.PathLike) -> Path:
    """A run folder or a checkpoint file -> the ``model.safetensors`` to read."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CnnkitError(f"no checkpoint at {path}: give a run folder (holding {MODEL_FILE}) or a "
                          ".safetensors file written by `cnnkit train`")
    return p


def _metadata(path) -> dict:
    """The ``"cnnkit"`` JSON of a safetensors file, read from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("cnnkit")
    except Exception as exc:  # noqa: BLE001 -- SafetensorError, OSError, ...: the file is not ours
        raise CnnkitError(f"{path} is not a readable safetensors file ({_short(exc)}); {_HINT}") from None
    if text is None:
        raise CnnkitError(f"{path} is a safetensors file without cnnkit's description (plain weights?); "
                          f"{_HINT}, or pass plain weights as --weights with --model NAME")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CnnkitError(f"{path}: its cnnkit description is not valid JSON ({_short(exc)}); {_HINT}") from None
    if not isinstance(meta, dict):
        raise CnnkitError(f"{path}: its cnnkit description is not a JSON object; {_HINT}")
    if meta.get("format") != FORMAT:
        raise CnnkitError(f"{path}: unknown checkpoint format {str(meta.get('format'))[:40]!r}; expected {FORMAT}")
    return meta


def _read(path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = _metadata(path)
    try:
        tensors = st_load(Path(path).read_bytes())
    except MemoryError:
        from cnnkit.errors import out_of_memory

        raise out_of_memory(f"reading {path}", Path(path).stat().st_size) from None
    except Exception as exc:  # noqa: BLE001 -- truncated data, bad offsets: SafetensorError
        raise CnnkitError(f"{path} is damaged ({_short(exc)}); {_HINT}") from None
    return tensors, meta


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def check_info(info: dict, source) -> None:
    """The sizes a checkpoint claims, checked before anything is built from them."""
    def bad(what: str, value) -> CnnkitError:
        return CnnkitError(f"{source}: the checkpoint's {what} is {str(value)[:60]!r}, which is not valid; "
                           f"the file is corrupt or was not written by cnnkit: {_HINT}")

    for key in ("num_classes", "input_size", "classes", "mean", "std"):
        if key not in info:
            raise CnnkitError(f"{source}: the checkpoint lacks {key!r}; {_HINT}")
    n = info["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CLASSES:
        raise bad("num_classes", n)
    size = info["input_size"]
    if not _valid_size(size):
        raise bad(f"input_size (at most {MAX_SIDE:,} per side and {MAX_PIXELS:,} values per image)", size)
    classes = info["classes"]
    if not isinstance(classes, list) or len(classes) != n or not all(isinstance(c, str) for c in classes):
        raise bad("class list (it must hold num_classes names)", str(classes)[:60])
    for key in ("mean", "std"):
        v = info[key]
        if (not isinstance(v, list) or len(v) != size[0]
                or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
            raise bad(f"{key} (one finite number per channel)", v)
    if any(x <= 0 for x in info["std"]):
        raise bad("std (it must be positive)", info["std"])
    fcn = info.get("fcn")
    if fcn is not None and (not isinstance(fcn, dict) or not _valid_size(fcn.get("input_size"))
                            or len(fcn["input_size"]) != len(size)):
        raise bad("fcn entry", fcn)
    if info.get("tta", "") not in ("", "shift", "flip"):
        raise bad("tta", info.get("tta"))


def _valid_size(size) -> bool:
    """(C, H, W) of positive integers within the caps (types checked before anything is multiplied)."""
    return (isinstance(size, list) and len(size) == 3
            and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_SIDE for d in size)
            and math.prod(size) <= MAX_PIXELS)


def network_of(info: dict) -> dict:
    """The checkpoint's network description (older checkpoints: derived from their model string)."""
    if "network" in info:
        return info["network"]
    model = info.get("model")
    if not isinstance(model, str):
        raise CnnkitError(f"the checkpoint names no network (model={str(model)[:40]!r}); {_HINT}")
    return netdesc.legacy(model)


def classifier_from_info(info: dict, source="the checkpoint", trust_code: bool = False,
                         factory: str | None = None) -> Classifier:
    """The Classifier a checkpoint describes, with fresh weights; no code is run unless trusted."""
    check_info(info, source)
    net = netdesc.build(network_of(info), info["num_classes"], info["input_size"][0], str(source),
                        trust_code=trust_code, factory=factory, input_size=tuple(info["input_size"]))
    if info.get("fcn"):  # written by `cnnkit fcn`: the dense head was turned into convolutions
        from cnnkit.transfer.fcn import to_fcn

        net = to_fcn(net, tuple(info["fcn"]["input_size"]))
    return Classifier(net, info["mean"], info["std"], info["classes"], info["input_size"], info.get("tta", ""))


# task (the "task" field of a checkpoint's metadata) -> "module:function" that loads its deployable
# by name, imported only when such a checkpoint is loaded (tasks sit above this module)
TASK_LOADERS = {"detect": "cnnkit.tasks.detect:load_detector"}


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, trust_code: bool = False,
         factory: str | None = None) -> nn.Module:
    """A trained checkpoint (run folder or ``.safetensors`` file) as an eval-mode ``nn.Module``.

    The module takes a float tensor (N, C, H, W) with pixel values in [0, 1] and returns logits;
    attributes ``classes``, ``input_size`` (C, H, W), ``net``. Nothing is unpickled, and nothing is
    imported or run: the network is rebuilt from its description in the metadata. A network that
    only a Python factory builds needs ``trust_code=True, factory="net.py:build"`` (the file as you
    name it, never the checkpoint's). A detector's checkpoint (``task: detect``) comes back as
    :func:`cnnkit.tasks.detect.load_detector` returns it (see ``TASK_LOADERS``).

    Raises:
        CnnkitError: the path is not a checkpoint, the file is damaged or crafted, its weights do
            not fit its description, or it needs code that was not trusted.
    """
    file = resolve(path)
    meta = _metadata(file)
    if meta.get("task") in TASK_LOADERS:        # another task's deployable: its own loader rebuilds it
        module, name = TASK_LOADERS[meta["task"]].split(":")
        return getattr(import_module(module), name)(file, device)
    members = meta.get("ensemble")
    if members is not None and (not isinstance(members, list) or not members
                                or not all(isinstance(m, dict) for m in members)):
        raise CnnkitError(f"{file}: its ensemble entry is not a list of member descriptions; {_HINT}")
    # every network is built (and its size checked) before the weights are read
    built = [classifier_from_info(info, file, trust_code, factory) for info in (members or [meta])]
    tensors, _ = _read(file)
    try:
        if members:
            for i, m in enumerate(built):
                m.load_state_dict(_strip(tensors, f"members.{i}."))
            model: nn.Module = Ensemble(built)
        else:
            model = built[0]
            model.load_state_dict(tensors)
    except RuntimeError as exc:  # missing/unexpected keys, wrong shapes
        raise CnnkitError(f"{file}: its weights do not fit the network it describes ({_short(exc)}); "
                          f"the file is damaged or was edited: {_HINT}") from None
    model.info = meta
    return model.to(device).eval()


def read_info(path: str | os.PathLike) -> dict:
    """The JSON description stored in a checkpoint (without building the model)."""
    return _metadata(resolve(path))


def resumed_config(out: str | os.PathLike) -> dict:
    """The settings the run in folder ``out`` was started with (what ``--resume`` continues), read
    from its resume file's metadata without loading its tensors."""
    path = Path(out) / RESUME_FILE
    if not path.is_file():
        raise CnnkitError(f"nothing to resume in {out}: no {RESUME_FILE}; start a new run without --resume")
    return read_info(path)["config"]


def trusted_resume_model(stored: str, typed: str | None) -> str:
    """The model a ``--resume`` rebuilds: a Python factory only when the user names it again."""
    if ".py:" not in stored:
        return stored
    if typed is not None and model_reference(typed) == stored:
        return typed
    raise CnnkitError(f"this run's network is built by Python code ({stored}); resuming would run it: if "
                      f"you trust that code, pass --model {stored} again to resume")

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
import io
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import CnnkitError

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
        from ..analysis.spec import build_from_spec

        return build_from_spec(model, logits=True)[0]     # a final softmax is the loss's job
    if ".py:" in model:
        from ..analysis.target import load_factory

        path, _, factory = model.rpartition(":")
        return load_factory(Path(path), factory, num_classes=num_classes, in_channels=in_channels)
    from ..models import create_model

    return create_model(model, num_classes=num_classes, in_channels=in_channels)


def model_reference(model: str) -> str:
    """The model string to store: file paths made absolute so a checkpoint loads from anywhere."""
    if model.endswith((".yaml", ".yml", ".json")):
        return str(Path(model).resolve())
    if ".py:" in model:
        path, _, factory = model.rpartition(":")
        return f"{Path(path).resolve()}:{factory}"
    return model


# ----------------------------------------------------------------------------- atomic files

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_model(path, model: Classifier, info: dict) -> None:
    """Write a Classifier's weights + ``info`` (JSON) to ``path`` atomically."""
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
    return meta["epoch"], meta["history"], meta["config"]


def _strip(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- loading

def resolve(path: str | os.PathLike) -> Path:
    """A run folder or a checkpoint file -> the ``model.safetensors`` to read."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CnnkitError(f"no checkpoint at {path}: give a run folder (holding {MODEL_FILE}) or a "
                          ".safetensors file written by `cnnkit train`")
    return p


def _read(path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        data = Path(path).read_bytes()
        tensors = st_load(data)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["cnnkit"])
    except (KeyError, ValueError, OSError, RuntimeError) as exc:
        raise CnnkitError(f"{path} is not a cnnkit checkpoint ({exc}); give a file written by "
                          "`cnnkit train`") from None
    if meta.get("format") != FORMAT:
        raise CnnkitError(f"{path}: unknown checkpoint format {meta.get('format')!r}; expected {FORMAT}")
    return tensors, meta


def classifier_from_info(info: dict) -> Classifier:
    net = build_network(info["model"], info["num_classes"], info["input_size"][0])
    if info.get("fcn"):  # written by `cnnkit fcn`: the dense head was turned into convolutions
        from ..transfer.fcn import to_fcn

        net = to_fcn(net, tuple(info["fcn"]["input_size"]))
    return Classifier(net, info["mean"], info["std"], info["classes"], info["input_size"], info.get("tta", ""))


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A trained checkpoint (run folder or ``.safetensors`` file) as an eval-mode ``nn.Module``.

    The module takes a float tensor (N, C, H, W) with pixel values in [0, 1] and returns logits;
    attributes ``classes``, ``input_size`` (C, H, W), ``net``. Nothing is unpickled.
    """
    file = resolve(path)
    tensors, meta = _read(file)
    if meta.get("ensemble"):
        members = []
        for i, info in enumerate(meta["ensemble"]):
            m = classifier_from_info(info)
            m.load_state_dict(_strip(tensors, f"members.{i}."))
            members.append(m)
        model: nn.Module = Ensemble(members)
    else:
        model = classifier_from_info(meta)
        model.load_state_dict(tensors)
    model.info = meta
    return model.to(device).eval()


def read_info(path: str | os.PathLike) -> dict:
    """The JSON description stored in a checkpoint (without building the model)."""
    from safetensors import safe_open

    file = resolve(path)
    with safe_open(str(file), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("cnnkit", "{}"))

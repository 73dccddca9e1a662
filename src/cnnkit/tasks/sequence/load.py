"""The deployable series classifier, built for a run and rebuilt from its checkpoint (data, never code)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save as st_save

from cnnkit.engine.runfolder import (
    CHECKPOINT_HINT,
    atomic_write_bytes,
    json_text,
    load_checked,
    model_file,
    read_checkpoint,
    read_metadata,
    stored_config,
    strip_prefix,
)
from cnnkit.errors import CnnkitError, short_error
from cnnkit.models import create_model
from cnnkit.models.deploy import Ensemble
from cnnkit.tasks.sequence.config import FITTED, MODELS, SequenceConfig

MAX_CLASSES = 100_000  # a checkpoint claiming more is damaged
MAX_CHANNELS = 10_000


class SeriesModel(nn.Module):
    """A 1-D network with its class names: float (N, C, L) z-normalised series -> logits (N, K).

    The series are z-normalised by the reader (:mod:`cnnkit.data.series`), so the model holds no
    normalisation; any length L works (global average pooling).

    Attributes: ``net`` (the zoo network), ``name`` (its zoo name), ``classes``, ``input_size``
    (C, L of the training series).
    """

    def __init__(self, net: nn.Module, name: str, classes: list[str], input_size: tuple[int, int]):
        super().__init__()
        self.net = net
        self.name = name
        self.classes = list(classes)
        self.input_size = tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, C, L) -> (N, K)

    def describe(self) -> dict:
        """The checkpoint's metadata that :meth:`from_info` rebuilds the module from."""
        return {"task": "sequence", "net": self.name, "classes": self.classes, "input_size": list(self.input_size)}

    @classmethod
    def from_info(cls, info: dict) -> SeriesModel:
        """The (untrained) module a checkpoint's metadata describes; load its state dict after."""
        name, classes, size = info["net"], info["classes"], info["input_size"]
        ok = (
            name in MODELS
            and isinstance(classes, list)
            and 1 <= len(classes) <= MAX_CLASSES
            and isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and v >= 1 for v in size)
            and size[0] <= MAX_CHANNELS
        )
        if not ok:
            raise CnnkitError("its net, classes or input_size is not one cnnkit writes")
        return cls(_net(name, len(classes), *size), name, [str(c) for c in classes], tuple(size))


def znormalised(model: nn.Module) -> bool:
    """Whether the run that trained ``model`` z-normalised its series (its config's ``znorm``; True
    when the config does not say), so that files given to it later are read the same way."""
    return bool(getattr(model, "info", {}).get("config", {}).get("znorm", True))


def build_model(name: str, classes: list[str], channels: int, length: int, seed: int) -> SeriesModel:
    """A fresh network from the zoo (seeded init) for ``channels``-channel series of ``classes``."""
    torch.manual_seed(seed)
    return SeriesModel(_net(name, len(classes), channels, length, seed), name, classes, (channels, length))


def _net(name: str, classes: int, channels: int, length: int, seed: int = 0) -> nn.Module:
    """The zoo network; MultiRocket's layout (dilations, biases) depends on the training length and seed."""
    if name in FITTED:
        return create_model(name, num_classes=classes, in_channels=channels, length=length, seed=seed)
    return create_model(name, num_classes=classes, in_channels=channels)


def save_ensemble(path, member_files: list[Path]) -> None:
    """One checkpoint holding every member's weights (``members.<i>.``) and their descriptions."""
    tensors, infos = {}, []
    for i, f in enumerate(member_files):
        t, info = read_checkpoint(f)
        tensors.update({f"members.{i}.{k}": v for k, v in t.items()})
        infos.append(info)
    # member 0's description of the run (its data files' digests where recorded): what eval reads the data by
    head = {
        k: infos[0][k]
        for k in ("format", "task", "classes", "input_size", "config", "data", "data_files")
        if k in infos[0]
    }
    meta = {**head, "net": infos[0]["net"], "ensemble": infos}
    atomic_write_bytes(path, st_save(tensors, metadata={"cnnkit": json_text(meta)}))


def load_sequence(path, device: str = "cpu") -> nn.Module:
    """A trained series classifier (or ensemble) from a run folder or its ``model.safetensors``.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit sequence train``.
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Returns:
        The :class:`SeriesModel` -- or an :class:`~cnnkit.models.deploy.Ensemble` of them for a run
        with ``--ensemble K`` -- in eval mode, taking (N, C, L) z-normalised series and returning
        logits; the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: not a sequence run, or a damaged or crafted file.

    Example:
        >>> model = load_sequence("runs/gunpoint")                # doctest: +SKIP
        >>> model(torch.randn(1, 1, 150)).softmax(1)              # doctest: +SKIP
    """
    file = model_file(path)
    info = read_metadata(file)
    if info.get("task") != "sequence":
        found = str(info.get("task", "classify"))[:20]
        raise CnnkitError(
            f"{file} is not a time-series classifier (task {found!r}); give a run folder written by "
            f"`cnnkit sequence train`, or use `cnnkit {found} eval|predict` for this one"
        )
    if "config" in info:  # what eval reads the data by and predict z-normalises by
        stored_config(SequenceConfig, info, file)
    members = info.get("ensemble") or [info]
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise CnnkitError(f"{file}: its ensemble entry is not a list of member descriptions; {CHECKPOINT_HINT}")
    try:
        built = [SeriesModel.from_info(m) for m in members]
    except (KeyError, TypeError, ValueError) as exc:
        raise CnnkitError(
            f"{file}: its metadata does not describe a series model ({short_error(exc)}); {CHECKPOINT_HINT}"
        ) from None
    tensors, _ = read_checkpoint(file)
    if info.get("ensemble"):
        for i, m in enumerate(built):
            load_checked(m, strip_prefix(tensors, f"members.{i}."), file)
        model: nn.Module = Ensemble(built)  # type: ignore[arg-type]
    else:
        model = built[0]
        load_checked(model, tensors, file)
    model.info = info
    return model.to(device).eval()

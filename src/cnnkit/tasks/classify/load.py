"""Rebuild a classification run's deployable model from its checkpoint, never running code unless trusted."""

from __future__ import annotations

import math
import os
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
    run_commands,
    strip_prefix,
)
from cnnkit.errors import CnnkitError
from cnnkit.models.deploy import Classifier, Ensemble
from cnnkit.models.fcn import to_fcn
from cnnkit.models.network import build, legacy


def save_ensemble(path, member_files: list[Path]) -> None:
    """One file holding every member's weights (``members.<i>.``) and their descriptions."""
    tensors, infos = {}, []
    for i, f in enumerate(member_files):
        t, info = read_checkpoint(f)
        if info.get("ensemble"):
            raise CnnkitError(f"{f} is already an ensemble; give single-model checkpoints")
        tensors.update({f"members.{i}.{k}": v for k, v in t.items()})
        infos.append(info)
    head = {k: infos[0][k] for k in ("format", "classes", "input_size", "dataset")}
    if "data_files" in infos[0]:  # what eval checks the members' data by (they read the same split)
        head["data_files"] = infos[0]["data_files"]
    meta = {**head, "ensemble": infos}
    atomic_write_bytes(path, st_save(tensors, metadata={"cnnkit": json_text(meta)}))


MAX_CLASSES = 1_000_000  # a checkpoint claiming more is corrupt, not ambitious


MAX_SIDE = 16_384  # pixels per input side stored in a checkpoint


MAX_PIXELS = 1 << 25  # 33.5 M values per input image (C x H x W): 3 x 3344 x 3344


def check_info(info: dict, source) -> None:
    """The sizes a checkpoint claims, checked before anything is built from them."""

    def bad(what: str, value) -> CnnkitError:
        return CnnkitError(
            f"{source}: the checkpoint's {what} is {str(value)[:60]!r}, which is not valid; "
            f"the file is corrupt or was not written by cnnkit: {CHECKPOINT_HINT}"
        )

    for key in ("num_classes", "input_size", "classes", "mean", "std"):
        if key not in info:
            raise CnnkitError(f"{source}: the checkpoint lacks {key!r}; {CHECKPOINT_HINT}")
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
        if (
            not isinstance(v, list)
            or len(v) != size[0]
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        ):
            raise bad(f"{key} (one finite number per channel)", v)
    if any(x <= 0 for x in info["std"]):
        raise bad("std (it must be positive)", info["std"])
    fcn = info.get("fcn")
    if fcn is not None and (
        not isinstance(fcn, dict) or not _valid_size(fcn.get("input_size")) or len(fcn["input_size"]) != len(size)
    ):
        raise bad("fcn entry", fcn)
    if info.get("tta", "") not in ("", "shift", "flip"):
        raise bad("tta", info.get("tta"))
    pad = info.get("pad", 0)
    if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad <= 64:
        raise bad("pad (0 to 64 pixels)", pad)


def _valid_size(size) -> bool:
    """(C, H, W) of positive integers within the caps (types checked before anything is multiplied)."""
    return (
        isinstance(size, list)
        and len(size) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_SIDE for d in size)
        and math.prod(size) <= MAX_PIXELS
    )


def network_of(info: dict) -> dict:
    """The checkpoint's network description (older checkpoints: derived from their model string)."""
    if "network" in info:
        return info["network"]
    model = info.get("model")
    if not isinstance(model, str):
        raise CnnkitError(f"the checkpoint names no network (model={str(model)[:40]!r}); {CHECKPOINT_HINT}")
    return legacy(model)


def classifier_from_info(
    info: dict, source="the checkpoint", trust_code: bool = False, factory: str | None = None
) -> Classifier:
    """The Classifier a checkpoint describes, with fresh weights; no code is run unless trusted."""
    check_info(info, source)
    pad = info.get("pad", 0)
    c, h, w = info["input_size"]
    net = build(
        network_of(info),
        info["num_classes"],
        info["input_size"][0],
        str(source),
        trust_code=trust_code,
        factory=factory,
        input_size=(c, h + 2 * pad, w + 2 * pad),
    )
    if info.get("fcn"):  # written by `cnnkit fcn`: the dense head was turned into convolutions
        net = to_fcn(net, tuple(info["fcn"]["input_size"]))
    return Classifier(net, info["mean"], info["std"], info["classes"], info["input_size"], info.get("tta", ""), pad)


def load_classifier(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, trust_code: bool = False, factory: str | None = None
) -> nn.Module:
    """A trained checkpoint (run folder or ``.safetensors`` file) as an eval-mode ``nn.Module``.

    The module takes a float tensor (N, C, H, W) with pixel values in [0, 1] and returns logits;
    attributes ``classes``, ``input_size`` (C, H, W), ``net``. Nothing is unpickled, and nothing is
    imported or run: the network is rebuilt from its description in the metadata. A network that
    only a Python factory builds needs ``trust_code=True, factory="net.py:build"`` (the file as you
    name it, never the checkpoint's). :func:`cnnkit.load` reads the run of any task.

    Args:
        path: a run folder or its ``model.safetensors`` (an ensemble's file too).
        device: where the model goes (``"cpu"``, ``"cuda"``).
        trust_code: allow building the network by running ``factory``.
        factory: ``FILE.py:FUNCTION`` that builds the network (with ``trust_code``).

    Returns:
        The :class:`~cnnkit.models.deploy.Classifier` (an :class:`~cnnkit.models.deploy.Ensemble`
        of them for an ensemble run) in eval mode, the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: the path is not a checkpoint or not a classification run, the file is damaged
            or crafted, its weights do not fit its description, or it needs code that was not trusted.

    Example:
        >>> model = load_classifier("runs/mnist")                # doctest: +SKIP
        >>> model.classes[:3], model.input_size                  # doctest: +SKIP
        (['0', '1', '2'], (1, 28, 28))
    """
    file = model_file(path)
    meta = read_metadata(file)
    task = meta.get("task", "classify")
    if task != "classify":
        raise CnnkitError(
            f"{file} is a {str(task)[:20]!r} run, not a classifier; use `{run_commands(str(task)[:20])}` for it, "
            "or give a run written by `cnnkit classify train|finetune`"
        )
    for key in ("dataset", "config"):  # read by predict, explain and plot as mappings
        if key in meta and not isinstance(meta[key], dict):
            raise CnnkitError(
                f"{file}: the checkpoint's metadata is damaged: its {key!r} entry is {str(meta[key])[:40]!r}, "
                f"not a mapping; {CHECKPOINT_HINT}"
            )
    members = meta.get("ensemble")
    if members is not None and (
        not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members)
    ):
        raise CnnkitError(f"{file}: its ensemble entry is not a list of member descriptions; {CHECKPOINT_HINT}")
    # every network is built (and its size checked) before the weights are read
    built = [classifier_from_info(info, file, trust_code, factory) for info in (members or [meta])]
    tensors, _ = read_checkpoint(file)
    if members:
        for i, m in enumerate(built):
            load_checked(m, strip_prefix(tensors, f"members.{i}."), file)
        model: nn.Module = Ensemble(built)
    else:
        model = built[0]
        load_checked(model, tensors, file)
    model.info = meta
    check_finite_weights(model, file)  # every answer of such a network is NaN: eval, predict, explain, ...
    return model.to(device).eval()


def check_finite_weights(model: nn.Module, source) -> None:
    """Refuse a network whose weights hold NaN or infinity: every answer would be NaN.

    Raises:
        CnnkitError: naming how many values are not finite, and what to do.
    """
    bad = total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            bad += int((~torch.isfinite(t)).sum())
            total += t.numel()
    if bad:
        raise CnnkitError(
            f"{source}: {bad:,} of the checkpoint's {total:,} weights are NaN or infinite, so every answer "
            "would be NaN; the training diverged or the file is damaged: train again (a lower --lr) or use another run"
        )

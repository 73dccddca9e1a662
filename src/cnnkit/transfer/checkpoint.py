"""Fine-tuned and FCN-converted networks in the trainer's checkpoint format (``cnnkit.load`` reads them).

A fine-tuned run folder holds ``model.safetensors``: the weights of a
:class:`cnnkit.train.checkpoint.Classifier` (normalisation inside) and, in its metadata, the JSON
description the trainer writes (model name, classes, input size, mean/std, history) plus
``"finetune"``: the stages and the layer unfrozen. An FCN checkpoint adds ``"fcn": {"input_size"}``:
its network is rebuilt with :func:`to_fcn` before the weights are loaded (:func:`load_fcn`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.train import checkpoint as ckpt
from cnnkit.train import network as netdesc
from cnnkit.transfer.fcn import to_fcn


def is_cnnkit_checkpoint(path: str | os.PathLike) -> bool:
    """True for a run folder or .safetensors file written by cnnkit (train, finetune, fcn)."""
    try:
        return ckpt.read_info(path).get("format") == ckpt.FORMAT
    except Exception:  # noqa: BLE001 -- any unreadable file is simply "not ours"
        return False


def load_backbone(model_name: str | None, weights: str | None,
                  in_channels: int = 3) -> tuple[nn.Module, str, dict | None]:
    """(network, model name) from a cnnkit checkpoint, or a zoo name plus reference-format weights:
    a local file, an ``http(s)://``/``file://`` URL, or ``"imagenet"`` for the published URL.
    The third item is a checkpoint's own ``{"mean", "std", "input_size"}`` (None for zoo weights)."""
    if weights is not None and is_cnnkit_checkpoint(weights):
        info = ckpt.read_info(weights)
        if info.get("ensemble") or info.get("fcn"):
            raise CnnkitError(f"--weights {weights} is an ensemble or FCN checkpoint; give a single "
                              "classifier to fine-tune")
        own = {k: info[k] for k in ("mean", "std", "input_size")}
        return load_checkpoint(weights).net, info["model"], own
    if model_name is None:
        raise CnnkitError("--model is required unless --weights is a cnnkit checkpoint; e.g. "
                          "--model resnet18 --weights resnet18-f37072fd.pth")
    if weights == "imagenet":  # the published reference weights, downloaded once and checksummed
        from cnnkit.models.weights import pretrained_url

        weights = pretrained_url(model_name)
    if weights is not None and not Path(weights).is_file() and "://" not in weights:
        raise CnnkitError(f"--weights file not found: {weights}; give a .pth/.safetensors file in the "
                          "reference implementation's format or a cnnkit checkpoint")
    from cnnkit.models import create_model

    return create_model(model_name, in_channels=in_channels, weights=weights), model_name, None


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """``cnnkit.load`` (it reads every checkpoint this package writes, FCN ones included)."""
    return ckpt.load(path)


def save_finetuned(out: str | os.PathLike, net: nn.Module, model_name: str, classes: list[str],
                   input_size, mean, std, history: list[dict], finetune: dict) -> Path:
    """Write ``out/model.safetensors`` atomically; returns its path."""
    clf = ckpt.Classifier(net, mean, std, classes, input_size)
    info = {"format": ckpt.FORMAT, "model": ckpt.model_reference(model_name), "num_classes": len(classes),
            "input_size": list(input_size), "classes": list(classes), "mean": list(mean),
            "std": list(std), "tta": "", "dataset": {"name": finetune.get("data", "")},
            "epoch": len(history), "history": history, "finetune": finetune, "interrupted": False}
    path = Path(out) / ckpt.MODEL_FILE
    ckpt.save_model(path, clf, info)
    return path


def convert_to_fcn(src: str | os.PathLike, dst: str | os.PathLike, trust_code: bool = False,
                   factory: str | None = None) -> tuple[Path, nn.Module, dict]:
    """Read a classifier checkpoint, convert its network with :func:`to_fcn`, write ``dst``.

    ``trust_code``/``factory`` as for :func:`cnnkit.load` (only a Python-built network needs them).
    """
    info = ckpt.read_info(src)
    if info.get("format") != ckpt.FORMAT or info.get("ensemble"):
        raise CnnkitError(f"{src} is not a single-model cnnkit checkpoint; give a run folder or "
                          "model.safetensors written by `cnnkit train` or `cnnkit finetune`")
    if info.get("fcn"):
        raise CnnkitError(f"{src} is already fully convolutional")
    clf = ckpt.load(src, trust_code=trust_code, factory=factory)
    network = info.get("network") or netdesc.describe(info["model"], clf.net)  # the net before to_fcn
    fcn = to_fcn(clf.net, tuple(clf.input_size))
    new = ckpt.Classifier(fcn, info["mean"], info["std"], info["classes"], info["input_size"])
    dst = Path(dst)
    path = dst / ckpt.MODEL_FILE if dst.suffix != ".safetensors" else dst
    ckpt.save_model(path, new, {**info, "network": network, "tta": "",
                                "fcn": {"input_size": list(clf.input_size)}})
    return path, fcn, info


def load_fcn(path: str | os.PathLike, trust_code: bool = False, factory: str | None = None) -> nn.Module:
    """An FCN checkpoint as an eval-mode Classifier whose output is a (N, classes, h, w) score map."""
    if not ckpt.read_info(path).get("fcn"):
        raise CnnkitError(f"{path} is not an FCN checkpoint; use cnnkit.load, or convert it with "
                          "`cnnkit fcn`")
    return ckpt.load(path, trust_code=trust_code, factory=factory)

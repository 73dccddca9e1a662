"""``cnnkit classify fcn``: a classification run copied with its dense head turned into convolutions."""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from cnnkit.engine.runfolder import FORMAT, read_info, save_model
from cnnkit.errors import CnnkitError
from cnnkit.models.fcn import to_fcn
from cnnkit.models.network import describe
from cnnkit.tasks.classify.convert import check_out
from cnnkit.tasks.classify.load import load_classifier


def convert_to_fcn(
    src: str | os.PathLike, dst: str | os.PathLike, trust_code: bool = False, factory: str | None = None
) -> tuple[Path, nn.Module, dict]:
    """Copy a classification run with its dense head turned into convolutions (``cnnkit classify fcn``).

    The network is converted by :func:`cnnkit.to_fcn`: the copy accepts larger images and returns a
    map of class scores, one per window of the trained input size. Test-time augmentation is off in
    the copy.

    Args:
        src: a run folder or ``model.safetensors`` of a single classifier (not an ensemble).
        dst: a new folder (``model.safetensors`` is written in it) or a new ``.safetensors`` path.
        trust_code: allow building the network by running ``factory`` (as for :func:`cnnkit.load`;
            only a Python-built network needs it).
        factory: ``FILE.py:FUNCTION`` that builds the network (with ``trust_code``).

    Returns:
        (the written checkpoint's path, the converted network, the source checkpoint's metadata).

    Raises:
        CnnkitError: ``dst`` holds a run or is a file that exists (nothing is written); ``src`` is
            not a single-model cnnkit checkpoint, is already fully convolutional, cannot be read, or
            has a head :func:`cnnkit.to_fcn` cannot convert (``mnist_fast`` and ``mnist_best``:
            global pooling in their ``forward``).

    Example:
        ``runs/kmn`` is a ``keras_mnist_convnet`` run (``cnnkit train --model keras_mnist_convnet``):

        >>> path, net, _ = convert_to_fcn("runs/kmn", "runs/kmn-fcn")   # doctest: +SKIP
        >>> net(torch.rand(1, 1, 56, 56)).shape                        # doctest: +SKIP
        torch.Size([1, 10, 8, 8])
    """
    path = check_out(dst)  # the source run, or another, is never replaced by the copy
    info = read_info(src)
    if info.get("format") != FORMAT or info.get("ensemble"):
        raise CnnkitError(
            f"{src} is not a single-model cnnkit checkpoint; give a run folder or "
            "model.safetensors written by `cnnkit train` or `cnnkit finetune`"
        )
    if info.get("fcn"):
        raise CnnkitError(f"{src} is already fully convolutional")
    clf = load_classifier(src, trust_code=trust_code, factory=factory)
    network = info.get("network") or describe(info["model"], clf.net)  # the net before to_fcn
    new = to_fcn(clf)
    save_model(path, new, {**info, "network": network, "tta": "", "fcn": {"input_size": list(clf.net_input_size)}})
    return path, new.net, info


def load_fcn(path: str | os.PathLike, trust_code: bool = False, factory: str | None = None) -> nn.Module:
    """An FCN checkpoint as an eval-mode Classifier whose output is a (N, classes, h, w) score map.

    Args:
        path: a run folder or ``model.safetensors`` written by :func:`convert_to_fcn`.
        trust_code: allow building the network by running ``factory`` (as for :func:`cnnkit.load`).
        factory: ``FILE.py:FUNCTION`` that builds the network (with ``trust_code``).

    Returns:
        The classifier; it takes images of any size at least its trained input.

    Raises:
        CnnkitError: the checkpoint is not an FCN one, or cannot be read.
    """
    if not read_info(path).get("fcn"):
        raise CnnkitError(f"{path} is not an FCN checkpoint; use cnnkit.load, or convert it with `cnnkit fcn`")
    return load_classifier(path, trust_code=trust_code, factory=factory)

"""The one loader: ``cnnkit.load(run)`` returns the deployable model of any task's run.

A run's ``model.safetensors`` names its task in its metadata (``"task"``; a run without one is a
classification run); the task's own ``load`` rebuilds the network from that description -- data,
never code -- and loads the weights.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from cnnkit.engine.runfolder import model_file, read_metadata
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.load import load_classifier
from cnnkit.tasks.detect.load import load_detector
from cnnkit.tasks.generate.load import load_generator
from cnnkit.tasks.instance.load import load_mask_detector
from cnnkit.tasks.segment.load import load_segmenter
from cnnkit.tasks.sequence.load import load_sequence
from cnnkit.tasks.style.load import load_stylizer
from cnnkit.tasks.video.load import load_video_classifier
from cnnkit.tasks.video_predict.load import load_predictor

# the "task" of a run's metadata -> the function that rebuilds its deployable (path, device)
LOADERS = {
    "detect": load_detector,
    "segment": load_segmenter,
    "instance": load_mask_detector,
    "style": load_stylizer,
    "sequence": load_sequence,
    "video": load_video_classifier,
    "video_predict": load_predictor,
    "generate": load_generator,
}


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, trust_code: bool = False, factory: str | None = None
) -> nn.Module:
    """A trained run of any task (run folder or ``.safetensors`` file) as an eval-mode ``nn.Module``.

    Nothing is unpickled, imported or run: the network is rebuilt from its description in the
    checkpoint's metadata. A classifier whose network only a Python factory builds needs
    ``trust_code=True, factory="net.py:build"`` (the file as you name it, never the checkpoint's).

    Args:
        path: a run folder or its ``model.safetensors``.
        device: where the model goes (``"cpu"``, ``"cuda"``).
        trust_code: allow building a classifier's network by running ``factory``.
        factory: ``FILE.py:FUNCTION`` that builds the network (with ``trust_code``).

    Returns:
        The task's deployable model in eval mode, its metadata as ``.info``: a classifier takes
        float images (N, C, H, W) in [0, 1] and returns logits (``classes``, ``input_size``); a
        detector, segmenter or mask detector as its task documents.

    Raises:
        CnnkitError: the path is not a checkpoint, the file is damaged or crafted, its weights do
            not fit its description, it names an unknown task, or it needs code that was not trusted.

    Example:
        >>> model = cnnkit.load("runs/mnist_fast")          # doctest: +SKIP
        >>> model(torch.rand(1, 1, 28, 28)).argmax(1)       # doctest: +SKIP
        tensor([...])
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CnnkitError(f"cnnkit.load takes a run folder or a .safetensors file; received: a {type(path).__name__}")
    try:
        if not isinstance(device, (str, torch.device)):
            raise TypeError
        torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CnnkitError(f"device must be 'cpu', 'cuda' or a torch.device; received: {str(device)[:40]!r}") from None
    if factory is not None and not isinstance(factory, str):
        raise CnnkitError(f"factory must be 'FILE.py:FUNCTION'; received: {str(factory)[:40]!r}")
    try:
        file = model_file(path)
    except OSError as exc:  # a name too long, a loop of links, a folder we may not read
        raise CnnkitError(
            f"cannot read {str(path)[:200]} ({exc.strerror or type(exc).__name__}); give a run folder "
            "(holding model.safetensors) or a .safetensors file written by `cnnkit train`"
        ) from None
    task = read_metadata(file).get("task", "classify")
    if task == "classify":
        return load_classifier(file, device, trust_code=trust_code, factory=factory)
    if not isinstance(task, str) or task not in LOADERS:
        raise CnnkitError(
            f"{file}: unknown task {str(task)[:40]!r} in its metadata; this cnnkit reads "
            f"runs of {', '.join(['classify', *LOADERS])}"
        )
    return LOADERS[task](file, str(device))

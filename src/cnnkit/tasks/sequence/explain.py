"""The class activation map of a trained sequence run over one series of a file."""

from __future__ import annotations

import os

import torch

from cnnkit.data.series import read_series
from cnnkit.errors import CnnkitError
from cnnkit.explain.series_cam import class_activation_map
from cnnkit.tasks.sequence.config import FITTED
from cnnkit.tasks.sequence.data import check_lengths
from cnnkit.tasks.sequence.load import load_sequence, znormalised


def explain_series(run, path: str | os.PathLike, index: int = 0, target_class: int | None = None) -> dict:
    """Which stretch of a series decided a run's answer: its class activation map (Zhou et al. 2016).

    An ensemble's map is the mean of its members' maps for the class (each member's map averages
    to its logit, so the mean shows where the members agree).

    Args:
        run: a run folder or ``model.safetensors`` of ``cnnkit sequence train``.
        path: a series file (``.ts`` / ``.tsv`` / ``.txt`` / ``.csv``).
        index: which series of the file (0: the first).
        target_class: the class index to explain; None: the predicted class.

    Returns:
        ``{"series" (C, L), "cam" (L,), "length", "class", "class_name", "probability", "label"}``:
        the series as the network took it (zero-padded at its end to the training length when it
        is shorter, as :func:`~cnnkit.tasks.sequence.predict.predict_file` gives it), its map, its
        own length, the explained class and its probability, and the file's label for it (None
        without one).

    Raises:
        CnnkitError: not a sequence run or a MultiRocket one (no time axis to map), a malformed file, a
            series of one sample in it (:func:`~cnnkit.tasks.sequence.data.check_lengths`), an index or
            class out of range, another number of channels than the model's.
    """
    model = load_sequence(run)
    name = model.members[0].name if hasattr(model, "members") else model.name
    if name in FITTED:
        raise CnnkitError(
            f"{run} is a {name} run: its features are pooled statistics with no time axis, so it has no class "
            "activation map; explain a run of fcn1d, resnet1d or inception_time"
        )
    data = check_lengths(read_series(path, znorm=znormalised(model)), path)  # as predict reads the file
    if not 0 <= index < len(data):
        raise CnnkitError(f"{path} has {len(data)} series; --index must be in 0..{len(data) - 1}. Received: {index}")
    if data.channels != model.input_size[0]:
        raise CnnkitError(f"{path} has {data.channels} channel(s) per series; the model takes {model.input_size[0]}")
    length = int(data.lengths[index])
    width = max(length, model.input_size[1])  # zero-padded to the training length, as predict feeds it
    x = torch.nn.functional.pad(data.values[index, :, :length], (0, width - length))  # (C, L)
    with torch.no_grad():
        probs = model(x[None]).float().softmax(1)[0]
    k = int(probs.argmax()) if target_class is None else target_class
    if not 0 <= k < len(model.classes):
        raise CnnkitError(f"--class {k} is out of range: the model has classes 0..{len(model.classes) - 1}")
    members = [m.net for m in model.members] if hasattr(model, "members") else [model.net]
    cam = torch.stack([class_activation_map(net, x, k) for net in members]).mean(0)  # (L,)
    label = int(data.labels[index])
    return {
        "series": x,
        "cam": cam,
        "length": length,
        "class": k,
        "class_name": model.classes[k],
        "probability": float(probs[k]),
        "label": data.classes[label] if label >= 0 else None,
    }

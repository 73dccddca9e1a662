"""Classes and probabilities of the series in a file, by a trained sequence run."""

from __future__ import annotations

import os

import torch.nn as nn

from cnnkit.data.series import read_series
from cnnkit.errors import CnnkitError, CnnkitWarning
from cnnkit.tasks.sequence.data import check_lengths
from cnnkit.tasks.sequence.evaluate import predict_proba
from cnnkit.tasks.sequence.load import znormalised


def predict_file(model: nn.Module, path: str | os.PathLike) -> list[dict]:
    """The predicted class and every class's probability for each series of a file.

    The file is read as the run's training files were (:func:`~cnnkit.data.series.read_series`:
    z-normalised unless the run trained with ``--no-znorm``, any length; each series padded as
    :func:`~cnnkit.tasks.sequence.evaluate.predict_proba` pads it); a label in it, if it has one, is
    returned as ``label`` beside the answer.

    Args:
        model: a trained :class:`~cnnkit.tasks.sequence.load.SeriesModel` or ensemble.
        path: a ``.ts`` / ``.tsv`` / ``.txt`` / ``.csv`` file of series.

    Returns:
        One ``{"index", "class", "probability", "probabilities" (class -> p), "label"}`` per
        series, in file order (``label`` None for an unlabelled ``.ts`` series).

    Raises:
        CnnkitError: a malformed file, or series with another number of channels than the model's.

    Example:
        >>> first = predict_file(load_sequence("runs/gunpoint"), "GunPoint_TEST.ts")[0]   # doctest: +SKIP
        >>> first["class"]                                                             # doctest: +SKIP
        '1'
    """
    data = check_lengths(read_series(path, znorm=znormalised(model)), path)
    channels = model.input_size[0]
    if data.channels != channels:
        raise CnnkitError(f"{path} has {data.channels} channel(s) per series; the model takes {channels}")
    if data.classes and not set(data.classes) & set(model.classes) and all(_decimal(c) for c in data.classes):
        import warnings

        warnings.warn(
            f"{path}: none of its labels ({', '.join(data.classes[:3])}, ...) is a class of the run "
            f"({', '.join(model.classes[:3])}, ...), and they look like values: a .tsv/.csv file puts each "
            "series' label first, so its first value was read as the label; add a label column (any class)",
            CnnkitWarning,
            stacklevel=2,
        )
    probs = predict_proba(model, data.values, lengths=data.lengths)
    rows = []
    for i, p in enumerate(probs.tolist()):
        k = max(range(len(p)), key=p.__getitem__)
        label = int(data.labels[i])
        rows.append(
            {
                "index": i,
                "class": model.classes[k],
                "probability": p[k],
                "probabilities": dict(zip(model.classes, p)),
                "label": data.classes[label] if label >= 0 else None,
            }
        )
    return rows


def _decimal(text: str) -> bool:
    """A number with a fractional part (``0.492``, ``-1.3e-2``): a value, not a class label."""
    try:
        value = float(text)
    except ValueError:
        return False
    return value != int(value) if value == value and abs(value) != float("inf") else False

"""Accuracy, error and confusion of a series classifier on a set, or of a run on a split of its data."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.series import SeriesSet, read_series
from cnnkit.engine.runfolder import resolve, stored_config
from cnnkit.errors import CnnkitError
from cnnkit.tasks.sequence.config import SequenceConfig
from cnnkit.tasks.sequence.data import check_lengths, check_run_data, load_splits, warn_if_changed
from cnnkit.tasks.sequence.load import load_sequence, znormalised


@torch.no_grad()
def predict_proba(
    model: nn.Module, values: torch.Tensor, batch_size: int = 256, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Class probabilities of series, in eval mode (the model's mode is restored after).

    Each series goes in as training laid out its series: zero-padded at its end to the training
    length (the model's ``input_size``), or alone at its own length when it is longer, so that a
    series' answer does not depend on how far the longest series of its file padded it.

    Args:
        model: a sequence classifier (``classes`` attribute; logits out).
        values: (N, C, L) series, z-normalised and zero-padded at the end as the reader gives them.
        batch_size: series per forward pass.
        lengths: (N,) each series' length before padding (the reader's ``lengths``); None: L each.

    Returns:
        (N, K) probabilities, K the model's classes.
    """
    n, _, width = values.shape
    trained = int(getattr(model, "input_size", (0, width))[1])
    lengths = torch.full((n,), width, dtype=torch.int64) if lengths is None else lengths
    out = torch.zeros(n, len(model.classes))
    training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        fits = (lengths <= trained).nonzero().flatten()
        x = F.pad(values[fits, :, :trained], (0, max(0, trained - width)))  # only padding is cut
        for idx, chunk in zip(fits.split(batch_size), x.split(batch_size)):
            out[idx] = model(chunk.to(device)).float().softmax(1).cpu()
        for i in (lengths > trained).nonzero().flatten().tolist():  # longer than every training series
            out[i] = model(values[i : i + 1, :, : int(lengths[i])].to(device)).float().softmax(1).cpu()[0]
    finally:
        model.train(training)
    return out


def evaluate(model: nn.Module, data: SeriesSet, batch_size: int = 256) -> dict:
    """Accuracy, error (1 - accuracy, the archive's figure), mean cross-entropy and the confusion matrix.

    Args:
        model: (N, C, L) -> logits over ``data.classes`` (a :class:`SeriesModel` or an ensemble).
        data: labelled series with the model's classes and channels.
        batch_size: series per forward pass.

    Returns:
        ``{"accuracy", "error", "loss", "series", "errors", "confusion"}``; ``confusion[i][j]``
        counts series of class i answered j.

    Raises:
        CnnkitError: unlabelled series, or another number of channels than the model's.
    """
    if len(data) and int(data.labels.min()) < 0:
        raise CnnkitError(f"{data.meta.get('path', data.name)}: evaluation needs a label on every series")
    channels = getattr(model, "input_size", (data.channels,))[0]
    if data.channels != channels:
        raise CnnkitError(
            f"{data.meta.get('path', data.name)} has {data.channels} channel(s); the model takes {channels}"
        )
    probs = predict_proba(model, data.values, batch_size, data.lengths)
    k = probs.shape[1]
    pred = probs.argmax(1)
    errors = int((pred != data.labels).sum())
    n = max(1, len(data))
    # each series' loss in float32, their sum in float64 (a float32 sum is off in its eighth digit)
    losses = F.nll_loss(probs.clamp_min(1e-12).log(), data.labels, reduction="none")
    loss = losses.double().sum().item() / n if len(data) else 0.0
    confusion = torch.bincount(data.labels * k + pred, minlength=k * k).view(k, k)
    return {
        "accuracy": 1 - errors / n,
        "error": errors / n,
        "loss": loss,
        "series": len(data),
        "errors": errors,
        "confusion": confusion.tolist(),
    }


def evaluate_run(path, split: str = "test", data: str | None = None, data_dir: str | None = None) -> dict:
    """The metrics of a sequence run on a split of its data, or on a labelled series file.

    Args:
        path: a run folder or its ``model.safetensors``.
        split: ``test``, ``val`` or ``train`` of the run's own data (``val`` and ``train`` as the
            run carved them from TRAIN).
        data: a labelled series file to evaluate on instead (``.ts`` / ``.tsv`` / ``.csv``).
        data_dir: the folder holding named sets (default: the run's).

    Returns:
        :func:`evaluate`'s dict plus ``split``, ``data`` and ``classes``.

    Raises:
        CnnkitError: not a sequence run, an unknown split, a split the run does not have, data
            that cannot be found or read, or the run's data changed since it trained (other classes,
            channels or length).

    Warns:
        CnnkitWarning: the file scored has the name of the run's TRAIN or TEST file and other
            values than the run recorded (its sha256): it is scored as it is.

    Example:
        >>> evaluate_run("runs/gunpoint")["error"]    # doctest: +SKIP
    """
    if split not in ("train", "val", "test"):
        raise CnnkitError(f"--split is train, val or test. Received: --split {split}")
    model = load_sequence(path)
    run = resolve(path).parent
    if data is not None:
        series = check_lengths(read_series(data, classes=model.classes, znorm=znormalised(model)), data)
        warn_if_changed(series, model.info, run)  # a file of the name of the run's TRAIN or TEST, changed since
        return {**evaluate(model, series), "split": "file", "data": str(data), "classes": model.classes}
    cfg = stored_config(SequenceConfig, model.info, resolve(path))
    if data_dir is not None:
        cfg.data_dir = data_dir
    sets = dict(zip(("train", "val", "test"), load_splits(cfg)))
    check_run_data(sets["train"], model.info, cfg.data, run)  # the splits the run scored
    if sets[split] is None:
        raise CnnkitError(f"the run {path} has no {split} split (data {cfg.data}); evaluate on a file with --data FILE")
    role = "test" if split == "test" else "train"  # the run's file this split is read from
    warn_if_changed(sets[split], model.info, run, role)  # values changed since the run recorded the file
    return {**evaluate(model, sets[split]), "split": split, "data": cfg.data, "classes": model.classes}

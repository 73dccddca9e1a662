"""The splits a sequence run trains on: TRAIN (less a stratified validation part) and the archive's TEST."""

from __future__ import annotations

import re
from pathlib import Path

from cnnkit.data.series import SeriesSet, load_series, val_split
from cnnkit.errors import CnnkitError
from cnnkit.tasks.sequence.config import SequenceConfig


def test_source(data: str) -> str | None:
    """Where the TEST split of ``data`` is: the same name, folder or ``.npz`` file (which holds both
    splits), or the ``_TEST`` twin of a ``NAME_TRAIN`` file; None when a single file has no such twin
    (the run then has no test)."""
    if data.lower().startswith("ucr:") or Path(data).expanduser().is_dir() or data.lower().endswith(".npz"):
        return data
    path = Path(data).expanduser()
    twin = path.with_name(re.sub(r"_TRAIN$", "_TEST", path.stem, flags=re.IGNORECASE) + path.suffix)
    return str(twin) if twin != path and twin.is_file() else None


def load_splits(cfg: SequenceConfig) -> tuple[SeriesSet, SeriesSet | None, SeriesSet | None]:
    """(train, validation or None, test or None) of a config: validation carved from TRAIN by
    ``cfg.val_fraction`` with ``cfg.seed``; test mapped onto TRAIN's classes.

    Raises:
        CnnkitError: data that cannot be found or read, an unlabelled training file, a series of
            fewer than 2 samples, a test file with a class TRAIN lacks or another number of channels.
    """
    full = check_lengths(load_series(cfg.data, "train", cfg.data_dir, znorm=cfg.znorm), cfg.data)
    if len(full) and int(full.labels.min()) < 0:
        raise CnnkitError(f"{cfg.data}: the training series have no labels; training needs one per series")
    train, val = val_split(full, cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (full, None)
    source = test_source(cfg.data)
    test = load_series(source, "test", cfg.data_dir, classes=full.classes, znorm=cfg.znorm) if source else None
    if test is not None:
        check_lengths(test, test.meta.get("path", source))
    if test is not None and test.channels != full.channels:
        raise CnnkitError(
            f"{cfg.data}: the test series have {test.channels} channels, the training series {full.channels}"
        )
    return train, val, test


def check_lengths(data: SeriesSet, path) -> SeriesSet:
    """``data`` as it is, when every series has at least 2 samples: one sample is no shape
    (z-normalised, it is 0). Training, evaluation and prediction read every file through it.

    Raises:
        CnnkitError: the first shorter series, named by its number in the file.
    """
    short = (data.lengths < 2).nonzero().flatten().tolist()
    if short:
        raise CnnkitError(
            f"{path}: series {short[0] + 1} has {int(data.lengths[short[0]])} sample; a series needs at least 2 "
            "(as in training); remove it or give its values"
        )
    return data

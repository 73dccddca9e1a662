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
        CnnkitError: data that cannot be found or read, an unlabelled training file, a test file
            with a class TRAIN lacks or another number of channels.
    """
    full = load_series(cfg.data, "train", cfg.data_dir, znorm=cfg.znorm)
    if len(full) and int(full.labels.min()) < 0:
        raise CnnkitError(f"{cfg.data}: the training series have no labels; training needs one per series")
    train, val = val_split(full, cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (full, None)
    source = test_source(cfg.data)
    test = load_series(source, "test", cfg.data_dir, classes=full.classes, znorm=cfg.znorm) if source else None
    if test is not None and test.channels != full.channels:
        raise CnnkitError(
            f"{cfg.data}: the test series have {test.channels} channels, the training series {full.channels}"
        )
    return train, val, test

"""The splits a sequence run trains on: TRAIN (less a stratified validation part) and the archive's TEST."""

from __future__ import annotations

import re
from pathlib import Path

from cnnkit.data.digest import values_digest as digest_of
from cnnkit.data.series import SeriesSet, load_series, val_split
from cnnkit.engine.runfolder import check_training_data
from cnnkit.engine.runfolder import data_files as record_files
from cnnkit.engine.runfolder import warn_if_changed as warn_changed
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
    full.meta["sha256"] = values_digest(full)  # TRAIN's, which the train and validation parts keep
    train, val = val_split(full, cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (full, None)
    source = test_source(cfg.data)
    test = load_series(source, "test", cfg.data_dir, classes=full.classes, znorm=cfg.znorm) if source else None
    if test is not None:
        check_lengths(test, test.meta.get("path", source))
        test.meta["sha256"] = values_digest(test)
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


def check_run_data(train: SeriesSet, info: dict, data: str, run) -> None:
    """Refuse a run's data that no longer is what the run trained on: the classes of its TRAIN file
    and the channels and length of its series must be those the run's network was built for
    (``info``: the run's model metadata, ``classes`` and ``input_size``). Resuming on other data
    would mix two data sets in one network, and scoring the run's splits of it would index its
    classes by another file's labels.

    Args:
        train: the run's training split as read now (its padded length is TRAIN's longest series).
        info: the run's model metadata.
        data: the run's ``--data``, named in the message.
        run: the run folder, named in the message.

    Raises:
        CnnkitError: naming what differs, the run's value and the data's.
    """
    now = {"classes": list(train.classes), "input_size": [train.channels, train.length]}
    was = {"classes": info.get("classes"), "input_size": info.get("input_size")}
    differ = []
    if now["classes"] != was["classes"]:
        differ.append(f"classes {_listed(now['classes'])} (the run's: {_listed(was['classes'])})")
    if now["input_size"] != was["input_size"]:
        shown = "x".join(map(str, was["input_size"])) if isinstance(was["input_size"], list) else "unknown"
        differ.append(f"series of {train.channels}x{train.length} (channels x length; the run's: {shown})")
    if differ:
        raise CnnkitError(
            f"{data} is not the data the run in {run} trained on: {'; '.join(differ)}; put back the data it "
            "trained on, or start a new run in another --out (eval: score the file as it is with --data FILE)"
        )


def _listed(classes) -> str:
    if not isinstance(classes, list):
        return "unknown"
    return ", ".join(map(str, classes[:6])) + (", ..." if len(classes) > 6 else "")


def values_digest(data: SeriesSet) -> str:
    """The sha256 of a file's series as a run reads them (:func:`~cnnkit.data.digest.values_digest`):
    class names, labels, lengths and values (z-normalised where the run is, zero-padded), not of the
    file's bytes. The same values written otherwise (CRLF line ends, another format of the set, an
    ``.npz`` saved again) digest the same: what a network trains on decides, not how the file spells it.

    Example:
        >>> values_digest(read_series("GunPoint_TRAIN.ts"))[:12]  # doctest: +SKIP
        '3f1c0a9e5b27'
    """
    return digest_of(data.classes, data.labels, data.lengths, data.values)


def file_digest(data: SeriesSet) -> str:
    """The digest of the file ``data`` was read from: the one :func:`load_splits` recorded (a part
    carved from TRAIN keeps TRAIN's), else that of ``data``, a whole file."""
    return data.meta.get("sha256") or values_digest(data)


def data_files(train: SeriesSet, test: SeriesSet | None) -> dict:
    """The files a run reads, as its metadata records them (``data_files``,
    :func:`~cnnkit.engine.runfolder.data_files`): for ``train`` (TRAIN, whose validation part is carved
    from it) and ``test``, the file's name and the sha256 of its values as read (:func:`values_digest`).

    Example:
        >>> data_files(train, test)["test"]["file"]  # doctest: +SKIP
        'GunPoint_TEST.ts'
    """
    return record_files(
        {
            role: (data.meta["path"], file_digest(data)) if data is not None and "path" in data.meta else None
            for role, data in (("train", train), ("test", test))
        }
    )


def check_training_file(train: SeriesSet, info: dict, run) -> None:
    """Refuse to resume on a TRAIN file whose values are not those the run trained on
    (:func:`~cnnkit.engine.runfolder.check_training_data`); a run that recorded no digest is not checked.

    Raises:
        CnnkitError: naming the file, both digests and the fix.
    """
    if "path" in train.meta:
        check_training_data(train.meta["path"], {"train": file_digest(train)}, info, run)


def warn_if_changed(data: SeriesSet, info: dict, run, role: str | None = None) -> None:
    """One warning where the file ``data`` was read from has the name of the run's TRAIN or TEST file
    and other values (:func:`~cnnkit.engine.runfolder.warn_if_changed`): it is scored as it is.
    ``role`` (``"train"`` or ``"test"``): the run's file ``data`` stands for, where it is known (an
    ``.npz`` is the TRAIN and TEST file at once); None: any of the run's files of that name."""
    if "path" in data.meta:
        warn_changed(data.meta["path"], lambda: file_digest(data), info, run, role)

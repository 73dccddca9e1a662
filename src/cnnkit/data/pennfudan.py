"""The Penn-Fudan pedestrian database's files and its one fixed split, shared by detection and segmentation.

``root`` is the folder holding ``PNGImages/``, ``PedMasks/`` and ``Annotation/`` (the original
``PennFudanPed/`` layout, ``<data_dir>/pennfudan`` in cnnkit). The split is the torchvision tutorial's
sizes, 120 train / 50 test, drawn once from the 170 sorted image names by a seeded permutation, so
every task and every run sees the same test images::

    split = pennfudan_split(root)     # {"train": [120 names], "test": [50 names]}, e.g. "FudanPed00001.png"
    carve_validation(split)           # {"train": [100], "val": [20], "test": [50]}: what runs train by

Per-epoch validation and every recipe choice use the validation names carved from the training ones
(:func:`carve_validation`, shared by every task's split); the test names are scored once, at the end.
A user's own photos are split by one rule in every task (:func:`seeded_split`), the same permutation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnkit.data.datasets import default_data_dir
from cnnkit.errors import CnnkitError

N_TRAIN = 120
SPLIT_SEED = 0
VAL_FRACTION = 1 / 6  # of the training names carved out for validation: Penn-Fudan 100 train / 20 val
TEST_FRACTION = 0.2  # of a user's photos held out to test (seeded_split), in every task


def pennfudan_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/pennfudan`` (data_dir as :func:`~cnnkit.data.datasets.default_data_dir`), or data_dir
    itself when it already is the Penn-Fudan folder."""
    base = default_data_dir(data_dir)
    root = base if (base / "PNGImages").is_dir() else base / "pennfudan"
    if not (root / "PNGImages").is_dir():
        raise CnnkitError(
            f"no Penn-Fudan data at {root}: expected {root / 'PNGImages'}; pass --data-dir "
            "the folder holding pennfudan/ (the unzipped PennFudanPed/)"
        )
    return root


def pennfudan_images(root: Path) -> list[str]:
    """The image file names of ``root/PNGImages``, sorted."""
    names = sorted(p.name for p in (root / "PNGImages").iterdir() if p.suffix.lower() == ".png")
    if not names:
        raise CnnkitError(f"no PNG images in {root / 'PNGImages'}")
    return names


# what a damaged Penn-Fudan folder's error says to do
PENNFUDAN_FIX = (
    "replace the image's files with the originals from PennFudanPed.zip "
    "(https://www.cis.upenn.edu/~jshi/ped_html/), or remove all three (PNGImages, PedMasks, Annotation)"
)


def photo_path(root: Path, image_name: str) -> Path:
    """``PNGImages/<image_name>``, which a split names and so must be there.

    Raises:
        CnnkitError: the photo is missing (the folder is damaged, not the user's input).
    """
    path = root / "PNGImages" / image_name
    if not path.is_file():
        raise CnnkitError(f"missing photo {path}, which the Penn-Fudan split names")
    return path


def mask_path(root: Path, image_name: str) -> Path:
    """``PedMasks/<stem>_mask.png``: 0 background, k on pedestrian k."""
    return root / "PedMasks" / f"{Path(image_name).stem}_mask.png"


def split_names(names: list[str], n_train: int, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """A seeded split of ``names``: the first ``n_train`` of a permutation train, the rest test (both sorted).

    The permutation is ``torch.randperm(len(names))`` with ``torch.Generator().manual_seed(seed)``
    over the sorted names: a pure function of the names and the seed.
    """
    names = sorted(names)
    if not 0 < n_train < len(names):
        raise CnnkitError(
            f"a split needs 0 < n_train < {len(names)} (the number of images). Received: n_train={n_train}"
        )
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"train": sorted(names[i] for i in order[:n_train]), "test": sorted(names[i] for i in order[n_train:])}


def seeded_split(
    names: list[str], seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> dict[str, list[str]]:
    """The seeded split of a user's photos that every task draws (a mask folder's in segment, a photo
    folder's or a COCO file's in detect and instance): ``round(test_fraction * n)`` of the ``n`` names
    (at least 1) held out to test, the rest train, by :func:`split_names`'s permutation with ``seed``.
    One rule for every task, so a segmenter and a detector trained on one folder test on the same photos.

    Args:
        names: the photos' file names (their order does not matter).
        seed: the permutation's seed.
        test_fraction: the share of the photos held out to test.

    Returns:
        ``{"train": names, "test": names}``, each sorted.

    Raises:
        CnnkitError: no name left to train on once the test share is held out.

    Example:
        >>> parts = seeded_split([f"{i}.png" for i in range(12)])
        >>> len(parts["train"]), len(parts["test"])
        (10, 2)
    """
    n_test = max(1, round(test_fraction * len(names)))
    if len(names) - n_test < 1:
        raise CnnkitError(
            f"holding out {n_test} of {len(names)} image(s) to test leaves none to train on; give more images"
            + (" or a smaller test fraction" if len(names) > 1 else "")
        )
    return split_names(names, len(names) - n_test, seed)


def pennfudan_split(root: Path, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The fixed Penn-Fudan split: ``{"train": 120 image names, "test": 50}`` (what runs write to split.json).

    Raises:
        CnnkitError: the folder holds no more photos than the split trains on (photos are missing).
    """
    names = pennfudan_images(root)
    if len(names) <= N_TRAIN:
        raise CnnkitError(
            f"{root / 'PNGImages'} holds {len(names)} photos; the Penn-Fudan split trains on {N_TRAIN} of its "
            f"170 and tests on the rest: {PENNFUDAN_FIX}"
        )
    return split_names(names, N_TRAIN, seed)


def carve_validation(split: dict[str, list[str]], fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> dict:
    """The split with a validation part carved from its training names: ``{"train", "val", "test"}``.

    ``round(fraction * len(train))`` names (at least 1) drawn by :func:`split_names` with ``seed``
    become ``val``, the rest stay ``train``; ``test`` is unchanged. A split that already has ``val``
    (a run's split.json) is returned as it is, so a run and its ``eval`` see the same three parts.

    Args:
        split: ``{"train": names, "test": names}`` (and possibly ``"val"``).
        fraction: the share of the training names that validate.
        seed: the permutation's seed.

    Returns:
        ``{"train": names, "val": names, "test": names}``, each sorted.

    Raises:
        CnnkitError: fewer than 2 training names (nothing left to train on after the carve).

    Example:
        >>> parts = carve_validation({"train": [f"{i}.png" for i in range(12)], "test": ["t.png"]})
        >>> len(parts["train"]), len(parts["val"]), parts["test"]
        (10, 2, ['t.png'])
    """
    if "val" in split:
        return {"train": list(split["train"]), "val": list(split["val"]), "test": list(split.get("test", []))}
    train = list(split["train"])
    if len(train) < 2:
        raise CnnkitError(
            f"carving a validation split needs at least 2 training images. Received: {len(train)}; give more data"
        )
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    parts = split_names(train, len(train) - n_val, seed)
    return {"train": parts["train"], "val": parts["test"], "test": list(split.get("test", []))}

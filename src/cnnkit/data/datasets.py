"""The built-in datasets: a small registry of rows, and :func:`load_dataset` returning an ImageSet.

Every set lives under ``<data_dir>/<folder>/`` with its published file names (MNIST:
``<data_dir>/mnist/train-images-idx3-ubyte.gz`` ...). ``data_dir`` is the argument, else
``$CNNKIT_DATA``, else ``~/.cache/cnnkit/data``. Missing files are fetched from the dataset's
published mirrors through :func:`cnnkit.download.download_url` (checksummed, atomic).

Splits: ``train`` is the training file minus its last 5,000 images, ``val`` those last 5,000 (as
the notes do), ``trainval`` all of it, ``test`` the official test set -- which is never used to
choose anything.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.idx import read_idx
from cnnkit.data.imagefolder import smallest_crop_fraction
from cnnkit.data.imageset import ImageSet
from cnnkit.errors import CnnkitError

SPLITS = ("train", "val", "trainval", "test")
VAL_SIZE = 5000  # the last 5,000 training images, as in the notes


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # sub-folder of the data dir
    mirrors: tuple[str, ...]  # base URLs tried in order
    files: dict  # file name -> md5 (as published)
    classes: tuple[str, ...]
    train: tuple[str, str] = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    test: tuple[str, str] = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    archive: str | None = None  # files come out of this archive (EMNIST's zip)
    archive_md5: str | None = None
    transpose: bool = False  # EMNIST stores images column-major
    dark_background: bool = True  # white strokes on black, like MNIST
    paper: str = ""


_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_DIGITS = tuple(str(d) for d in range(10))
_EMNIST = (
    "emnist-digits-train-images-idx3-ubyte.gz",
    "emnist-digits-train-labels-idx1-ubyte.gz",
    "emnist-digits-test-images-idx3-ubyte.gz",
    "emnist-digits-test-labels-idx1-ubyte.gz",
)

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "mnist",
            "mnist",
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            _MNIST_FILES,
            _DIGITS,
            paper="LeCun et al. 1998",
        ),
        DatasetInfo(
            "fashion_mnist",
            "fashion_mnist",
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            {
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            paper="Xiao, Rasul & Vollgraf 2017",
        ),
        DatasetInfo(
            "kmnist",
            "kmnist",
            ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            {
                "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
                "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
                "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
                "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
            },
            ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
            paper="Clanuwat et al. 2018",
        ),
        DatasetInfo(
            "emnist_digits",
            "emnist",
            ("https://biometrics.nist.gov/cs_links/EMNIST/",),
            {f: None for f in _EMNIST},
            _DIGITS,
            train=_EMNIST[:2],
            test=_EMNIST[2:],
            archive="gzip.zip",
            archive_md5="58c8d27c78d21e728a6bc7b3cc06412e",
            transpose=True,
            paper="Cohen et al. 2017",
        ),
        DatasetInfo(
            "cifar10",
            "cifar10",
            ("https://www.cs.toronto.edu/~kriz/",),
            {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            train=("cifar-10-binary.tar.gz", ""),
            test=("cifar-10-binary.tar.gz", ""),
            dark_background=False,
            paper="Krizhevsky 2009",
        ),
    )
}


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The argument, else ``$CNNKIT_DATA``, else ``~/.cache/cnnkit/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("CNNKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnkit" / "data"


def list_datasets() -> list[str]:
    return sorted(DATASETS) + ["folder"]


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: tuple[str, ...] | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    seed: int = 0,
    files: dict[str, list[str]] | None = None,
    classes: list[str] | None = None,
    absent_ok: bool = False,
) -> ImageSet:
    """Load one split of a dataset as an :class:`ImageSet` of uint8 images.

    Args:
        name: a name from :func:`list_datasets`, ``"folder"`` (an image folder at ``data_dir``),
            or the path of an image folder (``root/<class>/*.jpg``).
        split: ``train`` | ``val`` | ``trainval`` | ``test``.
        data_dir: where the files live (see module docstring); the image folder for ``"folder"``.
        download: fetch missing files from the dataset's mirrors.
        mirrors: base URLs to use instead of the published ones (tests use ``file://``).
        image_size, channels, seed: for image folders only (resize target, 1 or 3, split seed).
        files: for image folders only: each split's images (``{"train": names, "val": names}``, as a
            run's split.json has them) instead of the seeded split's.
        classes: for image folders only: the class names the labels index (a run's own) instead
            of the folder's class folders (:func:`~cnnkit.data.imagefolder.load_image_folder`).
        absent_ok: for image folders with ``classes``: read to score a run, a class of ``classes``
            without images allowed (:func:`~cnnkit.data.imagefolder.load_image_folder`).
    """
    if split not in SPLITS:
        raise CnnkitError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if name == "folder" or name not in DATASETS and Path(name).expanduser().is_dir():
        root = Path(name).expanduser() if name != "folder" else data_dir
        if root is None:
            raise CnnkitError("--dataset folder needs --data-dir DIR (a folder of <class>/ image folders)")
        from cnnkit.data.imagefolder import load_image_folder

        kw = dict(
            image_size=tuple(image_size or (224, 224)),
            channels=channels,
            seed=seed,
            classes=classes,
            absent_ok=absent_ok,
        )
        own = files or {}
        if split == "trainval":  # the folder's train and val splits, joined
            return load_image_folder(root, "train", **kw, files=own.get("train")).cat(
                load_image_folder(root, "val", **kw, files=own.get("val")), f"{Path(root).name}/trainval"
            )
        return load_image_folder(root, split=split, **kw, files=own.get(split))
    if name not in DATASETS:
        there = default_data_dir(data_dir) / str(name)  # `--data flowers` for the data folder's flowers/
        hint = f"; the data folder has {there}: pass --data {there}" if there.is_dir() else ""
        raise CnnkitError(
            f"unknown dataset {name!r}; use one of {', '.join(list_datasets())} or the path of an image folder{hint}"
        )
    info = DATASETS[name]
    folder = fetch(info, data_dir, download=download, mirrors=mirrors)
    if info.name == "cifar10":
        images, labels = _read_cifar10(folder / info.train[0], split == "test")
    else:
        image_file, label_file = info.test if split == "test" else info.train
        images = read_idx(folder / image_file, info.files[image_file])
        labels = read_idx(folder / label_file, info.files[label_file]).long()
        if images.dim() != 3 or labels.shape != images.shape[:1]:
            raise CnnkitError(
                f"{folder / image_file}: expected (N, H, W) images matching "
                f"{tuple(labels.shape)} labels, got {tuple(images.shape)}"
            )
        _check_decoded(info, folder / image_file, folder / label_file, images, labels)
        if info.transpose:
            images = images.transpose(1, 2)
        images = images.unsqueeze(1).contiguous()  # (N, H, W) -> (N, 1, H, W)
    if split in ("train", "val"):
        if images.shape[0] <= VAL_SIZE:
            raise CnnkitError(
                f"{folder}: the {name} training file holds {images.shape[0]} images, too few for a "
                f"train/val split (the last {VAL_SIZE} validate); delete the files and download them again"
            )
        cut = images.shape[0] - VAL_SIZE
        images, labels = (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])
    return ImageSet(
        images,
        labels,
        list(info.classes),
        name=f"{name}/{split}",
        meta={"dataset": name, "split": split, "folder": str(folder), "dark_background": info.dark_background},
    )


def _check_decoded(info: DatasetInfo, image_file: Path, label_file: Path, images, labels) -> None:
    """Refuse well-formed IDX files that do not hold this data set: images must be uint8 and not
    empty, labels class indices below the number of classes."""
    if images.dtype != torch.uint8 or 0 in images.shape[1:]:
        raise CnnkitError(
            f"{image_file}: holds {str(images.dtype).replace('torch.', '')} images of "
            f"{images.shape[1]}x{images.shape[2]} px; {info.name} images are non-empty uint8 (IDX type 0x08): "
            "delete the file and download it again"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(info.classes)):
        bad = int(labels.max()) if int(labels.max()) >= len(info.classes) else int(labels.min())
        raise CnnkitError(
            f"{label_file}: holds label {bad}, outside the {len(info.classes)} classes 0..{len(info.classes) - 1} "
            f"of {info.name}; delete the file and download it again"
        )


def fetch(info: DatasetInfo, data_dir=None, download: bool = True, mirrors: tuple[str, ...] | None = None) -> Path:
    """Make sure every file of ``info`` is in ``<data_dir>/<folder>``; returns that folder."""
    from cnnkit.download import download_url

    folder = default_data_dir(data_dir) / info.folder
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise CnnkitError(
            f"{info.name}: {folder} is not a folder; move it away, or pass --data-dir "
            f"pointing to the folder that holds {info.folder}/"
        )
    missing = [f for f in info.files if not (folder / f).is_file()]
    if not missing:
        return folder
    blocked = [f for f in (*missing, info.archive or "") if f and not (folder / f).is_file() and (folder / f).exists()]
    if blocked:
        raise CnnkitError(f"{info.name}: {folder / blocked[0]} is not a file; move it away so it can be downloaded")
    if not download:
        raise CnnkitError(
            f"{info.name}: missing {', '.join(missing)} in {folder}; pass --data-dir "
            f"pointing to the folder that holds {info.folder}/, or allow downloads"
        )
    wanted = [info.archive] if info.archive else missing
    md5s = {info.archive: info.archive_md5} if info.archive else info.files
    for name in wanted:
        errors = []
        for base in mirrors or info.mirrors:
            try:
                download_url(base.rstrip("/") + "/" + name, folder / name, md5=md5s[name])
                break
            except CnnkitError as exc:
                errors.append(str(exc))
        else:
            raise CnnkitError(
                f"{info.name}: could not download {name} from any mirror "
                f"({'; '.join(errors)}); put the file in {folder} yourself"
            )
    if info.archive:
        _extract(folder / info.archive, missing, folder)
    return folder


def _extract(archive: Path, names: list[str], folder: Path) -> None:
    """Copy members of a zip (by base name) into ``folder``, each streamed to a temporary file and
    renamed into place: a damaged archive or a full disk leaves no half-written member behind."""
    import shutil

    from cnnkit.errors import check_unzip, disk_full, is_disk_full, short_error

    tmp = None
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist()}
            for name in names:
                if name not in members:
                    raise CnnkitError(f"{archive}: no member {name}; delete the archive and download again")
            check_unzip(zf, [members[n] for n in names], "delete it and download it again", archive)
            for name in names:  # streamed in 1 MB reads, which stop at the size the member declares
                tmp = folder / f".{name}.part"
                with zf.open(members[name]) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(tmp, folder / name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        # zipfile quotes the member names it finds (any length) and ends some reasons with a full stop
        raise CnnkitError(
            f"{archive}: damaged zip archive ({short_error(exc, clause=True)}); delete it and download it again"
        ) from None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(folder / Path(str(tmp)).name.removesuffix(".part").lstrip(".")) from None
        raise CnnkitError(f"cannot extract {archive} into {folder} ({exc.strerror or exc})") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _read_cifar10(archive: Path, test: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    from cnnkit.download import check_file

    check_file(archive, DATASETS["cifar10"].files[archive.name])
    names = ["test_batch.bin"] if test else [f"data_batch_{i}.bin" for i in range(1, 6)]
    chunks = []
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for name in names:
                try:
                    info = tf.getmember(f"cifar-10-batches-bin/{name}")
                except KeyError:
                    raise CnnkitError(
                        f"{archive}: no member cifar-10-batches-bin/{name}; delete the archive and download it again"
                    ) from None
                if info.size != 10000 * 3073 or not info.isfile():
                    raise CnnkitError(
                        f"{archive}:{name} has {info.size} bytes, expected {10000 * 3073}: "
                        "delete the archive and download it again"
                    )
                data = np.frombuffer(tf.extractfile(info).read(), dtype=np.uint8)
                chunks.append(data.reshape(10000, 3073))
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as exc:
        if isinstance(exc, CnnkitError):
            raise
        raise CnnkitError(f"{archive}: damaged archive ({exc}); delete it and download it again") from None
    records = np.concatenate(chunks)
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(records[:, 0].astype(np.int64))


def _crop_floor(size) -> float:
    """The smallest crop share a photo can be read with at an input (..., H, W); 0 where the size is
    not known."""
    try:
        return smallest_crop_fraction([int(v) for v in size][-2:]) if size is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def crop_shares(input_size) -> str:
    """The crop shares :func:`folder_reading` takes at ``input_size`` (..., H, W), as a message says them."""
    floor = _crop_floor(input_size)
    if not floor:
        return "(0, 1]"
    h, w = (int(v) for v in input_size[-2:])
    return f"[{floor:g}, 1] (a smaller one magnifies even a square photo past what cnnkit decodes at {h}x{w})"


def folder_reading(info: dict, input_size=None) -> tuple[float, str] | None:
    """How a classification run read the photos of the image folder it was trained on, as
    ``(crop_fraction, interpolation)`` for :func:`~cnnkit.data.imagefolder.decode_image` (the
    shorter side resized to cover the input over the crop share, the centre kept); None for a run
    whose images are resized whole (a built-in data set's, a converted one).

    Args:
        info: a run's metadata (a fine-tuning run's ``finetune``, a training run's ``config.data``,
            an ensemble's first member's), or an exported file's (its ``cnnkit.reading`` as
            ``info["reading"]``).
        input_size: the input (..., H, W) the photos are read at (default: ``info["input_size"]``);
            a crop share below :func:`smallest_crop_fraction` there is damaged metadata.

    Raises:
        CnnkitError: a crop share or interpolation the run cannot have (damaged metadata): outside
            (0, 1], or below :func:`smallest_crop_fraction` at the input size.
    """
    members = info.get("ensemble")
    first = members[0] if isinstance(members, list) and members and isinstance(members[0], dict) else {}
    config, tuned, read = info.get("config") or first.get("config"), info.get("finetune"), info.get("reading")
    if isinstance(read, dict):  # an exported file's, written from its run's by cnnkit.export.deploy_metadata
        crop, interpolation = read.get("crop_fraction"), read.get("interpolation")
    elif isinstance(tuned, dict) and tuned.get("data"):
        crop, interpolation = tuned.get("crop_fraction", 1.0), tuned.get("interpolation", "bilinear")
    elif isinstance(config, dict) and isinstance(config.get("data"), str) and config["data"] not in DATASETS:
        return 1.0, "bilinear"  # an image folder as `cnnkit train` reads it
    else:
        return None
    floor = _crop_floor(input_size if input_size is not None else info.get("input_size"))
    if not (
        isinstance(crop, (int, float))
        and not isinstance(crop, bool)
        and 0 < crop <= 1
        and crop >= floor
        and interpolation in ("bilinear", "bicubic")
    ):
        raise CnnkitError(
            f"the run's metadata names crop_fraction={str(crop)[:20]!r} and interpolation="
            f"{str(interpolation)[:20]!r}; the file is damaged: restore the run from a copy or fine-tune it again"
        )
    return float(crop), interpolation

"""A folder of the user's own images, ``root/<class>/<image>``, as an in-memory :class:`ImageSet`.

Layouts understood:

- ``root/train/<class>/*``, ``root/val/<class>/*`` (also ``valid``/``validation``), ``root/test/<class>/*``:
  the dataset's own split is used. A missing ``val`` or ``test`` split is carved from ``train``
  (stratified, seeded) when ``val_fraction`` / ``test_fraction`` ask for one.
- ``root/<class>/*`` only: a stratified, seeded split by ``val_fraction`` and ``test_fraction``.

What counts as an image: a file with a still-image extension (those torchvision's ``ImageFolder``
accepts: .jpg .jpeg .png .bmp .ppm .pgm .tif .tiff .webp, any case) that Pillow can decode.
Everything else -- a ``.gif`` (the format of web placeholders such as hymenoptera's
``imageNotFound.gif``), a text file, a truncated or corrupt image -- is skipped, and ONE warning
counts the skipped files and names a few. Hidden files (``.DS_Store``) are ignored silently.
Names with spaces or non-ASCII characters are fine.

Every image is decoded once, converted to RGB (or L for ``channels=1``), resized and centre-cropped
to ``image_size``, and the uint8 result of the whole folder (all splits) is cached in
``$CNNKIT_HOME/imagefolder`` (default ``~/.cache/cnnkit/imagefolder``) as one safetensors file,
keyed by the folder's path, every file's name, size, inode and modification and change times (a
file rewritten with its old size and mtime restored still changes its change time), and the
decoding parameters; the file stores the sha256 of its pixels, checked on every read.
A second load, of any split, reads the cache (well under a second for a few hundred images).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import typing
import unicodedata
import warnings
from pathlib import Path

import torch

from cnnkit.data.images import MAX_DECODE_PIXELS
from cnnkit.data.imageset import ImageSet
from cnnkit.errors import CnnkitError, CnnkitWarning, check_fits, gone_from_split, short_error, temp_prefix

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
MIN_IMAGES_PER_CLASS = 100  # the notes' rule of thumb for fine-tuning on your own images
_CACHE_VERSION = 4  # of what decoding gives (which photos it reads): a cache of another version is rebuilt
_KEY_TAIL = len("-0123456789abcdef01234567.safetensors")  # the part of a cache's name its files decide
_INTERPOLATIONS = ("bilinear", "bicubic")


class ImageFolderWarning(CnnkitWarning):
    """Something about the folder the user should know: skipped files, small classes."""


def load_image_folder(
    root: str | os.PathLike,
    split: str = "train",
    image_size: tuple[int, int] = (224, 224),
    channels: int = 3,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    resize: str = "shorter",
    cache: bool | str | os.PathLike = True,
    crop_fraction: float = 1.0,
    interpolation: str = "bilinear",
    files: list[str] | None = None,
    classes: list[str] | None = None,
    absent_ok: bool = False,
) -> ImageSet:
    """Load one split of an image folder as uint8 tensors.

    Args:
        root: the folder holding ``<class>/`` folders, or ``train/`` (``val/``, ``test/``) folders of them.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: ``(H, W)`` of every image after resizing.
        channels: 3 (RGB) or 1 (grey).
        val_fraction, test_fraction: share of each class held out when the folder has no such split.
        seed: seed of that split (the same seed always gives the same split).
        resize: ``"shorter"`` scales the image so that it covers ``image_size / crop_fraction``, keeping
            its aspect ratio, then crops the centre ``image_size`` (torchvision's Resize + CenterCrop);
            ``"exact"`` stretches it to ``image_size`` (Keras' ``flow_from_directory``).
        cache: True for the default cache folder, False for none, or a folder to cache in.
        crop_fraction: with ``resize="shorter"``, the share of the resized image kept by the centre
            crop: 0.875 is torchvision's Resize(256) + CenterCrop(224).
        interpolation: ``"bilinear"`` or ``"bicubic"`` (what TF-trained weights such as
            EfficientNet-Lite were evaluated with).
        files: these images (paths relative to ``root``, as ``meta["files"]`` and a run's
            split.json have them), in this order, instead of the seeded split's.
        classes: the class names the labels index (a run's own, which ``--resume`` reads its
            folder by) instead of the folder's class folders: a class folder added since is left
            out, its images not decoded; each must still be a class folder.
        absent_ok: with ``classes``, read to score a run rather than to train it: a class of
            ``classes`` that has no folder or no image is allowed (absent from the scores), and the
            checks a training set needs (two classes, each with training images) are not made; the
            split must still hold an image of one of ``classes``.

    Returns:
        An :class:`ImageSet` ``(N, channels, H, W)`` uint8; ``classes`` are the sorted class folder
        names (the same for every split), or ``classes`` where given; ``meta`` records the files, the
        split, the seed and, as ``left_out``, the class folders that ``classes`` left out (sorted).

    Raises:
        CnnkitError: a missing folder, no class folders, no images, a bad split name or size, a class
            of ``classes`` that is no class folder (unless ``absent_ok``), a split that holds no
            image of ``classes``.

    Warns:
        ImageFolderWarning: once, counting the files that are not images; once per class that has
        fewer than 100 images in the whole folder.
    """
    root = Path(root).expanduser()
    size = _check_args(root, split, image_size, channels, val_fraction, test_fraction, resize, crop_fraction)
    layout = _scan(root)  # split -> class -> [relative paths]
    _check_split(layout, split, val_fraction, test_fraction, root)
    found = sorted({c for per_class in layout.values() for c in per_class})
    left_out: list[str] = []
    if classes is None:
        classes = _one_spelling(root, found)
    else:  # a run's own classes: a class folder added since is not one of them
        gone = [c for c in classes if c not in found]
        if gone and not absent_ok:
            raise CnnkitError(
                f"no class folder {root / gone[0]}; the run has the class {gone[0]!r}: put the folder back, "
                "or train a new run on the folder as it is"
            )
        classes = list(classes)
        pool = layout[split] if split in layout else layout.get("train", layout.get("", {}))  # the split's folders
        left_out = sorted(c for c in pool if c not in classes)
        layout = {part: {c: ps for c, ps in per_class.items() if c in classes} for part, per_class in layout.items()}
    candidates = sorted({p for per_class in layout.values() for ps in per_class.values() for p in ps})
    if interpolation not in _INTERPOLATIONS:
        raise CnnkitError(
            f"interpolation must be one of {', '.join(_INTERPOLATIONS)}; received: interpolation={interpolation!r}"
        )
    params = {"image_size": size, "channels": channels, "resize": resize, "crop_fraction": crop_fraction}
    if interpolation != "bilinear":  # (kept out of the cache key otherwise: old caches stay valid)
        params["interpolation"] = interpolation
    images, decoded, bad = _decode_all(root, candidates, params, cache)  # images[i] is decoded[i]
    _warn_skipped(root, bad)
    index = {p: i for i, p in enumerate(decoded)}
    layout = {s: {c: [p for p in ps if p in index] for c, ps in per_class.items()} for s, per_class in layout.items()}
    if not absent_ok:
        _check_classes(root, classes, layout)
        _warn_small_classes(root, classes, layout)
    if files is None:
        files = _select(layout, split, classes, val_fraction, test_fraction, seed, root)
    else:  # a run's own images: each must still be there
        where = {p: c for per_class in layout.values() for c, ps in per_class.items() for p in ps}
        gone = [p for p in files if p not in where]
        if gone:
            raise gone_from_split([root / p for p in gone])
        files = [(p, where[p]) for p in files]
    if not files and left_out:  # scoring a run: only class folders the run does not know
        raise CnnkitError(
            f"{root}: the {split!r} split holds no image of the run's classes ({_named(classes)}), only of "
            f"class folders it does not know ({_named(left_out)}); give data with images of the run's classes"
        )
    if not files:
        raise CnnkitError(
            f"{root}: the {split!r} split is empty; put images in {root}/{split}/<class>/ "
            "or change val_fraction/test_fraction"
        )
    rows = torch.tensor([index[p] for p, _ in files], dtype=torch.long)
    labels = torch.tensor([classes.index(c) for _, c in files], dtype=torch.long)
    meta = {"root": str(root), "split": split, "seed": seed, "files": [p for p, _ in files], **params, "skipped": bad}
    meta["left_out"] = left_out
    return ImageSet(images[rows], labels, classes, f"{root.name}/{split}", meta)


def _named(classes: list[str], most: int = 5) -> str:
    """Class names for a message: the first ``most``, quoted, then how many more."""
    shown = ", ".join(map(repr, classes[:most]))
    return shown + (f" and {len(classes) - most} more" if len(classes) > most else "")


def left_out_note(data: ImageSet) -> str | None:
    """The one line that says which class folders reading ``data`` with a run's classes left out
    (``meta["left_out"]``, :func:`load_image_folder`) and why; None where it left out none.

    Example:
        >>> left_out_note(ImageSet(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.long),
        ...                        ["cat", "dog"], "pets/test", {"root": "pets", "left_out": ["bird"]}))
        "note: pets: left out the class folder 'bird', not a class of the run ('cat', 'dog'); scored the run's classes"
    """
    left = data.meta.get("left_out") or []
    if not left:
        return None
    folders = "class folder" + ("s" * (len(left) > 1))
    return (
        f"note: {data.meta.get('root', data.name)}: left out the {folders} {_named(left)}, not a class of the run "
        f"({_named(data.classes)}); scored the run's classes"
    )


def _one_spelling(root: Path, classes: list[str]) -> list[str]:
    """``classes``, none of them the same name as another in other Unicode code points: "é" as one
    code point (NFC, as typed on Linux) and as "e" + an accent (NFD, as macOS writes file names) are
    two folders that print alike, so predictions could not be told apart."""
    first: dict[str, str] = {}
    for c in classes:
        twin = first.setdefault(unicodedata.normalize("NFC", c), c)
        if twin != c:
            raise CnnkitError(
                f"{root}: the class folders {ascii(twin)} and {ascii(c)} are one name written in two Unicode "
                "forms (composed and decomposed accents, NFC and NFD) and print alike; rename one, or merge "
                "them into one folder"
            )
    return classes


def default_cache_dir() -> Path:
    """``$CNNKIT_HOME/imagefolder``, else ``~/.cache/cnnkit/imagefolder``."""
    home = os.environ.get("CNNKIT_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "cnnkit"
    return base / "imagefolder"


def _check_args(root, split, image_size, channels, val_fraction, test_fraction, resize, crop_fraction):
    if not root.is_dir():
        raise CnnkitError(f"image folder not found: {root}; pass a folder holding one sub-folder per class")
    if split not in SPLIT_DIRS:
        raise CnnkitError(f"unknown split {split!r}; use one of {', '.join(SPLIT_DIRS)}")
    try:
        size = tuple(int(v) for v in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise CnnkitError(
            f"image_size must be (H, W) with positive sizes, got image_size={image_size!r}; e.g. (224, 224)"
        )
    if channels not in (1, 3):
        raise CnnkitError(f"channels must be 1 (grey) or 3 (RGB), got channels={channels!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CnnkitError(
            f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    if resize not in ("shorter", "exact"):
        raise CnnkitError(f"resize must be 'shorter' or 'exact', got resize={resize!r}")
    if not 0 < crop_fraction <= 1:
        raise CnnkitError(
            f"crop_fraction must be in (0, 1], got crop_fraction={crop_fraction}; "
            "0.875 is torchvision's 256 -> 224 centre crop"
        )
    floor = smallest_crop_fraction(size)
    if resize == "shorter" and crop_fraction < floor:  # a magnification past the decoder's limit
        raise CnnkitError(
            f"crop_fraction must be at least {floor:g} at image_size {size} (a smaller share magnifies even a "
            f"square photo past {MAX_DECODE_PIXELS:,} pixels), got crop_fraction={crop_fraction}; "
            "0.875 is torchvision's 256 -> 224 centre crop"
        )
    return size


def smallest_crop_fraction(image_size) -> float:
    """The smallest crop share photos are read with at ``image_size`` (H, W).

    The shorter side is resized to cover H / share by W / share (:func:`decode_image`), so a
    share below sqrt(H W / MAX_DECODE_PIXELS) would magnify even a square photo past the
    decoder's limit (Pillow's decompression-bomb threshold): so small a share is refused as a
    mistake or as damaged metadata. The floor is that root rounded up to two significant digits,
    so the value an error shows is itself admitted. From the floor up every photo the decoder
    admits is read: one whose resized copy would pass the limit (a 4:3 photo just above the floor,
    a 2,000,000 x 1 sliver at any share) has only the region its centre crop covers resized.

    Args:
        image_size: (H, W), the input the centre crop gives.

    Returns:
        The share, e.g. 0.0068 at 64 x 64 and 0.024 at 224 x 224.
    """
    h, w = (int(v) for v in image_size)
    root = math.sqrt(h * w / MAX_DECODE_PIXELS)
    digits = 1 - math.floor(math.log10(root))  # two significant digits
    return math.ceil(root * 10**digits) / 10**digits


def _scan(root: Path) -> dict[str, dict[str, list[str]]]:
    """split ('train'/'val'/'test', or '' when the folder has no split folders) -> class -> files."""
    subdirs = {d.name: d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    split_dirs = {s: subdirs[a] for s, aliases in SPLIT_DIRS.items() for a in aliases if a in subdirs}
    if "train" not in split_dirs:
        split_dirs = {"": root}  # root/<class>/*
    layout = {}
    for split, folder in split_dirs.items():
        layout[split] = {
            d.name: sorted(str(f.relative_to(root)) for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
            for d in sorted(folder.iterdir())
            if d.is_dir() and not d.name.startswith(".")
        }
    if not any(layout.values()):
        raise CnnkitError(
            f"{root} has no class folders; arrange the images as {root}/<class>/<image> "
            f"(or {root}/train/<class>/<image> and {root}/val/<class>/<image>)"
        )
    return layout


def _select(layout, split, classes, val_fraction, test_fraction, seed, root) -> list[tuple[str, str]]:
    """The (file, class) pairs of ``split``: the folder's own, or a stratified seeded share of train
    (the training split of a ``train/`` folder that val or test images are carved from is what the
    carving leaves: no image is in two splits)."""
    fractions = _carved_fractions(layout, val_fraction, test_fraction)
    if split in layout and not (split == "train" and any(fractions.values())):
        return [(p, c) for c, ps in sorted(layout[split].items()) for p in ps]
    pool = layout.get("train", layout.get(""))
    out = []
    g = torch.Generator().manual_seed(seed)
    for c in classes:
        files = pool.get(c, [])
        order = torch.randperm(len(files), generator=g).tolist()
        n_test = round(len(files) * fractions["test"])
        n_val = round(len(files) * fractions["val"])
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        out += [(files[i], c) for i in sorted(parts[split])]
    return out


def _carved_fractions(layout, val_fraction, test_fraction) -> dict[str, float]:
    """The share of the training pool carved out for each split the folder does not have."""
    return {"val": val_fraction if "val" not in layout else 0.0, "test": test_fraction if "test" not in layout else 0.0}


def _check_split(layout, split, val_fraction, test_fraction, root) -> None:
    if split in layout or split == "train":
        return
    if _carved_fractions(layout, val_fraction, test_fraction)[split] == 0:
        have = ", ".join(s for s in layout if s) or "no split folders"
        raise CnnkitError(
            f"{root} has no {split!r} split ({have}); pass {split}_fraction=0.2 to hold "
            f"out a share of the training images, or add {root}/{split}/<class>/ folders"
        )


def _decode_all(root: Path, files: list[str], params: dict, cache) -> tuple[torch.Tensor, list[str], list[str]]:
    """Decode every candidate file once (or read the cache): (images, decoded files, skipped files).

    The decoded images are held twice at their end (each one, then all of them stacked): a size
    whose images would not fit in the memory available is refused before the first is decoded."""
    h, w = params["image_size"]
    check_fits(
        2 * len(files) * params["channels"] * h * w,
        f"decoding the {len(files):,} images of {root} at {h}x{w}",
        "read them at a smaller size (--image-size; image_size= in Python)",
    )
    stats = []
    for p in files:
        st = (root / p).stat()
        stats.append((p, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, str(root.resolve()), stats, params]).encode()).hexdigest()
    ident = hashlib.sha256(json.dumps([_CACHE_VERSION, str(root.resolve()), params]).encode()).hexdigest()
    path = None
    if cache is not False:  # <folder>-<its path and decoding>-<its files>: a new version replaces the old one
        folder = default_cache_dir() if cache is True else Path(cache).expanduser()
        path = folder / f"{root.name}-{ident[:12]}-{key[:24]}.safetensors"
        hit = _read_cache(path, files, params)
        if hit is not None:
            return hit
    decoded, bad, arrays = [], [], []
    for p in files:
        image = _decode(root / p, params) if p.lower().endswith(IMAGE_EXTENSIONS) else None
        if image is None:
            bad.append(p)
        else:
            decoded.append(p)
            arrays.append(image)
    images = torch.stack(arrays) if arrays else torch.zeros(0, params["channels"], h, w, dtype=torch.uint8)
    if path is not None:
        _write_cache(path, images, decoded, bad)
    return images, decoded, bad


def decode_image(
    path: str | os.PathLike | typing.BinaryIO,
    image_size: tuple[int, int],
    channels: int = 3,
    resize: str = "shorter",
    crop_fraction: float = 1.0,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """One image file (a path, or an open binary file such as an upload) decoded exactly as
    :func:`load_image_folder` decodes it: (C, H, W) uint8.

    Raises:
        CnnkitError: a missing file or one Pillow cannot read.
    """
    if not hasattr(path, "read"):
        path = Path(path)
        if not path.is_file():
            raise CnnkitError(f"image not found: {path}; give the path of a PNG or JPEG file")
    params = {
        "image_size": tuple(image_size),
        "channels": channels,
        "resize": resize,
        "crop_fraction": crop_fraction,
        "interpolation": interpolation,
    }
    image = _decode(path, params)
    if image is None:
        raise CnnkitError(f"cannot read {path} as an image; give a PNG or JPEG file")
    return image


def _decode(path: Path, params: dict) -> torch.Tensor | None:
    """One file -> (C, H, W) uint8, or None when Pillow cannot decode it."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from cnnkit.data.images import eight_bit

    h, w = params["image_size"]
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_DECODE_PIXELS:  # a decompression bomb: skipped, counted
                return None
            if params["resize"] == "shorter":
                scale = max(h / im.height, w / im.width) / params["crop_fraction"]
                if not math.isfinite(scale * max(im.size)):  # a crop share near 0 (damaged metadata): no size
                    return None
                target = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
            else:
                target = (w, h)
            im.draft("RGB" if params["channels"] == 3 else "L", target)  # JPEG: decode at 1/2..1/8 size
            im = eight_bit(im).convert("RGB" if params["channels"] == 3 else "L")
            method = Image.BICUBIC if params.get("interpolation") == "bicubic" else Image.BILINEAR
            left, top = (target[0] - w) // 2, (target[1] - h) // 2
            if target[0] * target[1] <= MAX_DECODE_PIXELS:
                im = im.resize(target, method, reducing_gap=3.0).crop((left, top, left + w, top + h))
            else:  # a resized copy past the decoder's limit (a share near the floor, a sliver 2,000,000 x 1):
                # only the region the centre crop covers is resized, one axis at a time as the whole resize
                # does (Pillow's box with both axes at once answers up to 11 levels off the whole copy)
                sx, sy = im.width / target[0], im.height / target[1]
                im = im.resize((w, im.height), method, box=(left * sx, 0, (left + w) * sx, im.height))
                im = im.resize((w, h), method, box=(0, top * sy, w, (top + h) * sy))
            array = np.asarray(im, dtype=np.uint8).reshape(h, w, params["channels"])
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)


def _read_cache(path: Path, files: list[str], params: dict):
    """(images, decoded files, skipped files) from the cache at ``path`` when it holds exactly what
    decoding ``files`` with ``params`` gives, else None: a damaged or edited cache is rebuilt, never
    trusted."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["files"])
            images = f.get_tensor("images")
        decoded, skipped, digest = meta["decoded"], meta["skipped"], meta["sha256"]
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None
    h, w = params["image_size"]
    if not (
        isinstance(decoded, list)
        and isinstance(skipped, list)
        and all(isinstance(p, str) for p in decoded + skipped)
        and decoded == [p for p in files if p not in set(skipped)]  # in the order decoding gives them
        and sorted(decoded + skipped) == sorted(files)
        and images.dtype == torch.uint8
        and tuple(images.shape) == (len(decoded), params["channels"], h, w)
        and digest == _digest(images)  # damaged or edited pixels: decoded again
    ):
        return None
    return images, decoded, skipped


def _digest(images: torch.Tensor) -> str:
    """sha256 of the cached pixels (0.08 s per 100 MB)."""
    return hashlib.sha256(images.contiguous().numpy()).hexdigest()


def _write_cache(path: Path, images: torch.Tensor, decoded: list[str], bad: list[str]) -> None:
    """Write the cache file atomically, then remove the caches of this folder and decoding that it
    replaces; a cache that cannot be written is one warning (the images are decoded next time)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".part", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        warnings.warn(
            f"cannot write the image cache {path} ({exc}); images will be decoded again next time",
            ImageFolderWarning,
            stacklevel=4,
        )
        return
    try:
        meta = {"decoded": decoded, "skipped": bad, "sha256": _digest(images)}
        save_file({"images": images.contiguous()}, tmp, metadata={"files": json.dumps(meta)})
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # a full disk: the images are decoded, only the cache is lost
        warnings.warn(
            f"cannot write the image cache {path} ({short_error(exc)}); images will be decoded again next time",
            ImageFolderWarning,
            stacklevel=4,
        )
        return
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in path.parent.iterdir():  # the same folder's caches of files that changed since: stale for good
        same = old.name.startswith(path.name[:-_KEY_TAIL]) and len(old.name) == len(path.name)
        if same and old != path and old.suffix == ".safetensors":
            try:
                old.unlink()
            except OSError:
                pass


def _warn_skipped(root: Path, bad: list[str]) -> None:
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(
            f"{root}: skipped {len(bad)} file{'s' * (len(bad) != 1)} that "
            f"{'are' if len(bad) != 1 else 'is'} not a readable still image ({shown}); "
            f"accepted: {' '.join(IMAGE_EXTENSIONS)}",
            ImageFolderWarning,
            stacklevel=3,
        )


def _check_classes(root: Path, classes: list[str], layout) -> None:
    """At least two classes, none of them without a readable image: else the model learns nothing."""
    counts = {c: sum(len(per_class.get(c, [])) for per_class in layout.values()) for c in classes}
    empty = sorted(c for c, n in counts.items() if n == 0)
    if empty:
        raise CnnkitError(
            f"{root}: the class folder{'s' * (len(empty) > 1)} {', '.join(map(repr, empty[:5]))} "
            "hold no readable image; add images or remove the folder"
        )
    if len(classes) < 2:
        raise CnnkitError(
            f"{root} has {len(classes)} class folder ({', '.join(map(repr, classes))}); a "
            "classifier needs at least two: arrange the images as <class>/<image>"
        )
    if "train" in layout:  # split folders: a class only val/ or test/ holds is one the model never learns
        untrained = sorted(c for c in classes if not layout["train"].get(c))
        if untrained:
            raise CnnkitError(
                f"{root}: the class folder{'s' * (len(untrained) > 1)} {', '.join(map(repr, untrained[:5]))} "
                f"{'have' if len(untrained) > 1 else 'has'} no readable image in train/ (only in the other "
                "split folders); add training images to train/<class>/, or remove the class from every split"
            )


def _warn_small_classes(root: Path, classes: list[str], layout) -> None:
    counts = {c: sum(len(per_class.get(c, [])) for per_class in layout.values()) for c in classes}
    small = {c: n for c, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in sorted(small.items()))
        warnings.warn(
            f"{root}: {len(small)} class{'es' * (len(small) != 1)} with fewer than "
            f"{MIN_IMAGES_PER_CLASS} images: {listed}; expect a noisy validation score and "
            "overfitting -- add images, or rely on augmentation and a frozen base",
            ImageFolderWarning,
            stacklevel=3,
        )

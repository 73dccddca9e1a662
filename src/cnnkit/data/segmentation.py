"""Semantic-segmentation data as tensors: images with one class index per pixel (0 = background,
255 = ignore, VOC's "void").

Three sources:

- :func:`pennfudan_segmentation`: Penn-Fudan pedestrians as person-vs-background masks, with the
  instance ids of ``PedMasks`` (1..n per image) kept beside them, on the split of
  :mod:`cnnkit.data.pennfudan` (the same 120/50 as detection).
- :func:`digit_segmentation`: the MNIST digit scenes of :mod:`cnnkit.data.scenes`, 11 classes
  (background + the digits 0-9, from each digit's ink).
- :func:`mask_folder`: the format users bring: an image folder beside a mask folder of palette or grey
  PNGs holding class indices (``root/images`` + ``root/masks``, or VOC's ``JPEGImages`` +
  ``SegmentationClass``), a mask named as its image with ``.png``; :func:`voc_split` reads a VOC
  folder's official split (``ImageSets/Segmentation/train.txt``, ``val.txt``, ``test.txt``).

Photos differ in size, so images and masks are lists of (C, H, W) / (H, W) uint8 tensors; scenes,
all of one size, are stacked (N, C, H, W) / (N, H, W). ``max_side`` shrinks each photo (bilinear,
antialiased) and its mask (nearest) so the longer side is at most that many pixels.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnkit.data.digest import photos_digest
from cnnkit.data.imagefolder import IMAGE_EXTENSIONS
from cnnkit.data.images import open_image, read_pixels
from cnnkit.data.pennfudan import (
    PENNFUDAN_FIX,
    TEST_FRACTION,
    mask_path,
    pennfudan_root,
    pennfudan_split,
    photo_path,
    seeded_split,
)
from cnnkit.errors import CnnkitError, gone_from_split

IGNORE_INDEX = 255
BACKGROUND = "background"  # the name of class 0


@dataclass
class SegmentationSet:
    images: list[torch.Tensor] | torch.Tensor  # each (C, H, W) uint8, or stacked (N, C, H, W)
    masks: list[torch.Tensor] | torch.Tensor  # each (H, W) uint8 class index (255 ignore), or (N, H, W)
    classes: list[str]  # index -> name; 0 is the background
    names: list[str]  # an image file name (or "scene_<i>") per sample
    instances: list[torch.Tensor] | torch.Tensor | None = None  # (H, W) uint8 instance ids, 0 = none
    name: str = ""  # e.g. "pennfudan/train"
    meta: dict = field(default_factory=dict)  # provenance: root, split, seed, sizes

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def pennfudan_segmentation(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    max_side: int | None = None,
    limit: int | None = None,
    names: list[str] | None = None,
) -> SegmentationSet:
    """Penn-Fudan ``train`` (120), ``test`` (50) or ``all`` (170) as person (1) vs background (0).

    ``instances`` holds the ``PedMasks`` values (pedestrian k of an image is k); ``limit`` keeps the
    first that many images of the split (decoding all 170 photos takes about 15 s); ``names`` reads
    these image names instead (e.g. a carved validation part), ``split`` then only naming the set.
    """
    root = pennfudan_root(data_dir)
    parts = pennfudan_split(root)
    if names is None and split not in ("train", "test", "all"):
        raise CnnkitError(f"Penn-Fudan splits are train, test and all. Received: split={split!r}")
    if names is None:
        names = parts["train"] + parts["test"] if split == "all" else parts[split]
    names = list(names)[:limit]
    images, masks, instances = [], [], []
    for n in names:
        try:
            image = read_pixels(photo_path(root, n))
            inst = _read_mask(mask_path(root, n), image)
            _check_instance_ids(inst, mask_path(root, n))
        except CnnkitError as exc:
            raise CnnkitError(f"{exc}; {PENNFUDAN_FIX}") from exc.__cause__
        image, inst = _shrink(image, inst, max_side)
        images.append(image)
        instances.append(inst)
        masks.append((inst > 0).to(torch.uint8))
    return SegmentationSet(
        images,
        masks,
        [BACKGROUND, "person"],
        names,
        instances,
        f"pennfudan/{split}",
        {"root": str(root), "split": split, "max_side": max_side},
    )


def digit_segmentation(
    split: str = "train",
    n: int = 1000,
    canvas: int = 128,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    **scene_args,
) -> SegmentationSet:
    """``n`` digit scenes (see :func:`cnnkit.data.scenes.digit_scenes`) with 11 per-pixel classes."""
    from cnnkit.data.scenes import digit_scenes

    s = digit_scenes(split, n=n, canvas=canvas, data_dir=data_dir, seed=seed, **scene_args)
    return SegmentationSet(
        s.images,
        s.semantic,
        [BACKGROUND, *s.classes],
        [f"scene_{i}" for i in range(n)],
        s.instances,
        f"digits/{split}",
        dict(s.meta),
    )


def mask_folder(
    root: str | os.PathLike,
    num_classes: int | None = None,
    split: str = "all",
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    max_side: int | None = None,
    classes: list[str] | None = None,
    names: list[str] | None = None,
    instances: bool = False,
    own_size: Collection[str] = (),
) -> SegmentationSet:
    """A folder of images beside a folder of PNG masks (palette or grey: the value is the class, 255 ignore).

    Args:
        root: holds ``images/`` and ``masks/`` (or VOC's ``JPEGImages/`` and ``SegmentationClass/``,
            where only the photos with a mask are read: VOC's ``JPEGImages`` also holds the photos
            of its detection task, which have none).
        num_classes: labels must be below it (255 aside); None takes the largest label + 1.
        split: ``all``, or ``train`` / ``test`` of the seeded split holding out ``test_fraction``
            (:func:`~cnnkit.data.pennfudan.seeded_split`, the rule of every task).
        classes: class names (default ``background``, ``1``, ``2``...).
        names: these images of ``images/``, in this order, instead of ``split`` (a run's split.json).
        instances: a VOC folder's instance ids too, from ``SegmentationObject/NAME.png`` (palette or
            grey, 0 background, 1..n the objects; VOC's 255 void border counts as no object) into
            ``instances``; the photos read are those with both PNGs.
        own_size: these images (and their masks) stay at their own size whatever ``max_side`` (a run's
            test photos, scored as ``predict`` answers them).
    Raises:
        CnnkitError: naming the file: a missing image or mask, a mask of another size than its image,
        a label outside the classes, a mask that is not palette or grey; with ``instances``, a folder
        without ``SegmentationObject/`` or an instance PNG missing or bad in the same ways.
    """
    root = Path(root).expanduser()
    image_dir, mask_dir = _folder_pair(root)
    object_dir = voc_objects(root) if instances else None
    wanted = names
    names = _photos(image_dir, mask_dir, object_dir, voc=wanted is None)
    if wanted is not None:
        gone = sorted(set(wanted) - set(names))
        if gone:
            raise gone_from_split([image_dir / p for p in gone])
        names, split = list(wanted), "all"
    for folder in (mask_dir, object_dir) if object_dir else (mask_dir,):
        missing = [n for n in names if not (folder / f"{Path(n).stem}.png").is_file()]
        if missing:
            raise CnnkitError(
                f"missing mask file {folder / (Path(missing[0]).stem + '.png')} for image "
                f"{image_dir / missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
    if classes is not None:
        num_classes = len(classes) if num_classes is None else num_classes
    if split != "all":
        if split not in ("train", "test"):
            raise CnnkitError(f"mask-folder splits are all, train and test. Received: split={split!r}")
        names = seeded_split(names, seed, test_fraction)[split]
    own_size = set(own_size)
    images, masks, labels, ids = [], [], [], []
    for n in names:
        image = read_pixels(image_dir / n)
        path = mask_dir / f"{Path(n).stem}.png"
        mask = _read_mask(path, image)
        if num_classes is not None:
            _check_range(mask, num_classes, path)
        labels.append(torch.unique(mask))  # at the mask's own size: shrinking may drop a small object's class
        if object_dir:
            inst = _read_mask(object_dir / f"{Path(n).stem}.png", image)
            inst[inst == IGNORE_INDEX] = 0  # VOC's void border belongs to no object
            _, inst = _shrink(image, inst, None if n in own_size else max_side)
            ids.append(inst)
        image, mask = _shrink(image, mask, None if n in own_size else max_side)
        images.append(image)
        masks.append(mask)
    if num_classes is None:
        num_classes = _inferred_classes(labels, [mask_dir / f"{Path(n).stem}.png" for n in names])
    if classes is None:
        classes = [BACKGROUND, *(str(c) for c in range(1, num_classes))]
    if len(classes) != num_classes:
        raise CnnkitError(f"{len(classes)} class names for {num_classes} classes; give one name per class")
    return SegmentationSet(
        images,
        masks,
        list(classes),
        names,
        ids if object_dir else None,
        f"{root.name}/{split}",
        {"root": str(root), "split": split, "seed": seed, "test_fraction": test_fraction},
    )


def coco_segmentation(
    coco, names: list[str] | None = None, max_side: int | None = None, split: str = "all"
) -> SegmentationSet:
    """A COCO instances file's photos as class maps: each object's mask painted with its category
    (index 1.. in category id order, 0 the background), larger objects first so that a smaller one
    on top of them stays visible, and crowd regions (``iscrowd`` 1) 255 (ignored) where no object is.

    Args:
        coco: the file read with its masks (``load_coco(path, masks=True)``,
            :func:`~cnnkit.data.detection.load_coco`: polygons or RLE).
        names: these photos (``file_name`` as the file has them), in this order; all when None.
        max_side: shrink each photo (bilinear) and map (nearest) so its longer side is at most this.
        split: the set's name (``train``, ``test``...).

    Raises:
        CnnkitError: more than 254 categories, or a category named ``background``, the name of class 0
            (the two classes' scores would be reported under one name).
    """
    if len(coco.classes) > IGNORE_INDEX - 1:
        raise CnnkitError(
            f"the COCO file has {len(coco.classes)} categories; a class map holds at most {IGNORE_INDEX - 1} "
            "(255 marks ignored pixels): merge categories, or train `cnnkit instance` on the file"
        )
    if BACKGROUND in coco.classes:
        raise CnnkitError(
            f"the COCO file has a category named {BACKGROUND!r}, the name of class 0 (the pixels of no object): "
            "rename the category, or remove it where it marks no object"
        )
    d = coco.subset(names) if names is not None else coco
    images, masks = [], []
    for i, image in enumerate(d.images):
        mask = torch.zeros(image.shape[1:], dtype=torch.uint8)
        for crowd in d.crowd_masks[i] if d.crowd_masks else []:
            mask[crowd] = IGNORE_INDEX
        objects, labels = d.masks[i], d.labels[i]
        for j in objects.flatten(1).sum(1).argsort(descending=True, stable=True).tolist():
            mask[objects[j]] = int(labels[j]) + 1
        image, mask = _shrink(image, mask, max_side)
        images.append(image)
        masks.append(mask)
    meta = {"split": split, "max_side": max_side}
    return SegmentationSet(images, masks, [BACKGROUND, *d.classes], list(d.names), name=f"coco/{split}", meta=meta)


def voc_split(root: str | os.PathLike, instances: bool = False) -> tuple[dict[str, list[str]], str] | None:
    """A VOC folder's official segmentation split, from ``ImageSets/Segmentation``, as image file names
    (:func:`cnnkit.data.voc.official_split`, each listed photo needing its mask in ``SegmentationClass``,
    and with ``instances`` its instance ids in ``SegmentationObject`` too).

    Returns:
        ``(split, a line saying which lists were used)``, or None where the folder is not VOC's or has
        no ``ImageSets/Segmentation``.
    """
    from cnnkit.data.voc import official_split

    root = Path(root).expanduser()
    image_dir, mask_dir = _folder_pair(root)
    if mask_dir.name != "SegmentationClass":
        return None
    folders = (mask_dir, voc_objects(root)) if instances else (mask_dir,)

    def label(stem: str) -> Path:  # the first of the photo's PNGs that is missing (the last where none is)
        return next(
            (d / f"{stem}.png" for d in folders if not (d / f"{stem}.png").is_file()), folders[-1] / f"{stem}.png"
        )

    return official_split(root, "Segmentation", label, "mask")


def voc_objects(root: Path) -> Path:
    """A VOC folder's ``SegmentationObject/`` (the instance ids of each photo), checked to be there."""
    if not ((root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()):
        raise CnnkitError(
            f"{root} needs VOC's JPEGImages/, SegmentationClass/ and SegmentationObject/ for instance masks"
        )
    folder = root / "SegmentationObject"
    if not folder.is_dir():
        raise CnnkitError(
            f"{root} has no SegmentationObject/: instance masks need VOC's instance PNGs (0 background, "
            "1..n the objects) beside SegmentationClass/"
        )
    return folder


def _folder_pair(root: Path) -> tuple[Path, Path]:
    for images, masks in (("images", "masks"), ("JPEGImages", "SegmentationClass")):
        if (root / images).is_dir() and (root / masks).is_dir():
            return root / images, root / masks
    raise CnnkitError(
        f"{root} needs an image folder beside a mask folder: images/ + masks/ "
        "(or VOC's JPEGImages/ + SegmentationClass/)"
    )


def folder_split(root: str | os.PathLike, test_fraction: float = TEST_FRACTION, seed: int = 0) -> dict[str, list[str]]:
    """The seeded split of a mask folder's photos that :func:`mask_folder` reads with ``split="train"``
    and ``split="test"``: ``{"train": names, "test": names}``, ``test_fraction`` of them (at least 1) held
    out by :func:`~cnnkit.data.pennfudan.seeded_split`, the rule every task splits a user's photos by.

    Args:
        root: a folder :func:`mask_folder` reads (VOC's: the photos with a mask).
        test_fraction: the share of the photos held out to test.
        seed: the permutation's seed (:func:`~cnnkit.data.pennfudan.split_names`).
    """
    return seeded_split(folder_photos(root), seed, test_fraction)


def folder_photos(root: str | os.PathLike, instances: bool = False) -> list[str]:
    """The photos :func:`mask_folder` reads from ``root`` without ``names``, sorted: every image of
    ``images/``, or of a VOC folder's ``JPEGImages/`` those with a mask (with ``instances``, and an
    instance PNG in ``SegmentationObject/``).

    Raises:
        CnnkitError: no image folder beside a mask folder, no photo, or (``instances``) no
            ``SegmentationObject/``.
    """
    root = Path(root).expanduser()
    image_dir, mask_dir = _folder_pair(root)
    return _photos(image_dir, mask_dir, voc_objects(root) if instances else None, voc=True)


def _photos(image_dir: Path, mask_dir: Path, object_dir: Path | None, voc: bool) -> list[str]:
    """The images of ``image_dir``, sorted; with ``voc`` in a VOC folder, only the photos of its
    segmentation task: those with a mask (and, for instances, an object PNG)."""
    names = sorted(
        p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    voc = voc and mask_dir.name == "SegmentationClass"
    if voc:
        names = [n for n in names if all((d / f"{Path(n).stem}.png").is_file() for d in (mask_dir, object_dir) if d)]
    if not names:
        raise CnnkitError(
            f"no images in {image_dir} (extensions: {' '.join(IMAGE_EXTENSIONS)})"
            + (f" with a mask in {mask_dir}" if voc else "")
            + (f" and in {object_dir}" if voc and object_dir else "")
        )
    return names


def _read_mask(path: Path, image: torch.Tensor | None = None) -> torch.Tensor:
    """(H, W) uint8 of a palette (P), grey (L) or 1-bit PNG, checked to be the size of ``image`` (where
    given); read through the one guarded reader (the header's size checked before decoding)."""
    if not path.is_file():
        raise CnnkitError(f"missing mask file {path}")
    with open_image(path) as im:
        mode = im.mode
        if mode not in ("P", "L", "1"):
            raise CnnkitError(
                f"mask {path} is a {mode} image; masks are palette (P) or grey (L) PNGs whose "
                "values are class indices (255 = ignore)"
            )
        arr = np.asarray(im.convert("L") if mode == "1" else im)
    if mode == "1":
        arr = (arr > 0).astype(np.uint8)
    if image is not None and arr.shape != tuple(image.shape[1:]):
        raise CnnkitError(
            f"mask {path} is {arr.shape[1]}x{arr.shape[0]} px but its image is "
            f"{image.shape[2]}x{image.shape[1]}; a mask must be the size of its image"
        )
    return torch.from_numpy(arr.astype(np.uint8))


def _check_instance_ids(inst: torch.Tensor, path: Path) -> None:
    """Penn-Fudan masks number pedestrians 1..n: a value above a gap (a stray 9 among 1, 2) is damage."""
    ids = torch.unique(inst[inst > 0]).tolist()
    if ids != list(range(1, len(ids) + 1)):
        gap = next(i for i in range(1, ids[-1] + 1) if i not in ids)
        raise CnnkitError(
            f"mask {path} holds pedestrian {ids[-1]} but no pedestrian {gap}: Penn-Fudan masks number "
            "pedestrians 1..n (0 = background), so the mask is damaged; restore it from the original archive"
        )


def _inferred_classes(masks: list[torch.Tensor], paths: list[Path]) -> int:
    """The number of classes the masks (or the labels each holds) hold, 0..max (255 aside), every one of
    them present in some mask:
    a label above a gap (a stray 7 among 0/1 masks) is a damaged mask, refused naming its file, and so
    are masks holding the background alone (black-and-white masks drawing objects as 255, the ignore index)."""
    present = torch.zeros(IGNORE_INDEX, dtype=torch.bool)
    where: dict[int, Path] = {}
    for m, path in zip(masks, paths):
        values = torch.unique(m[m != IGNORE_INDEX]).long()
        present[values] = True
        for v in values.tolist():
            where.setdefault(v, path)
    top = int(present.nonzero().max()) if present.any() else 0
    if top == 0:  # one class: nothing to tell apart, every score 1
        void = next((path for m, path in zip(masks, paths) if (m == IGNORE_INDEX).any()), None)
        raise CnnkitError(
            f"the masks in {paths[0].parent} hold no class but the background 0"
            + (
                f"; their other pixels (e.g. in {void}) are 255, which is ignored: draw the objects as 1 "
                "(black-and-white masks: 255 -> 1)"
                if void is not None
                else ": a mask marks its objects' pixels 1..N-1"
            )
        )
    absent = [v for v in range(1, top) if not present[v]]
    if absent:
        shown = ", ".join(str(v) for v in absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise CnnkitError(
            f"mask {where[top]} holds label {top} but no mask holds {shown}: class indices are consecutive "
            "0..N-1 (255 = ignore), so a lone high value is a damaged mask; fix or renumber the masks"
            + (
                " (masks holding VOC's class ids 1..20, 8 for cat: --voc-names)"
                if where[top].parent.name == "SegmentationClass"
                else ""
            )
        )
    return top + 1


def _check_range(mask: torch.Tensor, num_classes: int, path: Path) -> None:
    bad = mask[(mask >= num_classes) & (mask != IGNORE_INDEX)]
    if bad.numel():
        raise CnnkitError(
            f"mask {path} holds label {int(bad.max())}, outside the {num_classes} classes "
            f"0..{num_classes - 1} (255 = ignore); fix the mask or pass the right number of classes"
        )


def segmentation_digest(data: SegmentationSet, max_side: int | None = None) -> str:
    """The digest of a set's photos and class maps (:func:`~cnnkit.data.digest.photos_digest`), each
    pair shrunk to ``max_side`` first as training reads them: a run reads its training photos shrunk
    and its test photos at their own size, ``eval`` every photo at its own size, and shrinking a
    shrunk photo again leaves it as it is, so each part digests alike however it was read.

    Args:
        data: the set (stacked or one tensor per photo).
        max_side: the run's ``--max-side`` (None: the photos as they are).
    """
    pairs = [_shrink(image, mask, max_side) for image, mask in zip(data.images, data.masks)]
    return photos_digest(data.classes, [p[0] for p in pairs], [p[1] for p in pairs])


def _shrink(image: torch.Tensor, mask: torch.Tensor, max_side: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale image (bilinear, antialiased) and mask (nearest) so the longer side is <= max_side."""
    h, w = image.shape[1:]
    if max_side is None or max(h, w) <= max_side:
        return image, mask
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")
    return image[0].round().clamp(0, 255).to(torch.uint8), mask[0, 0].to(torch.uint8)

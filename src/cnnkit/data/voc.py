"""Pascal VOC's folder layout, read by segmentation and detection: its official split lists and its
XML box annotations.

A VOC folder holds the photos in ``JPEGImages/``, the boxes in ``Annotations/NAME.xml``, the class
masks in ``SegmentationClass/NAME.png``, and the official split in ``ImageSets/Segmentation/*.txt``
(segmentation) and ``ImageSets/Main/*.txt`` (detection), one image id a line. Annotation tools such as
LabelImg write the same XML for a user's own photos.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import torch

from cnnkit.data.imagefolder import IMAGE_EXTENSIONS
from cnnkit.errors import CnnkitError, short_error

MAX_XML_BYTES = 1 << 20  # one photo's boxes; a larger file is not an annotation
# the 20 classes of Pascal VOC, in the order of the class ids 1..20 of its SegmentationClass PNGs
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_classes(asked: bool, data: str) -> list[str] | None:
    """``["background", *VOC_CLASSES]`` where ``asked`` (``--voc-names``) and ``data`` is a folder with
    VOC's class masks (``SegmentationClass/``); None where not asked (classes named 1..K).

    Raises:
        CnnkitError: asked for data that is not a VOC folder (it names its own classes, or has none of VOC's).
    """
    if not asked:
        return None
    if not (Path(data).expanduser() / "SegmentationClass").is_dir():
        raise CnnkitError(
            f"--voc-names names the classes of a VOC folder (one with SegmentationClass/); --data {data} is not "
            "one: leave it out"
        )
    return ["background", *VOC_CLASSES]


def with_source(parts: dict, official: tuple | None) -> dict:
    """``parts`` (train, val, test) with ``source``, the line saying which of a VOC folder's lists
    made them, where ``official`` (:func:`official_split`'s answer) did; split.json keeps it."""
    if official:
        counts = ", ".join(f"{len(parts[k])} {k}" for k in ("train", "val", "test"))
        parts["source"] = f"{official[1]}: {counts}"
    return parts


def photos(image_dir: Path) -> dict[str, str]:
    """``{image id: file name}`` of the photos in ``image_dir`` (the first of a stem's extensions)."""
    found: dict[str, str] = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            found.setdefault(p.stem, p.name)
    return found


def official_split(
    root: str | os.PathLike, kind: str, label: Callable[[str], Path], what: str
) -> tuple[dict[str, list[str]], str] | None:
    """A VOC folder's official split, from ``ImageSets/KIND/{train,val,test,trainval}.txt``, as file names.

    ``train.txt`` trains. Where ``test.txt`` lists photos that have their labels, ``val.txt`` validates
    and ``test.txt`` tests; where it is absent or none of its photos has one (VOC withholds its test
    labels), ``val.txt`` is the test split and the split has no ``val`` (the validation part is carved
    from ``train.txt``, :func:`~cnnkit.data.pennfudan.carve_validation`). ``trainval.txt``, where
    present, must list exactly the photos of ``train.txt`` and ``val.txt``.

    Args:
        root: a folder holding ``JPEGImages/``.
        kind: ``Segmentation`` or ``Main`` (detection).
        label: the label file a photo id needs (its mask, its XML annotation).
        what: that file's name in messages (``mask``, ``annotation``).

    Returns:
        ``({"train": names, "test": names} or {"train", "val", "test"}, a line saying which lists
        were used)``, or None where the folder has no ``ImageSets/KIND`` lists.

    Raises:
        CnnkitError: one line naming the list file: ``train.txt`` or ``val.txt`` missing beside the
        others, an empty list, a line that is not one image id, an id listed twice, an id without a
        photo in ``JPEGImages/`` or without its label, a photo in two of train, val and test, or a
        ``trainval.txt`` that differs from ``train.txt`` + ``val.txt``.
    """
    root = Path(root).expanduser()
    folder = root / "ImageSets" / kind
    if not folder.is_dir():
        return None
    present = [k for k in ("train", "val", "test", "trainval") if (folder / f"{k}.txt").is_file()]
    if not present:
        return None
    if "train" not in present or "val" not in present:
        lacking = " and ".join(f"{k}.txt" for k in ("train", "val") if k not in present)
        raise CnnkitError(
            f"{folder} holds {', '.join(f'{k}.txt' for k in present)} but no {lacking}: the official split "
            f"needs both; add the missing list, or remove {folder} for a seeded split"
        )
    image_dir = root / "JPEGImages"
    found = photos(image_dir)
    lists = {k: _voc_list(folder / f"{k}.txt", found, image_dir) for k in present}
    labelled = {k: [label(Path(n).stem).is_file() for n in v] for k, v in lists.items()}
    test = "test" in lists and any(labelled["test"])  # VOC's own test.txt lists photos without labels
    parts = ("train", "val", "test") if test else ("train", "val")
    for k in parts:
        if not all(labelled[k]):
            stem = Path(lists[k][labelled[k].index(False)]).stem
            raise CnnkitError(
                f"{folder / f'{k}.txt'} lists {stem} but there is no {what} {label(stem)}; "
                f"add the {what} or remove the line"
            )
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            both = sorted(set(lists[a]) & set(lists[b]))
            if both:
                raise CnnkitError(
                    f"{folder}: {Path(both[0]).stem} is in both {a}.txt and {b}.txt"
                    + (f" (and {len(both) - 1} more)" if len(both) > 1 else "")
                    + "; a photo belongs to one split: remove it from one list"
                )
    if "trainval" in lists:
        odd = sorted(set(lists["trainval"]) ^ (set(lists["train"]) | set(lists["val"])))
        if odd:
            where = (
                "in trainval.txt but in neither train.txt nor val.txt"
                if odd[0] in set(lists["trainval"])
                else "in train.txt or val.txt but not in trainval.txt"
            )
            raise CnnkitError(
                f"{folder / 'trainval.txt'} is not train.txt + val.txt: {Path(odd[0]).stem} is {where}; "
                "make it their union, or remove it"
            )
    if test:
        split = {"train": lists["train"], "val": lists["val"], "test": lists["test"]}
        note = (
            f"the official lists of {folder}: train.txt ({len(split['train'])} photos) trains, val.txt "
            f"({len(split['val'])}) validates, test.txt ({len(split['test'])}) tests"
        )
    else:
        split = {"train": lists["train"], "test": lists["val"]}
        why = f" (test.txt lists photos without {what}s)" if "test" in lists else ""
        note = (
            f"the official lists of {folder}: train.txt ({len(split['train'])} photos) trains and validates "
            f"(a part carved out), val.txt ({len(split['test'])}) tests{why}"
        )
    return split, note


def _voc_list(path: Path, found: dict[str, str], image_dir: Path) -> list[str]:
    """The image file names a VOC list file names, one image id a line, each checked."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnkitError(f"cannot read {path} ({exc}); a VOC list file is plain text, one image id a line") from None
    names: list[str] = []
    line_of: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) != 1:
            raise CnnkitError(f"{path} line {n}: {line.strip()!r} is not one image id; a list holds one id a line")
        stem = words[0]
        if stem in line_of:
            raise CnnkitError(f"{path} line {n}: {stem} is listed twice (line {line_of[stem]}); remove one")
        line_of[stem] = n
        if stem not in found:
            raise CnnkitError(f"{path} line {n}: no photo {image_dir / stem}.jpg for {stem}; add it or remove the line")
        names.append(found[stem])
    if not names:
        raise CnnkitError(f"{path} lists no images; give one image id a line, or remove it")
    return names


def read_annotation(path: Path) -> tuple[int, int, torch.Tensor, list[str], list[bool]]:
    """A VOC XML annotation -> (width, height, boxes (k, 4), class names, difficult flags).

    VOC's ``bndbox`` coordinates are 1-based and inclusive (the devkit's ``xmin`` of the first pixel
    column is 1), so ``(xmin, ymin, xmax, ymax)`` becomes the half-open
    ``[xmin - 1, xmax) x [ymin - 1, ymax)`` in pixels, as Penn-Fudan's annotations do. Only an
    object's own ``bndbox`` is read (VOC's person layout nests ``part`` boxes inside it). Width or
    height 0 (some tools write them so) means "not given": the image's own is used.

    Raises:
        CnnkitError: one line naming the file and the element: a file over 1 MiB, a DTD or entity
        declaration (never expanded), XML that does not parse, a missing or non-numeric field, a box
        with xmax < xmin.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise CnnkitError(f"cannot read annotation {path}: {exc}") from None
    if len(raw) > MAX_XML_BYTES:
        raise CnnkitError(f"{path} is over {MAX_XML_BYTES >> 20} MiB: not one photo's VOC annotation")
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise CnnkitError(f"{path} declares a DTD or entities, which a VOC annotation never does; remove them")
    try:
        top = ElementTree.fromstring(raw)
        # LookupError, ValueError: the encoding its XML declaration names is unknown ("unknown
        # encoding: ...", the name of any length) or not one expat can read (utf-32, rot13)
    except (ElementTree.ParseError, LookupError, ValueError) as exc:
        raise CnnkitError(
            f"{path} is not well-formed XML ({short_error(exc, clause=True)}); a VOC annotation is <annotation> XML"
        ) from None
    if top.tag != "annotation":
        raise CnnkitError(f"{path}: the top element is <{top.tag}>, not VOC's <annotation>")

    def number(node, tag: str, where: str) -> float:
        text = node.findtext(tag)
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise CnnkitError(f"{path}: {where} <{tag}> is {text!r}, not a number") from None
        if not math.isfinite(value):
            raise CnnkitError(f"{path}: {where} <{tag}> is {text!r}, not a finite number")
        return value

    size = top.find("size")
    w = int(number(size, "width", "<size>")) if size is not None and size.find("width") is not None else 0
    h = int(number(size, "height", "<size>")) if size is not None and size.find("height") is not None else 0
    rows, names, difficult = [], [], []
    for j, obj in enumerate(top.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise CnnkitError(f"{path}: <object> {j} has no <name>; give each object its class")
        box = obj.find("bndbox")
        if box is None:
            raise CnnkitError(f"{path}: <object> {j} ({name}) has no <bndbox>")
        x1, y1, x2, y2 = (number(box, t, f"<object> {j} <bndbox>") for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise CnnkitError(f"{path}: <object> {j} ({name}) has xmax < xmin or ymax < ymin: {[x1, y1, x2, y2]}")
        rows.append([x1 - 1, y1 - 1, x2, y2])
        names.append(name)
        difficult.append((obj.findtext("difficult") or "0").strip() not in ("0", "", "false", "False"))
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    return w, h, boxes, names, difficult

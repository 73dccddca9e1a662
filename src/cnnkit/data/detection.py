"""Detection data: images with boxes, read from Penn-Fudan, COCO JSON, YOLO txt or Pascal VOC XML folders; detection
augmentation as batched pure functions that move the boxes with the pixels.

Every reader returns a :class:`Detections`; boxes are float ``xyxy`` in pixels of the stored image,
half-open (a box over pixel columns 3..7 is x1=3, x2=8), labels index ``classes``::

    d = load_pennfudan(root, names=split["train"])   # one class, "person"
    d = load_coco("annotations.json")                # images beside the file (or image_dir=...)
    d = load_coco("annotations.json", masks=True)    # and each object's mask (d.masks), as annToMask gives it
    d = load_yolo("my_data/")                        # my_data/images/*.jpg, my_data/labels/*.txt, classes.txt
    d = load_voc("VOC2012/")                         # VOC2012/JPEGImages/*.jpg, VOC2012/Annotations/*.xml

Bad input raises one :class:`~cnnkit.errors.CnnkitError` line naming the file and the field.

For training, :func:`letterbox` brings every image to one square size (boxes scaled with it) and
:func:`pad_targets` stacks the boxes as (N, M, 4) with label -1 for padding, so that the augmentations
(:func:`hflip`, :func:`scale_jitter`, :func:`colour_jitter`) work on a whole batch at once.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
import torch.nn.functional as F

from cnnkit.data.cocomask import _finite, _is_int, _shown, segmentation_mask
from cnnkit.data.images import MAX_DECODE_PIXELS, read_pixels
from cnnkit.data.pennfudan import PENNFUDAN_FIX
from cnnkit.errors import CnnkitError, check_fits, gone_from_split, short_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class Detections:
    images: list[torch.Tensor]  # N x (C, H_i, W_i) uint8
    boxes: list[torch.Tensor]  # N x (k_i, 4) float32 xyxy pixels, half-open
    labels: list[torch.Tensor]  # N x (k_i,) int64 indices into classes
    classes: list[str]
    names: list[str] = field(default_factory=list)  # image file names (what split.json lists)
    # COCO crowd regions (iscrowd 1), per image (k_i, 4) xyxy and (k_i,) labels; empty lists: none at all.
    # Not trained on; evaluation ignores the detections that fall in them, as COCOeval does.
    crowd_boxes: list[torch.Tensor] = field(default_factory=list)
    crowd_labels: list[torch.Tensor] = field(default_factory=list)
    # COCO instance masks where read (load_coco(masks=True)): per image (k_i, H_i, W_i) bool, row j the
    # mask of box j, and (c_i, H_i, W_i) of its crowd regions; empty lists: boxes only.
    masks: list[torch.Tensor] = field(default_factory=list)
    crowd_masks: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, names: list[str]) -> Detections:
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise CnnkitError(f"split names images that are not in the data: {missing[:3]}")
        idx = [index[n] for n in names]
        return Detections(
            [self.images[i] for i in idx],
            [self.boxes[i] for i in idx],
            [self.labels[i] for i in idx],
            self.classes,
            list(names),
            [self.crowd_boxes[i] for i in idx] if self.crowd_boxes else [],
            [self.crowd_labels[i] for i in idx] if self.crowd_labels else [],
            [self.masks[i] for i in idx] if self.masks else [],
            [self.crowd_masks[i] for i in idx] if self.crowd_masks else [],
        )


def _annotated(path: Path) -> torch.Tensor:
    """The (3, H, W) uint8 image an annotation names (the one guarded reader)."""
    if not path.is_file():
        raise CnnkitError(f"missing image {path}: the annotation names it but there is no such file")
    return read_pixels(path)


def check_boxes(boxes: torch.Tensor, width: int, height: int, where: str, tol: float = 0.0) -> None:
    """CnnkitError naming ``where`` if a box has x2 < x1, y2 < y1, or reaches outside the image
    by more than ``tol`` pixels."""
    for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise CnnkitError(f"{where}: box {j} has a coordinate that is not a finite number: {[x1, y1, x2, y2]}")
        if x2 < x1 or y2 < y1:
            raise CnnkitError(f"{where}: box {j} has x2 < x1 or y2 < y1: {[x1, y1, x2, y2]} (xyxy)")
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise CnnkitError(
                f"{where}: box {j} {[x1, y1, x2, y2]} (xyxy) reaches outside its {width} x {height} image"
            )


def _nonempty(d: Detections, source) -> Detections:
    if len(d) == 0:
        raise CnnkitError(f"empty dataset: {source} holds no annotated images")
    return d


# ---------------------------------------------------------------- Penn-Fudan (PASCAL v1.00 text)
_SIZE = re.compile(r"Image size \(X x Y x C\)\s*:\s*(\d+)\s*x\s*(\d+)")
_BOX = re.compile(
    r'Bounding box for object (\d+) "([^"]*)" \(Xmin, Ymin\) - \(Xmax, Ymax\)\s*:\s*'
    r"\((-?\d+),\s*(-?\d+)\)\s*-\s*\((-?\d+),\s*(-?\d+)\)"
)
_COUNT = re.compile(r"Objects with ground truth\s*:\s*(\d+)")


def read_pascal_annotation(path: Path) -> tuple[int, int, torch.Tensor, list[str]]:
    """A PASCAL Annotation v1.00 text file -> (width, height, boxes (k, 4), object labels).

    Its coordinates are 1-based and inclusive ("Top left pixel co-ordinates : (1, 1)"), so a box
    (Xmin, Ymin) - (Xmax, Ymax) becomes the half-open [Xmin - 1, Xmax) x [Ymin - 1, Ymax).
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnkitError(f"cannot read annotation {path}: {exc}") from exc
    size = _SIZE.search(text)
    if not size:
        raise CnnkitError(f"{path}: no 'Image size (X x Y x C) : W x H x C' line; the annotation does not parse")
    count = _COUNT.search(text)
    found = _BOX.findall(text)
    if not count:
        raise CnnkitError(f"{path}: no 'Objects with ground truth : N' line; the annotation does not parse")
    if int(count.group(1)) != len(found):
        raise CnnkitError(
            f"{path}: 'Objects with ground truth' says {count.group(1)} but {len(found)} "
            "'Bounding box for object' lines parse"
        )
    w, h = int(size.group(1)), int(size.group(2))
    rows = [[int(a) - 1, int(b) - 1, int(c), int(d)] for _, _, a, b, c, d in found]
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    check_boxes(boxes, w, h, f"{path} 'Bounding box'")
    return w, h, boxes, [lab for _, lab, *_ in found]


def load_pennfudan(root: str | os.PathLike, names: list[str] | None = None) -> Detections:
    """Penn-Fudan pedestrians (one class, ``person``) from ``root/Annotation/*.txt`` and ``root/PNGImages``.

    ``names``: image file names to read (a split's list); all images when None.
    """
    root = Path(root)
    if names is None:
        names = sorted(p.name for p in (root / "PNGImages").glob("*.png"))
    images, boxes, labels = [], [], []
    for name in names:
        ann = root / "Annotation" / f"{Path(name).stem}.txt"
        try:
            if not ann.is_file():
                raise CnnkitError(f"missing annotation {ann} for image {name}")
            w, h, b, _ = read_pascal_annotation(ann)
            img = _annotated(root / "PNGImages" / name)
            if tuple(img.shape[1:]) != (h, w):
                raise CnnkitError(f"{ann} 'Image size': says {w} x {h} but {name} is {img.shape[2]} x {img.shape[1]}")
        except CnnkitError as exc:
            raise CnnkitError(f"{exc}; {PENNFUDAN_FIX}") from exc.__cause__
        images.append(img)
        boxes.append(b)
        labels.append(torch.zeros(len(b), dtype=torch.int64))
    return _nonempty(Detections(images, boxes, labels, ["person"], list(names)), root)


# ---------------------------------------------------------------- COCO JSON
# the most classes a data set may declare (LVIS has 1,203), and the highest class id a YOLO label may
# use when no classes.txt / data.yaml declares them: a stray id must not build a detector of that size
MAX_CLASSES = 10_000
MAX_UNDECLARED_CLASS = 999
MAX_NAMES_BYTES = 1 << 20  # classes.txt / data.yaml: class names, not data


def _entries(path: Path, data, key: str) -> list[dict]:
    """``data[key]``, checked to be a list of objects."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise CnnkitError(
            f"{path}: field '{key}' is missing or not a list; a COCO detection file has "
            "'images', 'annotations' and 'categories'"
        )
    for j, e in enumerate(data[key]):
        if not isinstance(e, dict):
            raise CnnkitError(f"{path}: {key}[{j}] is {_shown(e)}, not an object {{...}}")
    return data[key]


def _coco_id(path: Path, where: str, record: dict, key: str) -> int:
    if key not in record:
        raise CnnkitError(f"{path}: {where} field '{key}' is missing")
    v = record[key]
    if not _is_int(v):
        raise CnnkitError(
            f"{path}: {where} field '{key}' must be an integer id; received {_shown(v)} ({type(v).__name__})"
        )
    return v


def _coco_size(path: Path, where: str, record: dict, key: str) -> int:
    v = record.get(key)
    if not _finite(v) or v != int(v) or not 1 <= v <= 1_000_000:
        raise CnnkitError(f"{path}: {where} field '{key}' must be a whole number of pixels >= 1; received {_shown(v)}")
    return int(v)


def _coco_bbox(path: Path, where: str, record: dict) -> list[float]:
    v = record.get("bbox")
    if not isinstance(v, list) or len(v) != 4 or not all(_finite(c) for c in v):
        raise CnnkitError(f"{path}: {where} field 'bbox' must be 4 finite numbers [x, y, w, h]; received {_shown(v)}")
    x, y, w, h = (float(c) for c in v)
    if w < 0 or h < 0:
        raise CnnkitError(f"{path}: {where} field 'bbox' has a negative width or height: {_shown(v)}")
    return [x, y, x + w, y + h]


def _relative_name(path: Path, where: str, name) -> str:
    """A ``file_name`` that stays inside the data folder (a relative path without '..')."""
    if not isinstance(name, str) or not name.strip():
        raise CnnkitError(f"{path}: {where} field 'file_name' must be a file name; received {_shown(name)}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise CnnkitError(
            f"{path}: {where} 'file_name' {name!r} is an absolute path; annotation files name images "
            "relative to the data folder"
        )
    if ".." in parts:
        raise CnnkitError(
            f"{path}: {where} 'file_name' {name!r} climbs out of the data folder ('..'); annotation files "
            "name images inside it"
        )
    return name


def load_coco(
    path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    masks: bool = False,
    names: list[str] | None = None,
    classes: list[str] | None = None,
) -> Detections:
    """A COCO instances JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).

    Images are read from ``image_dir`` (default: the JSON's folder, then its ``images/``) by
    ``file_name`` (relative, inside that folder); classes are the categories in id order. Crowd
    annotations (``iscrowd`` 1) are not trained on: they are kept apart as ``crowd_boxes`` /
    ``crowd_labels``, regions where evaluation ignores detections, as COCOeval does. Ids are
    integers; every record is checked before an image is read. With ``masks``, each annotation's
    ``segmentation`` (polygons, uncompressed or compressed RLE) is decoded too, to the pixels
    pycocotools' ``COCO.annToMask`` gives (:func:`~cnnkit.data.cocomask.segmentation_mask`, without
    pycocotools).

    Args:
        path: the COCO JSON file.
        image_dir: the folder the ``file_name`` entries are relative to.
        masks: read each object's mask into :attr:`Detections.masks` (and :attr:`Detections.crowd_masks`).
        names: the images to decode (``file_name`` as the file has them: a run's split), in this order,
            the masks of theirs alone; every image when None. Every record is checked either way.
        classes: the class names the labels index (a run's), each category taken by its name, instead
            of the file's categories in id order; an object of a decoded image whose category is none
            of them is refused.

    Returns:
        The images with their boxes and labels (and masks).

    Raises:
        CnnkitError: one line naming the file and the record: an entry that is not an object, a
        missing or non-integer id, a duplicate id or file name, an annotation naming no image or
        category, a bbox that is not 4 finite numbers, a size that is not a positive whole number, a
        ``file_name`` that is absolute or climbs out of the folder, an image that does not match its
        size, a name of ``names`` the file has no image of, an object of a category ``classes`` lacks;
        with ``masks``, a missing or bad ``segmentation``
        (:func:`~cnnkit.data.cocomask.segmentation_mask` says which).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CnnkitError(f"{path}: not a readable COCO JSON file ({short_error(exc)})") from None
    except RecursionError:
        raise CnnkitError(f"{path}: nested too deeply to be a COCO JSON file") from None
    images_, anns, cats = (_entries(path, data, k) for k in ("images", "annotations", "categories"))
    cat_index: dict[int, int] = {}
    for j, c in enumerate(cats):
        cid = _coco_id(path, f"categories[{j}]", c, "id")
        if cid in cat_index:
            raise CnnkitError(f"{path}: categories[{j}] repeats category id {cid}")
        if not isinstance(c.get("name"), (str, int)) or isinstance(c.get("name"), bool) or not str(c["name"]).strip():
            raise CnnkitError(f"{path}: categories[{j}] field 'name' must be a name; received {_shown(c.get('name'))}")
        cat_index[cid] = j
    if len(cat_index) > MAX_CLASSES:
        raise CnnkitError(f"{path}: {len(cat_index):,} categories; cnnkit trains at most {MAX_CLASSES:,} classes")
    order = sorted(cat_index)
    declared = [str(cats[cat_index[cid]]["name"]) for cid in order]
    first_of: dict[str, int] = {}
    for cid, name in zip(order, declared):  # two categories of one name: their predictions could not be told apart
        if name in first_of:
            raise CnnkitError(
                f"{path}: categories {first_of[name]} and {cid} are both named {name!r}; give each category its "
                "own name, or merge them into one id"
            )
        first_of[name] = cid
    # each category's label: its place in id order, or its name's place among a run's classes (None where
    # the run has no class of that name)
    place = {name: i for i, name in enumerate(declared if classes is None else classes)}
    label_of = {cid: place.get(name) for cid, name in zip(order, declared)}
    records: dict[int, tuple[int, str, int, int]] = {}
    seen_names: dict[str, int] = {}
    for i, im in enumerate(images_):
        where = f"images[{i}]"
        iid = _coco_id(path, where, im, "id")
        if iid in records:
            raise CnnkitError(f"{path}: {where} repeats image id {iid} (images[{records[iid][0]}] has it)")
        name = _relative_name(path, where, im.get("file_name"))
        if name in seen_names:
            raise CnnkitError(f"{path}: {where} repeats file_name {name!r} (images[{seen_names[name]}] has it)")
        seen_names[name] = i
        width, height = _coco_size(path, where, im, "width"), _coco_size(path, where, im, "height")
        if width * height > MAX_DECODE_PIXELS:
            raise CnnkitError(
                f"{path}: {where} says {width} x {height} pixels, more than the {MAX_DECODE_PIXELS:,} cnnkit decodes"
            )
        records[iid] = (i, name, width, height)
    if names is None:
        read = list(records)
    else:  # the images asked for, in their order
        id_of = {r[1]: iid for iid, r in records.items()}
        gone = [n for n in names if n not in id_of]
        if gone:
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            raise CnnkitError(
                f"{path} has no image {gone[0]!r}{more} in its 'images'; the run's split.json names it: put it "
                "back, or train a new run on the file as it is"
            )
        read = [id_of[n] for n in names]
    decoded = set(read)
    per_image: dict[int, list] = {}
    crowd_of: dict[int, list] = {}
    for j, a in enumerate(anns):
        where = f"annotations[{j}]"
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1):  # True/False compare equal to 1/0
            raise CnnkitError(f"{path}: {where} field 'iscrowd' must be 0 or 1; received {_shown(crowd)}")
        iid = _coco_id(path, where, a, "image_id")
        cid = _coco_id(path, where, a, "category_id")
        if iid not in records:
            raise CnnkitError(f"{path}: {where} 'image_id' {iid} names no entry of 'images'")
        if cid not in label_of:
            raise CnnkitError(f"{path}: {where} 'category_id' {cid} names no entry of 'categories'")
        box = _coco_bbox(path, where, a)
        if label_of[cid] is None and iid in decoded:
            raise CnnkitError(
                f"{path}: {where} is of category {dict(zip(order, declared))[cid]!r}, none of the run's classes "
                f"{_shown(classes)}; give the run the file it trained on, or train a new run on this one"
            )
        if masks and "segmentation" not in a:
            raise CnnkitError(
                f"{path}: {where} has no 'segmentation'; instance masks need each object's polygons or RLE"
            )
        (crowd_of if crowd else per_image).setdefault(iid, []).append([box, label_of[cid], j])
    if masks:  # each a mask of its image's size: the bytes they take are checked before one is decoded
        check_fits(
            sum(
                records[iid][2] * records[iid][3] * len(rows)
                for d in (per_image, crowd_of)
                for iid, rows in d.items()
                if iid in decoded
            ),
            f"{path}: the masks of its {len(anns):,} annotations",
        )
        pending = sorted(
            (r[2], iid, r) for d in (per_image, crowd_of) for iid, rs in d.items() if iid in decoded for r in rs
        )
        for j, iid, r in pending:  # in the file's order: the first bad annotation is the one named
            _, _, width, height = records[iid]
            r[2] = torch.from_numpy(
                segmentation_mask(anns[j]["segmentation"], height, width, f"{path}: annotations[{j}]")
            )
    folder = Path(image_dir) if image_dir is not None else path.parent
    if image_dir is None and read and (folder / "images").is_dir():
        first = records[read[0]][1]
        if not (folder / first).is_file():
            folder = folder / "images"
    images, boxes, labels, found, crowd_boxes, crowd_labels, kept, crowd_kept = [], [], [], [], [], [], [], []
    for iid in read:
        i, name, width, height = records[iid]
        rows, crowd_rows = per_image.get(iid, []), crowd_of.get(iid, [])
        b = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        check_boxes(b, width, height, f"{path} annotations 'bbox' of image {name!r}")
        cb = torch.tensor([r[0] for r in crowd_rows], dtype=torch.float32).reshape(-1, 4)
        check_boxes(cb, width, height, f"{path} crowd annotations 'bbox' of image {name!r}")
        if not (folder / name).is_file():
            raise CnnkitError(f"{path}: images[{i}]: missing image {folder / name}: the file it names does not exist")
        img = read_pixels(folder / name)
        if tuple(img.shape[1:]) != (height, width):
            raise CnnkitError(
                f"{path}: images[{i}] 'width'/'height' say {width} x {height} but {name} is "
                f"{img.shape[2]} x {img.shape[1]}"
            )
        images.append(img)
        boxes.append(b)
        labels.append(torch.tensor([r[1] for r in rows], dtype=torch.int64))
        found.append(name)
        crowd_boxes.append(cb)
        crowd_labels.append(torch.tensor([r[1] for r in crowd_rows], dtype=torch.int64))
        if masks:
            kept.append(torch.stack([r[2] for r in rows]) if rows else torch.zeros(0, height, width, dtype=torch.bool))
            crowd_kept.append(
                torch.stack([r[2] for r in crowd_rows])
                if crowd_rows
                else torch.zeros(0, height, width, dtype=torch.bool)
            )
    if not crowd_of:
        crowd_boxes, crowd_labels, crowd_kept = [], [], []
    classes = declared if classes is None else list(classes)
    return _nonempty(
        Detections(images, boxes, labels, classes, found, crowd_boxes, crowd_labels, kept, crowd_kept), path
    )


# ---------------------------------------------------------------- YOLO txt folders
def _read_text(path: Path, what: str) -> str:
    """The text of a file of ``what`` ("class names", "YOLO labels"): UTF-8 whatever the locale, a
    byte-order mark (Windows' Notepad writes one) dropped; a file of class names at most
    ``MAX_NAMES_BYTES``."""
    import codecs

    try:
        if path.stat().st_size > MAX_NAMES_BYTES and what == "class names":
            raise CnnkitError(
                f"{path} is {path.stat().st_size:,} bytes; a file of {what} is at most {MAX_NAMES_BYTES:,}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise CnnkitError(f"cannot read {path} ({exc.strerror or exc})") from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line = data[:at].count(b"\n") + 1
        raise CnnkitError(f"{path}: not UTF-8 text (byte {at}, line {line}); save the {what} as UTF-8") from None


def read_names_file(path: Path, fix: str) -> list[str]:
    """The class names of a text file, one a line (line i names class i - 1): a YOLO folder's
    ``classes.txt``, ``cnnkit convert --classes FILE``. Read by :func:`_read_text` (UTF-8, a
    byte-order mark allowed, at most ``MAX_NAMES_BYTES``); each name stripped of surrounding spaces;
    blank lines at the end name no class.

    Raises:
        CnnkitError: the file cannot be read, is not UTF-8 (the byte and line named), or has a blank
            line before a name: skipped, it would give every later class the next one's name (the
            line is named, then ``fix``).
    """
    lines = _read_text(path, "class names").splitlines()
    while lines and not lines[-1].strip():  # blank lines at the end name no class
        lines.pop()
    names = [s.strip() for s in lines]
    blank = next((i for i, name in enumerate(names) if not name), None)
    if blank is not None:
        raise CnnkitError(
            f"{path}: line {blank + 1} is blank, so class {blank} has no name (a class is the place of its name "
            f"in the list); {fix}"
        )
    return names


YOLO_NAMES_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")  # the first found declares


def _yolo_names_file(root: Path) -> Path | None:
    """The file of ``root`` that declares a YOLO folder's class names, or None."""
    return next((root / name for name in YOLO_NAMES_FILES if (root / name).is_file()), None)


def _yolo_classes(root: Path) -> list[str] | None:
    path = _yolo_names_file(root)
    if path is None:
        return None
    if path.suffix not in (".yaml", ".yml"):  # line i names class i-1: a blank line is a class without a name
        return _bounded(
            path, read_names_file(path, "name the class, or remove the line and renumber the ids of the label files")
        )
    import yaml

    text = _read_text(path, "class names")
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise CnnkitError(f"{path}: not valid YAML ({short_error(exc)})") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise CnnkitError(f"{path}: needs a field 'names' (a list of class names, or a mapping id: name)")
    names = doc["names"]
    if isinstance(names, dict):
        keys = list(names)
        if not all(_is_int(k) for k in keys) or sorted(keys) != list(range(len(keys))):
            raise CnnkitError(
                f"{path}: field 'names' as a mapping needs the integer keys 0..{len(keys) - 1}; "
                f"received keys {_shown(keys)}"
            )
        names = [names[k] for k in range(len(keys))]
    if not isinstance(names, list) or not all(
        isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in names
    ):
        raise CnnkitError(f"{path}: field 'names' must be a list of class names; received {_shown(names)}")
    return _bounded(path, [str(n) for n in names])


def _same_classes(root: Path, run: list[str]) -> list[str]:
    """A run's classes ``run``, checked against the names ``root`` declares (if it declares any): a YOLO
    label's id means the class at that place of the run's list, so a declared list that differs in a
    name or in their order (renamed, reordered, added or removed since the run trained) is refused."""
    declared = _yolo_classes(root)
    if declared is None or declared == run:
        return run
    path = _yolo_names_file(root)
    i = next((j for j, (a, b) in enumerate(zip(declared, run)) if a != b), min(len(declared), len(run)))
    there, ours = (repr(c[i]) if i < len(c) else "no class" for c in (declared, run))
    undeclared = run == [str(j) for j in range(len(run))]  # the run counted the ids: no names were declared
    fix = (
        f"the run trained without a list of names: move {path.name} away"
        if undeclared
        else f"put the run's names back in {path.name} in that order"
    )
    raise CnnkitError(
        f"{path}: the classes {_shown(declared)} are not the run's {_shown(run)} (id {i} is {there} here, {ours} "
        f"in the run), and label ids index the run's; {fix}, or train a new run on the folder as it is"
    )


def _bounded(path: Path, classes: list[str]) -> list[str]:
    """The declared class names, 1 to ``MAX_CLASSES`` of them, each a name: a label's id is a place in
    this list, so an empty entry of data.yaml's ``names`` (skipped, it would give every later id the
    next class's name) is refused, as :func:`read_names_file` refuses a blank line of classes.txt."""
    if not classes or len(classes) > MAX_CLASSES:
        raise CnnkitError(f"{path} names {len(classes):,} classes; a data set has 1 to {MAX_CLASSES:,}")
    blank = next((i for i, c in enumerate(classes) if not c.strip()), None)
    if blank is not None:
        raise CnnkitError(
            f"{path}: names[{blank}] is empty, so class {blank} has no name (a label's class id is its name's "
            "place in the list); name the class, or remove the entry and renumber the ids of the label files"
        )
    return classes


def _yolo_rows(
    lab: Path, w: int, h: int, limit: int | None, given: bool = False
) -> tuple[list[list[float]], list[int]]:
    """The boxes (xyxy pixels) and classes of one YOLO label file, every row checked: a class id below
    ``limit``, the number of declared classes or (``given``) of a run's (without a limit, at most
    ``MAX_UNDECLARED_CLASS``)."""
    rows, cls = [], []
    for n, line in enumerate(_read_text(lab, "YOLO labels").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            c = int(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
            if c < 0 or not all(math.isfinite(v) for v in (cx, cy, bw, bh)) or bw < 0 or bh < 0:
                raise ValueError
        except ValueError:
            raise CnnkitError(
                f"{lab} line {n}: expected 'class cx cy w h' (an integer class >= 0 and 4 finite numbers, "
                f"w and h >= 0); received {_shown(line.strip())}"
            ) from None
        top = MAX_UNDECLARED_CLASS if limit is None else limit - 1
        if c > top:
            raise CnnkitError(
                f"{lab} line {n}: uses class {c} but "
                + (
                    f"no classes.txt or data.yaml declares the classes (ids above {top} need one)"
                    if limit is None
                    else f"classes.txt/data.yaml names only {limit} (ids 0..{limit - 1})"
                    if not given
                    else f"the run has only {limit} class{'es' * (limit > 1)} (ids 0..{limit - 1}); give the "
                    "run the folder it trained on, or train a new run on this one"
                )
            )
        rows.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        cls.append(c)
    return rows, cls


def load_yolo(root: str | os.PathLike, names: list[str] | None = None, classes: list[str] | None = None) -> Detections:
    """A YOLO folder: ``images/NAME.jpg|png`` with ``labels/NAME.txt`` rows ``class cx cy w h``
    (normalised to 0..1), class names in ``classes.txt`` (or ``data.yaml`` ``names``).

    An image without a label file has no objects. Class ids are bounded by the declared classes (or
    by ``MAX_UNDECLARED_CLASS`` without a declaration) before anything is allocated for them; without
    a declaration the classes are ``0..K``, K the largest id of the label files of every photo, so any
    subset of the photos is labelled alike.

    Args:
        root: the YOLO folder.
        names: the photos of ``images/`` to read (a run's split), in this order; every photo when None
            (and then a label file without its photo is refused).
        classes: the class names the ids index (a run's), instead of the declared or counted ones,
            each id of a label file read checked against them; a folder that declares names must
            declare these, in this order (an id means the class at its place: a renamed, reordered,
            added or removed name would silently give an id another class).

    Returns:
        The images with their boxes and labels.

    Raises:
        CnnkitError: one line naming the file and line: a label file that is not UTF-8 text, a row
        that is not 'class cx cy w h' with finite numbers, a class id outside the classes, a data.yaml
        whose 'names' is not a list (or a mapping 0..n-1) of names, a name of ``names`` with no photo,
        declared names other than ``classes``.
    """
    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise CnnkitError(
            f"{root} is not a YOLO folder (expected {img_dir} and {lab_dir}) nor a VOC folder (JPEGImages/ "
            "and Annotations/)"
        )
    import collections

    given = classes is not None
    classes = _same_classes(root, list(classes)) if given else _yolo_classes(root)
    repeated = sorted(c for c, n in collections.Counter(classes or []).items() if n > 1)
    if repeated:  # two ids of one name: their predictions could not be told apart
        raise CnnkitError(
            f"{root}: the class names list {repeated[0]!r} twice (classes.txt or data.yaml); give each class "
            "its own name, or merge the ids in the label files"
        )
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    limit = None if classes is None else len(classes)
    top = -1
    if names is None:
        stems = {p.stem for p in files}
        for lab in sorted(lab_dir.glob("*.txt")):
            if lab.stem not in stems:
                raise CnnkitError(f"missing image for {lab}: no {img_dir / lab.stem}.png/.jpg")
    else:
        by_name = {p.name: p for p in files}
        gone = [n for n in names if n not in by_name]
        if gone:
            raise gone_from_split([img_dir / n for n in gone])
        if classes is None:  # undeclared: counted over the label files of every photo, not only those read
            for p in files:
                if (lab_dir / f"{p.stem}.txt").is_file():
                    top = max([top] + _yolo_rows(lab_dir / f"{p.stem}.txt", 1, 1, None)[1])
        files = [by_name[n] for n in names]
    images, boxes, labels = [], [], []
    for p in files:
        img = _annotated(p)
        h, w = img.shape[1:]
        lab = lab_dir / f"{p.stem}.txt"
        rows, cls = _yolo_rows(lab, w, h, limit, given) if lab.is_file() else ([], [])
        b = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
        check_boxes(b, w, h, f"{lab} 'cx cy w h'", tol=0.5)  # normalised floats round a little
        images.append(img)
        boxes.append(b.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32)))
        labels.append(torch.tensor(cls, dtype=torch.int64))
        top = max([top] + cls)
    if classes is None:
        classes = [str(c) for c in range(top + 1)]
    return _nonempty(Detections(images, boxes, labels, classes, [p.name for p in files]), root)


# ---------------------------------------------------------------- Pascal VOC XML
def is_voc(root: Path) -> bool:
    """Whether ``root`` is a VOC folder with box annotations (``JPEGImages/`` and ``Annotations/``)."""
    return (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir()


def load_voc(root: str | os.PathLike, names: list[str] | None = None, classes: list[str] | None = None) -> Detections:
    """A Pascal VOC folder (or LabelImg's VOC output): ``JPEGImages/NAME.jpg`` with ``Annotations/NAME.xml``.

    The classes are the object names of every annotation in the folder, sorted (VOC's 20 classes in
    their usual order), so any subset of the photos is labelled alike. Objects marked ``difficult``
    are not trained on, and detections on them count neither way in evaluation (kept as
    :attr:`Detections.crowd_boxes`, as COCO's crowd regions are; VOC's devkit ignores them so).
    Boxes follow :func:`cnnkit.data.voc.read_annotation` (1-based inclusive to half-open pixels) and
    may reach a pixel past the image (tools that write 0-based boxes), clipped to it.

    Args:
        root: the VOC folder.
        names: image file names to read (a split's list); every annotated photo when None.
        classes: the class names the labels index (a run's), instead of those of every annotation,
            each object's name one of them; with ``names``, only their annotations are read (another
            photo may be gone).

    Raises:
        CnnkitError: one line naming the file: an annotation without its photo, a ``<size>`` other
        than the photo's, a box outside the photo, anything :func:`~cnnkit.data.voc.read_annotation`
        refuses; with ``classes``, a name of ``names`` without its photo or an object of another class.
    """
    from cnnkit.data.voc import photos, read_annotation

    root = Path(root).expanduser()
    ann_dir, image_dir = root / "Annotations", root / "JPEGImages"
    found = photos(image_dir)
    parsed = {}
    if classes is not None and names is not None:  # a run's classes: the annotations of these photos alone
        gone = [n for n in names if found.get(Path(n).stem) != n]
        if gone:
            raise gone_from_split([image_dir / n for n in gone])
        for name in names:
            xml = ann_dir / f"{Path(name).stem}.xml"
            if xml.is_file():
                parsed[name] = (xml, read_annotation(xml))
    else:  # every annotation read (the classes are counted over them all), each needing its photo
        for xml in sorted(ann_dir.glob("*.xml")):
            if xml.stem not in found:
                raise CnnkitError(
                    f"missing image for {xml}: no {image_dir / xml.stem}.jpg; add the photo or remove the file"
                )
            parsed[found[xml.stem]] = (xml, read_annotation(xml))
    if names is None:
        names = sorted(parsed)
    for name in names:
        if name not in parsed:
            raise CnnkitError(f"no annotation {ann_dir / Path(name).stem}.xml for {image_dir / name}")
    # the decoded photos' memory, from the annotations' <size>, before any is read
    check_fits(
        sum(parsed[n][1][0] * parsed[n][1][1] * 3 for n in names), f"reading the {len(names):,} photos of {root}"
    )
    if classes is None:
        classes = sorted({c for _, (_, _, _, objects, _) in parsed.values() for c in objects})
    index = {c: i for i, c in enumerate(classes)}
    for name in names:  # a run's classes hold every object's (the counted ones do by their making)
        xml, (_, _, _, objects, _) = parsed[name]
        other = next((c for c in objects if c not in index), None)
        if other is not None:
            raise CnnkitError(
                f"{xml}: an object of class {other!r}, none of the run's classes {_shown(classes)}; give the "
                "run the folder it trained on, or train a new run on this one"
            )
    images, boxes, labels, crowd_boxes, crowd_labels = [], [], [], [], []
    for name in names:
        xml, (w, h, b, objects, difficult) = parsed[name]
        img = _annotated(image_dir / name)
        if (w and w != img.shape[2]) or (h and h != img.shape[1]):
            raise CnnkitError(f"{xml} <size> says {w} x {h} but {name} is {img.shape[2]} x {img.shape[1]}")
        h, w = img.shape[1:]
        check_boxes(b, w, h, f"{xml} <bndbox>", tol=1.0)
        b = b.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
        lab = torch.tensor([index[c] for c in objects], dtype=torch.int64)
        hard = torch.tensor(difficult, dtype=torch.bool)
        images.append(img)
        boxes.append(b[~hard])
        labels.append(lab[~hard])
        crowd_boxes.append(b[hard])
        crowd_labels.append(lab[hard])
    if not any(len(c) for c in crowd_boxes):
        crowd_boxes, crowd_labels = [], []
    return _nonempty(Detections(images, boxes, labels, classes, list(names), crowd_boxes, crowd_labels), root)


# ---------------------------------------------------------------- batching
def letterbox(
    image: torch.Tensor, boxes: torch.Tensor, size: int, fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(C, H, W) uint8 -> (C, size, size) float in [0, 1], the longest side scaled to ``size`` and the rest
    padded with ``fill`` at the bottom/right; boxes scaled alike. Returns (image, boxes, scale);
    original pixels = letterboxed / scale."""
    c, h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = F.interpolate(
        image[None].float() / 255, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1
    )[0]
    out = torch.full((c, size, size), fill, dtype=x.dtype)
    out[:, :nh, :nw] = x
    sb = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    return out, sb, scale


def unletterbox(boxes: torch.Tensor, size: int, height: int, width: int, clip: bool = True) -> torch.Tensor:
    """Boxes (k, 4) in the pixels of an image :func:`letterbox` brought to ``size`` -> the image's own
    pixels, clipped to it (``clip``).

    Each axis is divided by the factor letterbox scaled it by, the rounded side over the side
    (``round(width * scale) / width``), which differs from ``scale`` by up to half a letterboxed pixel
    over the side: dividing by ``scale`` would stretch the boxes by up to a pixel at the far edge.
    """
    scale = size / max(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    f = torch.tensor([nw / width, nh / height, nw / width, nh / height], dtype=boxes.dtype, device=boxes.device)
    if not clip:
        return boxes / f
    lim = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return (boxes / f).clamp(min=0).minimum(lim)


def pad_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image boxes/labels -> (N, M, 4) float and (N, M) int64 with label -1 on padding rows."""
    m = max([len(b) for b in boxes] + [1])
    out_b = torch.zeros(len(boxes), m, 4)
    out_l = torch.full((len(boxes), m), -1, dtype=torch.int64)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        out_b[i, : len(b)] = b
        out_l[i, : len(b)] = lab
    return out_b, out_l


# ---------------------------------------------------------------- augmentation: pixels and boxes together
def hflip(x: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, g: torch.Generator, p: float = 0.5):
    """Mirror each image with probability p: x (N, C, H, W), boxes (N, M, 4), labels (N, M)."""
    w = x.shape[-1]
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < p
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mirrored = torch.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], -1)
    return x, torch.where(flip[:, None, None], mirrored, boxes), labels


def scale_jitter(
    x: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    g: torch.Generator,
    scale: tuple[float, float] = (0.6, 1.4),
    fill: float = 0.0,
    min_visible: float = 0.4,
):
    """Zoom each image by s ~ U(scale) about a random point and crop/pad back to (H, W).

    Pixel p moves to s * p + t (per image, t keeps the image covering the canvas when zooming in and
    inside it when zooming out). Boxes move the same way and are clipped to the canvas; a box left with
    less than ``min_visible`` of its area becomes padding (label -1).
    """
    n, c, h, w = x.shape
    dev = x.device
    s = torch.rand(n, generator=g, device=dev) * (scale[1] - scale[0]) + scale[0]
    d = (torch.rand(n, 2, generator=g, device=dev) * 2 - 1) * (1 - s).abs()[:, None]  # normalised shift
    # affine_grid maps output -> input in normalised coords: n_in = (n_out - d) / s
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = -d / s[:, None]
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    x = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    # pixels: p_out = s * p_in + size / 2 * (1 - s + d)
    tx, ty = w / 2 * (1 - s + d[:, 0]), h / 2 * (1 - s + d[:, 1])
    moved = boxes * s[:, None, None] + torch.stack([tx, ty, tx, ty], -1)[:, None, :]
    clipped = torch.stack(
        [moved[..., 0].clamp(0, w), moved[..., 1].clamp(0, h), moved[..., 2].clamp(0, w), moved[..., 3].clamp(0, h)], -1
    )
    area = lambda b: (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)  # noqa: E731
    keep = (labels >= 0) & (area(clipped) >= min_visible * area(moved)) & (area(clipped) > 0)
    return x, torch.where(keep[..., None], clipped, torch.zeros_like(clipped)), torch.where(keep, labels, -1)


def colour_jitter(
    x: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    g: torch.Generator,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
):
    """Per-image brightness, contrast and saturation factors ~ U(1 - v, 1 + v); boxes unchanged."""
    n = x.shape[0]
    dev = x.device

    def factor(v):
        return (1 + (torch.rand(n, generator=g, device=dev) * 2 - 1) * v)[:, None, None, None]

    x = x * factor(brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(contrast) + mean
    if x.shape[1] == 3:
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=x.dtype)[None, :, None, None]).sum(
            1, keepdim=True
        )
        x = (x - grey) * factor(saturation) + grey
    return x.clamp(0, 1), boxes, labels

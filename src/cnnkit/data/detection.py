"""Detection data: images with boxes, read from Penn-Fudan, COCO JSON or YOLO txt folders; detection
augmentation as batched pure functions that move the boxes with the pixels.

Every reader returns a :class:`Detections`; boxes are float ``xyxy`` in pixels of the stored image,
half-open (a box over pixel columns 3..7 is x1=3, x2=8), labels index ``classes``::

    d = load_pennfudan(root, names=split["train"])   # one class, "person"
    d = load_coco("annotations.json")                # images beside the file (or image_dir=...)
    d = load_yolo("my_data/")                        # my_data/images/*.jpg, my_data/labels/*.txt, classes.txt

Bad input raises one :class:`~cnnkit.errors.CnnkitError` line naming the file and the field.

For training, :func:`letterbox` brings every image to one square size (boxes scaled with it) and
:func:`pad_targets` stacks the boxes as (N, M, 4) with label -1 for padding, so that the augmentations
(:func:`hflip`, :func:`scale_jitter`, :func:`colour_jitter`) work on a whole batch at once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnkit.data.images import read_pixels
from cnnkit.errors import CnnkitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class Detections:
    images: list[torch.Tensor]  # N x (C, H_i, W_i) uint8
    boxes: list[torch.Tensor]  # N x (k_i, 4) float32 xyxy pixels, half-open
    labels: list[torch.Tensor]  # N x (k_i,) int64 indices into classes
    classes: list[str]
    names: list[str] = field(default_factory=list)  # image file names (what split.json lists)

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
        if not ann.is_file():
            raise CnnkitError(f"missing annotation {ann} for image {name}")
        w, h, b, _ = read_pascal_annotation(ann)
        img = _annotated(root / "PNGImages" / name)
        if tuple(img.shape[1:]) != (h, w):
            raise CnnkitError(f"{ann} 'Image size': says {w} x {h} but {name} is {img.shape[2]} x {img.shape[1]}")
        images.append(img)
        boxes.append(b)
        labels.append(torch.zeros(len(b), dtype=torch.int64))
    return _nonempty(Detections(images, boxes, labels, ["person"], list(names)), root)


# ---------------------------------------------------------------- COCO JSON
def load_coco(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> Detections:
    """A COCO instances JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).

    Images are read from ``image_dir`` (default: the JSON's folder, then its ``images/``) by
    ``file_name``; classes are the categories in id order. Crowd annotations are skipped.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CnnkitError(f"{path}: not a readable COCO JSON file ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise CnnkitError(
                f"{path}: field '{key}' is missing or not a list; a COCO detection file has "
                "'images', 'annotations' and 'categories'"
            )
    try:
        cats = sorted(data["categories"], key=lambda c: c["id"])
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        classes = [str(c["name"]) for c in cats]
    except (KeyError, TypeError) as exc:
        raise CnnkitError(f"{path}: field 'categories' needs 'id' and 'name' in every entry ({exc!r} missing)") from exc
    folder = Path(image_dir) if image_dir is not None else path.parent
    if image_dir is None and not any((folder / str(im.get("file_name", ""))).is_file() for im in data["images"][:1]):
        if (folder / "images").is_dir():
            folder = folder / "images"
    per_image: dict = {}
    for j, a in enumerate(data["annotations"]):
        try:
            if a.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            per_image.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], cat_index[a["category_id"]]))
        except KeyError as exc:
            raise CnnkitError(
                f"{path}: annotations[{j}] field {exc.args[0]!r} is missing or names no category"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise CnnkitError(
                f"{path}: annotations[{j}] field 'bbox' must be 4 numbers [x, y, w, h]; received {a.get('bbox')!r}"
            ) from exc
    images, boxes, labels, names = [], [], [], []
    for i, im in enumerate(data["images"]):
        try:
            name, width, height = str(im["file_name"]), int(im["width"]), int(im["height"])
            rows = per_image.get(im["id"], [])
        except (KeyError, TypeError, ValueError) as exc:
            raise CnnkitError(f"{path}: images[{i}] needs 'id', 'file_name', 'width' and 'height' ({exc!r})") from exc
        b = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        check_boxes(b, width, height, f"{path} annotations 'bbox' of image {name!r}")
        img = _annotated(folder / name)
        if tuple(img.shape[1:]) != (height, width):
            raise CnnkitError(
                f"{path}: images[{i}] 'width'/'height' say {width} x {height} but {name} is "
                f"{img.shape[2]} x {img.shape[1]}"
            )
        images.append(img)
        boxes.append(b)
        labels.append(torch.tensor([r[1] for r in rows], dtype=torch.int64))
        names.append(name)
    return _nonempty(Detections(images, boxes, labels, classes, names), path)


# ---------------------------------------------------------------- YOLO txt folders
def _yolo_classes(root: Path) -> list[str] | None:
    for name in ("classes.txt", "obj.names"):
        if (root / name).is_file():
            return [line.strip() for line in (root / name).read_text().splitlines() if line.strip()]
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            import yaml

            try:
                names = yaml.safe_load((root / name).read_text()).get("names")
            except (yaml.YAMLError, AttributeError) as exc:
                raise CnnkitError(f"{root / name}: field 'names' does not parse ({exc})") from exc
            if isinstance(names, dict):
                names = [names[k] for k in sorted(names)]
            if not isinstance(names, list):
                raise CnnkitError(f"{root / name}: field 'names' must be a list of class names")
            return [str(n) for n in names]
    return None


def load_yolo(root: str | os.PathLike) -> Detections:
    """A YOLO folder: ``images/NAME.jpg|png`` with ``labels/NAME.txt`` rows ``class cx cy w h``
    (normalised to 0..1), class names in ``classes.txt`` (or ``data.yaml`` ``names``).

    An image without a label file has no objects.
    """
    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise CnnkitError(f"{root} is not a YOLO folder: expected {img_dir} and {lab_dir}")
    classes = _yolo_classes(root)
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for lab in sorted(lab_dir.glob("*.txt")):
        if not any(p.stem == lab.stem for p in files):
            raise CnnkitError(f"missing image for {lab}: no {img_dir / lab.stem}.png/.jpg")
    images, boxes, labels = [], [], []
    top = -1
    for p in files:
        img = _annotated(p)
        h, w = img.shape[1:]
        rows, cls = [], []
        lab = lab_dir / f"{p.stem}.txt"
        if lab.is_file():
            for n, line in enumerate(lab.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    c = int(parts[0])
                    cx, cy, bw, bh = (float(v) for v in parts[1:])
                    if c < 0:
                        raise ValueError
                except (ValueError, IndexError):
                    raise CnnkitError(
                        f"{lab} line {n}: expected 'class cx cy w h' (an integer class >= 0 and "
                        f"4 numbers); received {line.strip()!r}"
                    ) from None
                rows.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                cls.append(c)
        b = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
        check_boxes(b, w, h, f"{lab} 'cx cy w h'", tol=0.5)  # normalised floats round a little
        images.append(img)
        boxes.append(b.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32)))
        labels.append(torch.tensor(cls, dtype=torch.int64))
        top = max([top] + cls)
    if classes is None:
        classes = [str(c) for c in range(top + 1)]
    elif top >= len(classes):
        raise CnnkitError(f"{root}: a label file uses class {top} but classes.txt/data.yaml names only {len(classes)}")
    return _nonempty(Detections(images, boxes, labels, classes, [p.name for p in files]), root)


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

"""Instance data as the task trains on it: boxes with their masks, and mask targets per RoI."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnkit.data.detection import (
    letterbox,
    pad_targets,
)
from cnnkit.data.digest import photos_digest
from cnnkit.data.segmentation import IGNORE_INDEX
from cnnkit.data.voc import voc_classes
from cnnkit.errors import CnnkitError
from cnnkit.ops import box_iou_elementwise, roi_align
from cnnkit.tasks.detect.data import DetectionSet
from cnnkit.tasks.instance.config import MASK_SIZE, InstanceConfig


@dataclass
class InstanceSet(DetectionSet):
    """A :class:`DetectionSet` whose boxes each have an instance mask."""

    masks: torch.Tensor | None = None  # (N, M, S, S) uint8 0/1, letterboxed, row j = box j
    originals: list[torch.Tensor] = field(default_factory=list)  # N x (m_i, H_i, W_i) bool, original pixels

    def mask_targets(self) -> list[dict[str, torch.Tensor]]:
        """Ground truth per image in original pixels: {"masks" (m, H, W) bool, "labels" (m,)}, with the
        image's crowd regions as ``crowd_masks`` / ``crowd_labels`` where the data has them."""
        out = []
        for i, (o, lab) in enumerate(zip(self.originals, self.labels)):
            t = {"masks": o, "labels": lab[lab >= 0]}
            if self.crowd:
                t["crowd_masks"], t["crowd_labels"] = self.crowd[i]["masks"], self.crowd[i]["labels"]
            out.append(t)
        return out


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool -> its tight half-open box (4,) x1, y1, x2, y2 (zeros when empty)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return torch.zeros(4)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def from_instances(
    images, instances, labels, classes: list[str], size: int, names: list[str] | None = None, fill: float = 0.0
) -> InstanceSet:
    """Images (C, H, W) uint8 with instance-id maps (H, W) (0 none, 1..n) -> an :class:`InstanceSet`.

    ``labels[i]`` gives the class of ids 1..n of image i in order (a tensor, or None for class 0).
    Each id's box is tight around its mask; images are letterboxed to ``size`` and each mask with
    them (:func:`from_masks`). Ids absent from the map are skipped.
    """
    masks, labs = [], []
    for i, (img, inst) in enumerate(zip(images, instances)):
        if tuple(inst.shape) != tuple(img.shape[1:]):
            raise CnnkitError(
                f"image {names[i] if names else i}: instance map {tuple(inst.shape)} is not the "
                f"image's size {tuple(img.shape[1:])}"
            )
        ids = [int(v) for v in torch.unique(inst) if v > 0]
        masks.append(torch.stack([inst == v for v in ids]) if ids else torch.zeros(0, *inst.shape, dtype=torch.bool))
        lab = (
            labels[i]
            if labels is not None and labels[i] is not None
            else torch.zeros(int(inst.max()), dtype=torch.int64)
        )
        labs.append(torch.as_tensor([int(lab[v - 1]) for v in ids], dtype=torch.int64))
    return from_masks(images, masks, labs, classes, size, names, fill)


def from_masks(
    images,
    masks,
    labels,
    classes: list[str],
    size: int,
    names: list[str] | None = None,
    fill: float = 0.0,
    boxes=None,
    crowd: list[dict[str, torch.Tensor]] | None = None,
) -> InstanceSet:
    """Images (C, H, W) uint8 with their objects' masks (k, H, W) bool and labels (k,) -> an :class:`InstanceSet`.

    Masks may overlap (COCO's do). ``boxes[i]`` (k, 4) xyxy in the image's pixels are each object's
    box; by default each box is tight around its mask. Images are letterboxed to ``size`` and each
    mask with them (bilinear, >= 0.5); the masks at the image's own size are kept as ``originals``
    (what evaluation compares). ``crowd``: per image ``{"boxes", "labels", "masks"}`` of its crowd
    regions, which evaluation ignores detections in.
    """
    if len(images) == 0:
        raise CnnkitError("empty dataset: no images to segment")
    xs, sboxes, labs, scales, small, originals, sizes = [], [], [], [], [], [], []
    for i, (img, m) in enumerate(zip(images, masks)):
        if tuple(m.shape[1:]) != tuple(img.shape[1:]):
            raise CnnkitError(
                f"image {names[i] if names else i}: masks {tuple(m.shape[1:])} are not the "
                f"image's size {tuple(img.shape[1:])}"
            )
        m = m.to(torch.bool)
        if boxes is not None:
            b = boxes[i].float().reshape(-1, 4)
        else:
            b = torch.stack([mask_box(k) for k in m]) if len(m) else torch.zeros(0, 4)
        x, sb, scale = letterbox(img, b, size, fill)
        nh, nw = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[2] * scale))
        sm = torch.zeros(len(m), size, size, dtype=torch.uint8)
        if len(m):
            sm[:, :nh, :nw] = (
                F.interpolate(m[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0] >= 0.5
            ).to(torch.uint8)
        xs.append((x * 255).round().to(torch.uint8))
        sboxes.append(sb)
        labs.append(torch.as_tensor(labels[i], dtype=torch.int64))
        scales.append(scale)
        small.append(sm)
        originals.append(m)
        sizes.append(tuple(img.shape[1:]))
    b, lab = pad_targets(sboxes, labs)
    stacked = torch.zeros(len(xs), b.shape[1], size, size, dtype=torch.uint8)
    for i, sm in enumerate(small):
        stacked[i, : len(sm)] = sm
    return InstanceSet(
        torch.stack(xs),
        b,
        lab,
        torch.tensor(scales),
        list(classes),
        list(names) if names else [f"image{i:05d}" for i in range(len(xs))],
        stacked,
        originals,
        crowd=list(crowd or []),
        sizes=torch.tensor(sizes, dtype=torch.int64),
        sha256=_digest(classes, images, masks, labels, boxes, crowd),
    )


def _digest(classes, images, masks, labels, boxes, crowd) -> str:
    """The digest of photos with their objects (masks, labels, the boxes given, crowd regions) at their
    own size (:func:`~cnnkit.data.digest.photos_digest`), whatever size they are letterboxed to."""
    regions = [[c[k] for c in crowd or []] for k in ("boxes", "labels", "masks")]
    masks = [torch.as_tensor(m).to(torch.bool) for m in masks]
    labels = [torch.as_tensor(lab, dtype=torch.int64) for lab in labels]
    return photos_digest(classes, list(images), masks, labels, list(boxes) if boxes is not None else None, *regions)


def jitter_boxes(
    boxes: torch.Tensor,
    copies: int,
    g: torch.Generator,
    shift: float = 0.1,
    scale: float = 0.15,
    min_iou: float = 0.5,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, 4) boxes -> (L * (1 + copies), 4) with index: the boxes, then ``copies`` jittered copies each.

    A copy moves its centre by U(-shift, shift) of the box's width/height and scales each side by
    exp(U(-scale, scale)); a copy with IoU < ``min_iou`` to its box (or empty after clipping to
    ``size``) is replaced by the box itself. Returns (boxes, index of the source box).
    """
    n = len(boxes)
    src = torch.arange(n, device=boxes.device).repeat(1 + copies)
    if copies == 0 or n == 0:
        return boxes, src
    b = boxes.repeat(copies, 1)
    wh = (b[:, 2:] - b[:, :2]).clamp(min=1)
    c = (b[:, 2:] + b[:, :2]) / 2 + (torch.rand(len(b), 2, generator=g, device=b.device) * 2 - 1) * shift * wh
    wh = wh * torch.exp((torch.rand(len(b), 2, generator=g, device=b.device) * 2 - 1) * scale)
    j = torch.cat([c - wh / 2, c + wh / 2], 1)
    if size is not None:
        h, w = size
        j = torch.stack([j[:, 0].clamp(0, w), j[:, 1].clamp(0, h), j[:, 2].clamp(0, w), j[:, 3].clamp(0, h)], 1)
    ok = box_iou_elementwise(j, b) >= min_iou
    j = torch.where(ok[:, None], j, b)
    return torch.cat([boxes, j]), src


def roi_mask_targets(
    masks: torch.Tensor, rois: torch.Tensor, size: int = MASK_SIZE, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Instance masks (N, H, W) (0/1, float or uint8) and boxes (K, 4) -> (K, size, size) 0/1 float:
    box k's mask (``masks[index[k]]``; by default ``masks[k]``, one box per mask) RoIAligned over
    the box (as the head's features are) and thresholded at 0.5."""
    if len(rois) == 0:
        return masks.new_zeros(0, size, size, dtype=torch.float32)
    k = len(rois)
    idx = torch.arange(k, device=rois.device) if index is None else index.to(rois.device)
    boxes = torch.cat([idx.to(rois.dtype)[:, None], rois], 1)
    crop = roi_align(masks[:, None].float(), boxes, size, 1.0, sampling_ratio=2, aligned=True)
    return (crop[:, 0] >= 0.5).float()


def load_instance_data(
    cfg: InstanceConfig,
    split: dict | None = None,
    parts: tuple[str, ...] = ("train", "val", "test"),
    classes: list[str] | None = None,
) -> tuple[InstanceSet | None, InstanceSet | None, InstanceSet | None, dict]:
    """(train, validation, test, split) of a resolved config: Penn-Fudan's instances on its fixed split
    with the validation part carved from the training photos
    (:func:`~cnnkit.data.pennfudan.carve_validation`), digit scenes with validation scenes of their
    own, or a user's photos (:func:`user_instances`: a COCO JSON file or a VOC folder).
    ``split``: the photos' names as a run's split.json has them, read instead of splitting afresh.
    ``parts``: the parts built (``eval`` builds the one it scores), another part None; Penn-Fudan's
    photos of another part are not decoded, nor a user's given ``split`` and ``classes``. ``classes``:
    the run's object classes (``eval``, ``--resume``), which a VOC folder's masks are checked against and a COCO
    file's categories are taken by name from; without them every photo is read, a VOC folder's classes
    counted over all of them."""
    voc_classes(cfg.voc_names, cfg.data)  # --voc-names only for a VOC folder
    if cfg.data == "digits":
        from cnnkit.data.scenes import digit_scenes

        sets = []
        for part, n in zip(("train", "val", "test"), (cfg.scenes[0], cfg.scenes[1], cfg.scenes[1])):
            digits = tuple(cfg.train_digits) if part == "train" else (1, 4)  # as detection's scenes
            s = digit_scenes(part, n, cfg.image_size, cfg.data_dir, cfg.seed, digits=digits)
            sets.append(
                from_instances(
                    s.images, s.instances, s.labels, s.classes, cfg.image_size, [f"scene{i:05d}" for i in range(n)]
                )
            )
        tr, va, te = sets
        split = {"train": tr.names, "val": va.names, "test": te.names}
    elif cfg.data == "pennfudan":
        from cnnkit.data.pennfudan import carve_validation, pennfudan_root, pennfudan_split
        from cnnkit.data.segmentation import pennfudan_segmentation

        root = pennfudan_root(cfg.data_dir)
        fixed = carve_validation(pennfudan_split(root))
        if split is not None and carve_validation(split) != fixed:
            raise CnnkitError(
                "the run's split.json is not Penn-Fudan's fixed split; this run was not written by "
                "`cnnkit instance train --data pennfudan`"
            )
        sets = []
        for part in ("train", "val", "test"):
            if part not in parts:
                sets.append(None)
                continue
            s = pennfudan_segmentation(part, cfg.data_dir, names=fixed[part])
            size = cfg.image_size if part == "train" else cfg.test_side()
            sets.append(from_instances(s.images, s.instances, None, ["person"], size, s.names))
        tr, va, te = sets
        split = fixed
    else:
        tr, va, te, split = user_instances(cfg, split, parts, classes)
    if cfg.subset and tr is not None:
        k = cfg.subset
        tr = replace(
            tr,
            images=tr.images[:k],
            boxes=tr.boxes[:k],
            labels=tr.labels[:k],
            scales=tr.scales[:k],
            names=tr.names[:k],
            masks=tr.masks[:k],
            originals=tr.originals[:k],
            crowd=tr.crowd[:k],
            sizes=tr.sizes[:k] if tr.sizes is not None else None,
        )
    return tr, va, te, split


def user_instances(
    cfg: InstanceConfig,
    split: dict | None = None,
    parts: tuple[str, ...] = ("train", "val", "test"),
    classes: list[str] | None = None,
) -> tuple[InstanceSet | None, InstanceSet | None, InstanceSet | None, dict]:
    """(train, validation, test, split) of a user's photos with their objects' masks; a part not in
    ``parts`` is None (its photos unread where ``split`` and ``classes``, the run's, are given:
    :func:`~cnnkit.tasks.detect.data.read_parts`).

    ``cfg.data`` is a COCO instances JSON file (:func:`~cnnkit.data.detection.load_coco` with its
    masks: the file's boxes and categories, crowd regions kept apart as detection keeps them) or a
    Pascal VOC folder (:func:`~cnnkit.data.segmentation.mask_folder` with ``instances``: each object
    of ``SegmentationObject/NAME.png`` takes the class its pixels carry in
    ``SegmentationClass/NAME.png``, its box tight around it; classes ``1..K`` as segment names them,
    or VOC's 20 names with ``cfg.voc_names``). The split is ``split`` where given (a run's own), else a
    VOC folder's official lists (``ImageSets/Segmentation``, :func:`~cnnkit.data.segmentation.voc_split`)
    where it has them, else the seeded draw every task makes of a user's photos
    (:func:`~cnnkit.tasks.detect.data.photo_split`). ``classes``: the run's object classes, which a VOC
    folder's masks are checked against instead of counting the classes over every photo of the split,
    and a COCO file's categories are taken by name from (:func:`~cnnkit.data.detection.load_coco`).

    Raises:
        CnnkitError: data that is neither, fewer than 3 photos, anything the readers refuse, an object
        whose pixels carry no class or two classes in ``SegmentationClass``.
    """
    from cnnkit.data.detection import load_coco
    from cnnkit.data.pennfudan import carve_validation
    from cnnkit.data.segmentation import BACKGROUND, folder_photos, mask_folder, voc_split
    from cnnkit.data.voc import with_source
    from cnnkit.tasks.detect.data import PARTS, photo_split, read_parts, scored_names
    from cnnkit.tasks.segment.data import take

    path = Path(cfg.data).expanduser()
    sizes = {"train": cfg.image_size, "val": cfg.test_side(), "test": cfg.test_side()}
    official = None
    # a new run: every photo read, a VOC folder's classes counted over every mask; eval, --resume: the run's
    # classes, and the photos of the parts read alone
    read = read_parts(parts, classes)
    if path.is_file():
        names = None if split is None or classes is None else scored_names(split, read)
        data = load_coco(path, masks=True, names=names, classes=classes)
        split = photo_split(data.names, cfg.seed, path, split)
        sets = []
        for part in PARTS:
            if part not in parts:
                sets.append(None)
                continue
            d = data.subset(split[part])
            crowd = [
                {"boxes": b, "labels": lab, "masks": m}
                for b, lab, m in zip(d.crowd_boxes, d.crowd_labels, d.crowd_masks)
            ]
            sets.append(
                from_masks(d.images, d.masks, d.labels, d.classes, sizes[part], d.names, boxes=d.boxes, crowd=crowd)
            )
    elif path.is_dir() and (path / "SegmentationObject").is_dir():
        official = None if split else voc_split(path, instances=True)
        if official:
            split = official[0]
        elif split is None:  # the seeded draw every task makes of a folder's photos
            split = photo_split(folder_photos(path, instances=True), cfg.seed, path)
        split = with_source(carve_validation(split), official)
        seg = mask_folder(
            path,
            names=scored_names(split, read),
            classes=voc_classes(cfg.voc_names, cfg.data) if classes is None else [BACKGROUND, *classes],
            instances=True,
        )
        labels = [
            instance_classes(i, m, path / "SegmentationObject" / f"{Path(n).stem}.png")
            for i, m, n in zip(seg.instances, seg.masks, seg.names)
        ]
        by_name = dict(zip(seg.names, labels))
        sets = []
        for part in PARTS:
            if part not in read or part not in parts:
                sets.append(None)
                continue
            s = take(seg, split[part], part)
            sets.append(
                from_instances(
                    s.images, s.instances, [by_name[n] for n in s.names], seg.classes[1:], sizes[part], s.names
                )
            )
    else:
        raise CnnkitError(
            f"--data {cfg.data!r} is not pennfudan, digits, a COCO JSON file or a Pascal VOC folder with "
            "SegmentationObject/ (instance PNGs) beside SegmentationClass/"
        )
    return (*sets, split)


def instance_classes(instances: torch.Tensor, classes: torch.Tensor, path) -> torch.Tensor:
    """The class of each object id 1..n of an instance map (H, W), from the class map (H, W) beside it
    (class c >= 1 becomes label c - 1; 0 background and 255 void are no class): (n,) int64, 0 for an
    id the map does not hold.

    Raises:
        CnnkitError: an object whose pixels carry no class, or two classes, naming ``path``.
    """
    n = int(instances.max())
    out = torch.zeros(n, dtype=torch.int64)
    for v in torch.unique(instances[instances > 0]).tolist():
        found = torch.unique(classes[instances == v])
        found = found[(found != 0) & (found != IGNORE_INDEX)].tolist()
        if len(found) != 1:
            what = "no class (only background or void)" if not found else f"the classes {found}"
            raise CnnkitError(
                f"instance mask {path}: object {v}'s pixels carry {what} in SegmentationClass; each object's "
                "pixels carry its one class there: fix the PNGs so they agree"
            )
        out[v - 1] = found[0] - 1
    return out


def _to(s: InstanceSet, device) -> InstanceSet:
    return replace(
        s, images=s.images.to(device), boxes=s.boxes.to(device), labels=s.labels.to(device), masks=s.masks.to(device)
    )

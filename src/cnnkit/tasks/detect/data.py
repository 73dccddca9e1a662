"""Detection data as the task trains on it: letterboxed images with boxes in tensors, and the run's split."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from cnnkit.data.detection import (
    Detections,
    letterbox,
    pad_targets,
    unletterbox,
)
from cnnkit.data.digest import photos_digest
from cnnkit.errors import CnnkitError
from cnnkit.tasks.detect.config import DetectConfig


@dataclass
class DetectionSet:
    """Images of one square size with their boxes, ready for batching (everything a tensor).

    Attributes:
        images: (N, C, S, S) uint8, letterboxed (the longer side scaled to S, the rest padded).
        boxes: (N, M, 4) float x1, y1, x2, y2 in letterboxed pixels, M the most boxes of an image.
        labels: (N, M) int64 class indices, -1 on padding rows.
        scales: (N,) letterbox scale: original pixels = letterboxed pixels / scale (about).
        classes: the class names, in index order.
        names: the images' file names, where they have them.
        crowd: per image ``{"boxes" (k, 4) in original pixels, "labels" (k,)}`` of its COCO crowd
            regions, which evaluation ignores detections in (empty: no image has one).
        sizes: (N, 2) int64 each image's own (H, W), which maps its boxes back exactly
            (:func:`~cnnkit.data.detection.unletterbox`); None: by ``scales`` alone.
        sha256: the digest of the photos and annotations the set was made from, at their own size
            (:func:`~cnnkit.data.digest.photos_digest`: what a run records of the part, whatever size it
            letterboxes to; kept by a subset of it, which stands for the part); "" where none was taken.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    scales: torch.Tensor
    classes: list[str]
    names: list[str] = field(default_factory=list)
    crowd: list[dict[str, torch.Tensor]] = field(default_factory=list, kw_only=True)
    sizes: torch.Tensor | None = field(default=None, kw_only=True)
    sha256: str = field(default="", kw_only=True)

    def __len__(self) -> int:
        return self.images.shape[0]

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """Ground truth per image in original pixels (what the metrics compare), with the image's
        crowd regions as ``crowd_boxes`` / ``crowd_labels`` where the data has them."""
        out = []
        for i, (b, lab) in enumerate(zip(self.boxes, self.labels)):
            t = {"boxes": self.original_boxes(b[lab >= 0], i), "labels": lab[lab >= 0]}
            if self.crowd:
                t["crowd_boxes"], t["crowd_labels"] = self.crowd[i]["boxes"], self.crowd[i]["labels"]
            out.append(t)
        return out

    def original_boxes(self, boxes: torch.Tensor, i: int) -> torch.Tensor:
        """Boxes in image ``i``'s letterboxed pixels -> its own pixels (clipped to it where its size is known)."""
        if self.sizes is None:
            return boxes / self.scales[i].to(boxes.device)
        h, w = self.sizes[i].tolist()
        return unletterbox(boxes, self.images.shape[-1], h, w)


def from_detections(d: Detections, size: int, fill: float = 0.0) -> DetectionSet:
    """Letterbox every image of ``d`` to ``size`` x ``size`` (longest side = size)."""
    if len(d) == 0:
        raise CnnkitError("empty dataset: no images to detect in")
    images, boxes, scales = [], [], []
    for img, b in zip(d.images, d.boxes):
        x, sb, scale = letterbox(img, b, size, fill)
        images.append((x * 255).round().to(torch.uint8))
        boxes.append(sb)
        scales.append(scale)
    b, lab = pad_targets(boxes, d.labels)
    crowd = [{"boxes": cb, "labels": cl} for cb, cl in zip(d.crowd_boxes, d.crowd_labels)]
    sizes = torch.tensor([tuple(img.shape[1:]) for img in d.images], dtype=torch.int64)
    digest = photos_digest(
        d.classes, d.images, d.boxes, d.labels, d.crowd_boxes, d.crowd_labels, d.masks, d.crowd_masks
    )
    return DetectionSet(
        torch.stack(images),
        b,
        lab,
        torch.tensor(scales),
        list(d.classes),
        list(d.names),
        crowd=crowd,
        sizes=sizes,
        sha256=digest,
    )


def from_scenes(scenes) -> DetectionSet:
    """Digit scenes (:func:`cnnkit.data.scenes.digit_scenes`) as they are: already square, scale 1."""
    b, lab = pad_targets(scenes.boxes, scenes.labels)
    n = len(scenes)
    return DetectionSet(scenes.images, b, lab, torch.ones(n), list(scenes.classes), [f"scene{i:05d}" for i in range(n)])


PARTS = ("train", "val", "test")


def load_split_data(
    cfg: DetectConfig, split: dict | None = None, parts: tuple[str, ...] = PARTS, classes: list[str] | None = None
) -> tuple[DetectionSet | None, DetectionSet | None, DetectionSet | None, dict]:
    """(train, validation, test, split) for a resolved config; ``split`` (names) as a run's split.json has it.
    ``parts``: the parts of photos built (``eval`` builds the one it scores), another part None
    (digit scenes: all three); Penn-Fudan's photos of another part are not decoded, nor a user's
    where ``split`` and ``classes`` are given. ``classes``: the run's classes (``eval``,
    ``--resume``), which the labels of a COCO file, YOLO or VOC folder index (:func:`read_parts`);
    without them every photo is read, a folder's classes counted over all of them.

    Photos: the validation part is carved from the training names
    (:func:`~cnnkit.data.pennfudan.carve_validation`, the same for every task; a split.json without
    one gets the same carve); digit scenes: validation scenes of their own.
    """
    from pathlib import Path

    if cfg.data == "digits":
        from cnnkit.data.scenes import digit_scenes

        tr = from_scenes(
            digit_scenes("train", cfg.scenes[0], cfg.image_size, cfg.data_dir, cfg.seed, digits=tuple(cfg.train_digits))
        )
        va, te = (
            from_scenes(digit_scenes(k, cfg.scenes[1], cfg.image_size, cfg.data_dir, cfg.seed)) for k in ("val", "test")
        )
        split = {"train": tr.names, "val": va.names, "test": te.names}
    else:
        from cnnkit.data.detection import is_voc, load_coco, load_pennfudan, load_voc, load_yolo
        from cnnkit.data.pennfudan import carve_validation, pennfudan_root, pennfudan_split
        from cnnkit.data.voc import official_split

        if cfg.data == "pennfudan":
            root = pennfudan_root(cfg.data_dir)
            split = carve_validation(split or pennfudan_split(root))
            data = load_pennfudan(root, [n for k in ("train", "val", "test") if k in parts for n in split[k]])
        else:
            path = Path(cfg.data).expanduser()
            official = None
            # the run's split and classes (eval, --resume): the photos of the parts read alone; a new run: every one
            names = None if split is None or classes is None else scored_names(split, read_parts(parts, classes))
            if path.is_file():
                data = load_coco(path, names=names, classes=classes)
            elif path.is_dir() and is_voc(path):
                # the run's names where given, else VOC's official lists where the folder has them
                official = (
                    None
                    if split
                    else official_split(path, "Main", lambda s: path / "Annotations" / f"{s}.xml", "annotation")
                )
                split = official[0] if official else split
                if names is None and split:
                    names = split["train"] + split.get("val", []) + split["test"]
                data = load_voc(path, names, classes)
            elif path.is_dir():
                data = load_yolo(path, names, classes)
            else:
                raise CnnkitError(
                    f"--data {cfg.data!r} is not pennfudan, digits, a COCO JSON file, a YOLO folder or a VOC folder"
                )
            split = photo_split(data.names, cfg.seed, path, split, official)
        tr, va, te = (
            from_detections(data.subset(split[k]), size) if k in parts else None
            for k, size in (("train", cfg.image_size), ("val", cfg.test_side()), ("test", cfg.test_side()))
        )
    if cfg.subset and tr is not None:
        tr = DetectionSet(
            tr.images[: cfg.subset],
            tr.boxes[: cfg.subset],
            tr.labels[: cfg.subset],
            tr.scales[: cfg.subset],
            tr.classes,
            tr.names[: cfg.subset],
            sizes=tr.sizes[: cfg.subset] if tr.sizes is not None else None,
            sha256=tr.sha256,  # the part's, as eval reads it whole
        )
    return tr, va, te, split


def read_parts(parts: tuple[str, ...], classes: list[str] | None) -> tuple[str, ...]:
    """The parts of a user's photos a task reads: all three where ``classes`` is None (a new run, the
    classes counted over every photo of the split, test photos' too: a class may have photos in the
    test split only), else the ``parts`` asked for (``eval``, given the run's classes, reads the
    photos it scores alone; ``--resume`` all three parts, the photos of the run's split alone).
    Shared by the detection, instance and segmentation tasks."""
    return PARTS if classes is None else tuple(k for k in PARTS if k in parts)


def scored_names(split: dict, read: tuple[str, ...]) -> list[str]:
    """The photos of the parts ``read`` of a run's ``split`` (its validation part carved where it has
    none, :func:`~cnnkit.data.pennfudan.carve_validation`), sorted."""
    from cnnkit.data.pennfudan import carve_validation

    split = carve_validation(split)
    return sorted(n for k in read for n in split[k])


def photo_split(names: list[str], seed: int, source, split: dict | None = None, official=None) -> dict:
    """The split of a user's photos (a COCO file's, a folder's): ``split`` where given (a run's
    split.json, or a VOC folder's official lists), else the seeded draw every task makes of a user's
    photos (:func:`~cnnkit.data.pennfudan.seeded_split`: 20% held out to test, at least 1); then the
    validation part carved from the training one (:func:`~cnnkit.data.pennfudan.carve_validation`).
    ``official``: the ``(split, line)`` of :func:`~cnnkit.data.voc.official_split` that gave ``split``,
    whose line becomes the split's ``source`` (split.json and the run's ``split:`` line say which lists).
    Shared by the detection, instance and segmentation tasks, so one folder splits alike in each.

    Args:
        names: the photos drawn from where ``split`` is None (with ``split``, unused).
        seed: the draw's seed.
        source: where the photos come from, for the message.
        split: the photos' names, taken as they are.
        official: the official lists ``split`` came from, if any.

    Raises:
        CnnkitError: a draw from fewer than 3 photos (``source`` names where they came from).
    """
    from cnnkit.data.pennfudan import carve_validation, seeded_split
    from cnnkit.data.voc import with_source

    if split is None:
        if len(names) < 3:
            raise CnnkitError(f"{source} holds {len(names)} image(s): a train/val/test split needs at least 3")
        split = seeded_split(names, seed)
    return with_source(carve_validation(split), official)


def _to(s: DetectionSet, device) -> DetectionSet:
    """``s`` with its batched tensors on ``device``, of its own class (an InstanceSet keeps its masks)."""
    fields = ("images", "boxes", "labels", "masks")
    return replace(s, **{k: getattr(s, k).to(device) for k in fields if isinstance(getattr(s, k, None), torch.Tensor)})


def photo_files(data: str, digests: dict[str, str | None]) -> dict:
    """What a photo run (detection, instance or semantic segmentation) records of its data
    (``data_files``, :func:`~cnnkit.engine.runfolder.data_files`): for each part read (``digests``:
    part -> the digest of its photos and annotations, None or "" where it has none), the data's name
    and that digest. Digit scenes, drawn from MNIST's checked files by the run's seed, record none."""
    from cnnkit.engine.runfolder import data_files

    return {} if data == "digits" else data_files({k: (data, d) if d else None for k, d in digests.items()})

"""Segmentation data as the task trains on it: splits, input statistics, random scale-and-crop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnkit.data.segmentation import IGNORE_INDEX, SegmentationSet
from cnnkit.errors import CnnkitError
from cnnkit.tasks.detect.data import PARTS
from cnnkit.tasks.segment.config import SegmentConfig, encoder_weights


def channel_stats(data: SegmentationSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images on [0, 1] (the normalisation a network trains with)."""
    images = data.images if isinstance(data.images, torch.Tensor) else None
    if images is None:
        flat = torch.cat([im.flatten(1) for im in data.images], 1).float().div_(255)  # (C, pixels)
    else:
        flat = images.transpose(0, 1).flatten(1).float().div_(255)
    return flat.mean(1).tolist(), flat.std(1).clamp(min=1e-3).tolist()


def random_scale_crop(
    image: torch.Tensor,
    mask: torch.Tensor,
    crop: int,
    scale: tuple[float, float],
    flip: bool,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sample: resize by a factor drawn from ``scale`` (image bilinear, mask nearest; both half-pixel),
    pad to at least ``crop`` (image 0, mask 255 = ignored), a random ``crop`` x ``crop`` window, a
    horizontal flip with probability 1/2. (C, H, W) uint8, (H, W) uint8 -> (C, crop, crop), (crop, crop)."""
    dev = generator.device
    u = torch.rand(4, generator=generator, device=dev).tolist()
    s = scale[0] + (scale[1] - scale[0]) * u[0]
    h, w = mask.shape
    size = (max(1, round(h * s)), max(1, round(w * s)))
    img = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    msk = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    ph, pw = max(crop - size[0], 0), max(crop - size[1], 0)
    img = F.pad(img, (0, pw, 0, ph), value=0.0)
    msk = F.pad(msk, (0, pw, 0, ph), value=float(IGNORE_INDEX))
    top = int(u[1] * (img.shape[1] - crop + 1))
    left = int(u[2] * (img.shape[2] - crop + 1))
    img, msk = img[:, top : top + crop, left : left + crop], msk[top : top + crop, left : left + crop]
    if flip and u[3] < 0.5:
        img, msk = img.flip(-1), msk.flip(-1)
    return img, msk


def load_splits(
    cfg: SegmentConfig,
    own_size: bool = False,
    split: dict | None = None,
    parts: tuple[str, ...] = PARTS,
    classes: list[str] | None = None,
) -> tuple[SegmentationSet | None, SegmentationSet | None, SegmentationSet | None, dict]:
    """(train, validation, test, split.json content) for a resolved config; with ``cfg.subset`` the
    training part is its first ``subset`` images (a quick check), the split kept whole.
    ``parts``: the parts read (``eval`` reads the one it scores); Penn-Fudan's photos of another part
    are not decoded, and that part is None. ``classes``: the run's class names (``eval``, ``--resume``), which a
    mask folder's masks are checked against and a COCO file's categories taken by name from, so that
    only the photos of ``parts`` are read (a mask folder's or COCO file's other parts are None);
    without them a mask folder's classes are counted over every part's masks, all read.
    :func:`_splits` says how the parts are made."""
    train, val, test, names = _splits(cfg, own_size, split, parts, classes)
    if cfg.subset and train is not None:
        train = take(train, train.names[: cfg.subset], "train")
    return train, val, test, names


def _splits(
    cfg: SegmentConfig,
    own_size: bool = False,
    split: dict | None = None,
    wanted: tuple[str, ...] = PARTS,
    classes: list[str] | None = None,
) -> tuple[SegmentationSet | None, SegmentationSet | None, SegmentationSet | None, dict]:
    """(train, validation, test, split.json content) for a resolved config; a Penn-Fudan part not in
    ``wanted`` is None, its photos unread, and so is a mask folder's or COCO file's where ``classes``
    (the run's) are given (:func:`~cnnkit.tasks.detect.data.read_parts`).

    Photos (Penn-Fudan, a mask folder): the validation part is carved from the training photos
    (:func:`~cnnkit.data.pennfudan.carve_validation`, the same for every task); train and validation
    are shrunk to ``cfg.max_side`` as training sees them, the test photos kept at their own size
    (they are scored as ``predict`` answers: :func:`~cnnkit.tasks.segment.evaluate.evaluate` with
    ``max_side``). ``own_size``: every split at the photos' own size (what ``eval`` scores).
    ``split``: photos' names as a run's split.json has them (:func:`~cnnkit.engine.runfolder.read_split`),
    taken instead of splitting the data afresh. A VOC folder with ``ImageSets/Segmentation`` lists
    is split by them (:func:`~cnnkit.data.segmentation.voc_split`; the split's ``source`` says which
    lists), another folder by the seeded draw detect and instance make of a folder, and a COCO file's
    objects are painted as classes (:func:`~cnnkit.data.segmentation.coco_segmentation`) on the split
    they draw from it (both :func:`~cnnkit.tasks.detect.data.photo_split`). Digit scenes have their
    own validation scenes, all of one size.
    """
    from cnnkit.data.pennfudan import carve_validation, pennfudan_root, pennfudan_split
    from cnnkit.data.segmentation import (
        coco_segmentation,
        digit_segmentation,
        folder_photos,
        mask_folder,
        pennfudan_segmentation,
        voc_split,
    )
    from cnnkit.tasks.detect.data import photo_split, read_parts, scored_names

    side = None if own_size else cfg.max_side
    if cfg.data == "pennfudan":
        parts = carve_validation(split or pennfudan_split(pennfudan_root(cfg.data_dir)))
        train, val, test = (  # with --subset only the training photos kept are decoded
            pennfudan_segmentation(k, cfg.data_dir, s, limit, names=parts[k]) if k in wanted else None
            for k, s, limit in (("train", side, cfg.subset or None), ("val", side, None), ("test", None, None))
        )
        return train, val, test, parts
    if cfg.data == "digits":
        kw = dict(canvas=cfg.canvas, data_dir=cfg.data_dir, seed=cfg.seed)
        n_eval = max(2, cfg.scenes // 4)
        sets = [digit_segmentation(s, n, **kw) for s, n in (("train", cfg.scenes), ("val", n_eval), ("test", n_eval))]
        return (*sets, {s.meta["split"]: s.meta for s in sets})
    from pathlib import Path

    from cnnkit.data.voc import voc_classes, with_source

    path = Path(cfg.data).expanduser()
    if path.is_file():  # a COCO instances file, its objects' masks painted as classes
        from cnnkit.data.detection import load_coco

        voc_classes(cfg.voc_names, cfg.data)  # refused: a COCO file names its categories
        read = read_parts(wanted, classes)
        # the run's split and classes (eval, --resume): the photos of the parts read alone, each category by its name
        coco = load_coco(
            path,
            masks=True,
            names=None if split is None or classes is None else scored_names(split, read),
            classes=None if classes is None else list(classes)[1:],  # the run's, less the background
        )
        parts = carve_validation(split or photo_split(coco.names, cfg.seed, path))  # as detect and instance split it
        train, val, test = (
            coco_segmentation(coco, parts[k], s, k) if k in read else None
            for k, s in (("train", side), ("val", side), ("test", None))
        )
        return train, val, test, parts
    if not path.is_dir():
        raise CnnkitError(
            "--data is pennfudan, digits, a folder of images/ + masks/ (or a VOC folder) or a COCO JSON file. "
            f"Received: --data {cfg.data}"
        )
    # the run's names where given, else a VOC folder's official lists, else the seeded draw of the
    # folder's photos that detect and instance make of a folder (photo_split)
    read = read_parts(wanted, classes)
    counted = classes is None
    classes = voc_classes(cfg.voc_names, cfg.data) if counted else list(classes)
    official = None if split else voc_split(cfg.data)
    if official:
        split = official[0]
    elif split is None:
        split = photo_split(folder_photos(cfg.data), cfg.seed, path)
    parts = with_source(carve_validation(split), official)
    # a new run: one read of every photo, the classes counted over every mask, test photos' too (a class
    # may have photos in the test split only); eval, --resume: the run's classes, and the photos of the
    # parts read alone.
    # The test photos are kept at their own size.
    data = mask_folder(
        cfg.data,
        num_classes=len(classes) if classes else None,
        seed=cfg.seed,
        max_side=side,
        classes=classes,
        names=scored_names(parts, read),
        own_size=parts["test"],
    )
    return (*(take(data, parts[k], k) if k in read else None for k in PARTS), parts)


def take(data: SegmentationSet, names: list[str], part: str) -> SegmentationSet:
    """The images of ``data`` with these ``names``, in that order, as the split ``part``."""
    from dataclasses import replace

    where = {n: i for i, n in enumerate(data.names)}
    idx = [where[n] for n in names]

    def pick(xs):
        if xs is None:
            return None
        return xs[torch.tensor(idx, dtype=torch.long)] if isinstance(xs, torch.Tensor) else [xs[i] for i in idx]

    return replace(
        data,
        images=pick(data.images),
        masks=pick(data.masks),
        names=list(names),
        instances=pick(data.instances),
        name=f"{data.name.rsplit('/', 1)[0]}/{part}",
        meta={**data.meta, "split": part},
    )


def _channels(data: SegmentationSet) -> int:
    return data.images.shape[1] if isinstance(data.images, torch.Tensor) else data.images[0].shape[0]


def input_stats(cfg: SegmentConfig, train: SegmentationSet) -> tuple[list[float], list[float]]:
    """The input normalisation: the mean/std the backbone's published weights were trained with when
    ``cfg`` starts from them (their frozen batch norms expect those inputs), else :func:`channel_stats`."""
    from cnnkit.models.weights import weights_stats

    stats = weights_stats(cfg.model, encoder_weights(cfg.weights), _channels(train))
    return (list(stats[0]), list(stats[1])) if stats else channel_stats(train)

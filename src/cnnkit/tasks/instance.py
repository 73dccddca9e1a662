"""Instance segmentation as an engine task: the detection task plus a Mask R-CNN-style mask loss.

:class:`InstanceTask` extends :class:`~cnnkit.tasks.detect.DetectTask`: the same batches and
augmentation (each instance mask rides along as an extra image channel through ``hflip`` and
``scale_jitter``, so it moves exactly with the pixels), the same detector loss
(:func:`~cnnkit.models.detection.detector_loss` through `DetectTask.detector_parts`, the detection task's own settings), plus the mask head's per-pixel
binary cross-entropy on its 28 x 28 logits for each ground-truth box and ``roi_jitter`` jittered
copies of it (IoU >= 0.5 with their box: the positive RoIs Mask R-CNN trains on). The target of a
RoI is its instance mask RoIAligned to 28 x 28 and thresholded at 0.5. Validation is COCO mask AP
(pycocotools ``segm``) with the masks pasted into the original images; box AP beside it.

``cnnkit instance train --data pennfudan|digits`` (see :func:`train`) runs it through
:func:`cnnkit.engine.fit`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.detection import colour_jitter, hflip, letterbox, pad_targets, scale_jitter
from cnnkit.errors import CnnkitError
from cnnkit.metrics.detection import coco_evaluate
from cnnkit.metrics.instance import mask_evaluate
from cnnkit.models.instance import MaskDetector, paste_masks
from cnnkit.ops import box_iou_elementwise, roi_align
from cnnkit.tasks.detect import (DetectConfig, DetectionSet, DetectTask, build_detector, draw_detections, load_run_model,
                     new_detector)

MASK_SIZE = 28


@dataclass
class InstanceSet(DetectionSet):
    """A :class:`DetectionSet` whose boxes each have an instance mask."""
    masks: torch.Tensor | None = None          # (N, M, S, S) uint8 0/1, letterboxed, row j = box j
    originals: list[torch.Tensor] = field(default_factory=list)   # N x (m_i, H_i, W_i) bool, original pixels

    def mask_targets(self) -> list[dict[str, torch.Tensor]]:
        """Ground truth per image in original pixels: {"masks" (m, H, W) bool, "labels" (m,)}."""
        return [{"masks": o, "labels": lab[lab >= 0]} for o, lab in zip(self.originals, self.labels)]


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool -> its tight half-open box (4,) x1, y1, x2, y2 (zeros when empty)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return torch.zeros(4)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def from_instances(images, instances, labels, classes: list[str], size: int, names: list[str] | None = None,
                   fill: float = 0.0) -> InstanceSet:
    """Images (C, H, W) uint8 with instance-id maps (H, W) (0 none, 1..n) -> an :class:`InstanceSet`.

    ``labels[i]`` gives the class of ids 1..n of image i in order (a tensor, or None for class 0).
    Each id's box is tight around its mask; images are letterboxed to ``size`` and each mask with
    them (bilinear, >= 0.5). Ids absent from the map are skipped.
    """
    if len(images) == 0:
        raise CnnkitError("empty dataset: no images to segment")
    xs, boxes, labs, scales, small, originals = [], [], [], [], [], []
    for i, (img, inst) in enumerate(zip(images, instances)):
        if tuple(inst.shape) != tuple(img.shape[1:]):
            raise CnnkitError(f"image {names[i] if names else i}: instance map {tuple(inst.shape)} is not the "
                              f"image's size {tuple(img.shape[1:])}")
        ids = [int(v) for v in torch.unique(inst) if v > 0]
        m = torch.stack([inst == v for v in ids]) if ids else torch.zeros(0, *inst.shape, dtype=torch.bool)
        lab = labels[i] if labels is not None and labels[i] is not None else torch.zeros(int(inst.max()), dtype=torch.int64)
        lab = torch.as_tensor([int(lab[v - 1]) for v in ids], dtype=torch.int64)
        b = torch.stack([mask_box(k) for k in m]) if ids else torch.zeros(0, 4)
        x, sb, scale = letterbox(img, b, size, fill)
        nh, nw = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[2] * scale))
        sm = torch.zeros(len(ids), size, size, dtype=torch.uint8)
        if ids:
            sm[:, :nh, :nw] = (F.interpolate(m[None].float(), size=(nh, nw), mode="bilinear",
                                             align_corners=False)[0] >= 0.5).to(torch.uint8)
        xs.append((x * 255).round().to(torch.uint8))
        boxes.append(sb)
        labs.append(lab)
        scales.append(scale)
        small.append(sm)
        originals.append(m)
    b, lab = pad_targets(boxes, labs)
    masks = torch.zeros(len(xs), b.shape[1], size, size, dtype=torch.uint8)
    for i, sm in enumerate(small):
        masks[i, :len(sm)] = sm
    return InstanceSet(torch.stack(xs), b, lab, torch.tensor(scales), list(classes),
                       list(names) if names else [f"image{i:05d}" for i in range(len(xs))], masks, originals)


def jitter_boxes(boxes: torch.Tensor, copies: int, g: torch.Generator, shift: float = 0.1,
                 scale: float = 0.15, min_iou: float = 0.5, size: tuple[int, int] | None = None
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


def roi_mask_targets(masks: torch.Tensor, rois: torch.Tensor, size: int = MASK_SIZE) -> torch.Tensor:
    """Instance masks (K, H, W) (0/1, float or uint8) and one box each (K, 4) -> (K, size, size) 0/1 float:
    each mask RoIAligned over its box (as the head's features are) and thresholded at 0.5."""
    if len(rois) == 0:
        return masks.new_zeros(0, size, size, dtype=torch.float32)
    k = len(rois)
    idx = torch.arange(k, device=rois.device, dtype=rois.dtype)[:, None]
    crop = roi_align(masks[:, None].float(), torch.cat([idx, rois], 1), size, 1.0, sampling_ratio=2, aligned=True)
    return (crop[:, 0] >= 0.5).float()


@dataclass
class InstanceTask(DetectTask):
    roi_jitter: int = 2                        # jittered copies of each box the mask head trains on
    mask_weight: float = 1.0                   # the mask loss's weight beside the detector's
    name: str = "instance"
    metric: str = "mask_AP"

    def _batch(self, data: InstanceSet, idx, generator, train):
        idx = idx.to(data.images.device)
        x = data.images[idx].float().div_(255)
        c = x.shape[1]
        boxes, labels = data.boxes[idx], data.labels[idx]
        masks = data.masks[idx].float()                                   # (B, M, S, S)
        if train:
            if self.flip > 0:                       # masks as extra channels move with the pixels
                xm, boxes, labels = hflip(torch.cat([x, masks], 1), boxes, labels, generator, self.flip)
                x, masks = xm[:, :c], xm[:, c:]
            if self.scale is not None:              # the jitter pads with `fill`: shift masks by it
                xm, boxes, labels = scale_jitter(torch.cat([x, masks + self.fill], 1), boxes, labels,
                                                 generator, self.scale, self.fill)
                x, masks = xm[:, :c], xm[:, c:] - self.fill
            if self.colour > 0:
                x, boxes, labels = colour_jitter(x, boxes, labels, generator, self.colour, self.colour, self.colour)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rois = []
        for i in range(len(idx)):                   # per image: (RoI boxes, their labels, their 28x28 targets)
            keep = torch.nonzero(labels[i] >= 0).flatten()
            copies = self.roi_jitter if train else 0
            b, src = jitter_boxes(boxes[i, keep], copies, generator, size=tuple(x.shape[-2:]))
            rois.append((b, labels[i, keep][src], roi_mask_targets(masks[i, keep][src], b)))
        return x, boxes, labels, rois

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, boxes, labels, rois = batch
        out = model(x, [r[0] for r in rois])
        parts = self.detector_parts(out, boxes, labels)
        roi_labels = torch.cat([r[1] for r in rois])
        targets = torch.cat([r[2] for r in rois])
        if len(targets):
            net = model.module if hasattr(model, "module") else model
            mask = F.binary_cross_entropy_with_logits(net.select(out["masks"], roi_labels), targets)
        else:
            mask = out["masks"].sum() * 0
        parts["mask"] = mask
        parts["loss"] = parts["loss"] + self.mask_weight * mask
        n = torch.tensor(float(x.shape[0]), device=x.device)
        logged = {k: v.detach() * n for k, v in parts.items()}
        return parts["loss"], {**logged, "n": n}

    def evaluate(self, model: nn.Module, data: InstanceSet) -> dict[str, float]:
        """COCO mask AP / AP50 / AP75 (pycocotools segm) in original pixels, and box AP beside it."""
        predictions = predict_instances(model, data, self.eval_batch_size, **self.decode_args)
        masks = [{**p, "scores": p["mask_scores"]} for p in predictions]      # masks ranked by score x maskness
        m = mask_evaluate(masks, data.mask_targets(), classes=data.classes)
        b = coco_evaluate(predictions, data.targets(), classes=data.classes)
        return {"mask_AP": m["AP"], "mask_AP50": m["AP50"], "mask_AP75": m["AP75"], "mask_AR100": m["AR100"],
                "box_AP": b["AP"], "box_AP50": b["AP50"]}

    def describe(self, model: MaskDetector) -> dict:
        det = super().describe(model)
        return {**det, "task": "instance", "mask_convs": len(model.mask_head.fcn) // 2,
                "mask_width": model.mask_head.logits.in_channels, "class_agnostic": model.class_agnostic}

    def summary(self, model: MaskDetector) -> str:
        params = sum(p.numel() for p in model.parameters())
        head = sum(p.numel() for p in model.mask_head.parameters())
        return (f"mask detector: {self.info.get('backbone', '?')} pyramid at strides {model.strides} -> "
                f"FPN-lite -> anchor-free head + mask head (RoIAlign 14x14 at stride {model.mask_stride}, "
                f"{len(model.mask_head.fcn) // 2} convs, 28x28 masks, {head / 1e6:.2f} M), {len(self.classes)} "
                f"classes, {params / 1e6:.2f} M parameters")


@torch.no_grad()
def predict_instances(model: nn.Module, data: DetectionSet, batch_size: int = 16, sizes=None, **decode_args
                      ) -> list[dict[str, torch.Tensor]]:
    """Detections with masks for every image of ``data``, in its original pixels (model in eval mode,
    restored): {"boxes", "scores", "labels", "masks" (k, H, W) bool, "mask_scores" (what ranks the
    masks: score x maskness)}. ``sizes``: each original (H, W)
    (default: the sizes of ``data.originals``)."""
    net = model.module if hasattr(model, "module") else model
    sizes = sizes or [tuple(o.shape[-2:]) for o in data.originals]
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    out = []
    try:
        for i in range(0, len(data), batch_size):
            x = data.images[i:i + batch_size].to(device).float().div_(255)
            for j, det in enumerate(net.predict(x, **decode_args)):
                s, size = float(data.scales[i + j]), sizes[i + j]
                boxes = det["boxes"].cpu() / s
                out.append({"boxes": boxes, "scores": det["scores"].cpu(), "labels": det["labels"].cpu(),
                            "mask_scores": det["mask_scores"].cpu(),
                            "masks": paste_masks(det["masks"].cpu(), boxes, size)})
    finally:
        net.train(was)
    return out


# ----------------------------------------------------------------------------- building and loading
def new_mask_detector(cfg: "InstanceConfig", classes: list[str], in_channels: int) -> tuple[MaskDetector, dict]:
    strides = tuple(getattr(cfg, "strides", ()) or (8, 16, 32))
    det, info = new_detector(cfg.backbone, classes, in_channels, cfg.image_size, cfg.weights, strides, cfg.width,
                             cfg.head_convs, bool(cfg.separate_towers))
    model = MaskDetector(det, cfg.mask_width, cfg.mask_convs)
    return model, {**info, "mask_width": cfg.mask_width, "mask_convs": cfg.mask_convs}


def load_mask_detector(path: str | os.PathLike, device: str = "cpu") -> MaskDetector:
    """A trained mask detector from a run folder or its model.safetensors (eval mode; ``.info`` = metadata)."""
    def build(info: dict) -> MaskDetector:
        try:
            return MaskDetector(build_detector(info), int(info["mask_width"]), int(info["mask_convs"]),
                                bool(info["class_agnostic"]))
        except KeyError as exc:
            raise CnnkitError(f"checkpoint metadata lacks field {exc.args[0]!r}: not a `cnnkit instance train` "
                              "model") from None

    return load_run_model(path, "instance", "an instance-segmentation model", build, device)


# ----------------------------------------------------------------------------- the training recipe
@dataclass
class InstanceConfig(DetectConfig):
    # what differs from `cnnkit detect train` (every other field is DetectConfig's, same meaning)
    image_size: int | None = None       # None: 320 photos (a 20-minute CPU budget), 96 digits
    epochs: int | None = None           # None: 40 photos (mask AP 0.406 / 0.459 / 0.521 at 14 / 24 / 40;
                                        # channels-last made 40 fit in 18.5 min), 10 digits
    batch_size: int = 8                 # global batch (pinned here, with lr: the measured recipe)
    lr: float = 1e-3                    # peak learning rate
    scenes: tuple[int, int] = (600, 200)   # digits: train and test scenes
    mask_convs: int = 4                 # 3x3 convs of the mask head (the paper: 4)
    mask_width: int = 64                # their channels (the paper: 256)
    roi_jitter: int = 2                 # jittered copies of each ground-truth box the mask head trains on
    mask_weight: float = 1.0            # weight of the mask loss beside the detector's
    freeze_stride: int = 4              # pretrained backbone modules up to this stride stay frozen (BN in eval
                                        # mode too), as detectron2 freezes the stem and res2; 0: train all
    val_every: int | None = None        # mask AP on the test split after every k-th epoch (None: 0, none
                                        # until the end; on a 2-core CPU each pass costs ~30 s of the budget)

    def resolved(self) -> "InstanceConfig":
        photos = self.data != "digits"
        cfg = replace(self, image_size=self.image_size if self.image_size is not None else (320 if photos else 96),
                      epochs=self.epochs if self.epochs is not None else (40 if photos else 10),
                      backbone=self.backbone or ("efficientnet_lite0" if photos else "resnet18"),
                      val_every=self.val_every if self.val_every is not None else 0)
        return DetectConfig.resolved(cfg)


def frozen_stem(features: nn.Module, stride: int) -> list[nn.Module]:
    """The trunk modules of a :func:`~cnnkit.models.features.create_features` pyramid whose output stride
    is at most ``stride`` (the stem and the stride-4 blocks for 4): what fine-tuning keeps frozen."""
    from cnnkit.models.features import _probe   # each trunk module's output stride, by a 64x64 probe

    trunk = getattr(features, "_trunk", None)
    if stride < 2 or trunk is None:
        return []
    strides, _ = _probe(features.backbone, trunk)
    return [features.backbone.get_submodule(n) for n, s in zip(trunk, strides) if s <= stride]


def config_from_dict(d: dict) -> InstanceConfig:
    d = dict(d)
    validate = d.pop("validate", False)      # runs from before val_every: validate (bool) = every epoch
    return InstanceConfig(**{**d, "scenes": tuple(d["scenes"]),
                             "separate_towers": d.get("separate_towers", False),   # runs from before the option
                             "val_every": d.get("val_every", 1 if validate else 0)})


def load_instance_data(cfg: InstanceConfig, split: dict | None = None) -> tuple[InstanceSet, InstanceSet, dict]:
    """(train, test, split) of a resolved config: Penn-Fudan's instances on its fixed split, or digit scenes."""
    if cfg.data == "digits":
        from cnnkit.data.scenes import digit_scenes

        sets = []
        for part, n in zip(("train", "test"), cfg.scenes):
            s = digit_scenes(part, n, cfg.image_size, cfg.data_dir, cfg.seed)
            sets.append(from_instances(s.images, s.instances, s.labels, s.classes, cfg.image_size,
                                       [f"scene{i:05d}" for i in range(n)]))
        tr, te = sets
        split = {"train": tr.names, "test": te.names}
    elif cfg.data == "pennfudan":
        from cnnkit.data.pennfudan import pennfudan_root, pennfudan_split
        from cnnkit.data.segmentation import pennfudan_segmentation

        root = pennfudan_root(cfg.data_dir)
        if split is not None and split != pennfudan_split(root):
            raise CnnkitError("the run's split.json is not Penn-Fudan's fixed split; this run was not written by "
                              "`cnnkit instance train --data pennfudan`")
        sets = []
        for part in ("train", "test"):
            s = pennfudan_segmentation(part, cfg.data_dir)
            sets.append(from_instances(s.images, s.instances, None, ["person"], cfg.image_size, s.names))
        tr, te = sets
        split = {"train": tr.names, "test": te.names}
    else:
        raise CnnkitError(f"--data {cfg.data!r}: instance segmentation reads pennfudan or digits")
    if cfg.subset:
        k = cfg.subset
        tr = InstanceSet(tr.images[:k], tr.boxes[:k], tr.labels[:k], tr.scales[:k], tr.classes, tr.names[:k],
                         tr.masks[:k], tr.originals[:k])
    return tr, te, split


def _to(s: InstanceSet, device) -> InstanceSet:
    return replace(s, images=s.images.to(device), boxes=s.boxes.to(device), labels=s.labels.to(device),
                   masks=s.masks.to(device))


def train(cfg: InstanceConfig, out, resume: bool = False, quiet: bool = False):
    """Train a mask detector by ``cfg`` into the run folder ``out`` through :func:`cnnkit.engine.fit`."""
    from pathlib import Path

    from rich.console import Console

    from cnnkit.engine import Data, Phase, Plan, Setup, fit
    from cnnkit.engine.distributed import distributed
    from cnnkit.train.trainer import lr_at, make_optimizer
    from cnnkit.tasks.detect import run_config, run_data

    out = Path(out)
    cfg = run_config(cfg, out, resume, config_from_dict)
    if cfg.roi_jitter < 0 or cfg.freeze_stride < 0 or cfg.mask_convs < 0 or cfg.mask_width < 1 or cfg.mask_weight < 0:
        raise CnnkitError(f"--roi-jitter, --freeze-stride and --mask-convs must be >= 0, --mask-width >= 1, --mask-weight >= 0; "
                          f"received {cfg.roi_jitter}, {cfg.freeze_stride}, {cfg.mask_convs}, {cfg.mask_width}, {cfg.mask_weight}")
    with distributed(cfg.device) as d:
        train_set, test_set = run_data(cfg, out, resume, d, load_instance_data)
        torch.manual_seed(cfg.seed)
        channels = train_set.images.shape[1]
        model, info = new_mask_detector(cfg, train_set.classes, channels)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        info["config"] = cfg.to_dict()
        task = InstanceTask(train_set.classes, cfg.batch_size, info=info, val_name="test",
                            fill=0.5 if channels == 3 else 0.0, flip=0.5 if cfg.data != "digits" else 0.0,
                            roi_jitter=cfg.roi_jitter, mask_weight=cfg.mask_weight, cls_loss=cfg.cls_loss,
                            box_weight=cfg.box_weight, channels_last=cfg.channels_last)
        def begin(m: MaskDetector) -> Setup:
            frozen = frozen_stem(m.detector.features, cfg.freeze_stride) if cfg.weights else []
            for module in frozen:
                module.requires_grad_(False)
            return Setup(make_optimizer(m, cfg), schedule=lambda step, total: lr_at(step, total, cfg), frozen=frozen)

        plan = Plan([Phase(cfg.epochs, begin)], seed=cfg.seed, ema=cfg.ema, val_every=cfg.val_every)
        run = fit(task, model, Data(_to(train_set, d.device), _to(test_set, d.device)), plan, out, resume=resume,
                  quiet=quiet, dist=d, config=cfg.to_dict(), command="cnnkit instance train")
        final = task.evaluate(run.model, _to(test_set, d.device))
        Console(quiet=quiet or not d.main).print(
            f"done: test mask AP {final['mask_AP']:.3f} (AP50 {final['mask_AP50']:.3f}), box AP {final['box_AP']:.3f} "
            f"in {run.seconds:.1f} s -> {out}  (`cnnkit instance eval {out}`)")
        return run, final


def evaluate_run(run, data_dir: str | None = None) -> dict:
    """``cnnkit instance eval``: the run's model on its test split -> {"mask_AP", "mask_AP50", ..., "box_AP"}."""
    import json

    from cnnkit.train.checkpoint import resolve

    model = load_mask_detector(run)
    cfg = config_from_dict(model.info["config"])
    cfg = replace(cfg, subset=0, data_dir=data_dir or cfg.data_dir)
    split_file = resolve(run).parent / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() and cfg.data != "digits" else None
    _, test_set, _ = load_instance_data(cfg, split)
    task = InstanceTask(model.info["classes"], info=model.info, decode_args=model.info.get("decode", {}))
    m = task.evaluate(model, test_set)
    return {**m, "images": len(test_set), "data": cfg.data, "split": "test"}


@torch.no_grad()
def predict_files(model: MaskDetector, paths, out_dir, score: float = 0.3) -> list[dict]:
    """Each image file -> ``out_dir/<stem>.png``: the image with its instance masks (one colour each)
    and boxes drawn; returns per image {"image", "png", "boxes", "scores", "labels", "mask_scores", "mask_pixels"}."""
    from pathlib import Path

    from cnnkit.data.detection import read_image

    size = int(model.info["input_size"][-1])
    c = model.normalise.mean.shape[1]
    classes = list(model.info["classes"])
    images = [read_image(Path(p), channels=c) for p in paths]     # a missing file fails before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for p, img in zip(paths, images):
        data = from_instances([img], [torch.zeros(img.shape[1:], dtype=torch.uint8)], None, classes, size)
        det = predict_instances(model, data, 1, sizes=[tuple(img.shape[1:])], **model.info.get("decode", {}))[0]
        keep = det["scores"] >= score
        det = {k: v[keep] for k, v in det.items()}
        h, w = img.shape[1:]
        det["boxes"] = det["boxes"].clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
        png = out_dir / f"{Path(p).stem}.png"
        shown = {"boxes": det["boxes"].tolist(), "scores": det["scores"].tolist(),
                 "labels": [classes[k] for k in det["labels"].tolist()], "mask_scores": det["mask_scores"].tolist()}
        draw_detections(overlay_instances(img, det["masks"]), shown, png)
        results.append({"image": str(p), "png": str(png), **shown,
                        "mask_pixels": det["masks"].flatten(1).sum(1).tolist()})
    return results


def overlay_instances(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 and (k, H, W) bool (best first) -> (3, H, W) uint8 with instance j tinted in
    palette colour j + 1 (:func:`cnnkit.tasks.segment.overlay`); where masks overlap the better one shows."""
    from cnnkit.tasks.segment import overlay

    ids = torch.zeros(image.shape[1:], dtype=torch.int64)
    for j in range(len(masks) - 1, -1, -1):
        ids[masks[j]] = j + 1
    return overlay(image, ids, len(masks) + 1)

"""Detection as an engine task: letterboxed image batches with padded boxes, the detector's loss,
COCO AP on validation, and the deployable detector (normalisation and decoding inside).

:class:`DetectTask` follows :class:`cnnkit.engine.task.Task`: ``batches`` (augmentation that moves
the boxes with the pixels), ``loss``, ``evaluate`` (the same code ``cnnkit detect eval`` runs),
``deployable`` and ``describe`` (metadata from which :func:`load_detector` rebuilds the model).
Data comes in as a :class:`DetectionSet`, built by :func:`from_detections` (Penn-Fudan, COCO, YOLO)
or :func:`from_scenes` (digit scenes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..data.detection import Detections, colour_jitter, hflip, letterbox, pad_targets, scale_jitter
from ..errors import CnnkitError
from ..metrics.detection import coco_evaluate, voc_evaluate
from ..models.detection import Detector, create_detector, decode, detector_loss


@dataclass
class DetectionSet:
    """Images of one square size with their boxes, ready for batching (everything a tensor)."""
    images: torch.Tensor          # (N, C, S, S) uint8, letterboxed
    boxes: torch.Tensor           # (N, M, 4) float xyxy in letterboxed pixels
    labels: torch.Tensor          # (N, M) int64, -1 on padding rows
    scales: torch.Tensor          # (N,) letterbox scale: original pixels = letterboxed / scale
    classes: list[str]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """Ground truth per image in original pixels (what the metrics compare)."""
        out = []
        for b, lab, s in zip(self.boxes, self.labels, self.scales):
            keep = lab >= 0
            out.append({"boxes": b[keep] / s, "labels": lab[keep]})
        return out


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
    return DetectionSet(torch.stack(images), b, lab, torch.tensor(scales), list(d.classes), list(d.names))


def from_scenes(scenes) -> DetectionSet:
    """Digit scenes (:func:`cnnkit.data.scenes.digit_scenes`) as they are: already square, scale 1."""
    b, lab = pad_targets(scenes.boxes, scenes.labels)
    n = len(scenes)
    return DetectionSet(scenes.images, b, lab, torch.ones(n), list(scenes.classes), [f"scene{i:05d}" for i in range(n)])


@dataclass
class DetectTask:
    classes: list[str]
    batch_size: int = 8                        # global batch
    flip: float = 0.5                          # probability of a horizontal flip (0: off)
    scale: tuple[float, float] | None = (0.7, 1.3)   # zoom range of the scale/crop jitter (None: off)
    colour: float = 0.2                        # brightness/contrast/saturation jitter (0: off)
    fill: float = 0.0                          # value of the padding the jitter brings in ([0, 1])
    eval_batch_size: int = 16
    max_batches: int | None = None             # per epoch (a smoke test's couple of batches)
    decode_args: dict = field(default_factory=dict)   # score_threshold, nms_threshold, ... of decode
    info: dict = field(default_factory=dict)   # checkpoint metadata: backbone, dataset, config
    name: str = "detect"
    metric: str = "AP"

    def batches(self, data: DetectionSet, generator: torch.Generator, train: bool = True):
        n, b = len(data), self.batch_size
        order = torch.randperm(n, generator=generator, device=generator.device) if train else \
            torch.arange(n, device=generator.device)
        chunks = [c for c in order.split(b) if len(c) >= 2 or not train]
        if train and n >= b:
            chunks = [c for c in chunks if len(c) == b]
        chunks = chunks[:self.max_batches] if self.max_batches else chunks
        return _Batches(chunks, lambda idx: self._batch(data, idx, generator, train))

    def _batch(self, data: DetectionSet, idx, generator, train):
        idx = idx.to(data.images.device)
        x = data.images[idx].float().div_(255)
        boxes, labels = data.boxes[idx], data.labels[idx]
        if train:
            if self.flip > 0:
                x, boxes, labels = hflip(x, boxes, labels, generator, self.flip)
            if self.scale is not None:
                x, boxes, labels = scale_jitter(x, boxes, labels, generator, self.scale, self.fill)
            if self.colour > 0:
                x, boxes, labels = colour_jitter(x, boxes, labels, generator, self.colour, self.colour, self.colour)
        return x, boxes, labels

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, boxes, labels = batch
        parts = detector_loss(model(x), boxes, labels)
        n = torch.tensor(float(x.shape[0]), device=x.device)
        logged = {k: v.detach() * n for k, v in parts.items()}
        return parts["loss"], {**logged, "n": n}

    def evaluate(self, model: nn.Module, data: DetectionSet) -> dict[str, float]:
        """COCO AP / AP50 / AP75 / AR100 (and VOC AP@0.5) in original pixels."""
        predictions = predict_set(model, data, self.eval_batch_size, **self.decode_args)
        targets = data.targets()
        m = coco_evaluate(predictions, targets, classes=data.classes)
        voc = voc_evaluate(predictions, targets, len(data.classes))
        return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "AR100": m["AR100"], "VOC_AP50": voc["mAP"]}

    def deployable(self, model: nn.Module) -> nn.Module:
        return model

    def describe(self, model: Detector) -> dict:
        return {**self.info, "task": "detect", "classes": list(self.classes),
                "num_classes": model.num_classes, "mean": model.normalise.mean.flatten().tolist(),
                "std": model.normalise.std.flatten().tolist(), "decode": dict(self.decode_args)}

    def summary(self, model: Detector) -> str:
        params = sum(p.numel() for p in model.parameters())
        return (f"detector: {self.info.get('backbone', type(model.features).__name__)} pyramid at strides "
                f"{model.strides} -> FPN-lite -> anchor-free head, {len(self.classes)} classes, "
                f"{params / 1e6:.2f} M parameters")


class _Batches:
    """An epoch's batches, made one at a time (augmentation draws happen in order)."""

    def __init__(self, chunks, make):
        self.chunks, self.make = chunks, make

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        return (self.make(idx) for idx in self.chunks)


@torch.no_grad()
def predict_set(model: nn.Module, data: DetectionSet, batch_size: int = 16, **decode_args
                ) -> list[dict[str, torch.Tensor]]:
    """Detections for every image of ``data`` in its original pixels (model in eval mode, restored)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for i in range(0, len(data), batch_size):
            x = data.images[i:i + batch_size].to(device).float().div_(255)
            for det, s in zip(decode(model(x), tuple(x.shape[-2:]), **decode_args), data.scales[i:i + batch_size]):
                out.append({"boxes": det["boxes"].cpu() / s, "scores": det["scores"].cpu(), "labels": det["labels"].cpu()})
    finally:
        model.train(was)
    return out


@torch.no_grad()
def predict_images(model: nn.Module, images: list[torch.Tensor], size: int, classes: list[str], **decode_args) -> list[dict]:
    """uint8 (C, H, W) images of any size -> per image {"boxes" (original pixels), "scores", "labels" (names)}."""
    c = model.normalise.mean.shape[1]
    results = []
    for img in images:
        if img.shape[0] != c:
            img = img[:1] if c == 1 else img.expand(c, -1, -1)
        x, _, scale = letterbox(img, torch.zeros(0, 4), size)
        det = predict_set(model, DetectionSet((x[None] * 255).round().to(torch.uint8), torch.zeros(1, 1, 4),
                                              torch.full((1, 1), -1), torch.tensor([scale]), classes), 1, **decode_args)[0]
        h, w = img.shape[1:]
        boxes = det["boxes"].clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
        results.append({"boxes": boxes.tolist(), "scores": det["scores"].tolist(),
                        "labels": [classes[k] for k in det["labels"].tolist()]})
    return results


def build_detector(info: dict) -> Detector:
    """The (untrained) detector a checkpoint's metadata describes."""
    try:
        model = create_detector(info["backbone"], len(info["classes"]), weights=None,
                                in_channels=int(info["in_channels"]), out_strides=tuple(info["out_strides"]),
                                width=int(info["width"]))
    except KeyError as exc:
        raise CnnkitError(f"checkpoint metadata lacks field {exc.args[0]!r}: not a `cnnkit detect train` model") from None
    mean, std = info.get("mean"), info.get("std")
    if mean is not None:
        model.normalise.mean.copy_(torch.tensor(mean)[None, :, None, None])
        model.normalise.std.copy_(torch.tensor(std)[None, :, None, None])
    return model


def load_detector(path: str | os.PathLike, device: str = "cpu") -> Detector:
    """A trained detector from a run folder or its model.safetensors (eval mode; ``.info`` = metadata)."""
    from safetensors.torch import load_file

    from ..train.checkpoint import read_info, resolve

    file = resolve(path)
    info = read_info(file)
    if info.get("task") != "detect":
        raise CnnkitError(f"{file} is not a detection model (task {info.get('task', 'classify')!r}); "
                          "give a run folder written by `cnnkit detect train`")
    model = build_detector(info)
    model.load_state_dict(load_file(str(file)))
    model.info = info
    return model.to(device).eval()


def new_detector(backbone: str, classes: list[str], in_channels: int, size: int, weights: str | None = None,
                 out_strides=(8, 16, 32), width: int = 64) -> tuple[Detector, dict]:
    """A fresh detector and the metadata that rebuilds it (what ``describe`` stores)."""
    model = create_detector(backbone, len(classes), weights=weights, in_channels=in_channels,
                            out_strides=out_strides, width=width)
    info = {"backbone": backbone, "in_channels": in_channels, "out_strides": list(out_strides),
            "width": width, "input_size": [in_channels, size, size], "weights": weights}
    return model, info

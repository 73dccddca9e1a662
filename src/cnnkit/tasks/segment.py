"""Semantic segmentation as an engine task: image + mask batches (random scale, crop and flip for
photos), per-pixel cross-entropy ignoring 255, mIoU / pixel accuracy / boundary IoU, and the
deployable :class:`Segmenter` (normalisation and class names inside).

:class:`SegmentTask` follows :class:`cnnkit.engine.task.Task`; its validation is :func:`evaluate`,
the function ``cnnkit segment eval`` runs too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.detection import colour_jitter
from cnnkit.data.segmentation import IGNORE_INDEX, SegmentationSet
from cnnkit.errors import CnnkitError
from cnnkit.metrics.segmentation import SegmentationMeter
from cnnkit.train.checkpoint import Classifier
from cnnkit.tasks.classify import _Batches  # an epoch's batches made one at a time: the same for every task


class Segmenter(Classifier):
    """A segmentation network with its input normalisation: float (B, C, H, W) in [0, 1] -> logits
    (B, K, H, W). The classifier's wrapper (same buffers) with a per-pixel ``predict``; attributes
    ``net``, ``classes``, ``config`` (rebuilds ``net``); ``input_size`` is (C,): any H, W.

    In eval mode it answers by its test-time procedure: the image resized by ``test_scale`` (the
    log-probabilities resized back to (H, W)), and with ``tta="flip"`` the probabilities of the image and
    of its mirror image (mirrored back) averaged. ``without_tta()`` turns both off (per-epoch validation)."""

    def __init__(self, net: nn.Module, mean, std, classes: list[str], tta: str = "", test_scale: float = 1.0):
        if tta not in ("", "flip"):
            raise CnnkitError(f"a segmenter's test-time augmentation is '' or 'flip'. Received: tta={tta!r}")
        if not test_scale > 0:
            raise CnnkitError(f"test_scale must be a positive number. Received: test_scale={test_scale!r}")
        super().__init__(net, mean, std, classes, (len(mean),), tta)
        self.test_scale = float(test_scale)
        self.config = dict(getattr(net, "config", {}))

    @contextlib.contextmanager
    def without_tta(self):
        scale, self.test_scale = self.test_scale, 1.0
        try:
            with super().without_tta():
                yield self
        finally:
            self.test_scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or (not self.tta and self.test_scale == 1.0):
            return self.net((x - self.mean) / self.std)
        from cnnkit.layers.upsample import resize

        h, w = x.shape[-2:]
        if self.test_scale != 1.0:
            size = (max(1, round(h * self.test_scale)), max(1, round(w * self.test_scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.test_scale < 1)
        x = (x - self.mean) / self.std
        probs = self.net(x).float().softmax(1)                             # (B, K, h', w')
        if self.tta == "flip":
            probs = (probs + self.net(x.flip(-1)).float().softmax(1).flip(-1)) / 2
        return resize(probs.clamp_min(1e-12).log(), (h, w), "bilinear")    # (B, K, H, W)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) floats in [0, 1] -> (B, H, W) int64 class indices."""
        return self(x).argmax(1)

    def describe(self) -> dict:
        return {"task": "segment", "segmenter": self.config, "classes": self.classes,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "tta": self.tta, "test_scale": self.test_scale}

    @classmethod
    def from_info(cls, info: dict) -> "Segmenter":
        """The (untrained) module a checkpoint's metadata describes; load its state dict after."""
        from cnnkit.models.segmentation import create_segmenter

        if info.get("task") != "segment" or "segmenter" not in info:
            raise CnnkitError("this checkpoint is not a segmentation model (no 'segmenter' in its metadata)")
        cfg = dict(info["segmenter"], weights=None)        # the trained weights come from the file
        return cls(create_segmenter(**cfg), info["mean"], info["std"], info["classes"],
                   info.get("tta", ""), info.get("test_scale", 1.0))


def channel_stats(data: SegmentationSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images on [0, 1] (the normalisation a network trains with)."""
    images = data.images if isinstance(data.images, torch.Tensor) else None
    if images is None:
        flat = torch.cat([im.flatten(1) for im in data.images], 1).float().div_(255)   # (C, pixels)
    else:
        flat = images.transpose(0, 1).flatten(1).float().div_(255)
    return flat.mean(1).tolist(), flat.std(1).clamp(min=1e-3).tolist()


def random_scale_crop(image: torch.Tensor, mask: torch.Tensor, crop: int, scale: tuple[float, float],
                      flip: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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
    img, msk = img[:, top:top + crop, left:left + crop], msk[top:top + crop, left:left + crop]
    if flip and u[3] < 0.5:
        img, msk = img.flip(-1), msk.flip(-1)
    return img, msk


@dataclass
class SegmentTask:
    batch_size: int = 8                      # global batch
    crop: int = 256                          # training crop side for photo lists (stacked scenes: whole)
    scale: tuple[float, float] = (0.5, 1.5)  # random rescaling of training photos
    flip: bool = True                        # random horizontal flips of training photos
    jitter: float = 0.0                      # brightness / contrast / saturation jitter of training photos
    boundary_d: int = 3                      # band width (px) of the boundary IoU
    dice: float = 0.0                        # weight of the soft Dice loss added to cross-entropy
    lovasz: float = 0.0                      # weight of the Lovasz-softmax loss added to cross-entropy
    channels_last: bool = False              # NHWC batches (the model's weights too, by the caller)
    eval_batch_size: int = 32                # stacked scenes per evaluation batch (photos: one by one)
    max_batches: int | None = None           # per epoch (a smoke test's couple of batches)
    val_name: str = "val"
    info: dict = field(default_factory=dict)  # checkpoint metadata: data, config, ...
    name: str = "segment"
    metric: str = "mIoU"

    def batches(self, data: SegmentationSet, generator: torch.Generator, train: bool = True):
        """Shuffled (x, y) batches: x float (B, C, h, w) on [0, 1], y int64 (B, h, w) with 255 ignored."""
        n, b = len(data), self.batch_size
        if n < 2:
            raise CnnkitError(f"{data.name} has {n} image(s); training needs at least 2 (batch norm)")
        order = torch.randperm(n, generator=generator, device=generator.device) if train else \
            torch.arange(n, device=generator.device)
        chunks = [order[i * b:(i + 1) * b] for i in range(n // b)] or [order]
        chunks = chunks[:self.max_batches] if self.max_batches else chunks
        return _Batches(chunks, lambda idx: self._batch(data, idx, generator, train))

    def _batch(self, data: SegmentationSet, idx: torch.Tensor, generator, train: bool):
        dev = generator.device
        if isinstance(data.images, torch.Tensor):   # scenes: one size, stacked on the device
            idx = idx.to(data.images.device)
            x = data.images[idx].to(dev).float().div_(255)
            return x.contiguous(memory_format=self._fmt()), data.masks[idx].to(dev).long()
        pairs = [random_scale_crop(data.images[i], data.masks[i], self.crop, self.scale,
                                   self.flip and train, generator) for i in idx.tolist()]
        x = torch.stack([p[0] for p in pairs]).div_(255).to(dev)           # (B, C, crop, crop)
        if train and self.jitter > 0:                                      # the detection task's jitter
            x = colour_jitter(x, None, None, generator, self.jitter, self.jitter, self.jitter)[0]
        y = torch.stack([p[1] for p in pairs]).long().to(dev)              # (B, crop, crop)
        return x.contiguous(memory_format=self._fmt()), y

    def _fmt(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        logits = model(x).float()                                          # (B, K, h, w)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
        valid = y != IGNORE_INDEX
        if self.dice > 0:
            loss = loss + self.dice * dice_loss(logits, y, valid)
        if self.lovasz > 0:
            loss = loss + self.lovasz * lovasz_softmax(logits, y, valid)
        n = torch.tensor(float(x.shape[0]), device=y.device)
        pixel_acc = ((logits.argmax(1) == y) & valid).sum() / valid.sum().clamp(min=1)
        return loss, {"loss": loss.detach() * x.shape[0], "pixel_acc": pixel_acc.detach() * x.shape[0], "n": n}

    def evaluate(self, model: nn.Module, data: SegmentationSet) -> dict[str, float]:
        """mIoU, pixel accuracy and mean boundary IoU (the engine's validation row): the image alone,
        without the model's test-time procedure (the final test in :func:`train` has it)."""
        with (model.without_tta() if hasattr(model, "without_tta") else contextlib.nullcontext()):
            out = evaluate(model, data, self.boundary_d, self.eval_batch_size)
        return {k: float("nan") if out[k] is None else out[k] for k in ("mIoU", "pixel_accuracy", "boundary_iou")}

    def deployable(self, model: nn.Module) -> nn.Module:
        return model                          # the Segmenter is trained as it is deployed

    def describe(self, model: Segmenter) -> dict:
        return {**self.info, **model.describe(), "num_classes": len(model.classes)}

    def summary(self, model: Segmenter) -> str:
        from cnnkit.analysis import summary

        c = model.mean.shape[1]
        return str(summary(model.net, input_size=(c, self.crop, self.crop), batch_size=self.batch_size))


def dice_loss(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - the mean over classes present in the batch of the soft Dice 2|P Y| / (|P| + |Y|) (Milletari et al.
    2016, https://arxiv.org/abs/1606.04797): every class counts alike, however few its pixels.
    (B, K, H, W) logits, (B, H, W) labels, (B, H, W) bool of the pixels that count -> scalar."""
    k = logits.shape[1]
    p = logits.softmax(1) * valid[:, None]                                      # (B, K, H, W)
    onehot = F.one_hot(torch.where(valid, y, 0), k).permute(0, 3, 1, 2) * valid[:, None]
    inter = (p * onehot).sum((0, 2, 3))                                         # (K,)
    total = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    return 1 - (2 * inter[present] / total[present].clamp(min=1e-6)).mean()


def lovasz_softmax(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The Lovasz-softmax loss (Berman, Rannen Triki & Blaschko 2018, https://arxiv.org/abs/1705.08790):
    per class present in the batch, the Lovasz extension of the Jaccard loss 1 - IoU evaluated at the
    pixels' errors |[y = c] - p_c| (sorted, largest first, each weighted by how much it raises 1 - IoU),
    averaged over those classes: a convex surrogate of 1 - IoU itself.
    (B, K, H, W) logits, (B, H, W) labels, (B, H, W) bool of the pixels that count -> scalar."""
    k = logits.shape[1]
    p = logits.softmax(1).permute(0, 2, 3, 1)[valid]                          # (N, K) valid pixels
    labels = y[valid]                                                          # (N,)
    losses = []
    for c in range(k):
        fg = (labels == c).float()                                             # (N,)
        if fg.sum() == 0:
            continue
        errors, order = (fg - p[:, c]).abs().sort(descending=True)
        fg = fg[order]
        inter = fg.sum() - fg.cumsum(0)                                        # |Y \ first i errors|
        union = fg.sum() + (1 - fg).cumsum(0)
        jaccard = 1 - inter / union                                            # 1 - IoU with the first i wrong
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])            # its increments
        losses.append(errors @ grad)
    return torch.stack(losses).mean() if losses else logits.sum() * 0


@torch.no_grad()
def predict_masks(model: nn.Module, images, batch_size: int = 32) -> list[torch.Tensor] | torch.Tensor:
    """Class-index maps for uint8 images: stacked (N, C, H, W) -> (N, H, W) int64, or a list of
    (C, H, W) -> a list of (H, W), one forward per photo. Eval mode (restored afterwards)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if isinstance(images, torch.Tensor):
            return torch.cat([model(images[i:i + batch_size].to(device).float().div_(255)).argmax(1).cpu()
                              for i in range(0, images.shape[0], batch_size)])
        return [model(im[None].to(device).float().div_(255)).argmax(1)[0].cpu() for im in images]
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, data: SegmentationSet, boundary_d: int = 3, batch_size: int = 32) -> dict:
    """:meth:`SegmentationMeter.compute` of ``model`` over ``data`` (at the data's resolution), plus ``images``."""
    meter = SegmentationMeter(data.num_classes, IGNORE_INDEX, boundary_d, data.classes)
    preds = predict_masks(model, data.images, batch_size)
    if isinstance(preds, torch.Tensor):
        meter.update(preds, data.masks.long())
    else:
        for p, m in zip(preds, data.masks):
            meter.update(p, m.long())
    return {**meter.compute(), "images": len(data)}


# ----------------------------------------------------------------------------- pictures of predictions

def palette(n: int) -> torch.Tensor:
    """(n, 3) uint8 colours: 0 black, then PASCAL VOC's colour map (bits of the index spread over R, G, B)."""
    colours = torch.zeros(n, 3, dtype=torch.uint8)
    for c in range(n):
        r = g = b = 0
        v = c
        for shift in range(7, -1, -1):      # bit 3k of the index -> bit (7 - k) of R, 3k + 1 of G, 3k + 2 of B
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        colours[c] = torch.tensor([r, g, b])
    return colours


def overlay(image: torch.Tensor, mask: torch.Tensor, num_classes: int, alpha: float = 0.5) -> torch.Tensor:
    """(C, H, W) uint8 image and (H, W) class map -> (3, H, W) uint8: each class's colour blended in
    (background left as it is)."""
    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    colour = palette(max(num_classes, int(mask.max()) + 1))[mask.long()].permute(2, 0, 1).float()   # (3, H, W)
    fg = (mask > 0)[None]
    blended = torch.where(fg, (1 - alpha) * rgb.float() + alpha * colour, rgb.float())
    return blended.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def predict_image(model: Segmenter, image: torch.Tensor, max_side: int | None = None) -> torch.Tensor:
    """(C, H, W) uint8 photo -> (H, W) int64 class map at the photo's size; with ``max_side`` the
    network sees the photo shrunk so its longer side is at most that, and its logits are resized back."""
    from cnnkit.layers.upsample import resize

    h, w = image.shape[1:]
    x = image[None].float().div_(255)
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                          align_corners=False, antialias=True)
    device = next(model.parameters()).device
    logits = resize(model.eval()(x.to(device)).float(), (h, w), "bilinear")    # (1, K, H, W)
    return logits.argmax(1)[0].cpu()


def write_prediction(image: torch.Tensor, mask: torch.Tensor, num_classes: int, out_dir, stem: str):
    """``out_dir/<stem>.png`` (grey class indices, 0 = background) and ``out_dir/<stem>_overlay.png``."""
    from pathlib import Path

    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if num_classes > 256:
        raise CnnkitError(f"a grey PNG holds class indices up to 255; this model has {num_classes} classes")
    grey, colour = out_dir / f"{stem}.png", out_dir / f"{stem}_overlay.png"
    Image.fromarray(mask.to(torch.uint8).numpy()).save(grey)                  # 2-D uint8: mode L
    Image.fromarray(overlay(image, mask, num_classes).permute(1, 2, 0).numpy()).save(colour)
    return grey, colour


# ----------------------------------------------------------------------------- runs: train, load, eval

DATA_DEFAULTS = {   # what `cnnkit segment train --data X` uses without flags (the recipe the README reports)
    "pennfudan": dict(arch="unet", backbone="efficientnet_lite0", weights="imagenet", finest=4, freeze_bn=True,
                      freeze_to=4, channels_last=True, encoder_lr=0.1, max_side=384, crop=320, batch_size=8,
                      epochs=40, lr=3e-3, jitter=0.3, lovasz=1.0, tta="flip", test_scale=1.5, val_every=4,
                      threads=1),      # one thread, as detection: the measured run (a busy second core stalls every op)
    "digits": dict(arch="unet", backbone="unet", width=8, channels_last=True, canvas=64, scenes=6000,
                   batch_size=8, epochs=10, lr=3e-3, dice=1.0),
    "folder": dict(arch="unet", backbone="efficientnet_lite0", weights="imagenet", finest=4, freeze_bn=True,
                   freeze_to=4, channels_last=True, encoder_lr=0.1, max_side=256, crop=224, batch_size=8,
                   epochs=40, lr=3e-3, jitter=0.3),
}
_SCRATCH = dict(weights=None, freeze_bn=False, freeze_to=0, encoder_lr=1.0)   # what a from-scratch encoder changes


@dataclass
class SegmentConfig:
    data: str = "pennfudan"            # "pennfudan" | "digits" | a folder of images/ + masks/
    data_dir: str | None = None        # holds pennfudan/ and mnist/ (else $CNNKIT_DATA)
    arch: str | None = None            # fcn32s | fcn16s | fcn8s | unet | deeplabv3 (None: the data's default)
    backbone: str | None = None        # zoo name for create_features, or "unet" (U-Net's own encoder)
    weights: str | None = None         # backbone weights: None | "imagenet" | path (the data's default; "none": none)
    output_stride: int = 16            # DeepLab: 16 or 8
    width: int | None = None           # U-Net's own encoder: first-level channels
    finest: int | None = None          # U-Net on a zoo backbone: finest decoder stride, 2 or 4
    freeze_bn: bool | None = None      # keep the encoder's batch norms in eval mode (pretrained statistics)
    encoder_lr: float | None = None    # the encoder's learning rate as a fraction of --lr
    freeze_to: int | None = None       # zoo encoder: its layers up to the map of this stride not trained (0: none)
    channels_last: bool | None = None  # NHWC weights and batches (faster depthwise convolutions on CPUs)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None            # peak learning rate (AdamW, one-cycle)
    weight_decay: float = 1e-4         # on conv weights only
    optimizer: str = "adamw"           # as cnnkit train: sgd | adamw | nadam
    momentum: float = 0.9              # sgd only
    schedule: str = "onecycle"         # onecycle | cosine | constant
    warmup: float = 0.1                # fraction of the steps warming up (onecycle)
    crop: int | None = None            # training crop side of photos (px)
    max_side: int | None = None        # photos shrunk so the longer side is at most this (px)
    jitter: float | None = None        # brightness / contrast / saturation jitter of training photos
    dice: float | None = None          # weight of the soft Dice loss beside cross-entropy
    lovasz: float | None = None        # weight of the Lovasz-softmax loss beside cross-entropy
    canvas: int | None = None          # digit scenes: side (px)
    scenes: int | None = None          # digit scenes: training scenes (validation and test: a quarter)
    tta: str | None = None             # test-time augmentation: "flip" (image and mirror averaged) | "none"
    test_scale: float | None = None    # the network answers on the image resized by this (1: as it is)
    boundary_d: int = 3                # boundary IoU band (px)
    val_every: int | None = None       # validate after every k-th epoch and the last (photos: 4, else 1; 0: never)
    seed: int = 0
    threads: int | None = None         # torch threads (None: 1 on Penn-Fudan, else all cores; 0: all cores)

    def resolved(self) -> "SegmentConfig":
        """Every None filled in from DATA_DEFAULTS for this data."""
        from dataclasses import replace

        kind = self.data if self.data in ("pennfudan", "digits") else "folder"
        defaults = {"width": 32, "finest": 2, "val_every": 1, "jitter": 0.0, "dice": 0.0, "lovasz": 0.0, "tta": "none", "test_scale": 1.0,
                    "channels_last": False, **_SCRATCH,
                    **DATA_DEFAULTS[kind]}
        if self.arch is not None and self.arch != "unet" and self.backbone is None:
            defaults["backbone"] = "resnet18" if defaults["backbone"] == "unet" else defaults["backbone"]
        backbone = self.backbone or defaults["backbone"]
        if backbone == "unet" or self.weights == "none" or (self.backbone is not None and
                                                             self.backbone != defaults["backbone"]):
            defaults.update(_SCRATCH)          # another encoder than the recipe's: from scratch unless told
        out = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        return replace(out, weights=None) if out.weights == "none" else out


def load_splits(cfg: SegmentConfig) -> tuple[SegmentationSet, SegmentationSet, SegmentationSet, dict]:
    """(train, validation, test, split.json content) for a resolved config."""
    from cnnkit.data.segmentation import digit_segmentation, mask_folder, pennfudan_segmentation

    if cfg.data == "pennfudan":
        train = pennfudan_segmentation("train", cfg.data_dir, cfg.max_side)
        test = pennfudan_segmentation("test", cfg.data_dir, cfg.max_side)
        return train, test, test, {"train": train.names, "test": test.names}
    if cfg.data == "digits":
        kw = dict(canvas=cfg.canvas, data_dir=cfg.data_dir, seed=cfg.seed)
        n_eval = max(2, cfg.scenes // 4)
        sets = [digit_segmentation(s, n, **kw) for s, n in (("train", cfg.scenes), ("val", n_eval), ("test", n_eval))]
        return (*sets, {s.meta["split"]: s.meta for s in sets})
    from pathlib import Path

    if not Path(cfg.data).expanduser().is_dir():
        raise CnnkitError(f"--data is pennfudan, digits or a folder of images/ + masks/. Received: --data {cfg.data}")
    train = mask_folder(cfg.data, split="train", seed=cfg.seed, max_side=cfg.max_side)
    test = mask_folder(cfg.data, num_classes=train.num_classes, split="test", seed=cfg.seed, max_side=cfg.max_side)
    return train, test, test, {"train": train.names, "test": test.names}


def build_model(cfg: SegmentConfig, train: SegmentationSet) -> Segmenter:
    """The network (seeded init) wrapped with its input normalisation (:func:`input_stats`)."""
    from cnnkit.models.segmentation import create_segmenter

    torch.manual_seed(cfg.seed)
    net = create_segmenter(cfg.arch, cfg.backbone, train.num_classes, in_channels=_channels(train),
                           output_stride=cfg.output_stride, weights=cfg.weights, width=cfg.width,
                           finest=cfg.finest)
    mean, std = input_stats(cfg, train)
    return Segmenter(net, mean, std, train.classes, _segmenter_tta(cfg.tta), cfg.test_scale)


def _segmenter_tta(tta: str) -> str:
    """``--tta`` (flip | none) -> a :class:`Segmenter`'s ``tta`` ("flip" | "")."""
    if tta not in ("flip", "none"):
        raise CnnkitError(f"--tta is flip or none. Received: --tta {tta}")
    return "" if tta == "none" else tta


def _channels(data: SegmentationSet) -> int:
    return data.images.shape[1] if isinstance(data.images, torch.Tensor) else data.images[0].shape[0]


def input_stats(cfg: SegmentConfig, train: SegmentationSet) -> tuple[list[float], list[float]]:
    """The input normalisation: the mean/std the backbone's published weights were trained with when
    ``cfg`` starts from them (their frozen batch norms expect those inputs; measured on Penn-Fudan, 10
    epochs: person IoU 0.720 against 0.699 with the photos' own statistics), else :func:`channel_stats`."""
    from cnnkit.models.weights import weights_stats

    stats = weights_stats(cfg.backbone, cfg.weights, _channels(train))
    return (list(stats[0]), list(stats[1])) if stats else channel_stats(train)


def train(cfg: SegmentConfig, out=None, resume: bool = False, quiet: bool = False, device: str | None = None):
    """Train ``cfg`` through the engine into run folder ``out`` (``split.json`` beside the model).

    Returns the engine's FitResult plus ``test``, the final model's metrics on the test split."""
    import json
    import os
    from dataclasses import asdict
    from pathlib import Path

    from cnnkit.engine import Data, Phase, Plan, Setup, fit
    from cnnkit.train.trainer import lr_at, make_optimizer

    cfg = cfg.resolved()
    for key in ("epochs", "batch_size", "crop"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise CnnkitError(f"--{key.replace('_', '-')} must be a positive integer. Received: {getattr(cfg, key)}")
    if cfg.val_every < 0:
        raise CnnkitError(f"--val-every must be an integer >= 0 (0: no validation while training). Received: {cfg.val_every}")
    torch.set_num_threads(cfg.threads or max(1, os.cpu_count() or 1))
    train_set, val_set, test_set, split = load_splits(cfg)
    model = build_model(cfg, train_set)
    task = SegmentTask(cfg.batch_size, cfg.crop or 256, jitter=cfg.jitter, boundary_d=cfg.boundary_d,
                       channels_last=cfg.channels_last,
                       dice=cfg.dice, lovasz=cfg.lovasz, val_name="test" if val_set is test_set else "val",
                       info={"config": asdict(cfg), "data": cfg.data})

    stem = []
    if cfg.freeze_to:
        if not hasattr(model.net.encoder, "stem"):
            raise CnnkitError("--freeze-to freezes the first layers of a zoo backbone; U-Net's own encoder has none")
        stem = model.net.encoder.stem(cfg.freeze_to)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    def setup(m: Segmenter) -> Setup:
        for layer in stem:
            layer.requires_grad_(False)
        opt = make_optimizer(m.net, cfg)
        encoder = {id(p) for p in m.net.encoder.parameters()}
        if cfg.encoder_lr != 1:       # the encoder's parameters in groups of their own, at a fraction of the lr
            groups = []
            for g in opt.param_groups:
                for mine, scale in ((False, 1.0), (True, cfg.encoder_lr)):
                    ps = [p for p in g["params"] if (id(p) in encoder) == mine]
                    if ps:
                        groups.append({**g, "params": ps, "lr_scale": scale})
            opt.param_groups.clear()
            for g in groups:
                opt.add_param_group(g)
        frozen = [b for b in m.net.encoder.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)] \
            if cfg.freeze_bn else []
        return Setup(opt, schedule=lambda step, total: lr_at(step, total, cfg), frozen=frozen + stem)

    plan = Plan([Phase(cfg.epochs, setup)], seed=cfg.seed, val_every=cfg.val_every)

    def write_split(epoch: int, row: dict) -> None:   # beside the engine's files, once it has written them
        if out is not None and not (Path(out) / "split.json").is_file():
            (Path(out) / "split.json").write_text(json.dumps(split, indent=1))

    try:
        result = fit(task, model, Data(train_set, val_set), plan, out, resume=resume, quiet=quiet, device=device,
                     config=asdict(cfg), command="cnnkit segment train", on_epoch_end=write_split)
    finally:
        for layer in stem:
            layer.requires_grad_(True)
    result.test = evaluate(result.model, test_set, cfg.boundary_d)
    return result


def load_segmenter(path, device: str = "cpu") -> Segmenter:
    """A run folder (or its model.safetensors) written by ``cnnkit segment train``, in eval mode."""
    from safetensors.torch import load_file

    from cnnkit.train.checkpoint import read_info, resolve

    info = read_info(path)
    model = Segmenter.from_info(info)
    model.load_state_dict(load_file(str(resolve(path))))
    model.info = info
    return model.to(device).eval()


def evaluate_run(path, split: str = "test", data_dir: str | None = None, tta: str | None = None,
                 test_scale: float | None = None) -> dict:
    """The metrics of a run's model on its data's ``split`` (test, val or train); ``tta`` ("flip" |
    "none") and ``test_scale`` replace the test-time procedure the run saved."""
    tta = _segmenter_tta(tta) if tta is not None else None
    if test_scale is not None and not test_scale > 0:
        raise CnnkitError(f"--test-scale must be a positive number. Received: --test-scale {test_scale}")
    model = load_segmenter(path)
    if tta is not None:
        model.tta = tta
    if test_scale is not None:
        model.test_scale = float(test_scale)
    cfg = SegmentConfig(**model.info["config"])
    if data_dir is not None:
        cfg.data_dir = data_dir
    train_set, val_set, test_set, _ = load_splits(cfg)
    sets = {"train": train_set, "val": val_set, "test": test_set}
    if split not in sets:
        raise CnnkitError(f"--split is train, val or test. Received: --split {split}")
    out = evaluate(model, sets[split], cfg.boundary_d)
    return {"mIoU": out["mIoU"], "pixel_accuracy": out["pixel_accuracy"], "iou": out["iou_by_class"],
            "boundary_iou": out["boundary_iou"], "images": out["images"], "split": split,
            "data": cfg.data, "confusion": out["confusion"]}

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

from cnnkit.data.detection import Detections, colour_jitter, hflip, letterbox, pad_targets, scale_jitter
from cnnkit.errors import CnnkitError
from cnnkit.metrics.detection import coco_evaluate, voc_evaluate
from cnnkit.tasks.classify import _Batches  # an epoch's batches made one at a time (shared with classify)
from cnnkit.models.detection import Detector, create_detector, decode, detector_loss


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
    channels_last: bool = False                # NHWC batches (the model's weights too, by the caller)
    cls_loss: str = "focal"                    # "focal" | "varifocal" (IoU-aware targets)
    box_weight: float = 1.0                    # weight of the GIoU loss beside the class loss
    eval_batch_size: int = 16
    max_batches: int | None = None             # per epoch (a smoke test's couple of batches)
    decode_args: dict = field(default_factory=dict)   # score_threshold, nms_threshold, ... of decode
    info: dict = field(default_factory=dict)   # checkpoint metadata: backbone, dataset, config
    val_name: str = "val"                      # how validation is named in the log
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, boxes, labels

    def detector_parts(self, out: dict, boxes, labels) -> dict[str, torch.Tensor]:
        """The detector's loss parts on ``out`` with this task's settings (the instance task's loss too)."""
        return detector_loss(out, boxes, labels, cls_loss=self.cls_loss, box_weight=self.box_weight)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, boxes, labels = batch
        parts = self.detector_parts(model(x), boxes, labels)
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
                                width=int(info["width"]), head_convs=int(info.get("head_convs", 2)),
                                separate_towers=bool(info.get("separate_towers", False)))
    except KeyError as exc:
        raise CnnkitError(f"checkpoint metadata lacks field {exc.args[0]!r}: not a `cnnkit detect train` model") from None
    mean, std = info.get("mean"), info.get("std")
    if mean is not None:
        model.normalise.mean.copy_(torch.tensor(mean)[None, :, None, None])
        model.normalise.std.copy_(torch.tensor(std)[None, :, None, None])
    return model


def load_detector(path: str | os.PathLike, device: str = "cpu") -> Detector:
    """A trained detector from a run folder or its model.safetensors (eval mode; ``.info`` = metadata)."""
    return load_run_model(path, "detect", "a detection model", build_detector, device)


def load_run_model(path: str | os.PathLike, task: str, what: str, build, device: str = "cpu") -> nn.Module:
    """The model of a ``cnnkit TASK train`` run: its metadata checked to name ``task``, the module
    made by ``build(info)``, its weights loaded (eval mode on ``device``; ``.info`` = metadata)."""
    from safetensors.torch import load_file

    from cnnkit.train.checkpoint import read_info, resolve

    file = resolve(path)
    info = read_info(file)
    if info.get("task") != task:
        raise CnnkitError(f"{file} is not {what} (task {info.get('task', 'classify')!r}); "
                          f"give a run folder written by `cnnkit {task} train`")
    model = build(info)
    model.load_state_dict(load_file(str(file)))
    model.info = info
    return model.to(device).eval()


def new_detector(backbone: str, classes: list[str], in_channels: int, size: int, weights: str | None = None,
                 out_strides=(8, 16, 32), width: int = 64, head_convs: int = 2,
                 separate_towers: bool = False) -> tuple[Detector, dict]:
    """A fresh detector and the metadata that rebuilds it (what ``describe`` stores)."""
    model = create_detector(backbone, len(classes), weights=weights, in_channels=in_channels,
                            out_strides=out_strides, width=width, head_convs=head_convs,
                            separate_towers=separate_towers)
    info = {"backbone": backbone, "in_channels": in_channels, "out_strides": list(out_strides),
            "width": width, "head_convs": head_convs, "separate_towers": separate_towers,
            "input_size": [in_channels, size, size], "weights": weights}
    return model, info


# ----------------------------------------------------------------------------- the training recipe
@dataclass
class DetectConfig:
    # data
    data: str = "pennfudan"             # "pennfudan" | "digits" | PATH of a COCO JSON file or a YOLO folder
    data_dir: str | None = None         # folder holding pennfudan/ and mnist/ (else $CNNKIT_DATA)
    image_size: int | None = None       # square side images are letterboxed to (None: 320 photos, 128 digits)
    scenes: tuple[int, int] = (12000, 500)  # digits: train and test scenes
    train_digits: tuple[int, int] | None = None   # digits: least and most digits per training scene (None:
                                        # 4-8 on tiny, 1-4 otherwise; test scenes always hold 1-4). Denser
                                        # scenes = more digits learnt per step: AP50 0.58 -> 0.77 (2-6 -> 4-8)
    subset: int = 0                     # train on the first N training images only (0 = all; smoke tests)
    # model
    backbone: str = ""                  # zoo name or "tiny" ("": efficientnet_lite0 for photos, tiny for digits)
    weights: str | None = "imagenet"    # backbone weights: "imagenet" | None | a path (digits: None)
    strides: tuple[int, ...] = ()       # pyramid strides the head runs on (): 8/16/32 photos, 8 on tiny
                                        # (digit boxes are <= 41 px: FCOS's ranges give stride 16 none)
    freeze: int | None = None           # backbone modules up to this stride not trained, and its BatchNorm
                                        # statistics kept (None: 4 with pretrained weights, -1 = none)
    width: int = 64                     # channels of the FPN-lite neck and the head
    head_convs: int = 2                 # 3x3 convs per head tower
    separate_towers: bool | None = None  # one head tower for the classes, another for boxes + centre-ness
                                        # (None: on for photos -- Penn-Fudan validation AP 0.511 vs 0.504 at
                                        # 20 epochs, ahead at 12 of epochs 5-20 -- off on tiny, tuned without)
    box_weight: float = 1.0             # GIoU loss weight
    # optimisation (the field names cnnkit.train's optimizer and schedule read)
    epochs: int | None = None           # passes over the training split (None: 40 photos -- Penn-Fudan test
                                        # AP 0.534 / 0.552 / 0.569 at 24 / 32 / 40, 15-18 min -- 5 digits)
    batch_size: int | None = None       # global batch (None: 4 photos, 8 digits)
    lr: float | None = None             # peak learning rate (None: 1e-3 photos, 4e-3 digits)
    optimizer: str = "adamw"            # "adamw" | "sgd" | "nadam"
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 1e-4          # on conv/linear weights only
    schedule: str = "onecycle"          # linear warm-up then cosine to 0 | "cosine" | "constant"
    warmup: float = 0.1                 # fraction of the steps spent warming up
    ema: float = 0.0                    # EMA decay of the weights per step (0 = off)
    val_every: int | None = None        # validate after every k-th epoch and the last (None: 4 photos --
                                        # 50 test photos take 7-9 s against 20-25 s of training -- 1 digits)
    cls_loss: str | None = None         # class loss: "focal" | "varifocal" (IoU-aware targets; None:
                                        # varifocal: it ranks the better-placed boxes first, Penn-Fudan
                                        # validation AP75 0.52 vs 0.42 with focal, AP 0.515 vs 0.511)
    channels_last: bool | None = None   # NHWC weights and batches (None: on -- oneDNN's convs: tiny ~15%
                                        # faster; efficientnet_lite0 at 320 px, one thread, a training step
                                        # 1.26x (batch 4) and with the mask head 1.67x (batch 8) faster: in
                                        # NCHW PyTorch sends a 1x1 conv of a batch under 16 to its slow im2col
                                        # path when single-threaded, and lite0 is mostly 1x1 convs)
    seed: int = 0                       # model init, data order and augmentation
    # runtime
    device: str | None = None           # "cpu" | "cuda" | None (cuda when available)
    threads: int | None = None          # torch threads per process (0: all cores; None: 1: on this shared
                                        # 2-core CPU a busy second core stalls every op -- tiny's convs and
                                        # efficientnet_lite0 at 320 px alike, 0.31 vs 0.89 s per image)

    def resolved(self) -> "DetectConfig":
        """Fill the data-dependent defaults (what the run stores, so eval/resume see the same)."""
        from dataclasses import replace

        photos = self.data != "digits"
        backbone = self.backbone or ("efficientnet_lite0" if photos else "tiny")
        tiny = backbone == "tiny"
        weights = self.weights if photos and not tiny else (None if self.weights == "imagenet" else self.weights)
        return replace(self, image_size=self.image_size if self.image_size is not None else (320 if photos else 128),
                       backbone=backbone, weights=weights,
                       strides=tuple(self.strides) or ((8,) if tiny else (8, 16, 32)),
                       freeze=self.freeze if self.freeze is not None else (4 if weights else -1),
                       epochs=self.epochs if self.epochs is not None else (40 if photos else 5),
                       separate_towers=self.separate_towers if self.separate_towers is not None else not tiny,
                       batch_size=self.batch_size if self.batch_size is not None else (4 if photos else 8),
                       lr=self.lr if self.lr is not None else (1e-3 if photos else 4e-3),
                       cls_loss=self.cls_loss or "varifocal",
                       channels_last=self.channels_last if self.channels_last is not None else True,
                       threads=self.threads if self.threads is not None else 1,
                       val_every=self.val_every if self.val_every is not None else (4 if photos else 1),
                       scenes=tuple(self.scenes),
                       train_digits=tuple(self.train_digits or ((4, 8) if tiny else (1, 4))))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def load_split_data(cfg: DetectConfig, split: dict | None = None) -> tuple[DetectionSet, DetectionSet, dict]:
    """(train, test, split) for a resolved config; ``split`` (names) as a run's split.json has it."""
    from pathlib import Path

    if cfg.data == "digits":
        from cnnkit.data.scenes import digit_scenes

        tr = from_scenes(digit_scenes("train", cfg.scenes[0], cfg.image_size, cfg.data_dir, cfg.seed,
                                      digits=tuple(cfg.train_digits)))
        te = from_scenes(digit_scenes("test", cfg.scenes[1], cfg.image_size, cfg.data_dir, cfg.seed))
        split = {"train": tr.names, "test": te.names}
    else:
        from cnnkit.data.detection import load_coco, load_pennfudan, load_yolo
        from cnnkit.data.pennfudan import pennfudan_root, pennfudan_split, split_names

        if cfg.data == "pennfudan":
            root = pennfudan_root(cfg.data_dir)
            split = split or pennfudan_split(root)
            data = load_pennfudan(root, split["train"] + split["test"])
        else:
            path = Path(cfg.data).expanduser()
            if path.is_file():
                data = load_coco(path)
            elif path.is_dir():
                data = load_yolo(path)
            else:
                raise CnnkitError(f"--data {cfg.data!r} is not pennfudan, digits, a COCO JSON file or a YOLO folder")
            if len(data) < 2:
                raise CnnkitError(f"{path} holds {len(data)} image: a train/test split needs at least 2")
            split = split or split_names(data.names, max(1, round(0.8 * len(data))), cfg.seed)
        tr = from_detections(data.subset(split["train"]), cfg.image_size)
        te = from_detections(data.subset(split["test"]), cfg.image_size)
    if cfg.subset:
        tr = DetectionSet(tr.images[:cfg.subset], tr.boxes[:cfg.subset], tr.labels[:cfg.subset],
                          tr.scales[:cfg.subset], tr.classes, tr.names[:cfg.subset])
    return tr, te, split


def _to(s: DetectionSet, device) -> DetectionSet:
    return DetectionSet(s.images.to(device), s.boxes.to(device), s.labels.to(device), s.scales, s.classes, s.names)


def train(cfg: DetectConfig, out, resume: bool = False, quiet: bool = False):
    """Train a detector by ``cfg`` into the run folder ``out`` through :func:`cnnkit.engine.fit`."""
    from pathlib import Path

    from rich.console import Console

    from cnnkit.engine import Data, Phase, Plan, Setup, fit
    from cnnkit.engine.distributed import distributed
    from cnnkit.train.trainer import lr_at, make_optimizer

    out = Path(out)
    cfg = run_config(cfg, out, resume, config_from_dict)
    with distributed(cfg.device) as d:
        train_set, test_set = run_data(cfg, out, resume, d, load_split_data)
        torch.manual_seed(cfg.seed)
        channels = train_set.images.shape[1]
        model, info = new_detector(cfg.backbone, train_set.classes, channels, cfg.image_size, cfg.weights,
                                   out_strides=cfg.strides, width=cfg.width, head_convs=cfg.head_convs,
                                   separate_towers=cfg.separate_towers)
        frozen = model.freeze_backbone(cfg.freeze) if cfg.freeze >= 0 else []   # BN kept in eval mode
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        info["config"] = cfg.to_dict()
        task = DetectTask(train_set.classes, cfg.batch_size, info=info, val_name="test",
                          fill=0.5 if channels == 3 else 0.0, flip=0.5 if cfg.data != "digits" else 0.0,
                          scale=(0.7, 1.3) if cfg.data != "digits" else None,   # a cropped digit is another digit
                          channels_last=cfg.channels_last, cls_loss=cfg.cls_loss, box_weight=cfg.box_weight)
        plan = Plan([Phase(cfg.epochs, lambda m: Setup(make_optimizer(m, cfg), frozen=frozen,
                                                       schedule=lambda step, total: lr_at(step, total, cfg)))],
                    seed=cfg.seed, ema=cfg.ema, val_every=cfg.val_every)
        run = fit(task, model, Data(_to(train_set, d.device), _to(test_set, d.device)), plan, out, resume=resume,
                  quiet=quiet, dist=d, config=cfg.to_dict(), command="cnnkit detect train")
        final = task.evaluate(run.model, _to(test_set, d.device))
        Console(quiet=quiet or not d.main).print(
            f"done: test AP {final['AP']:.3f}, AP50 {final['AP50']:.3f}, AP75 {final['AP75']:.3f} in "
            f"{run.seconds:.1f} s -> {out}  (`cnnkit detect eval {out}`)")
        return run, final


def run_config(cfg, out, resume: bool, from_dict):
    """The config a run trains with, resolved and validated: on ``resume`` the run's own wins."""
    from cnnkit.train.checkpoint import resumed_config

    if resume:
        cfg = from_dict(resumed_config(out))
    return validate(cfg.resolved())


def run_data(cfg, out, resume: bool, d, load):
    """Threads, then ``load(cfg, split)``'s train and test sets on the run's split (the one in
    ``out/split.json`` on resume), which rank 0 writes to the run."""
    import json

    from cnnkit.train.checkpoint import atomic_write_bytes

    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    split = json.loads((out / "split.json").read_text()) if resume and (out / "split.json").is_file() else None
    train_set, test_set, split = load(cfg, split)
    if len(train_set) < cfg.batch_size:
        raise CnnkitError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "split.json", json.dumps(split, indent=1).encode())
    return train_set, test_set


def validate(cfg: DetectConfig) -> DetectConfig:
    """Raise CnnkitError naming the first bad value."""
    checks = [("epochs", cfg.epochs >= 1, "a positive integer"),
              ("batch_size", cfg.batch_size >= 2, "an integer >= 2"),
              ("lr", cfg.lr > 0, "a positive number"),
              ("image_size", cfg.image_size >= 32, "at least 32"),
              ("optimizer", cfg.optimizer in ("sgd", "adamw", "nadam"), "sgd, adamw or nadam"),
              ("schedule", cfg.schedule in ("onecycle", "cosine", "constant"), "onecycle, cosine or constant"),
              ("width", cfg.width >= 8, "at least 8"),
              ("head_convs", cfg.head_convs >= 0, "an integer >= 0"),
              ("box_weight", cfg.box_weight >= 0, "a number >= 0"),
              ("val_every", cfg.val_every >= 0, "an integer >= 0 (0: no validation while training)"),
              ("device", cfg.device in (None, "cpu", "cuda"), "cpu or cuda")]
    for name, ok, want in checks:
        if not ok:
            raise CnnkitError(f"--{name.replace('_', '-')} must be {want}; received {getattr(cfg, name)!r}")
    return cfg


def evaluate_run(run, data_dir: str | None = None) -> dict:
    """``cnnkit detect eval``: the run's detector on its test split -> {"AP", "AP50", "AP75", "AR100", ...}."""
    import json
    from pathlib import Path

    from cnnkit.train.checkpoint import resolve

    model = load_detector(run)
    cfg = config_from_dict(model.info["config"])
    if data_dir:
        from dataclasses import replace

        cfg = replace(cfg, data_dir=data_dir)
    split_file = resolve(run).parent / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() and cfg.data != "digits" else None
    _, test_set, _ = load_split_data(replace_subset(cfg), split)
    task = DetectTask(model.info["classes"], info=model.info, decode_args=model.info.get("decode", {}))
    predictions = predict_set(model, test_set, task.eval_batch_size, **task.decode_args)
    targets = test_set.targets()
    m = coco_evaluate(predictions, targets, classes=test_set.classes)
    voc = voc_evaluate(predictions, targets, len(test_set.classes))
    return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "AR100": m["AR100"], "images": m["images"],
            "VOC_AP50": voc["mAP"], "per_class_AP": m["per_class_AP"], "data": cfg.data, "split": "test"}


def replace_subset(cfg: DetectConfig) -> DetectConfig:
    from dataclasses import replace

    return replace(cfg, subset=0)


def config_from_dict(d: dict) -> DetectConfig:
    return DetectConfig(**{**d, "scenes": tuple(d["scenes"]), "strides": tuple(d.get("strides", ())),
                           "train_digits": tuple(d.get("train_digits") or (1, 4)),
                           "separate_towers": d.get("separate_towers", False)})   # runs from before the option


def draw_detections(image: torch.Tensor, det: dict, path) -> None:
    """Write ``image`` (C, H, W) uint8 with its boxes, labels and scores drawn as a PNG (Pillow)."""
    from PIL import Image, ImageDraw

    arr = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    im = Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(im)
    for (x1, y1, x2, y2), s, name in zip(det["boxes"], det["scores"], det["labels"]):
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=(255, 40, 40), width=max(1, round(max(im.size) / 250)))
        draw.text((x1 + 2, max(0, y1 - 11)), f"{name} {s:.2f}", fill=(255, 255, 0))
    im.save(path, format="PNG")

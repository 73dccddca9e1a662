"""Accuracy, per-class precision and recall, and the confusion matrix of a classifier on a data set."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.imageset import Features, ImageSet
from cnnkit.engine.precision import autocast
from cnnkit.errors import CnnkitError
from cnnkit.models.fold import fold_batchnorm

CPU_BATCH_PIXELS = 1 << 19  # 6 photos of 288 x 288, 668 MNIST digits


@dataclass
class Evaluation:
    """A classifier's scores on a data set (what ``cnnkit eval`` prints).

    Attributes:
        accuracy: the share of images whose top class is the true one.
        loss: mean cross-entropy of the logits.
        n: the number of images scored.
        confusion: (K, K) int64 counts, rows = true class, columns = predicted.
        classes: the K class names, in index order.
    """

    accuracy: float
    loss: float
    n: int
    confusion: torch.Tensor
    classes: list[str]

    @property
    def precision(self) -> torch.Tensor:
        """(K,) float64 precision of each predicted class: correct / predicted (0 where none was
        predicted). The counts are divided in float64, as the accuracy is: in float32 the share is off
        in its eighth digit (245 of 246 would read 0.9959349632263184, not 0.9959349593495935)."""
        counts = self.confusion.double()
        return counts.diag() / counts.sum(0).clamp_min(1)

    @property
    def recall(self) -> torch.Tensor:
        """(K,) float64 recall of each true class: correct / present (0 where the class is absent)."""
        counts = self.confusion.double()
        return counts.diag() / counts.sum(1).clamp_min(1)

    def to_dict(self) -> dict:
        """The scores as JSON-able lists and numbers (``cnnkit eval --format json``): every number a
        float64 value printed whole, as every task's eval prints them (shares of counts divided in
        float64, the loss a mean taken in float64)."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": self.n,
            "classes": self.classes,
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
            "confusion": self.confusion.tolist(),
        }


def images_per_batch(device: torch.device, size: tuple[int, int], batch_size: int) -> int:
    """Images of ``size`` (H, W) per forward pass: ``batch_size``, and on a CPU at most
    :data:`CPU_BATCH_PIXELS` pixels (at least one image)."""
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_BATCH_PIXELS // (size[0] * size[1])))


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 1000,
    channels_last: bool = True,
    precision: str | None = "auto",
) -> torch.Tensor:
    """Logits (N, K) for uint8 images (N, C, H, W) -- or float features -- in batches, on the
    model's device. ``precision``: auto | fp32 | bf16, or None for the caller's autocast context.
    On a CPU a batch holds at most :data:`CPU_BATCH_PIXELS` pixels (and ``batch_size`` images): its
    activations then stay in the caches (EfficientNet-Lite0 on 225 photos of 288 px, two threads:
    6.0 s at 8 a batch, 9.5 s at 32, 19.9 s at 1,000)."""
    device = next(model.parameters()).device
    context = autocast(precision, device) if precision is not None else contextlib.nullcontext()
    if images.dim() == 4:
        batch_size = images_per_batch(device, images.shape[-2:], batch_size)
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device)
        if x.dtype == torch.uint8:
            x = x.float().div_(255).contiguous(memory_format=_fmt(channels_last))
        with context:
            out.append(model(x).float())
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    data: ImageSet | Features,
    batch_size: int = 1000,
    channels_last: bool = True,
    precision: str | None = "auto",
) -> Evaluation:
    """Accuracy, loss and confusion matrix of a classifier over every image of ``data``.

    The model runs in eval mode (its own mode is restored afterwards), with whatever test-time
    augmentation it carries; :func:`evaluate_run` scores a run folder on its own data.

    Args:
        model: takes float images (N, C, H, W) in [0, 1] and returns logits (N, K), e.g. what
            :func:`cnnkit.load` returns.
        data: uint8 images with labels (an :class:`~cnnkit.data.imageset.ImageSet`), or cached
            float features (:class:`~cnnkit.data.imageset.Features`) for a head alone.
        batch_size: images per forward pass.
        channels_last: NHWC batches through an NHWC copy of the network (faster convolutions on CPUs).
        precision: ``auto`` | ``fp32`` | ``bf16``, or None to run in the caller's autocast context.

    Returns:
        The :class:`Evaluation`.

    Example:
        >>> result = evaluate(cnnkit.load("runs/mnist"), test_set)     # doctest: +SKIP
        >>> f"{result.accuracy:.2%}"                                   # doctest: +SKIP
        '99...%'
    """
    was_training = model.training
    model.eval()
    try:
        net = model
        if not isinstance(data, Features) and len(data.images):  # a copy with its batch norms folded
            example = data.images[:1].to(next(model.parameters()).device).float().div_(255)
            net = fold_batchnorm(model, example.contiguous(memory_format=_fmt(channels_last)))[0]
            # its weights in the batches' layout: a loaded file's are NCHW, and a one-channel input is
            # both layouts at once, so the network would run NCHW (MNIST's test set with shift TTA on
            # two Zen 3 cores: 10.4 s, against 4.1 s in NHWC)
            net = net.to(memory_format=_fmt(channels_last))
        logits = predict_logits(
            net, data.x if isinstance(data, Features) else data.images, batch_size, channels_last, precision
        )
    finally:
        model.train(was_training)
    labels = data.labels.to(logits.device)
    k = len(data.classes)
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k).cpu()
    return Evaluation(
        # the count's share in float64: float32 is off in the eighth digit, which moves a rounded share
        accuracy=int((pred == labels).sum()) / labels.numel() if labels.numel() else math.nan,
        # each image's loss in float32, their mean in float64 (as the engine's epoch means are taken)
        loss=F.cross_entropy(logits, labels, reduction="none").double().mean().item(),
        n=int(labels.numel()),
        confusion=confusion,
        classes=list(data.classes),
    )


def _fmt(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def evaluate_run(
    run,
    split: str = "test",
    data: str | None = None,
    data_dir: str | None = None,
    precision: str = "auto",
    trust_code: bool = False,
    factory: str | None = None,
) -> tuple[Evaluation, ImageSet, nn.Module]:
    """Score a classification run on a split of the data it was trained on (or of ``data``).

    The images are those :func:`run_images` reads: a fine-tuning run's image folder split and
    cropped the way it was trained on, the images a run on an image folder names in its split.json,
    a built-in data set from ``data_dir`` (else the one it was trained with), each labelled by the
    run's classes (a class folder the run does not know is left out, said on one line).

    Args:
        run: a run folder or its ``model.safetensors``.
        split: train | val | test.
        data: another data set name or image folder (scored on the classes it shares with the run).
        data_dir: the folder holding the built-in data sets.
        precision: auto | fp32 | bf16.
        trust_code: allow building a network by running ``factory`` (as for :func:`cnnkit.load`).
        factory: ``FILE.py:FUNCTION`` that builds the network (with ``trust_code``).

    Returns:
        (the evaluation, the data it scored, the model).

    Raises:
        CnnkitError: not a classification run, data that cannot be found, other classes, or a folder
            none of whose class folders is a class of the run.

    Warns:
        CnnkitWarning: the part scored has other images than the run recorded of it (its sha256,
            ``data_files``): it is scored as it is.
    """
    import sys

    from cnnkit.data.imagefolder import left_out_note
    from cnnkit.tasks.classify.load import load_classifier

    model = load_classifier(run, trust_code=trust_code, factory=factory)
    images = run_images(model, run, split, data, data_dir)
    note = left_out_note(images)
    if note:
        print(note, file=sys.stderr)
    if split == "val" and _run_config(model.info).get("trainval"):
        print(
            "note: this model was trained on the val split too (--trainval): its val accuracy is "
            "not a held-out estimate",
            file=sys.stderr,
        )
    return evaluate(model, images, precision=precision), images, model


def image_files(data: str, **parts: ImageSet | None) -> dict:
    """What a classification run records of its data (``data_files``,
    :func:`~cnnkit.engine.runfolder.data_files`): for each part read (``train=``, ``val=``, ``test=``),
    the data's name and the sha256 of the part as read (its ``meta["sha256"]``, else its digest)."""
    from cnnkit.engine.runfolder import data_files

    return data_files(
        {k: (data, s.meta.get("sha256") or s.digest()) if s is not None else None for k, s in parts.items()}
    )


def _run_config(info: dict) -> dict:
    """A training run's settings (an ensemble's: its first member's); {} for another run."""
    cfg = info.get("config") or (info.get("ensemble") or [{}])[0].get("config") or {}
    return cfg if isinstance(cfg, dict) else {}


def run_images(
    model: nn.Module,
    run,
    split: str = "test",
    data: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
) -> ImageSet:
    """The images a classification run is scored on (``cnnkit eval``, ``cnnkit plot``, the workbench):
    a split of the data it was trained on, or of ``data``, labelled by the run's classes.

    A fine-tuning run's image folder is split and cropped the way it was trained on, and a run on an
    image folder reads the images its split.json names; a run of a built-in data set reads that data
    set from ``data_dir`` (else the one it was trained with). A class folder the run does not know
    (added since, or one of ``data``'s) is left out, named in ``meta["left_out"]``
    (:func:`~cnnkit.data.imagefolder.left_out_note`); a class of the run without images is scored as absent.

    Args:
        model: the run's classifier (:func:`~cnnkit.tasks.classify.load.load_classifier`), its
            metadata as ``model.info``.
        run: the run folder or its ``model.safetensors``.
        split: train | val | test.
        data: another data set name or image folder.
        data_dir: the folder holding the built-in data sets.
        download: fetch a built-in data set that is not there.

    Returns:
        The :class:`~cnnkit.data.imageset.ImageSet`.

    Raises:
        CnnkitError: data that cannot be found, other classes (a built-in data set's), or a folder
            whose split holds no image of the run's classes.

    Warns:
        CnnkitWarning: the part read has the name of one the run recorded and other images
            (:func:`~cnnkit.engine.runfolder.warn_if_changed`).
    """
    import warnings

    from cnnkit.data.datasets import load_dataset
    from cnnkit.data.imagefolder import load_image_folder
    from cnnkit.engine.runfolder import read_split, resolve, warn_if_changed

    info = model.info
    cfg = info.get("config") or (info.get("ensemble") or [{}])[0].get("config") or {}
    tuned = info.get("finetune") if not data else None
    if tuned and isinstance(tuned, dict) and tuned.get("data"):
        source = tuned["data"]
        own = read_split(resolve(run), required=("train",)) or {}  # the run's own images of each part
        with warnings.catch_warnings():  # skipped files were reported when it trained
            warnings.simplefilter("ignore")
            images = load_image_folder(
                source,
                split,
                tuple(model.input_size[1:]),
                model.input_size[0],
                tuned.get("val_fraction", 0.2),
                tuned.get("test_fraction", 0.0),
                seed=tuned.get("seed", 0),
                crop_fraction=tuned.get("crop_fraction", 1.0),
                interpolation=tuned.get("interpolation", "bilinear"),
                files=own.get(split),
                classes=list(model.classes),
                absent_ok=True,
            )
    else:
        if cfg:  # the settings evaluation reads the data by, refused in one line if they were edited
            from cnnkit.engine.runfolder import stored_config
            from cnnkit.tasks.classify.config import TrainConfig

            stored_config(TrainConfig, {"config": cfg}, resolve(run))
        trained_on = cfg.get("data") or cfg.get("dataset") if isinstance(cfg, dict) else None
        named = info.get("dataset")
        if not trained_on and isinstance(named, dict) and isinstance(named.get("name"), str):
            trained_on = named["name"]  # a run that records its data set's name alone
        if not (data or trained_on):
            raise CnnkitError(
                f"{run} does not record the dataset it was trained on (a converted model?); "
                "pass --data NAME or --data PATH"
            )
        source = data or trained_on
        own = None if data else read_split(resolve(run), ("train", "val"))  # an image folder run's own images
        try:
            images = load_dataset(
                source,
                split,
                data_dir or (cfg.get("data_dir") if not data else None),
                download=download,
                image_size=tuple(model.input_size[1:]),
                channels=model.input_size[0],
                seed=cfg.get("seed", 0),
                files=own,
                classes=list(model.classes),
                absent_ok=True,
            )
        except CnnkitError as exc:  # the loader's fix (a *_fraction argument) is not eval's to give
            text = str(exc)
            if f"has no {split!r} split" not in text or "_fraction=" not in text:
                raise
            raise CnnkitError(
                f"{text.split('; pass ')[0]}; evaluate another split (--split {'val' if split != 'val' else 'train'}), "
                f"or add {split}/<class>/ folders to the data folder"
            ) from None
    if images.classes != model.classes:
        raise CnnkitError(
            f"{images.name} has classes {images.classes[:5]}..., the model "
            f"{model.classes[:5]}...; evaluate on the data it was trained on"
        )
    # the part as the run recorded it (a fine-tuning run's, or a training run's train and val parts)
    warn_if_changed(source, images.digest, info, resolve(run).parent, split, "images")
    return images

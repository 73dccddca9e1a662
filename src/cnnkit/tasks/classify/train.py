"""``cnnkit train``: a :class:`TrainConfig` turned into a classification task and a one-phase plan.

``train(config, out)`` loads the splits onto the device, builds the seeded network inside its
Classifier, and hands both to the engine (:func:`cnnkit.engine.fit`), which prints the summary,
trains with a live progress bar and after every epoch writes ``model.safetensors``,
``resume.safetensors``, ``metrics.csv`` and ``curves.png`` to ``out`` (atomically; under torchrun
only rank 0 writes). ``resume=True`` continues exactly from the last completed epoch. What is
classification's own lives here: the one-cycle schedule, the optimizer's parameter groups, ensembles.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit import engine
from cnnkit.console import console as make_console
from cnnkit.data.augment import AugmentConfig, build_augment
from cnnkit.data.datasets import load_dataset
from cnnkit.data.imageset import ImageSet
from cnnkit.engine import Data, single_phase_plan
from cnnkit.engine.config import use_threads
from cnnkit.engine.distributed import Dist, distributed
from cnnkit.engine.runfolder import (
    MODEL_FILE,
    RESUME_FILE,
    SPLIT_FILE,
    atomic_write_bytes,
    check_new_run,
    check_resumed_data,
    json_text,
    read_checkpoint,
    read_info,
    read_split,
    run_classes,
    with_free_settings,
)
from cnnkit.errors import CnnkitError, short_error
from cnnkit.layers.layout import nhwc_breaker
from cnnkit.models import model_info
from cnnkit.models.deploy import Classifier
from cnnkit.models.network import (
    build,
    build_network,
    check_resumable,
    model_reference,
    spec_network,
    trusted_resume_model,
)
from cnnkit.tasks.classify.config import TrainConfig, validate
from cnnkit.tasks.classify.evaluate import _fmt, evaluate, image_files
from cnnkit.tasks.classify.load import load_classifier, network_of, save_ensemble
from cnnkit.tasks.classify.task import ClassifyTask


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        out: the run folder.
        history: one row per epoch, as in ``metrics.csv`` (an ensemble: its last member's).
        val_acc: validation accuracy of the saved model (with its test-time augmentation, if any).
        seconds: training time of this call (data loading and the summary excluded).
        images: training images processed by this call, all processes together.
        members: an ensemble's members' results, in order; empty for a single model.
    """

    out: Path
    history: list[dict]
    val_acc: float
    seconds: float
    images: int
    members: list[TrainResult] = field(default_factory=list)


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    quiet: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train an image classifier by ``cfg`` into the run folder ``out``: what ``cnnkit train`` runs.

    The splits are loaded onto the device, the seeded network is wrapped in its
    :class:`~cnnkit.models.deploy.Classifier` (normalisation, class names, test-time augmentation)
    and trained by :func:`cnnkit.engine.fit`, which writes ``model.safetensors``,
    ``resume.safetensors``, ``metrics.csv`` and ``curves.png`` after every epoch. With
    ``cfg.ensemble`` > 1 the members train into ``out/member<i>`` with seeds ``seed + i`` and
    ``out/model.safetensors`` averages them.

    Args:
        cfg: the settings (:func:`preset` gives tuned ones).
        out: the run folder.
        resume: continue the run in ``out`` exactly, after its last completed epoch; the run's
            own config replaces ``cfg`` (only its ``model`` reference is checked against it), but for
            ``cfg``'s device, threads, data_dir and minutes where set (not None). A run of a spec file
            trains the copy of the spec it stored when it started, whatever the file holds now.
        quiet: no summary, progress bar or epoch lines.
        on_epoch_end: ``fn(epoch, row)`` called after each saved epoch.

    Returns:
        A :class:`TrainResult`: the folder, the history and the final validation accuracy.

    Raises:
        CnnkitError: a bad setting, data that cannot be found or read, a batch larger than the
            training set, a diverging loss, or nothing to resume in ``out``.

    Example:
        >>> result = train(preset("fast"), "runs/mnist")      # doctest: +SKIP
        >>> round(result.val_acc, 3)                          # doctest: +SKIP
        0.996
    """
    out = Path(out)
    network, note = None, None
    if resume:
        cfg, network, note = _resumed_config(out, cfg)
    validate(cfg)
    if network is None:
        network = spec_network(cfg.model)  # a spec file is read once, here: every member trains this copy
    with distributed(cfg.device) as d:
        use_threads(cfg.threads)
        if note and d.main:  # said even when quiet, on one line
            print(note, file=sys.stderr)
        if cfg.ensemble == 1:
            return train_one(cfg, out, d, resume, quiet, on_epoch_end, network=network)
        runs = [
            train_one(
                replace(cfg, seed=cfg.seed + i),
                out / f"member{i}",
                d,  # config keeps K: resumable
                resume and (out / f"member{i}" / RESUME_FILE).is_file(),
                quiet,
                on_epoch_end,
                split_seed=cfg.seed,  # one split for all: no member trains on the ensemble's validation images
                network=network,
            )
            for i in range(cfg.ensemble)
        ]
        split = read_split(out / "member0", ("train", "val"))  # an image folder's (None: a built-in data set)
        if d.main:
            save_ensemble(out / MODEL_FILE, [r.out / MODEL_FILE for r in runs])
            if split is not None:
                atomic_write_bytes(out / SPLIT_FILE, json_text(split, indent=1).encode())
        if d.world > 1:  # every process reads the ensemble that rank 0 has just written
            torch.distributed.barrier()
        val = evaluate(
            load_classifier(out, d.device),
            load_dataset(cfg.data, "val", cfg.data_dir, image_size=cfg.image_size, seed=cfg.seed, files=split),
            cfg.eval_batch_size,
            precision=cfg.precision,
        )
        if d.main and not quiet:
            make_console().print(f"ensemble of {cfg.ensemble}: {_val_label(cfg)} acc {val.accuracy:.2%} -> {out}")
        return TrainResult(
            out, runs[-1].history, val.accuracy, sum(r.seconds for r in runs), sum(r.images for r in runs), runs
        )


def train_one(
    cfg: TrainConfig,
    out: Path,
    d: Dist,
    resume: bool = False,
    quiet: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    split_seed: int | None = None,
    network: dict | None = None,
) -> TrainResult:
    """One model: the config as a classification task and a one-phase plan, run by the engine.
    An image folder is split by ``split_seed`` (default: ``cfg.seed``); the split is the run's
    ``split.json``: written before training, read on resume with the run's classes
    (:func:`~cnnkit.engine.runfolder.run_classes`: a class folder added since is left out).
    ``network``: the description of the spec network the run trains, which every save stores
    (:func:`train` gives the run's own copy on resume); None: ``cfg.model``'s spec file read here,
    or the zoo network or factory it names."""
    network = spec_network(cfg.model) if network is None else network
    own = read_split(out, ("train", "val")) if resume else None
    classes = run_classes(out) if own is not None else None  # an image folder run's own classes
    train_set, val_set = load_splits(cfg, d.device, own, split_seed, classes)
    files = image_files(cfg.data, train=train_set, val=val_set)  # recorded: what --resume and eval check by
    if resume:  # the images of each part as the run recorded them, else --resume would mix two data sets
        check_resumed_data(cfg.data, files, out, "images")
    if "files" in train_set.meta and d.main and not (resume and (out / SPLIT_FILE).is_file()):
        check_new_run(out, resume)  # before split.json is written: a refused run leaves the folder untouched
        split = {"train": train_set.meta["files"], "val": val_set.meta.get("files", [])}
        atomic_write_bytes(out / SPLIT_FILE, json_text(split, indent=1).encode())
    model = build_classifier(cfg, train_set, network, str(out)).to(d.device)
    say = make_console(quiet=quiet or not d.main).print
    channels_last = cfg.channels_last
    breaker = nhwc_breaker(model.net) if channels_last and d.device.type == "cpu" else None
    if breaker is not None:
        name, conv = breaker
        say(
            f"{name}: a strided 1x1 convolution of {conv.in_channels} to {conv.out_channels} channels; the run "
            "trains in NCHW layout (oneDNN's channels-last kernels for it corrupt memory on AVX2 CPUs)"
        )
        channels_last = False
    model = model.to(memory_format=_fmt(channels_last))
    if model.pad:
        (_, h, w), (_, hp, wp) = model.input_size, model.net_input_size
        say(f"{cfg.model} takes {hp}x{wp} inputs: the {h}x{w} images get {model.pad} px of black on every side")
    cfg = replace(cfg, augment=trainable_augment(cfg, model.net, train_set, quiet or not d.main, model.pad))
    task = ClassifyTask(
        cfg.batch_size,
        build_augment(cfg.augment),
        cfg.label_smoothing,
        channels_last,
        eval_batch_size=cfg.eval_batch_size,
        val_name=_val_label(cfg),
        info={**_info(cfg, train_set, network), "data_files": files},
        prune=cfg.prune,
    )
    freeze = None
    if cfg.freeze_after and cfg.freeze_until is not None:  # a layer the network lacks: refused before training
        from cnnkit.tasks.classify.finetune import layers_before

        freeze = (cfg.freeze_after, layers_before(model.net, cfg.freeze_until, train_set.image_shape))
    every = 1 if cfg.val_every is None else cfg.val_every
    plan = single_phase_plan(cfg, lambda m: m.net, val_every=every, freeze=freeze)
    run = engine.fit_run(
        task,
        model,
        Data(train_set, val_set),
        plan,
        cfg,
        out,
        command="cnnkit train",
        resume=resume,
        quiet=quiet,
        dist=d,
        on_epoch_end=on_epoch_end,
        run=out.parent if cfg.ensemble > 1 else None,  # a member: Ctrl-C names the ensemble's folder
    )
    final = evaluate(run.model, val_set, cfg.eval_batch_size, channels_last, run.precision).accuracy
    make_console(quiet=quiet or not d.main).print(
        f"done: {_val_label(cfg)} acc {final:.2%}{' (with TTA)' if run.model.tta else ''} in "
        f"{run.seconds:.1f} s -> {out}  (test with `cnnkit eval {out}`)"
    )
    return TrainResult(out, run.history, final, run.seconds, run.images)


def trainable_augment(
    cfg: TrainConfig, net: nn.Module, data: ImageSet, quiet: bool = False, pad: int = 0
) -> AugmentConfig:
    """``cfg.augment``, unless its random window (``crop``) differs from the images' size and the
    network takes only that size (a Flatten into a Linear): then the same shifts of whole images
    (as many offsets: ``shift`` = (side + 2 * shift - crop) / 2), said in one line. ``pad``: the
    pixels the Classifier adds on every side before ``net``."""
    a, (c, h, w) = cfg.augment, data.image_shape
    if not a.crop or a.crop == h == w:
        return a
    if a.crop > min(h, w) + 2 * a.shift:
        raise CnnkitError(
            f"the augmentation's crop {a.crop} is larger than the {h}x{w} images padded "
            f"by their shift {a.shift}; use a crop of at most {min(h, w) + 2 * a.shift}"
        )
    probe = torch.zeros(2, c, a.crop + 2 * pad, a.crop + 2 * pad, device=data.images.device)
    probe = probe.contiguous(memory_format=_fmt(cfg.channels_last))
    was = net.training
    try:
        with torch.no_grad():
            net.eval()(probe)
        return a
    except Exception:  # any failure at that size: the net takes only its own
        try:
            with torch.no_grad():
                net(probe.new_zeros(2, c, h + 2 * pad, w + 2 * pad))
        except Exception as exc:  # not the images' size either: say so before training, in one line
            text = short_error(exc)
            raise CnnkitError(
                f"{cfg.model} cannot run on the data's {c}x{h}x{w} images ({type(exc).__name__}: {text}); "
                "choose a network that takes them"
            ) from None
        shift = (min(h, w) + 2 * a.shift - a.crop) // 2
        make_console(quiet=quiet).print(
            f"{cfg.model} takes only {h}x{w} inputs: training on shifts of "
            f"up to {shift} px of whole images instead of {a.crop}x{a.crop} crops"
        )
        return replace(a, crop=0, shift=shift)
    finally:
        net.train(was)


def load_splits(
    cfg: TrainConfig,
    device: torch.device,
    files: dict[str, list[str]] | None = None,
    split_seed: int | None = None,
    classes: list[str] | None = None,
) -> tuple[ImageSet, ImageSet]:
    """The train and validation splits, on ``device``; ``files``: an image folder's split as a run's
    split.json holds it (None: the split of ``split_seed``, default ``cfg.seed``); ``classes``: the
    run's classes, which an image folder's labels index (None: its class folders). Each split's
    ``meta["sha256"]`` is the digest of the part as read (:meth:`~cnnkit.data.imageset.ImageSet.digest`),
    before ``--trainval`` joins the parts and ``--subset`` shortens the training one."""
    seed = cfg.seed if split_seed is None else split_seed
    kw = dict(data_dir=cfg.data_dir, image_size=cfg.image_size, seed=seed, files=files, classes=classes)
    train_set, val_set = (load_dataset(cfg.data, s, **kw) for s in ("train", "val"))
    for part in (train_set, val_set):  # each part as read, before --trainval and --subset use it
        part.meta["sha256"] = part.digest()
    if cfg.trainval:  # the final refit: val is trained on (and still reported)
        train_set = train_set.cat(val_set, f"{train_set.name}+val")
    if cfg.subset:
        train_set = train_set.subset(torch.arange(min(cfg.subset, len(train_set))))
    if len(train_set) < cfg.batch_size:
        raise CnnkitError(
            f"--batch-size {cfg.batch_size} is larger than the training set "
            f"({len(train_set)} images); use a smaller batch"
        )
    return (ImageSet(s.images.to(device), s.labels.to(device), s.classes, s.name, s.meta) for s in (train_set, val_set))


def build_classifier(
    cfg: TrainConfig, data: ImageSet, network: dict | None = None, source: str = "the run"
) -> Classifier:
    """The network (seeded init) wrapped with the training set's per-channel mean/std. ``network``: a
    spec network's description (:func:`~cnnkit.models.network.spec_network`), built as ``cnnkit.load``
    builds it (``source`` names the run in its errors); None: ``cfg.model`` built by its name."""
    torch.manual_seed(cfg.seed)
    n, c = len(data.classes), data.image_shape[0]
    net = build_network(cfg.model, n, c) if network is None else build(network, n, c, source)
    x = data.images[:10000].float().div(255)  # a fixed sample is plenty
    mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).clamp_min(1e-3).tolist()
    tta = ("flip" if cfg.augment.flip else "shift") if cfg.tta else ""
    return Classifier(
        net, mean, std, data.classes, data.image_shape, tta, declared_pad(cfg.model, net, data.image_shape)
    )


def declared_pad(model: str, net: nn.Module, shape: tuple[int, int, int]) -> int:
    """Pixels of black on every side that bring the images to the size a zoo network declares, when
    it cannot take them as they are and the border is narrow (at most a quarter of the side: LeNet-5
    declares 32x32, and LeCun et al. padded MNIST's 28x28 digits so); else 0."""
    c, h, w = shape
    try:
        size = model_info(model).input_size
    except CnnkitError:  # a spec, a file or a Keras model: no declared size
        return 0
    grow = size[-1] - w
    if len(size) != 3 or size[-2] - h != grow or not 0 < grow <= min(h, w) // 4 or grow % 2:
        return 0
    was = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(2, c, h, w))
        return 0
    except Exception:  # noqa: BLE001 -- any failure at the images' own size
        return grow // 2
    finally:
        net.train(was)


def _val_label(cfg: TrainConfig) -> str:
    return "val (trained on)" if cfg.trainval else "val"


def _info(cfg: TrainConfig, data: ImageSet, network: dict | None = None) -> dict:
    """What the checkpoint says beyond the Classifier's own attributes (ClassifyTask.describe); a spec
    run's ``network`` is stored as it is (a zoo network or a factory's is described at each save)."""
    return {
        "model": model_reference(cfg.model),
        "dataset": {"name": cfg.data, "dark_background": bool(data.meta.get("dark_background"))},
        "config": cfg.to_dict(),
        **({"network": network} if network is not None else {}),
    }


def _resumed_config(out: Path, cfg: TrainConfig) -> tuple[TrainConfig, dict | None, str | None]:
    """On --resume the run's own config wins (a different one would not continue *exactly*).

    Returns:
        (the config, the spec network the run stored or None, a note to say or None): a spec run
        trains its stored copy of the spec; where its spec file holds another (edited, moved or
        deleted since the run started), the note says so.
    """
    path = out / RESUME_FILE
    member = out / "member0" / RESUME_FILE
    if not path.is_file() and not member.is_file():
        raise CnnkitError(f"nothing to resume in {out}: no {RESUME_FILE}; start a new run without --resume")
    _, meta = read_checkpoint(path if path.is_file() else member)
    if isinstance(meta.get("config"), dict) and "finetune" in meta["config"]:
        raise CnnkitError(f"{out} is a fine-tuning run; resume it with `cnnkit classify finetune --resume --out {out}`")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("model"), str):
        raise CnnkitError(f"{path}: the resume state holds no training config; start a new run")
    try:
        stored = validate(TrainConfig.from_dict(meta["config"]))  # member 0's seed is the run's seed
    except TypeError as exc:
        # Python's TypeError quotes a stored key as it is: any length, line breaks included
        raise CnnkitError(
            f"{path}: the stored training config is damaged ({short_error(exc, clause=True)}); start a new run"
        ) from None
    if path.is_file() and stored.ensemble > 1:  # an ensemble keeps its resume states in its members' folders
        raise CnnkitError(
            f"{out} is one member of the ensemble in {out.parent}; resume the ensemble: "
            f"`cnnkit train --resume --out {out.parent}`"
        )
    # the network the run started with: recorded in its resume state (an ensemble's: its first
    # member's); a resume state that records none is read with the run's model file (the ensemble's own
    # file lists its members), or, before the first one, as cnnkit 0.1.0 wrote it: a spec with no version
    model_file = out / "member0" / MODEL_FILE if stored.ensemble > 1 else out / MODEL_FILE
    note = None
    if "network" in meta:
        network = meta["network"]
        if not isinstance(network, dict):
            raise CnnkitError(
                f"{path}: the resume state's network description is {str(network)[:40]!r}, not a mapping; "
                "the file is damaged: start a new run in another --out"
            )
    elif model_file.is_file():
        network = network_of(read_info(model_file))
    else:
        network = spec_network(stored.model)
        if network is not None:
            network.pop("version")  # none recorded: version 1, as cnnkit 0.1.0 built the spec
    check_resumable(network, str(out))
    if not isinstance(network, dict) or network.get("kind") not in ("spec", "spec_file"):
        network = None  # a zoo network or a factory: built by its name, as at the start
    elif network["kind"] == "spec" and not _holds(stored.model, network):
        note = (
            f"note: {stored.model} is not the spec {out} started with (edited, moved or deleted since); "
            "--resume trains the run's own copy of it (a new run in another --out trains the file)"
        )
    resumed = replace(stored, model=trusted_resume_model(stored.model, cfg.model))
    return with_free_settings(resumed, cfg), network, note


def _holds(model: str, network: dict) -> bool:
    """Whether the spec file ``model`` holds the spec of ``network`` (False: another one, or none)."""
    try:
        return (spec_network(model) or {}).get("spec") == network.get("spec")
    except CnnkitError:  # missing or no longer a spec
        return False

"""The trainer: data on the device as tensors, batched augmentation, one-cycle SGD, EMA, checkpoints.

``train(config, out)`` prints the model summary, trains with a live progress bar, and after every
epoch writes ``model.safetensors``, ``resume.safetensors``, ``metrics.csv`` and ``curves.png`` to
``out`` (atomically; under torchrun only rank 0 writes). ``resume=True`` continues exactly from the
last completed epoch: same final weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..console import console as make_console
from ..data.augment import build_augment
from ..data.datasets import load_dataset
from ..data.imageset import ImageSet
from ..errors import CnnkitError
from . import checkpoint as ckpt
from .config import TrainConfig, validate
from .distributed import Dist, all_sum, distributed, shard
from .ema import EMA
from .evaluate import evaluate


@dataclass
class TrainResult:
    out: Path
    history: list[dict]     # one row per epoch, as in metrics.csv
    val_acc: float          # final validation accuracy of the saved model (with TTA if enabled)
    seconds: float          # training time of this call (excludes data loading and the summary)
    images: int             # training images processed by this call (all processes)
    members: list["TrainResult"] = field(default_factory=list)  # an ensemble's members, in order


def train(cfg: TrainConfig, out: str | os.PathLike, resume: bool = False, quiet: bool = False,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train ``cfg`` into the run folder ``out`` (``cfg.ensemble`` members when > 1)."""
    out = Path(out)
    if resume:
        cfg = _resumed_config(out, cfg)
    validate(cfg)
    with distributed(cfg.device) as d:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1)
                                                  // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        if cfg.ensemble == 1:
            return fit(cfg, out, d, resume, quiet, on_epoch_end)
        runs = [fit(replace(cfg, seed=cfg.seed + i), out / f"member{i}", d,   # config keeps K: resumable
                    resume and (out / f"member{i}" / ckpt.RESUME_FILE).is_file(), quiet, on_epoch_end)
                for i in range(cfg.ensemble)]
        if d.main:
            ckpt.save_ensemble(out / ckpt.MODEL_FILE, [r.out / ckpt.MODEL_FILE for r in runs])
        val = evaluate(ckpt.load(out, d.device), load_dataset(cfg.dataset, "val", cfg.data_dir,
                       image_size=cfg.image_size, seed=cfg.seed), cfg.eval_batch_size)
        if d.main and not quiet:
            make_console().print(f"ensemble of {cfg.ensemble}: {_val_label(cfg)} acc {val.accuracy:.2%} -> {out}")
        return TrainResult(out, runs[-1].history, val.accuracy, sum(r.seconds for r in runs),
                           sum(r.images for r in runs), runs)


def fit(cfg: TrainConfig, out: Path, d: Dist, resume: bool = False, quiet: bool = False,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """One model: the epoch loop. Everything it calls is a small function below."""
    console = make_console(quiet=quiet or not d.main)
    train_set, val_set = load_splits(cfg, d.device)
    model = build_classifier(cfg, train_set).to(d.device, memory_format=_fmt(cfg))
    if not quiet and d.main:
        from ..analysis import summary

        console.print(str(summary(model.net, input_size=model.input_size, batch_size=cfg.batch_size)))
    optimizer = make_optimizer(model.net, cfg)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    gen = torch.Generator(d.device).manual_seed(cfg.seed)    # data order + augmentation
    start, history = _start(out, resume, model, optimizer, ema, gen, cfg)
    ddp = nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    steps = len(train_set) // cfg.batch_size
    deploy = ema.module if ema else model
    t0, images = time.perf_counter(), 0
    val_label = _val_label(cfg)
    with _progress(console, quiet or not d.main) as bar:
        task = bar.add_task("train", total=cfg.epochs * steps, completed=start * steps,
                            loss=0.0, acc=0.0, ips=0.0, epoch=start + 1)
        try:
            for epoch in range(start, cfg.epochs):
                tick = time.perf_counter()
                loss, acc = train_epoch(ddp, model, optimizer, ema, train_set, gen, cfg, d, epoch,
                                        steps, lambda **kw: bar.update(task, **kw))
                with deploy.without_tta():    # TTA costs 5 passes: only the final answer uses it
                    val = evaluate(deploy, val_set, cfg.eval_batch_size, cfg.channels_last)
                seconds = time.perf_counter() - tick
                images += steps * cfg.batch_size
                row = dict(epoch=epoch + 1, train_loss=round(loss, 5), train_acc=round(acc, 5),
                           val_loss=round(val.loss, 5), val_acc=round(val.accuracy, 5),
                           lr=optimizer.param_groups[0]["lr"], seconds=round(seconds, 2))
                history.append(row)
                console.print(f"epoch {epoch + 1}/{cfg.epochs}  train loss {loss:.4f} acc {acc:.2%}  "
                              f"{val_label} loss {val.loss:.4f} acc {val.accuracy:.2%}  {seconds:.1f} s  "
                              f"{steps * cfg.batch_size / seconds:,.0f} img/s")
                if d.main:
                    save_run(out, cfg, model, deploy, optimizer, ema, gen, epoch + 1, history, train_set)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row)
        except KeyboardInterrupt:
            if d.main:
                ckpt.save_model(out / ckpt.MODEL_FILE, deploy,
                                {**_info(cfg, deploy, train_set, history), "interrupted": True})
                console.print(f"interrupted: {out / ckpt.MODEL_FILE} holds the current weights; "
                              f"`cnnkit train --resume --out {out}` continues from epoch {len(history) + 1}")
            raise
    seconds = time.perf_counter() - t0
    final = evaluate(deploy, val_set, cfg.eval_batch_size, cfg.channels_last).accuracy
    console.print(f"done: {val_label} acc {final:.2%}{' (with TTA)' if deploy.tta else ''} "
                  f"in {seconds:.1f} s -> {out}  (test with `cnnkit eval {out}`)")
    return TrainResult(out, history, final, seconds, images)


def train_epoch(ddp: nn.Module, model: nn.Module, optimizer, ema: EMA | None, data: ImageSet,
                gen: torch.Generator, cfg: TrainConfig, d: Dist, epoch: int, steps: int,
                report: Callable) -> tuple[float, float]:
    """One pass over ``data`` in shuffled global batches; returns (mean loss, accuracy)."""
    model.train()
    augment = build_augment(cfg.augment)
    perm = torch.randperm(len(data), generator=gen, device=gen.device)
    sums = torch.zeros(3, device=d.device)                  # loss * n, correct, n
    tick, every = time.perf_counter(), 20
    for i in range(steps):
        step = epoch * steps + i
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.epochs * steps, cfg)
        idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = augment(data.images[idx].float().div_(255), gen)  # the global batch, same on every rank
        x, y = shard(x, d).contiguous(memory_format=_fmt(cfg)), shard(data.labels[idx], d)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=d.device.type == "cuda"):
            logits = ddp(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        sums += torch.stack([loss.detach() * y.numel(), (logits.argmax(1) == y).sum(), torch.tensor(
            float(y.numel()), device=d.device)])
        if (i + 1) % every == 0 or i + 1 == steps:
            loss_now, acc_now, n = (sums / torch.tensor([sums[2], sums[2], 1.0], device=d.device)).tolist()
            if not math.isfinite(loss_now):
                raise CnnkitError(f"the loss became {loss_now} at epoch {epoch + 1}, step {i + 1}: "
                                  f"training diverged; lower the learning rate (received --lr {cfg.lr})")
            ips = (i % every + 1) * cfg.batch_size / (time.perf_counter() - tick)
            tick = time.perf_counter()
            report(advance=i % every + 1, loss=loss_now, acc=acc_now, ips=ips, epoch=epoch + 1)
    total = all_sum(sums, d)
    return (total[0] / total[2]).item(), (total[1] / total[2]).item()


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """onecycle: linear from lr/25 to lr over the warm-up, then cosine to 0; cosine: lr -> 0."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = int(cfg.warmup * total) if cfg.schedule == "onecycle" else 0
    if step < warm:
        return cfg.lr * (0.04 + 0.96 * step / warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def make_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; BN parameters and biases are not decayed."""
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.NAdam(groups, lr=cfg.lr)


def load_splits(cfg: TrainConfig, device: torch.device) -> tuple[ImageSet, ImageSet]:
    """The train and validation splits, on ``device``."""
    kw = dict(data_dir=cfg.data_dir, image_size=cfg.image_size, seed=cfg.seed)
    train_set, val_set = (load_dataset(cfg.dataset, s, **kw) for s in ("train", "val"))
    if cfg.trainval:                       # the final refit: val is trained on (and still reported)
        train_set = train_set.cat(val_set, f"{train_set.name}+val")
    if cfg.subset:
        train_set = train_set.subset(torch.arange(min(cfg.subset, len(train_set))))
    if len(train_set) < cfg.batch_size:
        raise CnnkitError(f"--batch-size {cfg.batch_size} is larger than the training set "
                          f"({len(train_set)} images); use a smaller batch")
    return (ImageSet(s.images.to(device), s.labels.to(device), s.classes, s.name, s.meta)
            for s in (train_set, val_set))


def build_classifier(cfg: TrainConfig, data: ImageSet) -> ckpt.Classifier:
    """The network (seeded init) wrapped with the training set's per-channel mean/std."""
    torch.manual_seed(cfg.seed)
    net = ckpt.build_network(cfg.model, len(data.classes), data.image_shape[0])
    x = data.images[:10000].float().div(255)                  # a fixed sample is plenty
    mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).clamp_min(1e-3).tolist()
    tta = ("flip" if cfg.augment.flip else "shift") if cfg.tta else ""
    return ckpt.Classifier(net, mean, std, data.classes, data.image_shape, tta)


def save_run(out: Path, cfg, model, deploy, optimizer, ema, gen, epoch, history, train_set) -> None:
    """Resume state, deployable model, metrics.csv and curves.png (each file atomic)."""
    ckpt.save_resume(out / ckpt.RESUME_FILE, model, optimizer, ema, gen, epoch, history, cfg.to_dict())
    ckpt.save_model(out / ckpt.MODEL_FILE, deploy, _info(cfg, deploy, train_set, history))
    ckpt.write_metrics_csv(out / "metrics.csv", history)
    from ..plots import training_curves

    training_curves(history, out / "curves.png")


def _val_label(cfg: TrainConfig) -> str:
    return "val (trained on)" if cfg.trainval else "val"


def _info(cfg: TrainConfig, model: ckpt.Classifier, data: ImageSet, history: list[dict]) -> dict:
    return {"format": ckpt.FORMAT, "model": ckpt.model_reference(cfg.model),
            "num_classes": len(model.classes), "input_size": list(model.input_size),
            "classes": model.classes, "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(), "tta": model.tta,
            "dataset": {"name": cfg.dataset, "dark_background": bool(data.meta.get("dark_background"))},
            "epoch": len(history), "history": history, "config": cfg.to_dict(), "interrupted": False}


def _start(out: Path, resume: bool, model, optimizer, ema, gen, cfg) -> tuple[int, list[dict]]:
    path = out / ckpt.RESUME_FILE
    if not resume:
        if path.exists():
            raise CnnkitError(f"{out} already holds a run; pass --resume to continue it or choose "
                              "another --out")
        return 0, []
    epoch, history, _ = ckpt.load_resume(path, model, optimizer, ema, gen)
    return epoch, history


def _resumed_config(out: Path, cfg: TrainConfig) -> TrainConfig:
    """On --resume the run's own config wins (a different one would not continue *exactly*)."""
    path = out / ckpt.RESUME_FILE
    member = out / "member0" / ckpt.RESUME_FILE
    if not path.is_file() and not member.is_file():
        raise CnnkitError(f"nothing to resume in {out}: no {ckpt.RESUME_FILE}; start a new run "
                          "without --resume")
    _, meta = ckpt._read(path if path.is_file() else member)
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("model"), str):
        raise CnnkitError(f"{path}: the resume state holds no training config; start a new run")
    try:
        stored = validate(TrainConfig.from_dict(meta["config"]))   # member 0's seed is the run's seed
    except TypeError as exc:
        raise CnnkitError(f"{path}: the stored training config is damaged ({exc}); start a new run") from None
    return replace(stored, model=ckpt.trusted_resume_model(stored.model, cfg.model))


def _fmt(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _progress(console: Console, disable: bool) -> Progress:
    return Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  "
                               "{task.fields[ips]:,.0f} img/s"), TimeRemainingColumn(),
                    console=console, disable=disable, transient=True)

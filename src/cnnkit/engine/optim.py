"""Optimizers and learning-rate schedules, shared by every task."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn as nn

from cnnkit.engine.config import RunConfig
from cnnkit.engine.task import Phase, Plan, Setup


class Recipe(Protocol):
    """The optimisation fields of a run config (every task's config has them)."""

    lr: float  # peak learning rate
    schedule: str  # onecycle | cosine | constant
    warmup: float  # share of the steps spent warming up (onecycle)
    optimizer: str  # sgd | adamw | nadam
    momentum: float  # SGD momentum (Nesterov when > 0)
    weight_decay: float  # on conv and linear weights only: decoupled (adamw) or L2 (sgd, nadam)


def lr_at(step: int, total: int, cfg: Recipe) -> float:
    """onecycle: linear from lr/25 to lr over the warm-up, then cosine to 0; cosine: lr -> 0."""
    if cfg.schedule == "constant":
        return cfg.lr
    # the share's whole steps, the product rounded first: 0.29 x 100 is 28.999999999999996 in floats
    warm = int(round(cfg.warmup * total, 6)) if cfg.schedule == "onecycle" else 0
    if step < warm:
        return cfg.lr * (0.04 + 0.96 * step / warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def make_optimizer(net: nn.Module, cfg: Recipe) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; BN parameters and biases are not decayed."""
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    # foreach (PyTorch's default on GPUs only): one call per operation over every tensor, the same
    # arithmetic. On 2 Zen 3 cores SGD's step for mnist_fast takes 0.26 ms instead of 0.43, AdamW's
    # 0.57 ms instead of 0.98; the notes' network at batch 32 (1.6 M of its 1.7 M weights in one
    # Dense layer) steps in 30 ms instead of 32.5, NAdam's for-loop alone taking 10.4 ms, foreach 4.0
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, foreach=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    return torch.optim.NAdam(groups, lr=cfg.lr, foreach=True)


def single_phase_plan(
    cfg,
    params: Callable[[nn.Module], nn.Module] | None = None,
    val_every: int | None = None,
    freeze: tuple[int, list[nn.Module]] | None = None,
) -> Plan:
    """The plan of ordinary training: one phase of ``cfg.epochs`` epochs.

    Args:
        cfg: the run config (its epochs, optimisation fields, seed, EMA and ``val_every``).
        params: ``fn(model) -> module`` whose parameters train (default: the model's own), e.g. the
            network inside a deployable wrapper.
        val_every: instead of ``cfg.val_every``.
        freeze: ``(epochs, modules)``: the modules stop training after that many epochs
            (:attr:`~cnnkit.engine.task.Setup.freeze`); None: everything trains throughout.

    Returns:
        A :class:`~cnnkit.engine.task.Plan` whose phase builds :func:`make_optimizer` and follows
        :func:`lr_at`.
    """

    def begin(model: nn.Module) -> Setup:
        net = params(model) if params is not None else model
        return Setup(make_optimizer(net, cfg), schedule=lambda step, total: lr_at(step, total, cfg), freeze=freeze)

    every = cfg.val_every if val_every is None else val_every
    return Plan([Phase(cfg.epochs, begin)], seed=cfg.seed, ema=cfg.ema, val_every=every)


def analysed_optimizer(config: dict) -> str:
    """The optimizer of a run's ``config`` as :func:`cnnkit.summary` names it (its state's size):
    ``sgd`` with momentum is ``momentum``, ``nadam`` keeps Adam's two moments (``adam``).

    Args:
        config: a run config as a dict (``optimizer``, ``momentum``). One that names its optimizer
            and not ``momentum`` is of a task that does not take ``--momentum`` (its stored config
            leaves it out): its SGD has the shared default.

    Returns:
        ``sgd`` | ``momentum`` | ``adam`` | ``adamw``.
    """
    name = str(config.get("optimizer", "sgd"))
    if name == "sgd":
        momentum = config.get("momentum", RunConfig.momentum if "optimizer" in config else 0)
        return "momentum" if float(momentum or 0) > 0 else "sgd"
    return {"nadam": "adam"}.get(name, name if name in ("adam", "adamw") else "adam")

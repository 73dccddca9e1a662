"""Fine-tuning a pretrained network on new classes, in stages (Keras' recipe, Géron ch. 14; Chollet ch. 5).

1. ``head``: a new classifier for the new classes; the whole base frozen. With ``cache_features``
   the frozen base runs once over the data and every epoch trains the head on the stored features.
2. ``top``: unfreeze from a named layer (``freeze_until="layer4"``, ``"features.24"``, or Keras'
   ``"block5_conv1"``) to the output, the new head included. By default: the last convolution and
   what follows it (EfficientNet's ``conv_head`` and its batch norm). With ``cache_features`` and no
   augmentation the frozen layers below run once over the data, where the network splits there
   (a chain of modules), and every epoch trains on the activations entering the unfrozen ones.
3. ``all``: everything trains, with discriminative learning rates: the head gets ``lr_all`` and each
   resolution stage below it ``lr_decay`` times the one above (Howard & Ruder 2018,
   https://arxiv.org/abs/1801.06146).

Batch norm, deliberately: a BN layer whose parameters are frozen stays in eval mode, so its running
statistics (learnt on the big dataset) are used and never updated. Unfrozen BN layers also stay in
eval mode unless ``train_bn=True`` (Keras' advice: small batches of a small dataset would wreck
statistics estimated on millions of images).

The command's default, ``stages="auto"``, tries stage ``head`` and stage ``top`` (from the last
convolution) on the cached data and keeps the lower validation loss: on five kinds of flowers stage
top validated 2.5 points above the head on each of three splits; on ants and bees (ImageNet
classes, 244 photos) the head stays ahead (``docs/experiments/2026-12-04-top-stage.md``).

The new head, stage ``head`` (``head="auto"``): two candidates train on the cached features -- a
Linear on the pooled features, and a Linear on the pretrained classifier's own log-probabilities
(:class:`cnnkit.models.heads.ClassScoresHead`: ImageNet already knows ants and bees) -- and the
one with the lower validation loss is kept; the test split is never looked at. Classes that
ImageNet already has (ants, bees) favour the class scores, new ones (flowers) the features: see
``docs/experiments/2026-12-01-finetune-defaults.md``.

Works with any model that has the timm interface (``forward_features``, ``forward_head``,
``reset_classifier``) and with an ``nn.Sequential`` whose head starts at its ``nn.Flatten``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit import engine
from cnnkit.data.imageset import Features, ImageSet
from cnnkit.engine import Data, Phase, Plan, Setup
from cnnkit.engine.config import use_threads
from cnnkit.engine.distributed import Dist, launched
from cnnkit.engine.runfolder import (
    FORMAT,
    MODEL_FILE,
    atomic_write_bytes,
    check_new_run,
    check_resumed_data,
    json_text,
    read_info,
    read_split,
    resumed_config,
    run_classes,
    save_model,
    with_free_settings,
)
from cnnkit.errors import CnnkitError
from cnnkit.models.deploy import Classifier
from cnnkit.models.fold import fold_batchnorm
from cnnkit.models.heads import (
    HEAD_KINDS,
    ClassScoresHead,
    attach_class_scores,
    frozen_head_parameters,
    last_linear,
)
from cnnkit.models.network import model_reference
from cnnkit.tasks.classify.config import FinetuneConfig
from cnnkit.tasks.classify.evaluate import evaluate as evaluate_classifier
from cnnkit.tasks.classify.evaluate import image_files
from cnnkit.tasks.classify.load import load_classifier
from cnnkit.tasks.classify.task import ClassifyTask

STAGES = ("head", "top", "all")
_BN = nn.modules.batchnorm._BatchNorm
_POOL = (nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class FinetuneRecipe:
    # epochs per stage, or {"head": 5, "top": 3, "all": 2}; the head trains on cached features (cheap)
    epochs: int | dict = field(default_factory=lambda: {"head": 40, "top": 8, "all": 2})
    batch_size: int = 32
    lr_head: float = 3e-3  # AdamW peak learning rate of the new head (stage "head")
    lr_top: float = 1e-3  # the unfrozen top and the head (stage "top")
    lr_all: float = 1e-4  # the head in stage "all"; lower stages get lr_all * lr_decay**depth
    lr_decay: float = 0.5  # discriminative factor per resolution stage, going down
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    label_smoothing: float = 0.0
    cache_features: bool = True  # stage "head": run the frozen base once (then no augmentation there);
    # stage "top" without augmentation or train_bn: the frozen layers below it once, where the network
    # splits there; both then train with the network in eval mode (no dropout) unless head_dropout
    cache_flips: bool = True  # ... on each training image and its mirror image (twice the data)
    head_dropout: bool = False  # ... and the network's own dropout before its classifier active there
    head: str = "auto"  # the new head: "features" (Linear on the pooled features) |
    # "class_scores" (Linear on the old classifier's log-probabilities) |
    # "auto": both tried on the cached features, the lower val loss kept
    schedule: str = "cosine"  # every stage's LR: "cosine" from its peak to 0 | "constant"
    tta: str = "flip"  # the fine-tuned classifier's test-time augmentation ("" | "flip" | "shift")
    train_bn: bool = False  # unfrozen BN layers update their running statistics
    mean: tuple | None = None  # input normalisation on [0, 1] pixels; None: 0.5 per channel
    std: tuple | None = None
    seed: int = 0  # batch order and augmentation
    device: str = "cpu"
    max_batches: int | None = None  # per epoch; a smoke test's couple of batches
    minutes: float = 0.0  # the run's training time budget (0: none); candidates that "auto" tries train whole
    log: Callable[[dict], None] | None = None  # called with each history row


@dataclass
class StagePlan:
    """What one stage trains: parameter groups with their learning rate, and BN layers kept in eval."""

    stage: str
    groups: list[dict]  # torch.optim param groups: {"params", "lr", "names"}
    frozen_bn: list[nn.Module] = field(default_factory=list)

    @property
    def trainable(self) -> list[str]:
        return [n for g in self.groups for n in g["names"]]


def finetune(
    model: nn.Module,
    train_set: ImageSet,
    val_set: ImageSet | None = None,
    stages=STAGES,
    freeze_until: str | None = None,
    augment=None,
    config: FinetuneRecipe | None = None,
    *,
    out=None,
    resume: bool = False,
    quiet: bool = True,
    info: dict | None = None,
    precision: str = "auto",
    **overrides,
) -> list[dict]:
    """Fine-tune ``model`` in place on ``train_set``'s classes; returns one history row per epoch.

    The stages are a plan (:func:`stage_plan`) run by the training engine, which brings the NaN
    guard, checkpoints with exact resume, torchrun/DDP, ``metrics.csv`` and ``curves.png``.

    Args:
        model: a pretrained network (timm interface or ``nn.Sequential`` with a Flatten head).
        train_set: uint8 :class:`ImageSet` at the model's input size.
        val_set: the validation split, of the same kind.
        stages: a subset of ``("head", "top", "all")``, run in that order, or ``"auto"``: ``head`` or
            ``top``, whichever validates lower when each is tried on the cached data.
        freeze_until: the first layer trained in stage ``top`` (module name or Keras-style name).
        augment: a batched ``(x, generator) -> x`` on [0, 1] floats, e.g. :class:`ImageAugment`.
        config: a :class:`FinetuneRecipe`; keyword ``overrides`` replace its fields.
        out: the run folder written after every epoch (None: nothing is written).
        resume: continue the run in ``out`` (same settings) after its last completed epoch.
        quiet: no summary, progress bar or epoch lines.
        info: checkpoint metadata, e.g. ``{"model": "resnet18"}`` so that ``cnnkit.load`` rebuilds it.
        precision: ``auto`` (bf16 autocast where the device has native bf16, else fp32) | ``fp32`` | ``bf16``.
        **overrides: :class:`FinetuneRecipe` fields (``lr_head=1e-3``, ``epochs={"head": 5}``, ...).

    Returns:
        One history row per epoch: its ``stage``, the ``epoch`` within the stage, training and
        validation loss and accuracy, the number of trainable parameters.

    Raises:
        CnnkitError: an unknown stage or layer name, a model without a separable head, empty or
            mismatched datasets, a diverging loss. The model is left in eval mode with every
            parameter trainable.

    Example:
        >>> net = create_model("resnet18", weights="imagenet")                      # doctest: +SKIP
        >>> history = finetune(net, train_set, val_set, stages=("head", "top"), epochs=3)  # doctest: +SKIP
    """
    auto = stages == "auto" or tuple(stages) == ("auto",)
    cfg, stages = _config(config, overrides, ["head", "top"] if auto else stages, train_set, val_set)
    check_new_run(out, resume)  # before any candidate trains: an --out already taken fails now
    c = train_set.images.shape[1]
    clf = Classifier(
        model, cfg.mean or (0.5,) * c, cfg.std or (0.5,) * c, train_set.classes, train_set.image_shape, cfg.tta
    )  # per-epoch validation runs without the TTA
    clf.to(torch.device(cfg.device)).eval()  # validation runs in eval mode; training sets its modes
    source = _source_classifier(model, cfg, stages, val_set)
    _reset_classifier(model, len(train_set.classes))
    if "top" in stages:  # a bad --freeze-until fails now, not after the head has trained
        plan_stage(model, "top", freeze_until, train_set.image_shape, cfg)
    task = ClassifyTask(
        cfg.batch_size,
        augment,
        cfg.label_smoothing,
        channels_last=False,
        drop_last=False,
        max_batches=cfg.max_batches,
        eval_batch_size=cfg.batch_size,
        info=dict(info or {}),
    )
    cache: dict = {}  # the cached features (and activations for stage top), made once
    # augmented images cannot be cached, nor batch-norm statistics trained on the whole model in eval mode
    top_cached = "top" in stages and augment is None and not cfg.train_bn
    head = cfg.head if source is not None else "features"  # no old classifier to read: the features head
    kinds = HEAD_KINDS if head == "auto" else (head,)
    saved = resumed_config(out).get("finetune", {}) if resume and out is not None else {}
    if auto and saved.get("stages"):
        stages = list(saved["stages"])
    if head == "auto" and saved.get("head"):
        head = saved["head"]
    candidates = []  # (stage, head) pairs tried on the cached data, from the same start
    if head == "auto":
        candidates = [("head", k) for k in kinds]
    if auto and not saved.get("stages"):
        if val_set is not None and top_cached:
            # stage top under the features head: under the class-scores head the trained convolution
            # feeds ImageNet's frozen classifier, which validated lower on flowers and on ants and bees
            candidates = [("head", k) for k in kinds] + [("top", "features" if "features" in kinds else kinds[0])]
        else:  # nothing to choose by, or stage top would run the whole network: the head
            stages = ["head"]
    trained: dict = {}
    losses = _try(
        task, clf, source, candidates, freeze_until, cfg, train_set, val_set, cache, precision, top_cached, trained
    )
    if losses:
        best = min(losses, key=losses.get)
        stages, head = ([best[0]] if auto else stages), best[1]
        if not quiet:
            print("tried: " + ", ".join(f"{s} with the {k} head val loss {v:.4f}" for (s, k), v in losses.items()))
            print(f"kept: stage {best[0]}, {best[1]} head")
    head = "features" if head == "auto" else head  # auto without a validation split
    if head == "class_scores":
        _install_head(model, source, len(train_set.classes))
    task.info["finetune_head"] = {"kind": head, "val_loss": {k: v for (s, k), v in losses.items() if s == "head"}}
    if auto:
        task.info["finetune_stages"] = {
            "stages": stages,
            "val_loss": {f"{s}:{k}" if len(kinds) > 1 else s: v for (s, k), v in losses.items()},
        }
    if resume and not losses and out is not None and (Path(out) / MODEL_FILE).is_file():
        chosen = read_info(out)  # the choice the run made (a resumed run tries no candidate again)
        task.info.update({k: chosen[k] for k in ("finetune_head", "finetune_stages") if k in chosen})
    settings = {k: v for k, v in cfg.__dict__.items() if k not in ("log", "minutes")}  # minutes: in args
    settings["head"] = head
    log = (lambda epoch, row: cfg.log(_stage_row(row))) if cfg.log else None
    kept_info = {k: v for k, v in (info or {}).items() if k != "data_files"}  # a record of the data, no setting
    config = {**kept_info, "finetune": {**settings, "stages": list(stages), "freeze_until": freeze_until}}
    # the run is the candidate already trained (the same plan and seed): kept, not trained again; under
    # torchrun the run trains across the processes as before (each trained the candidates alone)
    alone = launched()[1] == 1
    kept = trained.get((stages[0], head)) if len(stages) == 1 and not resume and alone else None
    try:
        if kept is not None:
            state, history, ran_in = kept
            clf.load_state_dict(state)
            if out is not None:
                engine.save_run(task, clf, history, out, seed=cfg.seed, config=config, precision=ran_in)
            for i, row in enumerate(history if log is not None else []):
                log(i, row)
        else:
            plan = stage_plan(clf, stages, freeze_until, cfg, train_set, val_set, cache, top_cached)
            plan = dataclasses.replace(plan, minutes=cfg.minutes)  # --minutes: stop, saved, before an epoch
            history = engine.fit(
                task,
                clf,
                Data(train_set, val_set),
                plan,
                out,
                resume=resume,
                quiet=quiet,
                device=cfg.device,
                command="cnnkit classify finetune",
                on_epoch_end=log,
                precision=precision,
                config=config,
            ).history
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    return [_stage_row(r) for r in history]


def stage_plan(
    clf: nn.Module,
    stages,
    freeze_until: str | None,
    cfg: FinetuneRecipe,
    train_set: ImageSet,
    val_set: ImageSet | None = None,
    cache: dict | None = None,
    with_top: bool | None = None,
):
    """The engine's plan: one phase per stage -- its parameters and LRs (:func:`plan_stage`), its
    frozen BN layers, and with ``cache_features`` for ``head`` the head alone on cached features,
    for ``top`` its layers on the cached activations entering them (where the network splits there:
    :func:`_split`). Both computed once into ``cache``, which a second plan on the same data may
    share; ``with_top`` (default: ``"top" in stages``) says whether stage ``top`` will use it."""
    cache = {} if cache is None else cache
    model = clf.net
    head = _parts(model)[1]

    def begin(stage: str):
        def setup(_) -> Setup:
            plan = plan_stage(model, stage, freeze_until, clf.input_size, cfg)
            opt = torch.optim.AdamW(plan.groups, weight_decay=cfg.weight_decay, foreach=True)
            row = {"trainable": sum(p.numel() for g in plan.groups for p in g["params"])}
            peak = max(g["lr"] for g in plan.groups)
            for g in opt.param_groups:  # discriminative LRs keep their ratios under the schedule
                g["lr_scale"] = g["lr"] / peak
            schedule = (
                (lambda step, steps: peak * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
                if cfg.schedule == "cosine"
                else None
            )
            top = "top" in stages if with_top is None else with_top
            if stage == "all" or not cfg.cache_features or (stage == "top" and not top):
                return Setup(opt, schedule, frozen=plan.frozen_bn, row=row)
            # the frozen layers run once per image (and its mirror image); every epoch trains on what
            # they gave: the head on the features, stage top its layers on the activations entering them
            if "split" not in cache:
                cut = _cut_name(model, freeze_until, clf.input_size) if top else None
                cache["split"] = _split(clf, cut) if cut else None
                passes = _frozen_passes(clf, cache["split"])
                if passes[1] is None:  # the folded copy did not split: stage top runs the whole network
                    cache["split"] = None
                parts = [
                    _features(clf, ds, cfg, passes, flips)
                    for ds, flips in ((train_set, cfg.cache_flips), (val_set, False))
                    if ds is not None
                ]
                for key in ("features", "cut"):
                    cache[key] = Data(parts[0][key], parts[1][key] if len(parts) > 1 else None)
            if stage == "top" and cache["split"] is None:  # the network's forward is not a chain of its modules
                return Setup(opt, schedule, frozen=plan.frozen_bn, row=row)
            # the whole network in eval mode there (no dropout) unless head_dropout: only the head trains
            frozen = plan.frozen_bn if cfg.head_dropout else plan.frozen_bn + [model]
            above = cache["split"][1] if stage == "top" else None
            module, data = _Head(clf, head, above), cache["cut" if stage == "top" else "features"]
            return Setup(opt, schedule, module=module, data=data, frozen=frozen, row=row)

        return setup

    epochs = {s: cfg.epochs.get(s, 0) if isinstance(cfg.epochs, dict) else cfg.epochs for s in stages}
    return Plan([Phase(epochs[s], begin(s), name=s) for s in stages], seed=cfg.seed)


def plan_stage(
    model: nn.Module,
    stage: str,
    freeze_until: str | None = None,
    input_shape=(3, 224, 224),
    config: FinetuneRecipe | None = None,
) -> StagePlan:
    """Set ``requires_grad`` for ``stage`` and return its parameter groups and frozen BN layers."""
    cfg = config or FinetuneRecipe()
    features, _ = _parts(model)
    leaves, stage_of = _trace_base(model, features, input_shape)
    base_ids = {id(p) for _, m in leaves for p in m.parameters(recurse=False)}
    names = {id(p): n for n, p in model.named_parameters()}
    fixed = frozen_head_parameters(model)  # a ClassScoresHead's old classifier: never trained
    head = [p for p in model.parameters() if id(p) not in base_ids and id(p) not in fixed]
    if stage == "head":
        first = len(leaves)  # nothing of the base trains
    elif stage == "top":
        first = _top_start(freeze_until, leaves, stage_of)
    elif stage == "all":
        first = 0
    else:
        raise CnnkitError(f"unknown stage {stage!r}; use some of {', '.join(STAGES)}")
    lr = {"head": cfg.lr_head, "top": cfg.lr_top, "all": cfg.lr_all}[stage]
    # depth of each resolution stage that holds parameters, counted from the top (1) down
    with_params = sorted({stage_of[i] for i, (_, m) in enumerate(leaves) if _has_params(m)}, reverse=True)
    depth = {s: d for d, s in enumerate(with_params, start=1)}
    by_lr: dict[float, list] = {lr: list(head)}
    for i, (_, m) in enumerate(leaves):
        for p in m.parameters(recurse=False):
            if i >= first:  # "all": a stage at depth d trains at lr * decay**d
                mult = cfg.lr_decay ** depth[stage_of[i]] if stage == "all" else 1.0
                by_lr.setdefault(lr * mult, []).append(p)
    trainable = {id(p) for ps in by_lr.values() for p in ps}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    frozen_bn = [m for i, (_, m) in enumerate(leaves) if isinstance(m, _BN) and (i < first or not cfg.train_bn)]
    groups = [
        {"params": ps, "lr": r, "names": [names[id(p)] for p in ps]}
        for r, ps in sorted(by_lr.items(), reverse=True)
        if ps
    ]
    return StagePlan(stage, groups, frozen_bn)


# ----------------------------------------------------------------------------- the model's parts


def _parts(model: nn.Module) -> tuple[Callable, Callable]:
    """(features, head) callables: the timm interface, or a Sequential split at its head."""
    if callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        return model.forward_features, model.forward_head
    if isinstance(model, nn.Sequential):
        children = list(model)
        for i, m in enumerate(children):
            if isinstance(m, nn.Flatten) or any(isinstance(s, (nn.Linear, nn.Flatten)) for s in m.modules()):
                return nn.Sequential(*children[:i]), nn.Sequential(*children[i:])
    raise CnnkitError(
        f"cannot find the head of {type(model).__name__}: give a model with "
        "forward_features/forward_head (every zoo model) or an nn.Sequential whose "
        "classifier starts at an nn.Flatten"
    )


def _reset_classifier(model: nn.Module, num_classes: int) -> None:
    """A new last layer with ``num_classes`` outputs, all zero: it starts answering "every class
    equally likely". (timm's EfficientNet init, U(+-1/sqrt(classes)), is +-0.7 for two classes: on
    1,280 features the first logits were in the tens and 40 head epochs did not undo it -- val loss
    0.21 against 0.13 from zero.)"""
    if callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(num_classes)
        _zero_last_linear(model)
        return
    parent, attr, old = last_linear(model)
    if isinstance(old, ClassScoresHead):  # a fine-tuned run fine-tuned again
        old = old.source
    new = nn.Linear(
        old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )
    setattr(parent, attr, new)
    _zero_last_linear(model)


def _source_classifier(model: nn.Module, cfg, stages, val_set) -> nn.Linear | None:
    """A copy of the pretrained classifier when a ClassScoresHead may be tried (else None)."""
    if cfg.head not in HEAD_KINDS + ("auto",):
        raise CnnkitError(f"unknown head {cfg.head!r}; use auto, {' or '.join(HEAD_KINDS)}")
    if cfg.head == "features" or (
        cfg.head == "auto" and (stages == ["all"] or not cfg.cache_features or val_set is None)
    ):
        return None
    _, _, old = last_linear(model)
    if not isinstance(old, nn.Linear):
        return None
    return copy.deepcopy(old)


def _install_head(model: nn.Module, source: nn.Linear, num_classes: int) -> None:
    """The model's new classifier becomes a ClassScoresHead on (a copy of) the old one, starting at zero."""
    parent, attr, _ = last_linear(model)
    setattr(parent, attr, copy.deepcopy(source))
    attach_class_scores(model, num_classes)
    _zero_last_linear(model)


def _try(
    task, clf, source, candidates, freeze_until, cfg, train_set, val_set, cache, precision, top_cached, trained=None
) -> dict:
    """{(stage, head kind): validation loss}: each candidate trained from the same start by the
    engine on the cached features (stage ``head``) or activations (``top``), as the run would train
    it, in one process (under torchrun every rank makes the same choice on all the data); the
    network is left as it was, with the features head at zero. ``trained``, a dict, receives each
    candidate's trained weights, history and precision (``{(stage, head kind): (state dict, history,
    precision)}``)."""
    model = clf.net
    parent, attr, new = last_linear(model)
    start, losses = copy.deepcopy(clf.state_dict()), {}
    for stage, kind in candidates:
        if kind == "class_scores":
            _install_head(model, source, len(train_set.classes))
        plan = stage_plan(clf, [stage], freeze_until, cfg, train_set, val_set, cache, top_cached)
        run = engine.fit(
            task,
            clf,
            Data(train_set, val_set),
            plan,
            None,
            quiet=True,
            dist=Dist(device=torch.device(cfg.device)),
            precision=precision,
        )
        if not run.history:  # the stage trains no epoch (--epochs 0): no validation loss to choose by
            setattr(parent, attr, new)
            clf.load_state_dict(start)
            continue
        losses[(stage, kind)] = run.history[-1]["val_loss"]
        if trained is not None:
            trained[(stage, kind)] = (copy.deepcopy(clf.state_dict()), run.history, run.precision)
        setattr(parent, attr, new)  # the features head, as it was
        clf.load_state_dict(start)
    return losses


def _zero_last_linear(model: nn.Module) -> None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        with torch.no_grad():
            linears[-1].weight.zero_()
            if linears[-1].bias is not None:
                linears[-1].bias.zero_()


def _trace_base(model, features, input_shape):
    """Leaf modules the base runs, in execution order, and each one's resolution stage (0, 1, ...)."""
    order: list[tuple[str, nn.Module]] = []
    sizes: list[tuple | None] = []
    names = {m: n for n, m in model.named_modules()}
    seen: set[int] = set()

    def hook(module, inputs, output):
        if id(module) not in seen:
            seen.add(id(module))
            order.append((names[module], module))
            sizes.append(tuple(output.shape[-2:]) if torch.is_tensor(output) and output.dim() == 4 else None)

    leaves = [m for m in model.modules() if not list(m.children()) and m in names]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            features(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    distinct: list[tuple] = []
    stage_of = []
    for s in sizes:
        if s is not None and s not in distinct:
            distinct.append(s)
        stage_of.append(max(len(distinct) - 1, 0))
    return order, stage_of


def layers_before(net: nn.Module, name: str, input_shape) -> list[nn.Module]:
    """The leaf modules ``net``'s features run before layer ``name`` (a module name such as
    ``features.1`` or a Keras-style name such as ``block2_conv1``), in the order they run: what
    ``--freeze-until`` leaves untrained. ``input_shape``: (C, H, W) of an input the features take."""
    leaves, stage_of = _trace_base(net, _parts(net)[0], input_shape)
    return [m for _, m in leaves[: _resolve_layer(name, leaves, stage_of)]]


def _top_start(freeze_until: str | None, leaves, stage_of) -> int:
    """Index of the first leaf stage ``top`` trains: ``freeze_until``'s, else the last convolution's
    (the top block's where the base has none)."""
    if freeze_until:
        return _resolve_layer(freeze_until, leaves, stage_of)
    convs = [i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.modules.conv._ConvNd) and _has_params(m)]
    return convs[-1] if convs else _top_block_start(leaves, stage_of)


def _cut_name(model: nn.Module, freeze_until: str | None, input_shape) -> str | None:
    """The name of the first module stage ``top`` trains (None: it trains from the input)."""
    leaves, stage_of = _trace_base(model, _parts(model)[0], input_shape)
    first = _top_start(freeze_until, leaves, stage_of)
    return leaves[first][0] if 0 < first < len(leaves) else None


def _split(clf: nn.Module, name: str) -> tuple[str, nn.Sequential] | None:
    """``(name, above)``: the network's feature layers from the module ``name`` (or the block that
    holds it) on, as a chain; the frozen layers below it then run once per image.

    The feature layers are taken to run their modules one after the other (the top-level ones in the
    order ``forward_features`` calls them, each once; ``nn.Sequential`` containers on the way to
    ``name`` opened), and the split is checked in fp32 on an image of the input's size: where
    ``above(below(x))`` is not ``forward_features(x)`` -- a forward that does more than call its
    modules in turn -- or nothing would stay below, None (stage ``top`` then runs the whole network).
    """
    halves = _halves(clf.net, name, _example(clf))
    return (name, halves[1]) if halves is not None else None


def _example(clf: nn.Module) -> torch.Tensor:
    """A random image of the classifier's input size, normalised, channels-last, on its device."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, *clf.input_size, generator=gen).to(clf.mean.device)
    return ((x - clf.mean) / clf.std).contiguous(memory_format=torch.channels_last)


def _halves(model: nn.Module, name: str, example: torch.Tensor) -> tuple[nn.Sequential, nn.Sequential] | None:
    """``(below, above)`` as :func:`_split` describes them, or None."""
    features, _ = _parts(model)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), torch.autocast(example.device.type, enabled=False):
            want = None
            if isinstance(features, nn.Sequential):
                chain = list(features.named_children())
            else:
                order: list[str] = []
                children = dict(model.named_children())
                hooks = [m.register_forward_hook(lambda *_, n=n: order.append(n)) for n, m in children.items()]
                try:
                    want = features(example)
                finally:
                    for h in hooks:
                        h.remove()
                if len(order) != len(set(order)):
                    return None
                chain = [(n, children[n]) for n in order]
            while True:  # open the containers on the way to `name`
                at = next((i for i, (n, _) in enumerate(chain) if name == n or name.startswith(n + ".")), None)
                if at is None:
                    return None
                n, m = chain[at]
                if n == name or not isinstance(m, nn.Sequential) or type(m).forward is not nn.Sequential.forward:
                    break
                chain = chain[:at] + [(f"{n}.{c}", cm) for c, cm in m.named_children()] + chain[at + 1 :]
            if at == 0:
                return None
            below, above = nn.Sequential(*[m for _, m in chain[:at]]), nn.Sequential(*[m for _, m in chain[at:]])
            want = features(example) if want is None else want
            got = above(below(example))
            if got.shape != want.shape or (got - want).abs().max() > 1e-4 * want.abs().max().clamp_min(1e-12):
                return None
    finally:
        for m, training in modes.items():
            m.training = training
    return below, above


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _top_block_start(leaves, stage_of) -> int:
    """Index of the first leaf of the last resolution stage that holds parameters."""
    with_params = [i for i, (_, m) in enumerate(leaves) if _has_params(m)]
    if not with_params:
        return len(leaves)
    last = stage_of[with_params[-1]]
    return min(i for i in with_params if stage_of[i] == last)


def _resolve_layer(name: str, leaves, stage_of) -> int:
    """A module name, or a Keras-style layer name, -> index of the first leaf from which to train."""
    module = _keras_to_module(name, leaves)
    for i, (n, _) in enumerate(leaves):
        if n == module or n.startswith(module + "."):
            return i
    tops = list(dict.fromkeys(n.split(".")[0] for n, _ in leaves))  # top-level names, in order
    raise CnnkitError(
        f"unknown layer freeze_until={name!r}; give a module name of the base such as "
        f"{', '.join(tops[-4:])} (or a Keras name like block5_conv1)"
    )


def _keras_to_module(name: str, leaves) -> str:
    """``block5_conv1`` (VGG: the 1st conv after the 4th pooling) or ``conv5_block1_2_conv``
    (ResNet: layer4.0.conv2) -> the module name; any other name is returned unchanged."""
    m = re.fullmatch(r"conv(\d)_block(\d+)(?:_(\d)_conv)?", name)
    if m:
        stage, block, conv = int(m[1]), int(m[2]), m[3]
        base = f"layer{stage - 1}.{block - 1}"
        return base if conv is None else (f"{base}.downsample.0" if conv == "0" else f"{base}.conv{conv}")
    m = re.fullmatch(r"block(\d+)_(conv|pool)(\d*)", name)
    if not m:
        return name
    block, kind, k = int(m[1]), m[2], int(m[3] or 1)
    b, count = 1, 0
    for n, mod in leaves:
        if isinstance(mod, _POOL):
            if b == block and kind == "pool":
                return n
            b, count = b + 1, 0
        elif isinstance(mod, nn.Conv2d) and b == block:
            count += 1
            if kind == "conv" and count == k:
                return n
    raise CnnkitError(
        f"freeze_until={name!r} does not exist in this model (block {block} has "
        f"{count} conv layers); check the block and layer numbers"
    )


# ----------------------------------------------------------------------------- data helpers


def _frozen_passes(clf: nn.Module, cut: tuple[str, nn.Module] | None) -> tuple[nn.Module, nn.Module | None]:
    """What the caches run, made once: a copy of the network in eval mode with its batch norms folded
    into its convolutions, as ``(below, above)``, its halves at ``cut`` (:func:`_split`), or as
    ``(features, None)`` without a cut (or where the copy does not split)."""
    example = _example(clf)
    folded = fold_batchnorm(clf.net, example)[0]
    halves = _halves(folded, cut[0], example) if cut else None
    return halves if halves is not None else (_parts(folded)[0], None)


def _features(clf: nn.Module, data: ImageSet, cfg, passes: tuple[nn.Module, nn.Module | None], flips: bool = False):
    """``{"features": ..., "cut": ...}``: the frozen base's output for every image, and where
    ``passes`` (:func:`_frozen_passes`) has an upper half the activations entering it too (else None),
    without grad, in channels-last batches; with ``flips`` also for every image mirrored left-right
    (the cached stages' only augmentation). In fp32 whatever the run's precision: the cached stages
    train on these for every epoch, and bf16 features cost 0.45 points of test accuracy on each of
    three flowers splits for 9 s less."""
    dev = clf.mean.device
    below, above = passes
    out: dict[str, list] = {"features": [], "cut": []}
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):
        for flip in (False, True) if flips else (False,):
            # chunks of two batches, at most the whole set: a --batch-size past the data (up to int64) is the set
            for idx in torch.arange(len(data)).split(max(1, min(cfg.batch_size * 2, len(data)))):
                x = data.images[idx].to(dev).float() / 255
                x = (((x.flip(-1) if flip else x) - clf.mean) / clf.std).contiguous(memory_format=torch.channels_last)
                y = below(x).float()
                if above is not None:
                    out["cut"].append(y)
                    y = above(y).float()
                out["features"].append(y)
    labels = data.labels.to(dev)
    labels = torch.cat([labels, labels]) if flips else labels
    return {k: Features(torch.cat(v), labels, data.classes) if v else None for k, v in out.items()}


class _Head(nn.Module):
    """The classifier's head alone (cached features in, logits out), or with ``above`` the layers from
    a cut on and the head (cached activations in), sharing the classifier's parameters."""

    def __init__(self, clf: nn.Module, head, above: nn.Module | None = None):
        super().__init__()
        self.clf, self.head, self.above = clf, head, above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.above(x) if self.above is not None else x)


def _stage_row(row: dict) -> dict:
    """An engine history row as fine-tuning reports it: the stage and the epoch within it."""
    out = {"stage": row["phase"], "epoch": row["phase_epoch"]}
    out.update((k, v) for k, v in row.items() if k not in ("epoch", "phase", "phase_epoch"))
    out.setdefault("val_loss", float("nan"))
    out.setdefault("val_acc", float("nan"))
    return out


def _config(config, overrides, stages, train_set, val_set) -> tuple[FinetuneRecipe, list[str]]:
    cfg = (
        FinetuneRecipe(**{**(config.__dict__ if config else {}), **overrides})
        if overrides or config
        else FinetuneRecipe()
    )
    stages = [stages] if isinstance(stages, str) else list(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise CnnkitError(
            f"unknown stages {bad or stages}; use auto alone or some of {', '.join(STAGES)}, "
            "e.g. stages=('head', 'top')"
        )
    if not isinstance(train_set, ImageSet) or len(train_set) == 0:
        raise CnnkitError(
            f"train_set must be a non-empty ImageSet, got {type(train_set).__name__} "
            f"of {len(train_set) if isinstance(train_set, ImageSet) else '?'} images"
        )
    if val_set is not None and (
        not isinstance(val_set, ImageSet)
        or val_set.classes != train_set.classes
        or val_set.image_shape != train_set.image_shape
    ):
        raise CnnkitError(
            "val_set must be an ImageSet with the same classes and image shape as "
            f"train_set ({train_set.classes}, {train_set.image_shape})"
        )
    if cfg.batch_size < 2:
        raise CnnkitError(f"batch_size must be >= 2, got batch_size={cfg.batch_size}")
    return cfg, [s for s in STAGES if s in stages]  # always head -> top -> all


def evaluate(
    model: nn.Module, data: ImageSet, mean=None, std=None, batch_size: int = 256, device: str = "cpu", tta: str = ""
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``data`` (uint8 images normalised by mean/std),
    by the classification task's evaluation (the one ``cnnkit eval`` and fine-tuning use); ``tta``
    as a fine-tuned checkpoint records it."""
    c = data.images.shape[1]
    clf = Classifier(model, mean or (0.5,) * c, std or (0.5,) * c, data.classes, data.image_shape, tta)
    result = evaluate_classifier(clf.to(device).train(model.training), data, batch_size)  # channels-last
    return result.loss, result.accuracy


def is_cnnkit_checkpoint(path: str | os.PathLike) -> bool:
    """True for a run folder or .safetensors file written by cnnkit (train, finetune, fcn)."""
    try:
        return read_info(path).get("format") == FORMAT
    except Exception:  # noqa: BLE001 -- any unreadable file is simply "not ours"
        return False


def load_backbone(
    model_name: str | None, weights: str | None, in_channels: int = 3
) -> tuple[nn.Module, str, dict | None]:
    """(network, model name) from a cnnkit checkpoint, or a zoo name plus reference-format weights:
    a local file, an ``http(s)://``/``file://`` URL, or ``"imagenet"`` for the published URL.
    The third item is a checkpoint's own ``{"mean", "std", "input_size"}`` (None for zoo weights)."""
    if weights is not None and is_cnnkit_checkpoint(weights):
        info = read_info(weights)
        if info.get("ensemble") or info.get("fcn"):
            raise CnnkitError(
                f"--weights {weights} is an ensemble or FCN checkpoint; give a single classifier to fine-tune"
            )
        net = load_classifier(weights).net  # refuses another task's run (sequence, segment, ...) in one line
        own = {k: info.get(k) for k in ("mean", "std", "input_size")}
        if any(v is None for v in own.values()) or not isinstance(info.get("model"), str):
            raise CnnkitError(
                f"--weights {weights}: its metadata lacks the classifier's input size or normalisation; "
                "give a run written by `cnnkit classify train|finetune`"
            )
        return net, info["model"], own
    if model_name is None:
        raise CnnkitError(
            "--model is required unless --weights is a cnnkit checkpoint; e.g. "
            "--model resnet18 --weights resnet18-f37072fd.pth"
        )
    if weights == "imagenet":  # the published reference weights, downloaded once and checksummed
        from cnnkit.models.weights import pretrained_url

        weights = pretrained_url(model_name)
    if weights is not None and not Path(weights).is_file() and "://" not in weights:
        raise CnnkitError(
            f"--weights file not found: {weights}; give a .pth/.safetensors file in the "
            "reference implementation's format or a cnnkit checkpoint"
        )
    from cnnkit.models import create_model

    return create_model(model_name, in_channels=in_channels, weights=weights), model_name, None


def save_finetuned(
    out: str | os.PathLike,
    net: nn.Module,
    model_name: str,
    classes: list[str],
    input_size,
    mean,
    std,
    history: list[dict],
    finetune: dict,
) -> Path:
    """Write ``out/model.safetensors`` atomically; returns its path."""
    clf = Classifier(net, mean, std, classes, input_size)
    info = {
        "format": FORMAT,
        "model": model_reference(model_name),
        "num_classes": len(classes),
        "input_size": list(input_size),
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "tta": "",
        "dataset": {"name": finetune.get("data", "")},
        "epoch": len(history),
        "history": history,
        "finetune": finetune,
        "interrupted": False,
    }
    path = Path(out) / MODEL_FILE
    save_model(path, clf, info)
    return path


def run_finetune(
    cfg: FinetuneConfig, out: str | os.PathLike | None = None, resume: bool = False, quiet: bool = False
) -> dict:
    """The recipe ``cnnkit classify finetune`` runs: data, network, stages, split and test score.

    The folder's images are split (a flat ``DIR/<class>/*`` folder gets a seeded, stratified
    train/val/test split, written to the run as ``split.json``), the network is fine-tuned by
    :func:`finetune`, and the held-out test split, if any, is scored once at the end
    (``test.json``).

    Args:
        cfg: the settings; on ``resume`` the run's own settings replace them, but for ``cfg``'s
            device, threads, data_dir and minutes where set (not None).
        out: the run folder (default ``runs/finetune-MODEL-TIME``).
        resume: continue the run in ``out`` exactly.
        quiet: print nothing but warnings (no summary, progress, epoch lines or results).

    Returns:
        ``{"out": folder, "val_acc": ..., "test_acc": ...}`` (accuracies None where there is no split).

    Raises:
        CnnkitError: a missing or unreadable folder, a bad setting, a network that cannot be
            fine-tuned, or a run to resume that is not a fine-tuning run.
    """
    import sys
    import time
    import warnings

    from cnnkit.data.augment import NOTES_AUGMENT
    from cnnkit.data.imagefolder import load_image_folder
    from cnnkit.models.preprocess import Preprocess, finetune_preprocess

    if resume:
        if out is None:
            raise CnnkitError("--resume needs --out RUN_FOLDER (the run to continue)")
        saved = resumed_config(out, "classify")
        if "finetune" not in saved or not isinstance(saved.get("args"), dict):
            raise CnnkitError(f"{out} is not a fine-tuning run; resume it with the command that started it")
        known = {f.name for f in dataclasses.fields(FinetuneConfig)}
        cfg = with_free_settings(
            dataclasses.replace(cfg, **{k: v for k, v in saved["args"].items() if k in known}), cfg
        )
    if not cfg.data:
        raise CnnkitError(
            "--data DIR is required: a folder of <class>/ image folders (or of train/ and val/ folders of them)"
        )
    stages = tuple(s.strip() for s in cfg.stages.split(",") if s.strip())
    if not stages or (stages != ("auto",) and any(s not in STAGES for s in stages)):  # before any decoding
        raise CnnkitError(f"--stages {cfg.stages!r}: give auto, or some of {','.join(STAGES)} (e.g. head,top)")
    if (
        (cfg.epochs is not None and cfg.epochs < 0)
        or cfg.batch_size < 2
        or (cfg.image_size is not None and cfg.image_size < 8)
    ):
        raise CnnkitError(
            f"--epochs must be >= 0, --batch-size >= 2 and --image-size >= 8; received --epochs "
            f"{cfg.epochs} --batch-size {cfg.batch_size} --image-size {cfg.image_size}"
        )
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise CnnkitError(f"--lr must be a positive number; received {cfg.lr}")
    for name in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, name) < 1:
            raise CnnkitError(f"--{name.replace('_', '-')} must be in [0, 1); received {getattr(cfg, name)}")
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise CnnkitError(
            f"--val-fraction plus --test-fraction must be below 1 (they leave the rest to train on); received "
            f"--val-fraction {cfg.val_fraction} --test-fraction {cfg.test_fraction}"
        )
    if str(cfg.device or "cpu").startswith("cuda") and not torch.cuda.is_available():  # as distributed() says it
        raise CnnkitError("--device cuda, but PyTorch sees no CUDA GPU here; use --device cpu")
    if not Path(cfg.data).is_dir():
        from cnnkit.data.datasets import default_data_dir

        there = default_data_dir(cfg.data_dir) / cfg.data  # `--data flowers` for the data folder's flowers/
        hint = f"; the data folder has {there}: pass --data {there}" if there.is_dir() else ""
        raise CnnkitError(
            f"image folder not found: {cfg.data}{hint or '; pass a folder holding one sub-folder per class'}"
        )
    if isinstance(cfg.weights, str) and cfg.weights.lower() == "none":  # as the other commands: random weights
        cfg = dataclasses.replace(cfg, weights=None)
    channels = 3  # a zoo network takes the channels of its own input (mnist_fast: grey) and the photos follow
    if cfg.model and not (cfg.weights and is_cnnkit_checkpoint(cfg.weights)):
        from cnnkit.models import model_info

        try:
            channels = model_info(cfg.model).input_size[0]
        except CnnkitError:
            pass  # an unknown name: load_backbone says so, with the close matches
    torch.manual_seed(cfg.seed)  # a random base (no --weights) and the new head: the same every run
    net, name, own = load_backbone(cfg.model, cfg.weights, channels)
    if ":" in name or name.endswith((".yaml", ".yml", ".json")):
        raise CnnkitError(f"--model {name!r}: fine-tuning needs a zoo model; give --model NAME")
    size = (cfg.image_size,) * 2 if cfg.image_size else None
    pre = finetune_preprocess(name, cfg.weights is not None and own is None, size)
    if own is not None:  # a cnnkit checkpoint: keep the normalisation (and size) it was trained with
        pre = Preprocess(
            tuple(own["input_size"][:1]) + (size or tuple(own["input_size"][1:])),
            tuple(own["mean"]),
            tuple(own["std"]),
            pre.crop_fraction,
        )
    flat = not any((Path(cfg.data) / d).is_dir() for d in ("train", "val", "valid", "validation", "test"))
    load = dict(
        image_size=pre.image_size,
        channels=pre.input_size[0],
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction if flat else 0.0,
        seed=cfg.seed,
        crop_fraction=pre.crop_fraction,
        interpolation=pre.interpolation,
    )
    use_threads(cfg.threads)
    own = (read_split(out, required=("train",)) or {}) if resume else {}  # a resumed run's own photos
    if own:  # and its own classes: a class folder added since is left out
        load["classes"] = run_classes(out)
    with warnings.catch_warnings(record=True) as caught:  # each data warning printed once, one line
        warnings.simplefilter("always")
        train = load_image_folder(cfg.data, "train", **load, files=own.get("train"))
        has_val = any((Path(cfg.data) / d).is_dir() for d in ("val", "valid", "validation"))
        val = (
            load_image_folder(cfg.data, "val", **load, files=own.get("val"))
            if cfg.val_fraction > 0 or has_val
            else None
        )
        has_test = (Path(cfg.data) / "test").is_dir() or (flat and cfg.test_fraction > 0)
        test = load_image_folder(cfg.data, "test", **load, files=own.get("test")) if has_test else None
    folder = str(Path(cfg.data).expanduser().resolve())  # absolute: `cnnkit eval` runs from any folder
    files = image_files(folder, train=train, val=val, test=test)  # recorded: what --resume and eval check by
    if resume:  # the images it trains and validates on as the run recorded them; its test part is scored as it is
        check_resumed_data(folder, files, out, "images")
    main = launched()[0] == 0  # under torchrun, rank 0 speaks
    for message in dict.fromkeys(str(w.message) for w in caught):
        if main:
            print(f"warning: {message}", file=sys.stderr)
    say = print if main and not quiet else (lambda *args: None)
    say(
        f"{name}: {len(train)} train / {len(val) if val else 0} val images of {len(train.classes)} "
        f"classes {train.classes}, input {pre.input_size}, stages {','.join(stages)}"
    )
    out = Path(out or f"runs/finetune-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if main:  # before any training: an --out that cannot be a folder is one line, not a lost run
        from cnnkit.errors import output_folder

        output_folder(out, "--out")
        check_new_run(out, resume)  # before split.json is written: a refused run leaves the folder untouched
        split = {part: ds.meta["files"] for part, ds in (("train", train), ("val", val), ("test", test)) if ds}
        atomic_write_bytes(  # before training: a resumed run reads it, whatever the folder holds by then
            out / "split.json",
            json_text(
                {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "test_fraction": load["test_fraction"], **split},
                indent=1,
            ).encode(),
        )
    about = {
        "stages": list(stages),
        "freeze_until": cfg.freeze_until,
        "weights": cfg.weights,
        "data": folder,
        "augment": cfg.augment,
        "val_fraction": cfg.val_fraction,
        "test_fraction": load["test_fraction"],
        "seed": cfg.seed,
        "crop_fraction": pre.crop_fraction,
        "interpolation": pre.interpolation,
    }
    rows = finetune(
        net,
        train,
        val,
        stages=stages,
        freeze_until=cfg.freeze_until,
        augment=NOTES_AUGMENT if cfg.augment else None,
        epochs=cfg.epochs if cfg.epochs is not None else FinetuneRecipe().epochs,
        batch_size=cfg.batch_size,
        head=cfg.head,
        lr_head=cfg.lr,
        lr_top=cfg.lr / 3,
        lr_all=cfg.lr / 30,
        train_bn=cfg.train_bn,
        mean=pre.mean,
        std=pre.std,
        seed=cfg.seed,
        device=cfg.device,
        minutes=cfg.minutes,
        out=out,
        resume=resume,
        quiet=quiet,
        precision=cfg.precision,
        info={
            "model": name,
            "dataset": {"name": str(cfg.data)},
            "finetune": about,
            "args": cfg.to_dict(),
            "data_files": files,
        },
    )
    result: dict = {"out": str(out), "val_acc": None, "test_acc": None}
    path = out / MODEL_FILE
    if not main:
        return result
    if not path.is_file():  # no epoch trained (--epochs 0): the network as it now is
        save_finetuned(out, net.cpu(), name, train.classes, pre.input_size, pre.mean, pre.std, [], about)
    tta = FinetuneRecipe().tta  # as the checkpoint answers (cnnkit eval, predict)
    if val is not None:
        # the saved model (the last epoch's) as it answers, with its TTA: not the per-epoch validation's
        # best epoch, which ran without TTA (on cached features in the cached stages)
        _, result["val_acc"] = evaluate(net.cpu(), val, pre.mean, pre.std, tta=tta)
        say(
            f"val accuracy {result['val_acc']:.4f} on {len(val)} images: the saved model "
            f"(epoch {len(rows)}) with {tta or 'no'} TTA"
        )
    if test is not None:  # once, after training: nothing was chosen by it
        _, result["test_acc"] = evaluate(net.cpu(), test, pre.mean, pre.std, tta=tta)
        atomic_write_bytes(
            out / "test.json", json_text({"test_acc": result["test_acc"], "n": len(test), "tta": tta}).encode()
        )
        say(
            f"test accuracy {result['test_acc']:.4f} on {len(test)} held-out images (used for nothing else; "
            f"with {tta or 'no'} TTA)"
        )
    say(f"wrote {path}")
    return result

"""The one training loop of cnnkit: every task and every fine-tuning stage runs through :func:`fit`.

``fit(task, model, data, plan, out)`` prints the task's summary, then for each phase of the plan
and each epoch: one pass of optimizer steps with a live progress bar (the NaN/inf guard checks every
logged loss every 20 steps and the weights before anything is saved), validation by the task's own
``evaluate``, and -- when ``out`` is given, on rank 0 only -- ``model.safetensors`` (the task's
deployable, EMA weights when EMA is on), ``resume.safetensors`` (every optimizer of the phase), ``metrics.csv`` and
``curves.png`` (after the last epoch, and after each epoch that ends another minute of training),
each written atomically. ``resume=True`` continues after the last completed epoch with the same
final weights as an uninterrupted run. Ctrl-C saves the current weights and says how to resume.
Under torchrun every process runs the same global batches and trains on its shard of each (DDP).
A task whose step is not one loss (a GAN's two alternating updates) defines ``step`` and gets
every optimizer of its :class:`~cnnkit.engine.task.Setup`. The engine knows nothing of classes,
boxes or masks: that is the task's business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from cnnkit.console import console as make_console
from cnnkit.engine.config import config_yaml
from cnnkit.engine.distributed import (
    Dist,
    all_sum,
    batch_length,
    distributed,
    pool,
    shard_batch,
    shard_weight,
)
from cnnkit.engine.ema import EMA
from cnnkit.engine.precision import autocast, choose
from cnnkit.engine.runfolder import (
    CONFIG_FILE,
    FORMAT,
    MODEL_FILE,
    RECORDED,
    RESUME_FILE,
    RESUME_FREE,
    atomic_write_bytes,
    check_new_run,
    load_resume,
    read_metadata,
    save_model,
    save_resume,
    write_metrics_csv,
)
from cnnkit.engine.task import Data, Plan, Pooled, Setup, Task
from cnnkit.errors import CnnkitError
from cnnkit.layers.bf16 import guard_bf16

REPORT_EVERY = 20  # steps between progress updates and loss checks (each one syncs with the device)
CURVES_EVERY = 60.0  # seconds of training between redrawings of curves.png (and after the last epoch)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained model to deploy (the EMA copy when EMA is on).
        history: one row per epoch, as in ``metrics.csv``.
        seconds: time in this call's epochs, validation and saving included (the summary and each
            phase's set-up -- optimizer, cached features -- not).
        images: training samples processed by this call, all processes together.
        best: ``(epoch, value)`` of the best ``task.metric`` on validation; None without validation.
        precision: what the steps ran in: ``"fp32"`` | ``"bf16"``.
    """

    model: nn.Module  # the trained model to deploy (the EMA copy when EMA is on)
    history: list[dict]  # one row per epoch, as in metrics.csv
    seconds: float  # time in this call's epochs (validation and saving included; the
    # summary and each phase's set-up -- optimizer, cached features -- not)
    images: int  # training samples processed by this call (all processes)
    best: tuple[int, float] | None  # (epoch, value) of the best task.metric on validation
    precision: str = "fp32"  # what the steps ran in: "fp32" | "bf16"


def fit(
    task: Task,
    model: nn.Module,
    data: Data,
    plan: Plan,
    out=None,
    *,
    resume: bool = False,
    quiet: bool = False,
    device: str | None = None,
    dist: Dist | None = None,
    config: dict | None = None,
    command: str = "cnnkit train",
    precision: str = "auto",
    on_epoch_end: Callable[[int, dict], None] | None = None,
    run=None,
    read_settings: Callable[[dict], dict] | None = None,
) -> FitResult:
    """Train ``model`` by ``plan``: the one training loop every task and fine-tuning stage runs through.

    Each phase of the plan builds its optimizer (``phase.begin``), then trains its epochs with a
    live progress bar; every logged loss is checked for NaN/inf every 20 steps. After each epoch the task's
    ``evaluate`` validates (every ``plan.val_every`` epochs and after the last), and on rank 0
    ``out`` receives ``model.safetensors``, ``resume.safetensors``, ``metrics.csv``, ``curves.png`` (drawn
    after the last epoch and after each that ends another minute of training)
    and ``config.yaml``, each written atomically. Ctrl-C saves the current weights and says how to
    resume.

    Args:
        task: what differs per task (:class:`~cnnkit.engine.task.Task`): batches, loss, evaluation,
            the deployable and its description.
        model: the network to train (moved to the device).
        data: the training split and the validation split (or None).
        plan: the phases, seed, EMA and validation interval.
        out: the run folder; None writes nothing.
        resume: continue the run in ``out`` after its last completed epoch; the final weights equal
            those of an uninterrupted run.
        quiet: no summary, progress bar or epoch lines.
        device: ``cpu`` | ``cuda`` (default: cuda when available); ignored when ``dist`` is given.
        dist: the process group of a caller that already started one (torchrun).
        config: JSON-able settings stored with the run; ``resume`` refuses a different one.
        command: the CLI command named in the resume hint.
        precision: ``auto`` | ``fp32`` | ``bf16`` for the training steps and validation
            (:mod:`cnnkit.engine.precision`). In bf16 on a CPU, the model's convolutions are guarded
            first (:func:`cnnkit.layers.bf16.guard_bf16`): those whose kernel overhangs the data run in fp32.
        on_epoch_end: ``fn(epoch, row)`` called after each saved epoch.
        run: the folder the resume hint names (an ensemble's, for one of its members); default ``out``.
        read_settings: how the task reads a run's stored ``config`` (the values an earlier version
            stored, as this version's): a resumed run's settings go through it before they are
            compared with ``config``; None: as stored.

    Returns:
        A :class:`FitResult`: the deployable model, the history, time, samples and best epoch.

    Raises:
        CnnkitError: an epoch without a training batch, a diverging loss or non-finite weights,
            ``out`` already holding a run without ``resume``, a run to resume that holds no resume
            state or was trained with another config, or an ``out`` that cannot be written.

    Example:
        >>> plan = Plan([Phase(3, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.1)))])  # doctest: +SKIP
        >>> result = fit(task, model, Data(train_set, val_set), plan, "runs/demo")            # doctest: +SKIP
    """
    out = Path(out) if out is not None else None
    config = json.loads(json.dumps(config or {}))
    with contextlib.nullcontext(dist) if dist is not None else distributed(device) as d:
        console = make_console(quiet=quiet or not d.main)
        model.to(d.device)
        if not quiet and d.main:
            console.print(task.summary(model))
        precision, why = choose(precision, d.device)
        if precision == "bf16" and d.device.type == "cpu":
            guard_bf16(model)  # the convolutions oneDNN's bf16 kernels get wrong run in fp32
        if "slow" not in why:
            console.print(f"precision: {precision} ({why})")
        elif d.main:  # said even when quiet, on one line
            print(f"note: --precision bf16 {why}; --precision auto picks fp32 here", file=sys.stderr)
        gen = torch.Generator(d.device).manual_seed(plan.seed)
        ema = EMA(model, plan.ema) if plan.ema else None
        done, history = _start(out, resume, model, ema, gen, config, task, read_settings)
        deploy = ema.module if ema else model
        seconds, images, first = 0.0, 0, 0
        # a resumed run's budget counts its earlier epochs, by the rule each epoch's end applies
        used_up = bool(plan.minutes and history and done < plan.epochs) and _next_overruns(
            sum(r["seconds"] for r in history), history[-1]["seconds"], plan.minutes
        )
        if used_up:
            console.print(
                f"time budget of {plan.minutes:g} min used up: stopped after epoch {done} of {plan.epochs}; "
                "--minutes with a larger budget (0: none) trains on"
            )
        try:
            for phase in plan.phases:  # phase epochs first .. last - 1 (0-based)
                last = first + phase.epochs
                if done < last and not used_up:
                    setup = phase.begin(model)
                    peak = max(g["lr"] for g in setup.optimizer.param_groups)  # before a resume state's lr
                    if first < done:  # resumed inside this phase: its optimizer too
                        load_resume(out / RESUME_FILE, model, setup.optimizers, ema, gen, task)
                    tick = time.perf_counter()
                    try:
                        images += _run_phase(
                            task,
                            model,
                            deploy,
                            ema,
                            data,
                            setup,
                            phase.name,
                            gen,
                            d,
                            range(max(first, done), last),
                            first,
                            plan,
                            history,
                            out,
                            config,
                            console,
                            quiet,
                            precision,
                            on_epoch_end,
                            peak,
                        )
                    except _OutOfTime as stop:
                        images += stop.images
                        seconds += time.perf_counter() - tick
                        console.print(
                            f"time budget of {plan.minutes:g} min used up: stopped after epoch {len(history)} "
                            f"of {plan.epochs}"
                        )
                        break
                    seconds += time.perf_counter() - tick
                first = last
            if resume and done >= plan.epochs and d.main and out is not None:
                # nothing left to train: the files made from the resume state are made again, so that a
                # run killed between its last resume state and its model file ends with both
                _save_outputs(out, task, deploy, history, config, precision)
        except KeyboardInterrupt:
            if d.main and out is not None:
                _save_model(out, task, deploy, history, precision, interrupted=True)
                if history:
                    _draw_curves(out, history)
                saved = _saved_epochs(out)  # what --resume reads: an epoch cut while saving is not in it
                if run is not None:  # a member of an ensemble: the ensemble's folder continues it
                    then = f"`{command} --resume --out {run}` continues the ensemble"
                elif saved >= plan.epochs:
                    then = (
                        f"all {plan.epochs} epochs are done; `{command} --resume --out {out}` finishes the run "
                        "(its last files and scores)"
                    )
                elif saved:
                    then = f"`{command} --resume --out {out}` continues from epoch {saved + 1}"
                else:
                    then = (
                        "no epoch is complete yet, so there is nothing to resume: the same command without "
                        "--resume starts the run again"
                    )
                said = f"interrupted: {out / MODEL_FILE} holds the current weights; {then}"
                if quiet:  # said even when quiet, on one line
                    print(said, file=sys.stderr)
                else:
                    console.print(said)
            raise
        best = _best(history, f"val_{task.metric}")
        if best is not None:
            # the value as the history and metrics.csv hold it (rounded to 5 decimals), not rounded
            # again: 96 of 153 right (0.627451, held as 0.62745) would print as 0.6274. The saved
            # model is the last epoch's, whichever validated best: the line says so when they differ
            last = len(history)
            console.print(
                f"best {getattr(task, 'val_name', 'val')} {task.metric} {best[1]} at epoch {best[0]} of {last}"
                + ("" if best[0] == last else f" (the saved model is epoch {last}'s)")
            )
        return FitResult(deploy, history, seconds, images, best, precision)


def save_run(
    task: Task, model: nn.Module, history: list[dict], out, *, seed: int = 0, config=None, precision: str = "fp32"
) -> None:
    """Write ``out`` as :func:`fit` leaves it after its last epoch, for a model that :func:`fit` trained
    without a folder (a candidate tried by fine-tuning and then kept): ``resume.safetensors`` (the
    weights and history; no optimizer state, nothing is left to resume), ``model.safetensors``,
    ``config.yaml``, ``metrics.csv`` and ``curves.png``, each atomic.

    Args:
        task: the task that trained it (its ``describe`` and ``deployable``).
        model: the trained model, saved as it is.
        history: its rows, one per epoch, as :func:`fit` returned them.
        out: the run folder, new or empty.
        seed: the plan's seed (the data-order generator's state in the resume file).
        config: JSON-able settings stored with the run, as :func:`fit` takes them.
        precision: what it trained in: ``"fp32"`` | ``"bf16"``.

    Raises:
        CnnkitError: ``out`` already holds a run or a trained model.
    """
    out = Path(out)
    check_new_run(out, False)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(config or {}))
    gen = torch.Generator().manual_seed(seed)
    _save_run(out, task, model, model, [], None, gen, history, config, precision)


def fit_run(
    task: Task,
    model: nn.Module,
    data: Data,
    plan: Plan,
    cfg,
    out=None,
    *,
    command: str,
    resume: bool = False,
    quiet: bool = False,
    device: str | None = None,
    dist: Dist | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    run=None,
    read_settings: Callable[[dict], dict] | None = None,
) -> FitResult:
    """:func:`fit` with a run config's own settings: what every task's ``train`` calls.

    Args:
        task: the task (:class:`~cnnkit.engine.task.Task`).
        model: the network to train.
        data: the training and validation splits.
        plan: the phases (e.g. :func:`~cnnkit.engine.optim.single_phase_plan`).
        cfg: the run config (:class:`~cnnkit.engine.config.RunConfig`): its ``device``,
            ``precision`` and ``minutes`` (the plan's time budget) are used, and its ``to_dict()``
            is stored with the run (``--resume``
            compares it).
        out: the run folder; None writes nothing.
        command: the CLI command named in the resume hint, e.g. ``"cnnkit video train"``.
        resume: continue the run in ``out``.
        quiet: no summary, progress bar or epoch lines.
        device: instead of ``cfg.device``.
        dist: the process group of a caller that already started one (torchrun).
        on_epoch_end: ``fn(epoch, row)`` called after each saved epoch.
        run: the folder the resume hint names (an ensemble's, for one of its members); default ``out``.
        read_settings: how the task reads a run's stored settings (:func:`fit`'s).

    Returns:
        :func:`fit`'s :class:`FitResult`.
    """
    if getattr(cfg, "minutes", 0) and not plan.minutes:
        plan = dataclasses.replace(plan, minutes=cfg.minutes)
    return fit(
        task,
        model,
        data,
        plan,
        out,
        resume=resume,
        quiet=quiet,
        device=device or cfg.device,
        dist=dist,
        config=cfg.to_dict(),
        command=command,
        precision=cfg.precision,
        on_epoch_end=on_epoch_end,
        run=run,
        read_settings=read_settings,
    )


def _run_phase(
    task,
    model,
    deploy,
    ema,
    data,
    setup: Setup,
    name,
    gen,
    d,
    epochs,
    first,
    plan: Plan,
    history,
    out,
    config,
    console,
    quiet,
    precision,
    on_epoch_end,
    peak: float,
) -> int:
    """The epochs ``epochs`` of the phase that starts at epoch ``first``; returns samples trained.
    ``peak``: the phase's peak learning rate (what a diverging loss's message names).
    Validation runs after every ``plan.val_every``-th epoch of the plan and after its last (0: never).
    With a ``plan.minutes`` budget, :class:`_OutOfTime` ends training after an epoch when the next
    one would pass it."""
    total, val_every, minutes = plan.epochs, plan.val_every, plan.minutes
    net = setup.module or model
    if d.world > 1 and hasattr(task, "step"):
        raise CnnkitError(f"the {task.name} task trains on one process; run it without torchrun")
    # a network may hold parameters its forward never uses (the digit detector's stride-16 stage when
    # --strides 4 8), the same ones every step (a task's loss keeps every head in the graph, times 0
    # where a batch has no object): a static graph, whose unused parameters DDP finds in the first
    # step, without searching the graph every step (and warning on every process where none is unused)
    step_net = nn.parallel.DistributedDataParallel(net, static_graph=True) if d.world > 1 else net
    train, val = setup.data or data
    evaluated = setup.module or deploy  # a phase's own module is validated on its data
    last, images = epochs.stop, 0
    after, frozen = setup.freeze or (0, [])
    freezing = [p for m in frozen for p in m.parameters() if p.requires_grad]
    with _progress(console, quiet or not d.main) as bar, warnings.catch_warnings(), _trained_after(freezing):
        # DDP's gradient buckets of a channels-last 1x1 kernel have the same memory layout as its
        # gradient, with other strides on the size-1 axes, which DDP warns of on every process
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        bar_task, done = None, 0
        for epoch in epochs:
            if freezing and epoch - first >= after and freezing[0].requires_grad:
                # from this epoch on (a resumed run: from its first) the frozen modules get no gradient
                for p in freezing:
                    p.requires_grad_(False)
                if d.world > 1:  # DDP reduces the gradients of what trained when it was built
                    step_net = nn.parallel.DistributedDataParallel(net, static_graph=True)
            tick = time.perf_counter()
            batches = task.batches(train, gen, True)
            label = f"{epoch + 1}{' ' + name if name else ''}"
            # the steps done and this epoch's count for each epoch left: an epoch's count may differ
            # from the last one's (InfoBatch pruning keeps another share of the images each epoch)
            steps = done + (last - epoch) * len(batches)
            if bar_task is None:
                bar_task = bar.add_task("train", total=steps, stats="", epoch=label)
            bar.update(bar_task, total=steps, epoch=label)
            with _train_mode(model, setup.frozen):
                names, sums = train_epoch(
                    task,
                    step_net,
                    model,
                    setup,
                    ema,
                    batches,
                    gen,
                    d,
                    epoch,
                    first,
                    last,
                    name,
                    peak,
                    precision,
                    lambda **kw: bar.update(bar_task, **kw),
                )
            if sums is None:
                raise CnnkitError(
                    f"epoch {epoch + 1} had no training batch: the training split is smaller than "
                    "one batch; lower --batch-size or give more data"
                )
            sums = all_sum(sums, d)
            done += len(batches)
            _check_weights(model, epoch, name, peak, ema)
            due = val_every > 0 and ((epoch + 1) % val_every == 0 or epoch + 1 == total)
            with autocast(precision, d.device):
                metrics = task.evaluate(evaluated, val) if val is not None and due else {}
            seconds = time.perf_counter() - tick
            n = int(sums[-1].item())
            images += n
            means = _means(names, sums)
            row = {
                "epoch": epoch + 1,
                **({"phase": name, "phase_epoch": epoch - first + 1} if name else {}),
                **setup.row,
                **{f"train_{k}": round(v, 5) for k, v in means.items()},
                **{f"val_{k}": round(v, 5) for k, v in metrics.items()},
                "lr": setup.optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 2),
            }
            history.append(row)
            console.print(
                f"epoch {epoch + 1}/{total}{' ' + name if name else ''}  train {_fmt(means)}  "
                f"{getattr(task, 'val_name', 'val') + ' ' + _fmt(metrics) + '  ' if metrics else ''}{seconds:.1f} s  "
                f"{n / seconds:,.0f} {getattr(task, 'unit', 'img')}/s"
            )
            stop = False
            if minutes and epoch + 1 < total:  # every process stops when one of them would overrun
                spent = sum(r["seconds"] for r in history[:-1]) + seconds  # this epoch's unrounded time
                over = torch.tensor([float(_next_overruns(spent, seconds, minutes))], device=d.device)
                stop = all_sum(over, d).item() > 0
            # the task's own state on every process: a task may merge what each process's shard built
            state = task.state_dict() if hasattr(task, "state_dict") else None
            if d.main and out is not None:
                draw = stop or epoch + 1 == total or _curves_due(history)
                _save_run(out, task, model, deploy, setup.optimizers, ema, gen, history, config, precision, draw, state)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if stop:
                raise _OutOfTime(images)
    return images


def _curves_due(history: list[dict]) -> bool:
    """Whether ``curves.png`` is redrawn after the last epoch of ``history``: when the run's
    training time passed another ``CURVES_EVERY`` seconds during it. A figure takes a quarter of a
    second to draw; short epochs would otherwise spend several percent of their time on it. The last
    epoch, a stop for time and Ctrl-C always draw it; ``metrics.csv`` is written after every epoch."""
    after = sum(r.get("seconds", 0.0) for r in history)
    before = after - history[-1].get("seconds", 0.0)
    return after // CURVES_EVERY > before // CURVES_EVERY


class _OutOfTime(Exception):
    """Raised after a saved epoch when the next one would pass the plan's ``minutes``."""

    def __init__(self, images: int):
        super().__init__(images)
        self.images = images


def train_epoch(
    task,
    step_net,
    model,
    setup: Setup,
    ema,
    batches,
    gen,
    d: Dist,
    epoch: int,
    first: int,
    last: int,
    name: str,
    peak: float,
    precision: str,
    report: Callable,
) -> tuple[list[str], torch.Tensor | None]:
    """One pass of optimizer steps: the stats' names and this process's sums (``n`` last).

    A task with a ``step`` method makes each step itself (with every optimizer of ``setup``);
    otherwise the engine minimises ``task.loss`` with ``setup.optimizer``."""
    steps, opt = len(batches), setup.optimizer
    own_step = getattr(task, "step", None)
    names, sums, tick = [], None, time.perf_counter()
    for i, batch in enumerate(batches):
        # the schedule's position: the share of the phase's epochs done (an epoch InfoBatch pruned
        # counts as one epoch, its fewer steps each a larger share); the EMA counts steps taken itself
        step = (epoch - first) * steps + i
        if setup.schedule is not None:
            for group in (g for o in setup.optimizers for g in o.param_groups):
                group["lr"] = setup.schedule(step, (last - first) * steps) * group.get("lr_scale", 1.0)
        if own_step is not None:
            with autocast(precision, d.device):
                stats = own_step(step_net, shard_batch(batch, d), setup.optimizers)
        else:
            with autocast(precision, d.device):
                loss, stats = step_loss(task, step_net, batch, d)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ema is not None:
            ema.update(model)
        names = [k for k in stats if k != "n"]
        s = torch.stack([stats[k] for k in names] + [stats["n"]])
        sums = s if sums is None else sums + s
        if (i + 1) % REPORT_EVERY == 0 or i + 1 == steps:
            # every process's shares together: a loss that diverged in one share stops every process
            whole = all_sum(sums.clone(), d)
            means = _means(names, whole)
            bad = [k for k in names if k.endswith("loss") and not math.isfinite(means[k])]
            if bad:
                raise CnnkitError(
                    f"the {bad[0].replace('_', ' ')} became {means[bad[0]]} at epoch {epoch + 1}, step {i + 1}"
                    f"{' in phase ' + name if name else ''}: training diverged; lower "
                    f"the learning rate (received --lr {peak})"
                )
            ips = (i % REPORT_EVERY + 1) * float(s[-1]) * d.world / (time.perf_counter() - tick)
            tick = time.perf_counter()
            report(advance=i % REPORT_EVERY + 1, stats=f"{_fmt(means)}  {ips:,.0f} {getattr(task, 'unit', 'img')}/s")
    return names, sums


def step_loss(task, step_net, batch, d: Dist) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This process's loss of one global batch, to backpropagate, and its sums to log.

    The process trains on its share of the batch (:func:`~cnnkit.engine.distributed.shard_batch`).
    A loss that is a mean over the share's samples is weighted by the share's size
    (:func:`~cnnkit.engine.distributed.shard_weight`); a :class:`~cnnkit.engine.task.Pooled` loss is
    combined from the sums of every process's share (:func:`~cnnkit.engine.distributed.pool`) and
    its parts are logged. Either way DDP's average of the processes' gradients is one process's
    gradient of the loss on the whole batch.

    Args:
        task: the task whose ``loss`` is taken.
        step_net: the network the step runs (DDP-wrapped under torchrun).
        batch: the global batch, as ``task.batches`` made it.
        d: this process.

    Returns:
        ``(loss, stats)``: the scalar to backpropagate, and the batch's sums to log (``n`` among them).
    """
    loss, stats = task.loss(step_net, shard_batch(batch, d))
    if isinstance(loss, Pooled):
        parts = pool(loss, d)
        logged = {k: v.detach() * stats["n"] for k, v in parts.items()}
        stats = {**logged, **{k: v for k, v in stats.items() if k not in logged}}
        return (parts["loss"] * d.world if d.world > 1 else parts["loss"]), stats
    weight = shard_weight(batch_length(batch), d) if d.world > 1 else 1.0
    return (loss * weight if weight != 1.0 else loss), stats


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _trained_after(params: list[nn.Parameter]):
    """``params`` train again after the phase, whichever of its epochs froze them."""
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def _train_mode(model: nn.Module, frozen: list[nn.Module]):
    """model.train(), except the ``frozen`` modules (kept in eval); every mode restored after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        for m in frozen:
            m.eval()
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _check_weights(model: nn.Module, epoch: int, name: str, peak: float, ema: EMA | None = None) -> None:
    """The last step's loss was finite, but its update may not be: never save such weights (the EMA
    copy, which is what gets saved when EMA is on, is checked too)."""
    modules = [model] + ([ema.module] if ema is not None else [])
    bad = [n for m in modules for n, p in m.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CnnkitError(
            f"the weights became non-finite ({bad[0]}, ...) at the end of epoch "
            f"{epoch + 1}{' in phase ' + name if name else ''}: training diverged; "
            f"lower the learning rate (received --lr {peak})"
        )


def _start(
    out: Path | None, resume: bool, model, ema, gen, config: dict, task=None, read_settings=None
) -> tuple[int, list[dict]]:
    """(epochs done, history): 0 and [] for a new run; a resumed run's weights and RNG restored, its
    stored settings (read by ``read_settings``, where given) checked against ``config``."""
    path = out / RESUME_FILE if out is not None else None
    if resume and out is None:
        raise CnnkitError("nothing to resume: no run folder given; pass --out with the run to continue")
    check_new_run(out, resume)
    if not resume:
        return 0, []
    epoch, history, saved = load_resume(path, model, None, ema, gen, task)
    if read_settings is not None:
        saved = read_settings(saved)
    keys = sorted(k for k in set(saved) & set(config) - set(RESUME_FREE) if _differs(saved[k], config[k]))
    if keys:
        raise CnnkitError(
            f"{out} was trained with other settings ({', '.join(keys)}); resume it "
            "with the same ones or start a new run in another --out"
        )
    return epoch, history


def _differs(saved, given) -> bool:
    """Whether a resumed run's setting differs from the run's own. A setting one side lacks is one a
    newer cnnkit added or dropped, not a difference; where, how fast and how long the run computes
    (RESUME_FREE) may change, at any depth: fine-tuning keeps its command's settings in ``"args"``."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return any(_differs(saved[k], given[k]) for k in set(saved) & set(given) - set(RESUME_FREE))
    return saved != given


def _saved_epochs(out: Path) -> int:
    """The epochs ``out``'s resume state holds (0 without one): where ``--resume`` continues."""
    try:
        epoch = read_metadata(out / RESUME_FILE).get("epoch") if (out / RESUME_FILE).is_file() else 0
    except CnnkitError:  # a state cut while being written is not one --resume reads
        return 0
    return epoch if isinstance(epoch, int) else 0


def _next_overruns(spent: float, last: float, minutes: float) -> bool:
    """Whether another epoch as long as the ``last`` one would pass a budget of ``minutes`` after
    ``spent`` seconds of training."""
    return spent + last > minutes * 60


def _save_run(
    out, task, model, deploy, optimizers, ema, gen, history, config, precision, draw: bool = True, state=None
) -> None:
    """Resume state, then config.yaml, deployable model, metrics.csv and (``draw``) curves.png, each file atomic.
    ``state``: the task's ``state_dict()`` when the caller took it (on every process); else taken here."""
    if state is None and hasattr(task, "state_dict"):
        state = task.state_dict()
    described = task.describe(deploy)  # what the model file is about to hold
    save_resume(
        out / RESUME_FILE,
        model,
        optimizers,
        ema,
        gen,
        len(history),
        history,
        config,
        state,
        getattr(task, "name", None),
        described.get("network"),
        {k: described[k] for k in RECORDED if k in described},
    )
    _save_outputs(out, task, deploy, history, config, precision, draw)


def _save_outputs(out, task, deploy, history, config, precision, draw: bool = True) -> None:
    """What the resume state makes: config.yaml (once), the deployable model, metrics.csv and
    (``draw``) curves.png, each file atomic."""
    if config and not (out / CONFIG_FILE).is_file():
        atomic_write_bytes(out / CONFIG_FILE, config_yaml(config.get("args", config)))
    _save_model(out, task, deploy, history, precision)
    keys = [k for k in dict.fromkeys(k for r in history for k in r) if k not in ("lr", "seconds")]
    write_metrics_csv(out / "metrics.csv", history, keys + ["lr", "seconds"])  # rows without validation too
    if draw:
        _draw_curves(out, history)


def _draw_curves(out: Path, history: list[dict]) -> None:
    from cnnkit.plots import training_curves

    training_curves(history, out / "curves.png")


def _save_model(out, task, deploy, history, precision: str, interrupted: bool = False) -> None:
    info = {
        "format": FORMAT,
        **task.describe(deploy),
        "epoch": len(history),
        "history": history,
        "precision": precision,
        "interrupted": interrupted,
    }
    info["threads"] = torch.get_num_threads()  # what the task set: --threads or the free cores
    save_model(out / MODEL_FILE, task.deployable(deploy), info)


def _best(history: list[dict], key: str) -> tuple[int, float] | None:
    """(epoch, value) of the highest ``key`` (the earliest of equals); None without validation."""
    rows = [r for r in history if isinstance(r.get(key), float) and math.isfinite(r[key])]
    if not rows:
        return None
    top = max(rows, key=lambda r: r[key])
    return top["epoch"], top[key]


def _means(names: list[str], sums: torch.Tensor) -> dict[str, float]:
    """Each stat's mean per sample: its sum over ``n`` (the last of ``sums``), divided in Python's
    float64. A count of right answers divided in float32 is off in its eighth digit, which can move
    the five decimals a history keeps: 192 right of 227 is 0.8458150 in float32 (0.84582), 0.8458149...
    in fact (0.84581)."""
    values = sums.tolist()
    return {k: v / values[-1] if values[-1] else math.nan for k, v in zip(names, values[:-1])}


def _fmt(metrics: dict[str, float]) -> str:
    """``loss 0.1234 acc 98.76%``: names ending in "acc" as percentages."""
    return " ".join(f"{k} {v:.2%}" if k.endswith("acc") else f"{k} {v:.4f}" for k, v in metrics.items())


def _progress(console: Console, disable: bool) -> Progress:
    return Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=True,
    )

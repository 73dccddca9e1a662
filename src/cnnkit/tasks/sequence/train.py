"""What ``cnnkit sequence train`` runs: a network trained through the one engine (or an ensemble of
them), or MultiRocket fitted in closed form."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.engine import Data, fit_run, single_phase_plan
from cnnkit.engine.config import use_threads
from cnnkit.engine.distributed import distributed, launched
from cnnkit.engine.runfolder import (
    MODEL_FILE,
    RESUME_FILE,
    check_new_run,
    resumed_config,
    run_info,
    with_free_settings,
)
from cnnkit.errors import CnnkitError
from cnnkit.tasks.sequence.config import FITTED, GRADIENT_ONLY, SequenceConfig
from cnnkit.tasks.sequence.data import (
    check_run_data,
    check_training_file,
    data_files,
    load_splits,
    warn_if_changed,
)
from cnnkit.tasks.sequence.evaluate import evaluate
from cnnkit.tasks.sequence.load import build_model, load_sequence, save_ensemble
from cnnkit.tasks.sequence.task import SequenceTask


@dataclass
class SequenceResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (an ensemble's average for ``--ensemble K``), in eval mode.
        config: the resolved settings (batch, epochs filled in).
        history: one row per epoch of the (last) network, as in ``metrics.csv``.
        seconds: training time of every network together (validation and saving included).
        steps: optimizer steps this call took, every network together: fewer than ``config.steps``
            when ``minutes`` stopped the run, only the remaining ones on a resume, 0 for a fitted model.
        val: :func:`~cnnkit.tasks.sequence.evaluate.evaluate` on the validation split (None without one).
        test: the same on the TEST split, evaluated once at the end (None when the data has none).
    """

    model: nn.Module
    config: SequenceConfig
    history: list[dict]
    seconds: float
    steps: int
    val: dict | None = None
    test: dict | None = None
    members: list = field(default_factory=list)


def train(cfg: SequenceConfig, out=None, resume: bool = False, quiet: bool = False) -> SequenceResult:
    """Train a time-series classifier by ``cfg`` into the run folder ``out``: ``cnnkit sequence train``.

    The training split is the archive's TRAIN less a stratified validation part
    (``cfg.val_fraction``); TEST is evaluated once, by the final model. With ``cfg.ensemble`` K > 1
    the networks train into ``out/member<i>`` with seeds ``seed + i`` and ``out/model.safetensors``
    averages their probabilities (the InceptionTime ensemble of Ismail Fawaz et al. 2020 is
    ``model="inception_time", ensemble=5``).

    Args:
        cfg: the settings; ``batch_size`` None is filled in (:meth:`SequenceConfig.resolved_for`).
        out: the run folder; None writes nothing (single network only).
        resume: continue the run in ``out`` exactly; its own settings replace ``cfg``'s, but for
            its device, threads, data_dir and minutes where set (not None).
        quiet: no summary, progress bar or epoch lines.

    Returns:
        A :class:`SequenceResult`.

    Raises:
        CnnkitError: a bad setting, data that cannot be found or read, a diverging loss, nothing
            to resume in ``out``, or data that is not what the resumed run trained on.

    Example:
        >>> r = train(SequenceConfig(data="ucr:GunPoint"), "runs/gunpoint")   # doctest: +SKIP
        >>> r.test["error"]                                                    # doctest: +SKIP
    """
    if resume:
        if out is None:
            raise CnnkitError("--resume needs --out RUN, the run folder to continue")
        first = Path(out) / RESUME_FILE
        stored = resumed_config(out if first.is_file() else Path(out) / "member0", "sequence")
        if first.is_file() and isinstance(stored.get("ensemble"), int) and stored["ensemble"] > 1:
            raise CnnkitError(  # an ensemble keeps its resume states in its members' folders
                f"{out} is one member of the ensemble in {Path(out).parent}; resume the ensemble: "
                f"`cnnkit sequence train --resume --out {Path(out).parent}`"
            )
        cfg = with_free_settings(SequenceConfig.from_dict(stored, strict=False), cfg)
    if cfg.ensemble > 1 and out is None:
        raise CnnkitError("--ensemble K > 1 needs --out: each network is a run folder of its own")
    if cfg.ensemble < 1:
        raise CnnkitError(f"--ensemble must be a positive integer. Received: --ensemble {cfg.ensemble}")
    if cfg.model in FITTED:
        _check_fitted(cfg)
    use_threads(cfg.threads if cfg.threads is not None else (0 if cfg.model in FITTED else 1))
    train_set, val_set, test_set = load_splits(cfg)
    files = data_files(train_set, test_set)  # recorded in the run: what --resume and eval check the files by
    if resume:  # the data the run's network was built for: other data would be a second data set in one run
        # its model file's record, or its resume state's before the first model file (an ensemble: member 0's)
        info = run_info(out) or run_info(Path(out) / "member0")
        if info is not None:
            check_run_data(train_set, info, cfg.data, out)
            check_training_file(train_set, info, out)
            if test_set is not None:  # the resumed run scores it at its end
                warn_if_changed(test_set, info, out, "test")
    present = sorted(set(train_set.labels.tolist()))
    if len(present) < 2:  # one class: every answer would be that class, at p=1
        shown = ", ".join(train_set.classes[i] for i in present if i >= 0) or "none"
        raise CnnkitError(
            f"{cfg.data}: training needs at least 2 classes; the training series have {len(present)} ({shown}); "
            "add series of the other classes"
        )
    resolved = cfg.resolved_for(len(train_set))
    # a fitted model's run keeps the gradient-training settings as given (its stored config leaves them out)
    cfg = cfg if cfg.model in FITTED else resolved
    if cfg.ensemble == 1:
        run = _train_one(cfg, train_set, val_set, out, resume, quiet, files)
        model, members = run.model, []
    else:
        members = [
            _train_one(
                replace(cfg, seed=cfg.seed + i),
                train_set,
                val_set,
                Path(out) / f"member{i}",
                resume and (Path(out) / f"member{i}" / RESUME_FILE).is_file(),
                quiet,
                files,
            )
            for i in range(cfg.ensemble)
        ]
        save_ensemble(Path(out) / MODEL_FILE, [Path(out) / f"member{i}" / MODEL_FILE for i in range(cfg.ensemble)])
        model, run = load_sequence(out), members[-1]
    model.eval()
    runs = members or [run]
    val = run.val if run.val is not None and not members else None  # a closed-form fit scored it already
    if val is None and val_set is not None:
        val = evaluate(model, val_set)
    return SequenceResult(
        model,
        cfg,
        run.history,
        sum(r.seconds for r in runs),
        sum(r.steps for r in runs),
        val,
        evaluate(model, test_set) if test_set is not None else None,
        members,
    )


def _train_one(cfg: SequenceConfig, train_set, val_set, out, resume: bool, quiet: bool, files: dict) -> SequenceResult:
    """One network: the seeded model, the task and a one-phase plan, run by the engine. ``files``:
    the data files' names and digests (:func:`~cnnkit.tasks.sequence.data.data_files`), recorded in
    the run's metadata."""
    model = build_model(cfg.model, train_set.classes, train_set.channels, train_set.length, cfg.seed)
    info = {"config": cfg.to_dict(), "data": cfg.data, "data_files": files}
    if cfg.model in FITTED:
        return _fit_closed_form(cfg, model, train_set, val_set, out, resume, quiet, info)
    assert cfg.batch_size is not None  # resolved_for filled it in
    task = SequenceTask(cfg.batch_size, cfg.steps_per_epoch, info=info)

    plan = single_phase_plan(cfg, val_every=cfg.val_every if val_set else 0)
    result = fit_run(
        task,
        model,
        Data(train_set, val_set),
        plan,
        cfg,
        out,
        command="cnnkit sequence train",
        resume=resume,
        quiet=quiet,
        run=Path(out).parent if cfg.ensemble > 1 else None,  # a member: Ctrl-C names the ensemble's folder
    )
    # every step trains on one whole global batch, so the samples trained count the steps taken
    # (a --minutes budget may end the run before cfg.steps; a resume takes only the steps left)
    return SequenceResult(result.model, cfg, result.history, result.seconds, result.images // cfg.batch_size)


def _check_fitted(cfg: SequenceConfig) -> None:
    """A closed-form model takes no gradient-training setting and no torchrun."""
    defaults = SequenceConfig()
    given = [k for k in GRADIENT_ONLY if getattr(cfg, k) != getattr(defaults, k)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise CnnkitError(
            f"{flags}: a gradient-training setting, which --model {cfg.model} does not use (fixed convolutions "
            f"and a ridge classifier fitted in one pass); drop it, or choose --model fcn1d, resnet1d or inception_time"
        )
    if launched()[1] > 1:
        raise CnnkitError(f"--model {cfg.model} fits in one process; run it without torchrun")


def _fit_closed_form(
    cfg: SequenceConfig, model, train_set, val_set, out, resume: bool, quiet: bool, info: dict
) -> SequenceResult:
    """MultiRocket: biases and ridge classifier fitted in one pass (:mod:`cnnkit.tasks.sequence.rocket`),
    then the run folder the engine would write, in its order: ``config.yaml``, ``model.safetensors``
    (``info`` in its metadata, with the threads it was fitted with), ``metrics.csv``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cnnkit.console import console as make_console
    from cnnkit.engine.config import config_yaml
    from cnnkit.engine.runfolder import CONFIG_FILE, FORMAT, atomic_write_bytes, save_model, write_metrics_csv
    from cnnkit.tasks.sequence import rocket

    if resume:
        raise CnnkitError(f"a {cfg.model} run is fitted in one pass and has nothing to resume; start a new --out")
    check_new_run(out, resume=False)
    with distributed(cfg.device) as d:  # a device that is not there is refused before --out is made
        model.to(d.device)
    made = out is not None and not Path(out).exists()
    if out is not None:  # before the fit: an --out that cannot be a folder is one line, not a lost fit
        from cnnkit.errors import output_folder

        output_folder(out, "--out")
    tick = time.perf_counter()
    columns = (TextColumn(f"{cfg.model}: transforming"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=make_console(), disable=quiet, transient=True) as progress:
            bar = progress.add_task("series", total=len(train_set))
            fitted = rocket.fit(model.net, train_set, progress=lambda done, _: progress.update(bar, completed=done))
    except BaseException:
        if made:  # the folder made for this run, still empty: no trace of a failed or stopped fit
            with contextlib.suppress(OSError):
                Path(out).rmdir()
        raise
    row = {"epoch": 1, "train_loo_acc": 1 - fitted["loo_error"], "alpha": fitted["alpha"]}
    scores = evaluate(model, val_set) if val_set is not None else None
    if scores is not None:
        row.update(val_loss=scores["loss"], val_acc=scores["accuracy"])
    row["seconds"] = time.perf_counter() - tick
    if not quiet:
        print(
            f"{cfg.model}: {fitted['features']:,} features ({fitted['columns']} kept), ridge alpha "
            f"{fitted['alpha']:.3g}, leave-one-out "
            f"accuracy {1 - fitted['loo_error']:.2%}"
            + (f", validation accuracy {row['val_acc']:.2%}" if val_set is not None else "")
            + f" ({row['seconds']:.1f} s)"
        )
    if out is not None:
        out = Path(out)
        meta = {"format": FORMAT, **info, **model.describe(), "epoch": 1, "history": [row], "fit": fitted}
        meta["threads"] = torch.get_num_threads()  # what --threads or the free cores gave, as the engine records it
        if not (out / CONFIG_FILE).is_file():  # a user's own (the --config given) is kept, as the engine keeps it
            atomic_write_bytes(out / CONFIG_FILE, config_yaml(cfg.to_dict()))
        # the model before metrics.csv, as the engine writes them: a model that did not fit (a full disk)
        # leaves no metrics.csv that check_new_run would take for someone else's and refuse the same command
        save_model(out / MODEL_FILE, model, meta)
        write_metrics_csv(out / "metrics.csv", [row], list(row))
    return SequenceResult(model.cpu().eval(), cfg, [row], row["seconds"], 0, val=scores)

"""Resumption, round 2: every training command continues a stopped run exactly, and every message
about resuming names a command that exists and does what it says (ensemble members, a kill
between the last resume state and the model, splits of folders that change, time budgets,
settings that may change, devices, presets)."""

import argparse
import json
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file, save, save_file
from test_engine import LineTask, _data, _plan, _run

import cnnkit
import cnnkit.engine.loop as loop
from cnnkit.cli import build_parser, main
from cnnkit.engine import fit
from cnnkit.engine.runfolder import (
    FORMAT,
    MODEL_FILE,
    RESUME_FILE,
    atomic_write_bytes,
    check_new_run,
    read_checkpoint,
    read_info,
    save_model,
)
from cnnkit.errors import CnnkitError
from cnnkit.tasks.generate.config import GenerateConfig
from cnnkit.tasks.generate.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """The process dies here (SIGKILL): no handler of the engine runs."""


def _stopped_after_first_epoch(monkeypatch, argv) -> int:
    """``main(argv)`` with Ctrl-C right after the first epoch's files are saved: its exit code."""
    save = loop._save_run

    def save_then_stop(out, *args):
        save(out, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_run", save_then_stop)
    try:
        return main(argv)
    finally:
        monkeypatch.setattr(loop, "_save_run", save)


# -----------------------------------------------------------------------------------------------
# ``cnnkit train`` on an image folder keeps its own photos: ``split.json`` is written before training
# and ``--resume`` reads it, so photos added while the run is stopped change nothing (with pruning's
# per-image losses too).


def _photos(root, first: int, count: int, side: int = 32):
    """``count`` small photos (``side`` px) of each of two classes (a dark and a light one), named from
    ``first`` on."""
    rng = np.random.default_rng(first)
    for k, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(first, first + count):
            pixels = rng.integers(0, 128, (side, side, 3)) + 100 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.png")


def test_a_resumed_run_on_a_folder_trains_on_its_own_photos(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "photos"
    _photos(data, 0, 20)
    argv = ["train", "--data", str(data), "--model", "mnist_fast", "--image-size", "28", "28", "--epochs", "2"]
    argv += ["--batch-size", "8", "--prune", "0.5", "--threads", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    assert _stopped_after_first_epoch(monkeypatch, [*argv, "--out", str(tmp_path / "cut")]) == 130
    split = json.loads((tmp_path / "full" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 40
    assert json.loads((tmp_path / "cut" / "split.json").read_text()) == split  # written before training
    _photos(data, 20, 6)  # photos added to the folder while the run is stopped
    assert main(["train", "--resume", "--out", str(tmp_path / "cut"), "--quiet"]) == 0
    assert json.loads((tmp_path / "cut" / "split.json").read_text()) == split
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -----------------------------------------------------------------------------------------------
# Ctrl-C in a run's first epoch: the model file is loadable, the message says that nothing can be
# resumed, and the same command without --resume starts the run again in that folder.


class CutInFirstEpoch(LineTask):
    """Ctrl-C at the third step of the first epoch."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def loss(self, model, batch):
        self.steps += 1
        if self.steps == 3:
            raise KeyboardInterrupt
        return super().loss(model, batch)


def test_ctrl_c_in_the_first_epoch_leaves_a_folder_a_new_run_takes(tmp_path, capsys):
    out = tmp_path / "run"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(CutInFirstEpoch(), nn.Linear(1, 1), _data(), _plan(), out, config={"lr": 0.1})
    said = " ".join(capsys.readouterr().out.split())
    assert "no epoch is complete yet, so there is nothing to resume: the same command without --resume" in said
    assert "--resume --out" not in said
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    info = read_info(out)
    assert info["interrupted"] is True and info["epoch"] == 0  # loadable, and says what it is
    _run(out)  # the same run again, without --resume
    _run(tmp_path / "full")
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_info(out)["epoch"] == 3


def test_a_trained_model_without_resume_state_is_still_kept(tmp_path):
    for interrupted, epoch in ((False, 0), (False, 2), (True, 2)):  # a fitted model; a finished one; a cut run
        out = tmp_path / f"{interrupted}-{epoch}"
        info = {"format": "cnnkit.checkpoint/1", "task": "line", "interrupted": interrupted, "epoch": epoch}
        save_model(out / "model.safetensors", nn.Linear(1, 1), info)
        with pytest.raises(CnnkitError, match="already holds a trained model; choose another --out"):
            check_new_run(out, False)


# -----------------------------------------------------------------------------------------------
# A run resumed on another kind of device than the one that drew its data order (a GPU run on a
# machine without one) is refused in one line naming that device, not called damaged.


def _fit_device(out, resume=False):
    plan = _plan()
    plan.minutes = 1e-9 if not resume else 0.0  # the first call stops after epoch 1
    torch.manual_seed(0)
    return fit(LineTask(), nn.Linear(1, 1), _data(), plan, out, quiet=True, resume=resume)


def test_the_resume_file_names_its_generators_device(tmp_path):
    _fit_device(tmp_path / "r")
    assert read_checkpoint(tmp_path / "r" / "resume.safetensors")[1]["generator"] == "cpu"


@pytest.mark.parametrize("keyed", [True, False], ids=["named", "older-file"])
def test_a_gpu_runs_resume_state_on_a_cpu_is_one_line_naming_the_device(tmp_path, keyed):
    out = tmp_path / "r"
    _fit_device(out)
    path = out / "resume.safetensors"
    tensors, meta = load_file(path), read_checkpoint(path)[1]
    tensors["rng.generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: seed and offset
    meta.pop("generator", None)
    if keyed:
        meta["generator"] = "cuda"
    save_file(tensors, path, metadata={"cnnkit": json.dumps(meta)})
    with pytest.raises(CnnkitError) as err:
        _fit_device(out, resume=True)
    assert str(err.value) == (
        f"{path}: the run was trained on cuda, and its random data order continues only there; resume it with "
        "--device cuda on a machine with a GPU, or start a new run on cpu"
    )


# -----------------------------------------------------------------------------------------------
# A resumed run that diverges names the learning rate given to it (the phase's peak), not the
# scheduled rate its resume state ended on.


class Diverging(LineTask):
    def loss(self, model, batch):
        loss, stats = super().loss(model, batch)
        return loss, {**stats, "loss": stats["loss"] * float("nan")}


def test_a_resumed_run_that_diverges_names_the_given_learning_rate(tmp_path):
    plan = _plan(lr=0.1)  # phase 1: SGD from 0.1 down to 0 over its two epochs
    plan.minutes = 1e-9  # stopped after epoch 1, inside phase 1
    torch.manual_seed(0)
    fit(LineTask(), nn.Linear(1, 1), _data(), plan, tmp_path / "r", quiet=True)
    plan.minutes = 0.0
    with pytest.raises(
        CnnkitError, match=r"the loss became nan at epoch 2, step 16 in phase sgd: .*\(received --lr 0\.1\)$"
    ):
        fit(Diverging(), nn.Linear(1, 1), _data(), plan, tmp_path / "r", quiet=True, resume=True)


# -----------------------------------------------------------------------------------------------
# Ctrl-C inside an ensemble's member names the ensemble's folder, and ``--resume`` of a member's
# folder is refused in one line (it would train a second ensemble inside that member).


def _ensemble_argv(tmp_path, monkeypatch) -> list[str]:
    """``cnnkit train`` of an ensemble of two on a folder of 40 small photos (a small validation split)."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    _photos(tmp_path / "photos", 0, 20)
    argv = ["train", "--data", str(tmp_path / "photos"), "--model", "mnist_fast", "--image-size", "28", "28"]
    return argv + ["--batch-size", "8", "--threads", "1", "--ensemble", "2", "--no-tta"]


def test_ctrl_c_in_a_member_names_the_ensemble_and_a_member_folder_is_refused(tmp_path, monkeypatch, capsys):
    run = tmp_path / "ens"
    argv = [*_ensemble_argv(tmp_path, monkeypatch), "--epochs", "2", "--out", str(run)]
    save = loop._save_run

    def save_then_stop(out, *args):
        save(out, *args)
        if out.name == "member1":
            raise KeyboardInterrupt  # Ctrl-C after member 1's first epoch

    monkeypatch.setattr(loop, "_save_run", save_then_stop)
    assert main(argv) == 130
    monkeypatch.setattr(loop, "_save_run", save)
    said = " ".join(capsys.readouterr().out.split())
    assert f"`cnnkit train --resume --out {run}` continues the ensemble" in said, said[-400:]
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    assert main(["train", "--resume", "--out", str(run / "member1"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cnnkit train: error: {run / 'member1'} is one member of the ensemble in {run}; resume the ensemble: "
        f"`cnnkit train --resume --out {run}`"
    )
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before  # nothing written
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert (run / "model.safetensors").is_file() and not (run / "member1" / "member0").exists()


def test_a_finished_ensemble_resumes_to_the_same_files(tmp_path, monkeypatch, capsys):
    """``--resume`` of an ensemble whose members are all trained (a run killed after its ensemble file)
    trains nothing and ends with the same weights; its ensemble file names no network of its own."""
    run = tmp_path / "ens"
    argv = [*_ensemble_argv(tmp_path, monkeypatch), "--epochs", "1", "--quiet"]
    assert main([*argv, "--out", str(run)]) == 0
    before = load_file(run / "model.safetensors")
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0, capsys.readouterr().err
    after = load_file(run / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


_SPEC = "input: 1x28x28\nlayers:\n  - conv2d: {filters: 4, kernel_size: 3, strides: 2}\n"
_SPEC += "  - batch_normalization: {}\n  - dropout: {rate: 0.2}\n  - flatten\n  - dense: {units: 10}\n"


def _spec_argv(data_dir, spec, run) -> list[str]:
    argv = ["train", "--data-dir", str(data_dir), "--model", str(spec), "--subset", "128", "--epochs", "2"]
    return argv + ["--batch-size", "64", "--threads", "1", "--quiet", "--out", str(run)]


def test_a_spec_file_edited_during_a_run_changes_nothing_the_run_stores(data_dir, tmp_path, monkeypatch):
    """The spec file is read once, when the run starts: an edit after the first epoch (another dropout
    rate, the same weights' shapes) is not what the second epoch's model file describes."""
    spec = tmp_path / "net.yaml"
    spec.write_text(_SPEC)
    save = loop._save_run

    def save_then_edit(out, *args):
        save(out, *args)
        spec.write_text(_SPEC.replace("rate: 0.2", "rate: 0.9"))

    monkeypatch.setattr(loop, "_save_run", save_then_edit)
    assert main(_spec_argv(data_dir, spec, tmp_path / "run")) == 0
    info = read_info(tmp_path / "run")
    assert info["epoch"] == 2 and info["network"]["spec"]["layers"][2] == {"dropout": {"rate": 0.2}}
    assert cnnkit.load(tmp_path / "run").net.dropout_1.p == 0.2


def test_a_spec_run_whose_file_was_edited_resumes_its_own_copy(data_dir, tmp_path, monkeypatch, capsys):
    """``--resume`` trains the spec the run stored when it started, whatever its file holds now (an
    edited file says so in one line; a deleted one is not needed): the weights are an uninterrupted
    run's of the original spec."""
    spec = tmp_path / "net.yaml"
    spec.write_text(_SPEC)
    assert main(_spec_argv(data_dir, spec, tmp_path / "full")) == 0
    for run, edit in ((tmp_path / "edited", "write"), (tmp_path / "deleted", "unlink")):
        assert _stopped_after_first_epoch(monkeypatch, _spec_argv(data_dir, spec, run)) == 130
        if edit == "write":
            spec.write_text(_SPEC.replace("rate: 0.2", "rate: 0.9"))
        else:
            spec.unlink()
        capsys.readouterr()
        assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"note: {spec} is not the spec {run} started with") and "\n" not in err
        assert "--resume trains the run's own copy of it" in err
        full, resumed = load_file(tmp_path / "full" / MODEL_FILE), load_file(run / MODEL_FILE)
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
        assert read_info(run)["network"] == read_info(tmp_path / "full")["network"]
        spec.write_text(_SPEC)


# a "valid" conv2d_transpose whose stride exceeds its kernel: 13x13 -> 25x25 at spec version 1, 26x26 at
# version 2 (Keras'); the weights have the same shapes at both
_LONGER = _SPEC.replace("  - flatten\n", "  - conv2d_transpose: {filters: 4, kernel_size: 1, strides: 2}\n")
_LONGER = _LONGER.replace("  - dense:", "  - global_average_pooling2d\n  - dense:")


def _killed_before_the_first_model_file(monkeypatch, argv) -> None:
    """``main(argv)`` killed after its first resume state, before its first model file."""

    def killed(*args, **kwargs):
        raise Killed

    real = loop._save_model
    monkeypatch.setattr(loop, "_save_model", killed)
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.setattr(loop, "_save_model", real)


def test_a_spec_run_killed_before_its_first_model_file_resumes_the_network_it_started_with(
    data_dir, tmp_path, monkeypatch, capsys
):
    """The first resume state records the network with its spec version: a run killed before its
    first model file resumes what it started with (here with its spec file edited since), exactly."""
    from cnnkit.models.spec import SPEC_VERSION

    spec = tmp_path / "net.yaml"
    spec.write_text(_LONGER)
    assert main(_spec_argv(data_dir, spec, tmp_path / "full")) == 0
    run = tmp_path / "cut"
    _killed_before_the_first_model_file(monkeypatch, _spec_argv(data_dir, spec, run))
    assert not (run / MODEL_FILE).exists()
    recorded = read_info(run / RESUME_FILE)["network"]
    assert recorded == {**read_info(tmp_path / "full")["network"], "version": SPEC_VERSION}
    assert recorded["spec"]["layers"][2] == {"dropout": {"rate": 0.2}}
    spec.write_text(_LONGER.replace("rate: 0.2", "rate: 0.9"))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert capsys.readouterr().err.startswith(f"note: {spec} is not the spec {run} started with")
    full, resumed = load_file(tmp_path / "full" / MODEL_FILE), load_file(run / MODEL_FILE)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert read_info(run)["network"] == recorded


@pytest.mark.parametrize("record", ["none", "version 1"])
def test_a_version_1_spec_run_killed_before_its_first_model_file_is_not_resumed_at_version_2(
    data_dir, tmp_path, monkeypatch, capsys, record
):
    """A resume state that records no network (cnnkit 0.1.0's, whose specs were built at version 1),
    or records spec version 1, before the run's first model file: a spec that version 1 builds
    otherwise is refused in one line, nothing written; one that both versions build alike resumes."""
    for text, refused in ((_LONGER, True), (_SPEC, False)):
        spec, run = tmp_path / "net.yaml", tmp_path / f"run{int(refused)}"
        spec.write_text(text)
        _killed_before_the_first_model_file(monkeypatch, _spec_argv(data_dir, spec, run))
        tensors, meta = load_file(run / RESUME_FILE), read_info(run / RESUME_FILE)
        if record == "none":
            meta.pop("network", None)  # as cnnkit 0.1.0 wrote it
        else:
            meta["network"]["version"] = 1
        atomic_write_bytes(run / RESUME_FILE, save(tensors, metadata={"cnnkit": json.dumps(meta)}))
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        capsys.readouterr()
        code = main(["train", "--resume", "--out", str(run), "--quiet"])
        err = capsys.readouterr().err.strip()
        if refused:
            assert code == 2 and "\n" not in err
            assert f"{run} was trained with spec version 1, where a 'valid' conv2d_transpose" in err, err
            assert {p.name: p.read_bytes() for p in run.iterdir()} == before
        else:
            assert code == 0 and err == ""
            assert read_info(run)["epoch"] == 2 and read_info(run)["network"].get("version", 1) == 1


def test_a_sequence_ensembles_member_folder_is_refused(data_dir, tmp_path, capsys):
    run = tmp_path / "ens"
    argv = ["sequence", "train", "--data", "ucr:ItalyPowerDemand", "--data-dir", str(data_dir), "--model", "fcn1d"]
    assert main([*argv, "--steps", "2", "--epochs", "1", "--ensemble", "2", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sequence", "train", "--resume", "--out", str(run / "member1"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cnnkit sequence: error: {run / 'member1'} is one member of the ensemble in {run}; resume the ensemble: "
        f"`cnnkit sequence train --resume --out {run}`"
    )
    assert not (run / "member1" / "member0").exists()


# -----------------------------------------------------------------------------------------------
# A fine-tuning run keeps its own photos: ``split.json`` is written before training, and ``--resume``
# trains, validates and tests on it, whatever the folder holds by then. Its model records the choice
# of head (and stages) with the candidates' validation losses, as the uninterrupted run's does.


def test_a_resumed_finetune_keeps_its_split_when_photos_are_added_and_the_record_of_its_choice(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "photos"
    _photos(data, 0, 20, side=40)
    argv = ["classify", "finetune", "--model", "resnet18", "--data", str(data), "--image-size", "32"]
    argv += ["--stages", "head,top", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--quiet"]
    argv += ["--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    assert _stopped_after_first_epoch(monkeypatch, [*argv, "--out", str(tmp_path / "cut")]) == 130
    full = json.loads((tmp_path / "full" / "split.json").read_text())
    assert json.loads((tmp_path / "cut" / "split.json").read_text()) == full  # written before training
    _photos(data, 20, 8, side=40)  # photos added to the folder while the run is stopped
    assert main(["classify", "finetune", "--resume", "--out", str(tmp_path / "cut"), "--quiet"]) == 0
    assert json.loads((tmp_path / "cut" / "split.json").read_text()) == full  # the run's own photos
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tested = json.loads((tmp_path / "cut" / "test.json").read_text())
    assert tested["n"] == len(full["test"]) == json.loads((tmp_path / "full" / "test.json").read_text())["n"]
    full, cut = read_info(tmp_path / "full"), read_info(tmp_path / "cut")  # the model files' records
    assert set(full["finetune_head"]["val_loss"]) == {"features", "class_scores"}  # both candidates tried
    assert cut["finetune_head"] == full["finetune_head"]
    assert cut["history"] == [{**r, "seconds": c["seconds"]} for r, c in zip(full["history"], cut["history"])]


# -----------------------------------------------------------------------------------------------
# A run killed after its last epoch's resume state but before its model file: ``--resume`` (which
# finds nothing left to train) makes the model file, metrics.csv and curves.png from the resume state.


def test_a_run_killed_between_its_last_resume_state_and_its_model_ends_with_both(tmp_path, monkeypatch):
    _run(tmp_path / "full")  # three epochs
    real = loop._save_model

    def killed_at_the_last_model(out, task, deploy, history, precision, interrupted=False):
        if len(history) == 3:
            raise Killed  # resume.safetensors already holds epoch 3
        real(out, task, deploy, history, precision, interrupted)

    monkeypatch.setattr(loop, "_save_model", killed_at_the_last_model)
    with pytest.raises(Killed):
        _run(tmp_path / "cut")
    monkeypatch.setattr(loop, "_save_model", real)
    assert read_info(tmp_path / "cut" / "resume.safetensors")["epoch"] == 3
    assert read_info(tmp_path / "cut")["epoch"] == 2  # the model file is one epoch behind
    rest = _run(tmp_path / "cut", resume=True)
    assert len(rest.history) == 3 and rest.images == 0  # nothing trained again
    full, cut = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    info = read_info(tmp_path / "cut")
    assert info["epoch"] == 3 and info["interrupted"] is False
    assert [r["epoch"] for r in info["history"]] == [1, 2, 3]
    lines = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3,adam,1,")
    assert (tmp_path / "cut" / "curves.png").read_bytes()[:4] == b"\x89PNG"


# -----------------------------------------------------------------------------------------------
# What a resumed run may change -- where, how fast and how long it computes (``--device``,
# ``--threads``, ``--data-dir``, ``--minutes``) -- is honoured by every task; a run stopped by its time
# budget trains nothing more under it, and a larger budget (or none) finishes it exactly.


class TimedLineTask(LineTask):
    """An epoch of at least 20 ms: the history's seconds (rounded to 10 ms) are never 0."""

    def evaluate(self, model, data):
        time.sleep(0.02)
        return super().evaluate(model, data)


def _fit_free_settings(out, minutes: float, resume: bool = False):
    plan = _plan()
    plan.minutes = minutes
    torch.manual_seed(0)
    config = {"lr": 0.1, "minutes": minutes}
    return fit(TimedLineTask(), nn.Linear(1, 1), _data(), plan, out, config=config, resume=resume)


def test_a_run_stopped_by_its_budget_waits_for_a_larger_one_and_then_ends_exactly(tmp_path, capsys):
    out = tmp_path / "r"
    assert len(_fit_free_settings(out, 1e-9).history) == 1  # any epoch passes the budget: stopped after the first
    capsys.readouterr()
    again = _fit_free_settings(out, 1e-9, resume=True)  # the same budget: used up, nothing trained
    said = " ".join(capsys.readouterr().out.split())
    assert again.images == 0 and len(again.history) == 1 and read_info(out)["epoch"] == 1
    assert "time budget of 1e-09 min used up: stopped after epoch 1 of 3; --minutes with a larger budget" in said
    rest = _fit_free_settings(out, 0.0, resume=True)  # no budget: the plan's last two epochs
    assert [r["epoch"] for r in rest.history] == [1, 2, 3]
    _run(tmp_path / "full")
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _link(folder, data_dir, *names):
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(data_dir / name, target_is_directory=True)
    return folder


TASKS = {
    "classify": [
        "train",
        "--data",
        "mnist",
        "--model",
        "mnist_fast",
        "--subset",
        "128",
        "--batch-size",
        "64",
        "--no-tta",
    ],
    "generate": ["generate", "train", "--latent-dim", "8", "--width", "4", "--batch-size", "32", "--subset", "64"],
    "detect": ["detect", "train", "--data", "digits", "--scenes", "8", "4", "--image-size", "64"]
    + ["--model", "mobilenet_v3_small", "--width", "16", "--weights", "none", "--batch-size", "8"],
    "sequence": ["sequence", "train", "--data", "ucr:ItalyPowerDemand", "--model", "fcn1d", "--steps", "4"],
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_resumed_run_reads_its_data_from_the_given_folder_and_trains_on_with_a_new_budget(
    task, data_dir, tmp_path, capsys
):
    old = _link(tmp_path / "old", data_dir, "mnist", "ucr")
    run = tmp_path / "run"
    argv = [*TASKS[task], "--epochs", "2", "--threads", "1", "--quiet", "--out", str(run)]
    assert main([*argv, "--data-dir", str(old), "--minutes", "1e-9"]) == 0
    assert read_info(run / "resume.safetensors")["epoch"] == 1
    new = old.rename(tmp_path / "new")  # the data folder moves while the run is stopped
    command = [*(TASKS[task][:1] if task == "classify" else TASKS[task][:2]), "--resume", "--out", str(run)]
    code = main([*command, "--data-dir", str(new), "--quiet"])  # the data found there; the budget still used up
    assert code == 0, capsys.readouterr().err
    assert read_info(run / "resume.safetensors")["epoch"] == 1
    code = main([*command, "--data-dir", str(new), "--minutes", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    info = read_info(run / "resume.safetensors")
    assert info["epoch"] == 2
    assert info["config"]["data_dir"] == str(new) and info["config"]["minutes"] == 0.0


# -----------------------------------------------------------------------------------------------
# A GAN run killed after saving an epoch but before drawing its digits draws that grid when resumed:
# the resumed run's samples/ holds every epoch's grid, the same bytes as the uninterrupted run's.


@pytest.mark.parametrize("at", [1, 2], ids=["inside", "last-epoch"])
def test_a_resumed_gan_run_has_every_epochs_grid(data_dir, tmp_path, monkeypatch, at):
    kw = dict(conditional=True, latent_dim=8, width=4, epochs=2, batch_size=32, subset=64, data_dir=str(data_dir))
    train(GenerateConfig(**kw, threads=1), tmp_path / "full", quiet=True, device="cpu")
    save = loop._save_run

    def saved_then_killed(out, *args):
        save(out, *args)
        if len(args[6]) == at:  # history: killed once this epoch's files are written
            raise Killed

    monkeypatch.setattr(loop, "_save_run", saved_then_killed)
    with pytest.raises(Killed):
        train(GenerateConfig(**kw, threads=1), tmp_path / "cut", quiet=True, device="cpu")
    monkeypatch.setattr(loop, "_save_run", save)
    assert not (tmp_path / "cut" / "samples" / f"epoch_{at:03d}.png").exists()
    train(GenerateConfig(**kw, threads=1), tmp_path / "cut", resume=True, quiet=True, device="cpu")
    for name in ("epoch_001.png", "epoch_002.png"):
        full, cut = (tmp_path / run / "samples" / name for run in ("full", "cut"))
        assert cut.read_bytes() == full.read_bytes(), name


# -----------------------------------------------------------------------------------------------
# What --resume's help says is what it does, and Ctrl-C names the command that continues the run
# even under --quiet.


COMMANDS = [["train"], ["classify", "finetune"], ["detect", "train"], ["segment", "train"], ["instance", "train"]]
COMMANDS += [["sequence", "train"], ["video", "train"], ["video-predict", "train"], ["generate", "train"]]
COMMANDS += [["style", "train"]]


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_resume_help_says_that_a_different_setting_is_refused(command):
    parser = build_parser()
    for name in command:
        parser = _sub(parser, name)
    (resume,) = [a for a in parser._actions if "--resume" in a.option_strings]
    free = (
        "--device, --threads and --minutes"
        if command == ["style", "train"]
        else "--device, --threads, --data-dir and --minutes"
    )
    assert resume.help == (
        "continue the run in --out exactly, with its own settings: a setting given that differs from the run's is "
        f"refused ({free} may change)"
    )


def test_ctrl_c_names_the_command_that_continues_even_when_quiet(tmp_path, capsys):
    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch_end=stop)  # quiet
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"interrupted: {tmp_path / 'cut' / 'model.safetensors'} holds the current weights; "
        f"`cnnkit train --resume --out {tmp_path / 'cut'}` continues from epoch 2"
    )


# -----------------------------------------------------------------------------------------------
# Every message about resuming names a command that exists, and the one that continues the run.


FINETUNE = {"finetune": {"head": "features"}, "args": {"data": "photos", "lr": 0.01}}


def _run_names_the_command(folder, task: str, config: dict, **info):
    """A run folder as far as --resume reads it: the model's task and the resume state's settings."""
    for name, meta in (
        (MODEL_FILE, {"format": FORMAT, "task": task, **info}),
        (RESUME_FILE, {"format": FORMAT, "task": task, "config": config}),
    ):
        atomic_write_bytes(folder / name, save({"w": torch.zeros(1)}, metadata={"cnnkit": json.dumps(meta)}))
    return folder


CASES = [  # (the run's task, its config, its model's metadata, the command given, what the refusal must name)
    ("video_predict", {"epochs": 1}, {}, ["video", "train"], "`cnnkit video-predict train --resume --out {run}`"),
    ("classify", FINETUNE, {"finetune": {}}, ["detect", "train"], "`cnnkit classify finetune --resume --out {run}`"),
    (
        "classify",
        FINETUNE,
        {"finetune": {}},
        ["train"],
        "{run} is a fine-tuning run; resume it with `cnnkit classify finetune --resume --out {run}`",
    ),
    (
        "classify",
        {"data": "mnist", "model": "mnist_fast", "epochs": 1},
        {},
        ["classify", "finetune"],
        "{run} is a `cnnkit classify train` run, not a fine-tuning one; resume it with "
        "`cnnkit classify train --resume --out {run}`",
    ),
]


@pytest.mark.parametrize(("task", "config", "info", "command", "named"), CASES, ids=[str(i) for i in range(4)])
def test_a_refused_resume_names_the_command_that_continues_the_run(
    tmp_path, capsys, task, config, info, command, named
):
    run = _run_names_the_command(tmp_path / "run", task, config, **info)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main([*command, "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(named.format(run=run)), err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written


def test_ctrl_c_in_finetune_names_its_command(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "cut"
    save_run = loop._save_run

    def save_then_stop(folder, *args):
        save_run(folder, *args)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's files

    monkeypatch.setattr(loop, "_save_run", save_then_stop)
    argv = ["classify", "finetune", "--model", "resnet18", "--data", str(data_dir / "hymenoptera")]
    argv += ["--image-size", "32", "--stages", "head,top", "--epochs", "1", "--batch-size", "16", "--threads", "1"]
    assert main([*argv, "--out", str(out)]) == 130
    said = " ".join(capsys.readouterr().out.split())
    assert f"`cnnkit classify finetune --resume --out {out}` continues from epoch 2" in said, said[-300:]


# -----------------------------------------------------------------------------------------------
# ``cnnkit train --resume --preset NAME`` follows the one rule of --resume: a preset other than the
# run's is refused in one line, never silently dropped.


def test_another_preset_on_resume_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    config = {"data": "mnist", "model": "mnist_fast", "epochs": 2, "recipe": "fast"}
    for name, meta in (
        (MODEL_FILE, {"format": FORMAT, "task": "classify"}),
        (RESUME_FILE, {"format": FORMAT, "config": config}),
    ):
        atomic_write_bytes(run / name, save({"w": torch.zeros(1)}, metadata={"cnnkit": json.dumps(meta)}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", "--out", str(run), "--preset", "best"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cnnkit train: error: {run} was trained with --preset fast (given best); --resume continues a run with "
        "its own settings: leave that flag out, or start a new run in another --out"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# -----------------------------------------------------------------------------------------------
# ``cnnkit classify finetune --minutes`` is a time budget as in every task: the run stops, saved,
# before an epoch that would pass it.


def test_finetune_stops_for_its_time_budget(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    argv = ["classify", "finetune", "--model", "resnet18", "--data", str(data_dir / "hymenoptera")]
    argv += ["--image-size", "32", "--stages", "head,top", "--epochs", "2", "--batch-size", "16"]
    argv += ["--threads", "1", "--precision", "fp32", "--minutes", "1e-9", "--out", str(out)]
    assert main(argv) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "time budget of 1e-09 min used up: stopped after epoch 1 of 4" in said
    assert read_info(out)["epoch"] == 1 and read_info(out / "resume.safetensors")["epoch"] == 1
    assert read_info(out)["args"]["minutes"] == 1e-9

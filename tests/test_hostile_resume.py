"""One rule for ``--resume`` in every task: the run continues with its own settings; a setting typed
on the command line that differs from the run's is a one-line refusal naming it, before any work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from cnnkit.cli import main
from cnnkit.engine.runfolder import FORMAT, MODEL_FILE, RESUME_FILE, atomic_write_bytes, check_resume_settings
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(folder, task: str, config: dict):
    """A run folder as far as --resume reads it: the model's task and the resume state's settings."""
    for name, meta in (
        (MODEL_FILE, {"format": FORMAT, "task": task}),
        (RESUME_FILE, {"format": FORMAT, "config": config}),
    ):
        atomic_write_bytes(folder / name, save({"w": torch.zeros(1)}, metadata={"cnnkit": json.dumps(meta)}))
    return folder


CASES = [
    ("classify", ["train"], {"data": "mnist", "model": "lenet5", "epochs": 1, "batch_size": 64}),
    ("detect", ["detect", "train"], {"data": "digits", "epochs": 1, "batch_size": 8}),
    ("segment", ["segment", "train"], {"data": "digits", "epochs": 1, "batch_size": 8}),
    ("instance", ["instance", "train"], {"data": "digits", "epochs": 1, "batch_size": 8}),
]


@pytest.mark.parametrize(("task", "command", "config"), CASES, ids=[c[0] for c in CASES])
def test_a_changed_setting_is_refused_the_same_way_in_every_task(tmp_path, capsys, task, command, config):
    run = _run(tmp_path / "run", task, config)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code = main([*command, "--resume", "--out", str(run), "--epochs", "3", "--batch-size", str(config["batch_size"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"{run} was trained with --epochs 1 (given 3); --resume continues a run with its own settings" in err, err
    assert "--batch-size" not in err  # typed, but equal to the run's
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written


def test_finetune_compares_its_own_settings(tmp_path, capsys):
    run = _run(tmp_path / "run", "classify", {"finetune": {"head": "linear"}, "args": {"data": "x", "lr": 0.01}})
    assert main(["classify", "finetune", "--resume", "--out", str(run), "--lr", "0.1"]) == 2
    assert "was trained with --lr 0.01 (given 0.1)" in capsys.readouterr().err


def test_the_rule(tmp_path):
    run = _run(tmp_path / "run", "detect", {"epochs": 2, "image_size": [64, 64], "device": "cpu", "threads": 1})
    # where a run computes may change; lists and tuples (a parsed flag) compare equal
    got = check_resume_settings(run, "detect", {"image_size": (64, 64), "device": "cuda", "threads": 4})
    assert got == {"epochs": 2, "image_size": [64, 64], "device": "cuda", "threads": 4}
    with pytest.raises(CnnkitError, match=r"--epochs 2 \(given 5\), --image-size 64 64 \(given 32 32\)"):
        check_resume_settings(run, "detect", {"epochs": 5, "image_size": (32, 32)})
    with pytest.raises(CnnkitError, match="is a 'detect' run, not a 'segment' one"):
        check_resume_settings(run, "segment", {})


def test_a_segment_run_resumes_with_its_own_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cnnkit.plots.training_curves", lambda history, path: None)  # matplotlib: most of the time
    from test_segmentation_cli import make_folder

    data, run = make_folder(tmp_path / "data", n=6, size=16), tmp_path / "run"
    args = ["--data", str(data), "--arch", "unet", "--model", "unet", "--width", "4", "--batch-size", "5"]
    args += ["--crop", "16", "--threads", "1", "--out", str(run), "--quiet"]
    assert main(["segment", "train", *args, "--epochs", "1"]) == 0
    assert main(["segment", "train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 2
    assert "was trained with --epochs 1 (given 2)" in capsys.readouterr().err
    # no flags: the run's own settings (its data, model, crop), and nothing left to train
    assert main(["segment", "train", "--resume", "--out", str(run), "--threads", "1", "--quiet"]) == 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m, t: m.update(epoch=-1), "epoch '-1' is not a count of epochs"),
        (lambda m, t: m.update(epoch="one"), "epoch 'one' is not a count of epochs"),
        (lambda m, t: m.update(history="x"), "the history does not hold one row for each of the 1 epochs"),
        (lambda m, t: m.update(history=[{"epoch": 1}]), "a history row lacks its epoch or seconds"),
        (lambda m, t: m.update(optim_scalars="x"), "has no attribute 'items'"),
        (lambda m, t: t.update({"optim.0.momentum_buffer": torch.zeros(7)}), "momentum_buffer has shape \\(7,\\)"),
    ],
)
def test_an_edited_resume_state_is_one_line(tmp_path, edit, message):
    from safetensors.torch import load_file

    from cnnkit.engine.runfolder import load_resume, read_checkpoint, save_resume

    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), None, torch.Generator()

    model, opt, _, gen = parts()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / RESUME_FILE
    save_resume(path, model, opt, None, gen, 1, [{"epoch": 1, "seconds": 0.5}], {"lr": 0.1})
    assert load_resume(path, *parts())[:2] == (1, [{"epoch": 1, "seconds": 0.5}])  # as written, it loads
    tensors, meta = load_file(path), read_checkpoint(path)[1]
    edit(meta, tensors)
    path.write_bytes(save(tensors, metadata={"cnnkit": json.dumps(meta)}))
    with pytest.raises(CnnkitError, match="the resume state is damaged or does not match this run \\(.*" + message):
        load_resume(path, *parts())


def test_a_resume_file_from_another_tasks_run_is_named(tmp_path, capsys):
    run = _run(tmp_path / "run", "classify", {"data": "mnist", "model": "lenet5", "epochs": 1})
    meta = {"format": FORMAT, "config": {"data": "digits", "box_weight": 2.0}, "task": "detect"}
    atomic_write_bytes(run / RESUME_FILE, save({"w": torch.zeros(1)}, metadata={"cnnkit": json.dumps(meta)}))
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / RESUME_FILE} is the resume state of a 'detect' run, not a 'classify' one" in err, err


def test_a_resume_states_damaged_network_record_is_one_line(tmp_path, capsys):
    """The network a resume state records is what --resume builds: one that is not a mapping is refused
    before anything is read or written."""
    run = _run(tmp_path / "run", "classify", {"data": "mnist", "model": "lenet5", "epochs": 1})
    meta = {"format": FORMAT, "config": {"data": "mnist", "model": "lenet5", "epochs": 1}, "network": "x"}
    atomic_write_bytes(run / RESUME_FILE, save({"w": torch.zeros(1)}, metadata={"cnnkit": json.dumps(meta)}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run / RESUME_FILE}: the resume state's network description is 'x', not a mapping" in err, err
    assert "\n" not in err and {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_the_resume_file_records_its_task(tmp_path):
    from cnnkit.engine.runfolder import read_checkpoint, save_resume

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_resume(tmp_path / RESUME_FILE, model, opt, None, torch.Generator(), 0, [], {}, None, "segment")
    assert read_checkpoint(tmp_path / RESUME_FILE)[1]["task"] == "segment"


@pytest.mark.parametrize("stored_as", ["none", None], ids=["stored-none", "stored-None"])
@pytest.mark.parametrize("typed", [["--weights", "none"], ["--weights", "NONE"], []], ids=["none", "NONE", "untyped"])
def test_a_segment_run_of_the_recipes_encoder_without_weights_resumes_without_them(
    tmp_path, segment_trains, typed, stored_as
):
    # the resolved config keeps "none" for no weights, since None reads as the recipe's (Penn-Fudan's:
    # ImageNet's); runs of earlier versions stored None for it: either resumes without weights, unrefused
    from cnnkit.tasks.segment.config import SegmentConfig

    stored = SegmentConfig(data="pennfudan", weights="none").resolved().to_dict()
    assert stored["weights"] == "none" and stored["model"] == "efficientnet_lite1"
    run = _run(tmp_path / "run", "segment", {**stored, "weights": stored_as})
    with pytest.raises(SystemExit):
        main(["segment", "train", "--resume", "--out", str(run), *typed])
    assert segment_trains["cfg"].weights == "none" and segment_trains["cfg"].to_dict() == stored


@pytest.mark.parametrize(
    ("weights", "stored_as", "typed"), [("imagenet", "imagenet", "none"), ("none", None, "imagenet")]
)
def test_a_segment_run_refuses_other_weights_on_resume(tmp_path, capsys, weights, stored_as, typed):
    from cnnkit.tasks.segment.config import SegmentConfig

    stored = SegmentConfig(data="pennfudan", weights=weights).resolved().to_dict()
    run = _run(tmp_path / "run", "segment", {**stored, "weights": stored_as})
    assert main(["segment", "train", "--resume", "--out", str(run), "--weights", typed]) == 2
    assert f"was trained with --weights {weights} (given {typed})" in capsys.readouterr().err


def test_a_segment_run_that_stored_none_for_no_weights_resumes_to_the_straight_runs_weights(tmp_path, monkeypatch):
    """A run of an earlier version, whose resolved config stored None for no weights, stopped by its time
    budget after epoch 1: resumed, it trains on without weights, to the straight run's weights exactly."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from test_segmentation_cli import make_folder

    monkeypatch.setattr("cnnkit.plots.training_curves", lambda history, path: None)  # matplotlib: most of the time
    data = make_folder(tmp_path / "data", n=6, size=16)
    args = ["--data", str(data), "--arch", "unet", "--model", "unet", "--width", "4", "--batch-size", "5"]
    args += ["--crop", "16", "--epochs", "2", "--threads", "1", "--quiet"]
    assert main(["segment", "train", *args, "--out", str(tmp_path / "straight")]) == 0
    run = tmp_path / "run"
    assert main(["segment", "train", *args, "--minutes", "1e-9", "--out", str(run)]) == 0
    with safe_open(str(run / RESUME_FILE), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["cnnkit"])
    assert info["epoch"] == 1 and info["config"]["weights"] == "none"
    info["config"]["weights"] = None  # as runs of earlier versions stored it
    atomic_write_bytes(run / RESUME_FILE, save(tensors, metadata={**meta, "cnnkit": json.dumps(info)}))
    assert main(["segment", "train", "--resume", "--out", str(run), "--minutes", "0", "--quiet"]) == 0
    a, b = load_file(tmp_path / "straight" / MODEL_FILE), load_file(run / MODEL_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

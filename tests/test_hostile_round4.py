"""Audit round 4: bad input to eval, finetune, detect, instance, segment, video, serve, plot,
explain and summary is one line (exit 2) naming what was wrong, before any work, and leaves every
file as it was; options are never dropped without a word."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from test_serve import make_run

from cnnkit.cli import main
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")


def _error(capsys, argv) -> str:
    """The one line a refused command prints (exit 2, no traceback)."""
    capsys.readouterr()
    assert main(argv) == 2
    *warnings, err = capsys.readouterr().err.strip().splitlines()  # warnings about the data may come first
    assert all(w.startswith("warning: ") for w in warnings) and "Traceback" not in err, (warnings, err)
    return err


def _digest(folder) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _photos(root, classes=("a", "b"), n=4, split=None):
    """A small image folder: ``root/[split/]<class>/<i>.png``."""
    for c in classes:
        folder = root / split / c if split else root / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def test_eval_confusion_must_be_a_png_and_is_checked_before_evaluating(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    before = _digest(run)
    err = _error(capsys, ["eval", str(run), "--confusion", str(run / "model.safetensors")])
    assert "--confusion must name a .png file" in err
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert "--confusion must name a .png file" in _error(capsys, ["eval", str(run), "--confusion", str(notes)])
    assert notes.read_text() == "mine" and _digest(run) == before
    # the run's metadata edited to nonsense: refused in the shared words, not a TypeError
    file = run / "model.safetensors"
    with safe_open(file, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["cnnkit"]) if "cnnkit" in meta else None
    key = "cnnkit" if info is not None else next(iter(meta))
    info = json.loads(meta[key])
    info["config"] = {"data": "mnist", "data_dir": 123}
    save_file(tensors, str(file), {**meta, key: json.dumps(info)})
    assert "is not what cnnkit wrote" in _error(capsys, ["eval", str(run)])


def test_threads_far_above_the_cores_are_refused():
    from cnnkit.engine.config import use_threads

    with pytest.raises(CnnkitError, match="--threads 100000 is more than 4 times"):
        use_threads(100_000)


def test_moving_mnist_sizes_are_bounded_before_any_work(tmp_path, capsys):
    from cnnkit.data.video import MovingMnist

    with pytest.raises(CnnkitError, match="Moving MNIST clips of 20 frames need .* more than the"):
        MovingMnist("test", 10**12)
    err = _error(capsys, ["video", "train", "--test-clips", "10001", "--out", str(tmp_path / "v")])
    assert "--test-clips must be an integer from 1 to 10,000; received 10001" in err
    assert "--frames must be" in _error(
        capsys, ["video-predict", "train", "--frames", "100000", "--out", str(tmp_path)]
    )
    assert not (tmp_path / "v").exists()


def test_finetune_refuses_other_tasks_runs_cuda_and_a_bad_out_before_training(tmp_path, capsys, runs):
    data = _photos(tmp_path / "photos")
    base = ["classify", "finetune", "--data", str(data), "--epochs", "1", "--batch-size", "4"]
    err = _error(capsys, [*base, "--weights", str(runs / "segment"), "--out", str(tmp_path / "f1")])
    assert "is a 'segment' run, not a classifier" in err
    clf = make_run(tmp_path / "clf")
    taken = tmp_path / "taken"
    taken.write_text("mine")
    err = _error(capsys, [*base, "--weights", str(clf), "--out", str(taken)])
    assert "cannot create the folder" in err and "--out" in err and taken.read_text() == "mine"
    if not torch.cuda.is_available():
        err = _error(capsys, [*base, "--weights", str(clf), "--device", "cuda", "--out", str(tmp_path / "f2")])
        assert "PyTorch sees no CUDA GPU" in err
    assert not (tmp_path / "f1").exists() and not (tmp_path / "f2").exists()


def test_a_class_only_in_val_is_refused(tmp_path, capsys):
    data = _photos(tmp_path / "splits", ("a", "b"), split="train")
    _photos(data, ("a", "c"), split="val")
    err = _error(
        capsys,
        ["train", "--data", str(data), "--model", "mnist_fast", "--epochs", "1", "--out", str(tmp_path / "r")],
    )
    assert "'c' has no readable image in train/" in err


def test_detect_refused_settings_leave_no_run_folder(tmp_path, capsys, data_dir):
    base = ["detect", "train", "--data", "digits", "--data-dir", str(data_dir), "--scenes", "8", "4", "--epochs", "1"]
    out = tmp_path / "det"
    assert "unknown model name" in _error(capsys, [*base, "--model", "nosuch", "--out", str(out)])
    assert not out.exists()  # split.json is written once the model is built
    taken = tmp_path / "taken"
    taken.write_text("mine")
    err = _error(capsys, [*base, "--model", "tiny", "--weights", "none", "--out", str(taken)])
    assert "cannot create the folder" in err and taken.read_text() == "mine"
    for stride in ("-1", "7"):  # an output stride the backbone has, or 0
        err = _error(capsys, [*base, "--freeze-to", stride, "--out", str(out)])
        assert f"--freeze-to must be one of 0, 2, 4, 8, 16, 32; received {stride}" in err


def test_instance_bounds_name_the_flag_and_train_digits_are_used(tmp_path, capsys, data_dir):
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data
    from cnnkit.tasks.instance.train import train

    err = _error(capsys, ["instance", "train", "--mask-width", "0", "--out", str(tmp_path / "i")])
    assert "--mask-width must be from 1 to 1024; received 0" in err
    with pytest.raises(CnnkitError, match="--roi-jitter must be from 0 to 16; received -1"):
        train(InstanceConfig(data="digits", roi_jitter=-1), tmp_path / "i2")
    cfg = InstanceConfig(data="digits", data_dir=str(data_dir), scenes=(6, 2), image_size=64, train_digits=(3, 3))
    train_set, *_ = load_instance_data(cfg.resolved())
    assert all(int((lab >= 0).sum()) == 3 for lab in train_set.labels)  # three digits in every training scene
    assert InstanceConfig(data="digits", model="tiny").resolved().train_digits == (1, 4)


def test_segment_bounds_and_weights_the_unet_encoder_cannot_load(tmp_path, capsys, data_dir):
    base = ["segment", "train", "--data", "digits", "--data-dir", str(data_dir), "--scenes", "8", "--epochs", "1"]
    assert "--width must be from 1 to 128; received 0" in _error(
        capsys, [*base, "--width", "0", "--out", str(tmp_path / "s")]
    )
    assert "--boundary-d must be from 1 to 1024; received 0" in _error(
        capsys, [*base, "--boundary-d", "0", "--out", str(tmp_path / "s")]
    )
    err = _error(capsys, [*base, "--weights", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "s")])
    assert "U-Net's own encoder (--model unet) has no pretrained weights" in err
    assert "--output-stride must be one of 16, 8; received 0" in _error(
        capsys, [*base, "--output-stride", "0", "--out", str(tmp_path / "s")]
    )
    err = _error(capsys, [*base, "--output-stride", "8", "--out", str(tmp_path / "s")])
    assert "the unet decoder has none: leave it out or add --arch deeplabv3" in err
    assert not (tmp_path / "s").exists()


def test_style_train_keeps_weights_none(tmp_path, monkeypatch):
    import importlib

    style_train = importlib.import_module("cnnkit.tasks.style.train")  # the module (the package exports the function)
    seen = {}

    def fake(cfg, out, resume=False, quiet=False):
        seen["weights"] = cfg.weights
        raise CnnkitError("stopped")

    monkeypatch.setattr(style_train, "train", fake)
    photos = _photos(tmp_path / "p", ("x",))
    style = photos / "x" / "0.png"
    main(["style", "train", "--data", str(photos), "--style", str(style), "--weights", "none", "--out", str(tmp_path)])
    assert seen["weights"] == "none"


def test_serve_port_plot_split_explain_steps_and_summary_of_a_path(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert "--port must be an integer from 0 to 65535" in _error(capsys, ["serve", "--port", "70000"])
    assert "--split is test or val" in _error(capsys, ["plot", str(run), "--split", "bogus"])
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    err = _error(capsys, ["explain", str(run), str(image), "--method", "patterns", "--steps", "0"])
    assert "--steps must be an integer from 1 to 10,000" in err
    assert "is a folder, not a network" in _error(capsys, ["summary", str(run)])


def test_wrong_task_hint_names_the_real_command(tmp_path, capsys):
    from cnnkit.engine.runfolder import FORMAT, save_model

    file = tmp_path / "vp" / "model.safetensors"
    save_model(file, torch.nn.Linear(1, 1), {"format": FORMAT, "task": "video_predict"})
    assert "use `cnnkit video-predict eval|predict`" in _error(capsys, ["eval", str(file)])
    file = tmp_path / "st" / "model.safetensors"
    save_model(file, torch.nn.Linear(1, 1), {"format": FORMAT, "task": "style"})
    assert "use `cnnkit style predict`" in _error(capsys, ["eval", str(file)])
    assert "use `cnnkit style predict` for this one" in _error(capsys, ["video", "eval", str(file)])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_is_refused_not_read(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    assert "is not a regular file (a pipe, socket or device)" in _error(capsys, ["predict", str(run), str(pipe)])


def test_a_photo_folder_of_the_data_folder_named_like_a_data_set_is_pointed_to(tmp_path, capsys):
    _photos(tmp_path / "data" / "flowers")
    base = ["--data", "flowers", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r")]
    hint = f"the data folder has {tmp_path / 'data' / 'flowers'}: pass --data {tmp_path / 'data' / 'flowers'}"
    assert hint in _error(capsys, ["train", *base])
    assert hint in _error(capsys, ["classify", "finetune", "--model", "mnist_fast", *base])
    assert "the data folder has" not in _error(capsys, ["train", *base[:1], "flowerz", *base[2:]])


def test_series_without_a_label_column_are_warned_of(tmp_path, capsys):
    """A .tsv whose first column is a value, not a label: predicted, with one warning line."""
    rng = np.random.default_rng(0)
    rows = [[k, *rng.normal(size=24).round(3)] for k in (1, 2) * 6]
    train = tmp_path / "Toy_TRAIN.tsv"
    train.write_text("\n".join("\t".join(map(str, r)) for r in rows))
    run = tmp_path / "run"
    assert (
        main(["sequence", "train", "--data", str(train), "--model", "multirocket", "--out", str(run), "--quiet"]) == 0
    )
    unlabelled = tmp_path / "new.tsv"
    unlabelled.write_text("\n".join("\t".join(map(str, r[1:])) for r in rows[:3]))
    capsys.readouterr()
    assert main(["sequence", "predict", str(run), str(unlabelled)]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("warning: ") and "puts each series' label first" in err and len(err.splitlines()) == 1
    assert len(out.splitlines()) == 3
    assert main(["sequence", "predict", str(run), str(train)]) == 0  # labelled: no warning
    assert "warning" not in capsys.readouterr().err


def test_finetune_a_grey_zoo_network_from_random_weights(tmp_path, capsys):
    """`--weights none` is random weights, as the help says; a 1-channel zoo network sees grey photos."""
    import cnnkit

    data = _photos(tmp_path / "photos", n=6)
    out = tmp_path / "run"
    argv = ["classify", "finetune", "--model", "mnist_fast", "--weights", "none", "--data", str(data)]
    assert main([*argv, "--epochs", "1", "--batch-size", "4", "--out", str(out)]) == 0
    model = cnnkit.load(out)
    assert model.input_size == (1, 28, 28) and model(torch.rand(2, 1, 28, 28)).shape == (2, 2)


def test_an_inclusive_bound_reads_as_written(tmp_path, capsys):
    err = _error(capsys, ["train", "--warmup", "1.5", "--epochs", "1", "--out", str(tmp_path / "w")])
    assert "--warmup must be from 0 to 1; received 1.5" in err
    from cnnkit.engine.config import check_values
    from cnnkit.tasks.classify.config import TrainConfig

    check_values(TrainConfig, {"warmup": 1.0})  # the whole schedule warming up is allowed


def test_an_output_that_is_a_named_pipe_is_refused_and_kept(tmp_path):
    """A file written where a named pipe is would replace the pipe (or block on it): refused, the pipe kept."""
    import os
    import stat

    from cnnkit.engine.runfolder import atomic_write_bytes
    from cnnkit.plots import check_output

    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    with pytest.raises(
        CnnkitError, match=r"cannot write .*out.png: it is a named pipe, not a file; choose another --out"
    ):
        check_output(fifo)
    with pytest.raises(CnnkitError, match="it is a named pipe"):
        atomic_write_bytes(fifo, b"x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_keras_file_given_as_a_run_names_cnnkit_convert(tmp_path, capsys):
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"PK\x03\x04 a keras zip")
    for argv in (["predict", str(keras_file), str(keras_file)], ["eval", str(keras_file)]):
        err = _error(capsys, argv)
        assert (
            f"is a Keras file; this command reads a run folder: convert it first with `cnnkit convert {keras_file}"
            in err
        )

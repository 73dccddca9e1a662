"""Nothing lost by the commands that write files: an output never replaces what the command reads or
a run, and a write that fails leaves the previous file as it was, never half a file under its name."""

from __future__ import annotations

import hashlib
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.cli import main
from cnnkit.errors import CnnkitError


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _one_line(capsys, argv: list[str], *words: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_explain_never_writes_its_picture_over_the_photo(tmp_path, capsys, monkeypatch):
    photo = tmp_path / "digit.png"
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(photo)
    before = _md5(photo)
    monkeypatch.chdir(tmp_path)
    for out in (str(photo), "digit.png", "new/../digit.png"):  # the photo's own path, however spelt
        _one_line(capsys, ["explain", "lenet5", str(photo), "--resize", "--out", out], "would replace your image")
        assert _md5(photo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit.png"]  # no folder made for the refused --out
    assert main(["explain", "lenet5", str(photo), "--resize", "--out", "cam.png"]) == 0  # another name: written
    assert _md5(photo) == before and Image.open(tmp_path / "cam.png").size[0] > 28


@pytest.fixture
def dense_run(tmp_path):
    """A classification run whose dense head ``classify fcn`` converts, beside its resume state."""
    import cnnkit
    from cnnkit.tasks.classify.finetune import save_finetuned

    net = cnnkit.create_model("keras_mnist_convnet", num_classes=3)
    save_finetuned(tmp_path / "run", net, "keras_mnist_convnet", ["a", "b", "c"], (1, 28, 28), (0.5,), (0.25,), [], {})
    (tmp_path / "run" / "resume.safetensors").write_bytes(b"the run's resume state")
    return tmp_path / "run"


def test_classify_fcn_never_replaces_a_run_or_a_checkpoint(dense_run, tmp_path, capsys):
    model = dense_run / "model.safetensors"
    before = {p.name: _md5(p) for p in dense_run.iterdir()}
    other = tmp_path / "other"  # another run: its model file alone (a run trained without resume state)
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another run's model")
    for out in (dense_run, model, other, other / "model.safetensors"):
        _one_line(capsys, ["classify", "fcn", str(dense_run), "--out", str(out)], "choose another --out")
    assert {p.name: _md5(p) for p in dense_run.iterdir()} == before
    assert (other / "model.safetensors").read_bytes() == b"another run's model"
    assert main(["classify", "fcn", str(dense_run), "--out", str(tmp_path / "fcn")]) == 0  # a new folder: written
    import cnnkit

    assert cnnkit.load(tmp_path / "fcn")(torch.rand(1, 1, 44, 36)).shape == (1, 3, 5, 3)
    assert {p.name: _md5(p) for p in dense_run.iterdir()} == before


def test_a_frame_prediction_gif_is_never_left_half_written(tmp_path):
    """A file-size limit (what a full disk does to a write) cuts the GIF: the previous one stays whole."""
    from cnnkit.tasks.video_predict.predict import write_prediction

    g = torch.Generator().manual_seed(0)
    clip, pred = torch.rand(4, 1, 32, 32, generator=g), torch.rand(4, 1, 32, 32, generator=g)
    png, gif = write_prediction(clip, pred, None, tmp_path / "whole", "c")
    sizes = png.stat().st_size, gif.stat().st_size
    assert sizes[0] < sizes[1]  # a limit between the two lets the PNG through and cuts the GIF
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.gif").write_bytes(b"GIF89a the previous prediction")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (sizes[0] + 1000, hard))
    try:
        with pytest.raises(CnnkitError, match=r"cannot write .*c\.gif"):
            write_prediction(clip, pred, None, out, "c")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert (out / "c.gif").read_bytes() == b"GIF89a the previous prediction"
    assert sorted(p.name for p in out.iterdir()) == ["c.gif", "c.png"]  # no temporary file left either
    assert (out / "c.png").stat().st_size == sizes[0]
    (out / "c.gif").unlink()
    (out / "c.gif").mkdir()  # a folder where the GIF goes: one line, not a traceback
    with pytest.raises(CnnkitError, match="Is a directory"):
        write_prediction(clip, pred, None, out, "c")


@pytest.mark.parametrize("task", ["detect", "instance"])
def test_predict_into_the_photos_folder_names_the_flag_it_has(runs, tmp_path, capsys, task):
    """detect and instance predict take --out-dir (no --out): the refusal names that flag."""
    photos = [tmp_path / "x.png", tmp_path / "x_boxes.png"]  # detect's map of x.png would be x_boxes.png
    for p in photos:
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
    before = [_md5(p) for p in photos]
    err = _one_line(capsys, [task, "predict", str(runs / task), *map(str, photos), "--out-dir", str(tmp_path)])
    assert "would replace your image" in err and "choose another --out-dir folder" in err
    assert [_md5(p) for p in photos] == before


def test_a_new_run_never_overwrites_a_folders_own_metrics_or_curves(tmp_path, data_dir, capsys):
    """``--out`` a folder of the user's files: the metrics.csv and curves.png of no run are not replaced."""
    from cnnkit.engine.runfolder import check_new_run

    mine = {"metrics.csv": b"my results\n", "curves.png": b"my figure", "config.yaml": b"my notes\n"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    argv = ["train", "--data", "mnist", "--data-dir", str(data_dir), "--subset", "64", "--batch-size", "32"]
    _one_line(capsys, [*argv, "--epochs", "1", "--quiet", "--out", str(tmp_path)], "metrics.csv and a curves.png")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == mine
    (tmp_path / "metrics.csv").unlink()
    with pytest.raises(CnnkitError, match="holds a curves.png of no run"):
        check_new_run(tmp_path, resume=False)
    (tmp_path / "curves.png").unlink()
    check_new_run(tmp_path, resume=False)  # a config.yaml alone is allowed: `--config DIR/config.yaml --out DIR`


def test_a_name_near_the_file_systems_limit_is_written_through_its_temporary_file(tmp_path):
    """The temporary file beside the target repeats its name: a 250-byte name (under the 255 allowed)
    made the temporary one too long, and the write failed after the work."""
    from cnnkit import plots
    from cnnkit.engine.runfolder import atomic_write_bytes, output_stems

    name = "é" * 120 + "x.png"  # 245 bytes in UTF-8
    atomic_write_bytes(tmp_path / name, b"data")
    assert (tmp_path / name).read_bytes() == b"data"
    fig = plots.training_curves([{"epoch": 1, "train_loss": 0.5}], title="t")
    plots.save_figure(fig, tmp_path / ("c" * 246 + ".png"))
    assert sorted(len(p.name.encode()) for p in tmp_path.iterdir()) == [245, 250]
    # an output whose own name is too long is said before the work, naming the input
    photo = tmp_path / ("p" * 248 + ".jpg")
    with pytest.raises(CnnkitError) as info:
        output_stems([photo], tmp_path / "out", (".png", "_boxes.png"))
    assert str(info.value) == (
        f"{photo}: its output {'p' * 40}...{'p' * 6}_boxes.png would have a 258-byte name, more than a file "
        "system allows (255); rename the file shorter (nothing was written)"
    )


def test_a_temporary_file_whose_pid_is_no_number_is_removed_as_stale(tmp_path):
    """A leftover `.curves.png.².tmp` ("²" is a digit to str.isdigit(), not to int()) stopped the next
    save of the figure with a ValueError; it is stale (no process has that id) and removed."""
    from cnnkit import plots

    odd = tmp_path / ".curves.png.².x.tmp"
    odd.write_bytes(b"left")
    plots.save_figure(plots.training_curves([{"epoch": 1, "train_loss": 0.5}], title="t"), tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]

"""Audit of `cnnkit explain` and the video commands: a sequence run explained on a hostile series file,
TorchScript networks explained, and `video predict` / `video-predict predict` holding one clip at a
time. Each bad input is one line (exit 2) naming what was wrong and what to do instead."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from test_hostile_round3 import _error
from test_hostile_round3 import _series_file as _round3_series_file

from cnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--threads", "1", "--quiet"]
FCN = ["--model", "fcn1d", "--steps", "2", "--epochs", "1"]

_series_file = functools.partial(_round3_series_file, rows=12, length=16)


# --- cnnkit explain RUN SERIES: the file read as sequence predict reads it ----------------------------


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    """A 2-step fcn1d run on a toy file of 12 series of 16 samples."""
    root = tmp_path_factory.mktemp("explain_series")
    data = _series_file(root / "toy_TRAIN.tsv")
    assert main(["sequence", "train", "--data", str(data), *FCN, "--out", str(root / "run"), *FAST]) == 0
    return root / "run"


def test_explain_refuses_a_series_of_one_sample_as_predict_does(series_run, tmp_path, capsys):
    """A series of one sample z-normalises to 0: training, eval and predict refuse the file, and so does
    explain, whichever series of it is explained."""
    path = tmp_path / "one.tsv"
    path.write_text("1\t0.5\t0.7\t0.1\t0.4\n0\t0.25\tNaN\tNaN\tNaN\n")  # series 2: one sample, NaN-padded
    out = tmp_path / "cam.png"
    for index in ("0", "1"):
        err = _error(capsys, ["explain", str(series_run), str(path), "--index", index, "--out", str(out)])
        assert err.endswith(
            f"{path}: series 2 has 1 sample; a series needs at least 2 (as in training); remove it or give its values"
        )
    assert _error(capsys, ["sequence", "predict", str(series_run), str(path)]).endswith(err.split("error: ")[1])
    assert not out.exists()


def test_explain_draws_a_short_series_without_the_padding_the_network_saw(series_run, tmp_path, monkeypatch):
    """A series shorter than the training length (and than fcn1d's receptive field) goes in zero-padded,
    as predict feeds it; the picture draws its own 3 samples, not the 16 of the padded input."""
    import cnnkit.plots as plots

    drawn = []
    real = plots.series_cam
    monkeypatch.setattr(plots, "series_cam", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    path = tmp_path / "short.tsv"
    path.write_text("1\t0.1\t0.9\t0.3\n")
    assert main(["explain", str(series_run), str(path), "--out", str(tmp_path / "c.png")]) == 0
    (line,) = drawn[0].axes[0].collections  # the series, one segment between each two samples
    assert len(line.get_segments()) == 3 - 1
    assert (tmp_path / "c.png").is_file()


# --- video predict, video-predict predict: one clip held at a time -----------------------------------


@pytest.fixture(scope="module")
def video_runs(data_dir, tmp_path_factory):
    """A clip classifier (sees 8 frames 2 apart of 16x16) and a frame predictor (4 frames in), 1 epoch each."""
    from cnnkit.tasks.video import VideoConfig
    from cnnkit.tasks.video import train as train_video
    from cnnkit.tasks.video_predict import PredictConfig
    from cnnkit.tasks.video_predict import train as train_predictor

    root = tmp_path_factory.mktemp("video_runs")
    small = dict(epochs=1, val_clips=0, test_clips=2, batch_size=2, threads=1, data_dir=str(data_dir))
    train_video(VideoConfig(clips=4, frames=16, stride=2, size=16, **small), root / "video", quiet=True)
    train_predictor(PredictConfig(clips=2, frames=4, **small), root / "predict", quiet=True)
    return root


@pytest.mark.parametrize(
    ("command", "module", "predict"),
    [
        ("video", "cnnkit.tasks.video.predict", "predict_clips"),
        ("video-predict", "cnnkit.tasks.video_predict.predict", "predict_frames"),
    ],
)
def test_predict_holds_one_clip_at_a_time(video_runs, tmp_path, monkeypatch, capsys, command, module, predict):
    """Each clip is refused alone when it would not fit in memory (check_fits); the clips a command is
    given are read, checked and predicted one at a time, so their sum is never held: when each clip is
    predicted, it is the only one alive, and --test renders its clips one at a time."""
    import importlib
    import weakref

    from cnnkit.data.video import MovingMnist, VideoClips

    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"c{i}.npy", np.random.default_rng(i).integers(0, 256, (16, 16, 16), dtype=np.uint8))
    alive, at_predict, rendered = [], [], []
    read, render = VideoClips.__getitem__, MovingMnist.batch
    monkeypatch.setattr(VideoClips, "__getitem__", lambda self, i: alive.append(weakref.ref(c := read(self, i))) or c)
    monkeypatch.setattr(MovingMnist, "batch", lambda self, idx: rendered.append(len(idx)) or render(self, idx))
    mod = importlib.import_module(module)
    real = getattr(mod, predict)
    counted = lambda model, x: at_predict.append(sum(r() is not None for r in alive)) or real(model, x)  # noqa: E731
    monkeypatch.setattr(mod, predict, counted)
    run = video_runs / ("video" if command == "video" else "predict")
    assert main([command, "predict", str(run), str(folder), "--test", "3", "--out", str(tmp_path / "out")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6  # 3 clips of the folder, 3 test clips
    assert at_predict == [1, 1, 1, 0, 0, 0]  # a folder clip alone; a test clip is rendered, not read
    assert rendered == [1] * 6  # each test clip rendered alone: once checked, once predicted

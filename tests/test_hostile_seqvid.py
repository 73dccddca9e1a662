"""Audit of sequence and video input: series of one sample, a run's data changed under it (eval and
--resume), a clip folder changed under a frame-prediction run, and clips larger than memory. Each bad
input is one line (exit 2) and leaves the run folder as it was."""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest
from test_hostile_round3 import _digest, _error
from test_hostile_round3 import _series_file as _round3_series_file

from cnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--threads", "1", "--quiet"]
FCN = ["--model", "fcn1d", "--steps", "2", "--epochs", "1"]


# a toy series file: a sine wave a class, `rows` lines of `length` values (other defaults than round 3's)
_series_file = functools.partial(_round3_series_file, rows=12, length=16)


# --- a series of one sample: refused by training, as eval --data and predict refuse it ---------------


def test_training_refuses_a_series_of_one_sample(tmp_path, capsys):
    data = _series_file(tmp_path / "short_TRAIN.tsv")
    lines = data.read_text().splitlines()
    lines[3] = lines[3].split("\t")[0] + "\t0.5" + "\tNaN" * 15  # series 4: one sample, NaN-padded
    data.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    err = _error(capsys, ["sequence", "train", "--data", str(data), *FCN, "--out", str(run), *FAST])
    assert "short_TRAIN.tsv: series 4 has 1 sample; a series needs at least 2" in err
    assert not run.exists()


def test_a_run_scores_its_test_file_as_eval_data_scores_it(tmp_path, capsys):
    data = _series_file(tmp_path / "toy_TRAIN.tsv")
    test = _series_file(tmp_path / "toy_TEST.tsv", rows=4, seed=1)
    run = tmp_path / "run"
    assert main(["sequence", "train", "--data", str(data), *FCN, "--out", str(run), *FAST]) == 0
    test.write_text(test.read_text() + "1\t0.25" + "\tNaN" * 15 + "\n")  # a fifth series of one sample
    for argv in (["sequence", "eval", str(run)], ["sequence", "eval", str(run), "--data", str(test)]):
        assert "toy_TEST.tsv: series 5 has 1 sample" in _error(capsys, argv)
    before = _digest(tmp_path)
    err = _error(capsys, ["sequence", "train", "--data", str(data), *FCN, "--out", str(tmp_path / "b"), *FAST])
    assert "toy_TEST.tsv: series 5 has 1 sample" in err
    assert _digest(tmp_path) == before


# --- a sequence run's data changed since it trained -------------------------------------------------


@pytest.mark.parametrize(
    "classes, shown",
    [((0, 1, 2), "classes 0, 1, 2 (the run's: 0, 1)"), ((1, 2), "classes 1, 2 (the run's: 0, 1)")],
    ids=["a class added", "classes renamed"],
)
def test_eval_refuses_a_run_whose_training_file_has_other_classes(tmp_path, capsys, classes, shown):
    data = _series_file(tmp_path / "toy_TRAIN.tsv")
    run = tmp_path / "run"
    assert main(["sequence", "train", "--data", str(data), *FCN, "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    assert main(["sequence", "eval", str(run), "--split", "val", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["series"] == 2  # one of each class held out
    _series_file(data, classes=classes)
    err = _error(capsys, ["sequence", "eval", str(run), "--split", "val"])
    assert f"toy_TRAIN.tsv is not the data the run in {run} trained on: {shown}" in err


def test_resume_refuses_data_other_than_the_runs(tmp_path, capsys):
    data = _series_file(tmp_path / "toy_TRAIN.tsv")
    run = tmp_path / "run"
    argv = ["sequence", "train", "--data", str(data), "--model", "fcn1d", "--steps", "6", "--epochs", "3"]
    assert main([*argv, "--minutes", "0.00001", "--out", str(run), *FAST]) == 0  # stopped after epoch 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    kept = data.read_text()
    before = _digest(run)
    resume = ["sequence", "train", "--resume", "--minutes", "0", "--out", str(run), *FAST]
    for length, classes, shown in (
        (20, (0, 1), "series of 1x20 (channels x length; the run's: 1x16)"),
        (16, (0, 1, 2), "classes 0, 1, 2 (the run's: 0, 1)"),
    ):
        _series_file(data, rows=15, length=length, classes=classes)
        err = _error(capsys, resume)
        assert f"toy_TRAIN.tsv is not the data the run in {run} trained on: {shown}" in err
        assert _digest(run) == before
    data.write_text(kept)  # the run's own data back: it trains on to its last epoch
    assert main(resume) == 0
    assert [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_the_done_line_counts_the_steps_taken_not_the_steps_planned(tmp_path, capsys):
    data = _series_file(tmp_path / "toy_TRAIN.tsv")
    run = tmp_path / "run"
    argv = ["sequence", "train", "--data", str(data), "--model", "fcn1d", "--steps", "6", "--epochs", "3"]
    capsys.readouterr()
    assert main([*argv, "--minutes", "0.00001", "--out", str(run), "--threads", "1"]) == 0  # epoch 1 of 3
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    assert re.search(r", 2 steps in [\d.]+ s -> ", done), done  # 2 steps an epoch ran, not the 6 planned
    assert main(["sequence", "train", "--resume", "--minutes", "0", "--out", str(run), "--threads", "1"]) == 0
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.search(r", 4 steps in [\d.]+ s -> ", done), done  # the 2 epochs left
    assert main(["sequence", "train", "--resume", "--out", str(run), "--threads", "1"]) == 0
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.search(r", 0 steps in [\d.]+ s -> ", done), done  # nothing left: no step, and not "fitted"


# --- what sequence predict, eval --data and explain take: one split's file ---------------------------


def test_an_npz_or_a_folder_is_refused_in_command_line_words(tmp_path, capsys):
    data = _series_file(tmp_path / "toy_TRAIN.tsv")
    run = tmp_path / "run"
    assert main(["sequence", "train", "--data", str(data), *FCN, "--out", str(run), *FAST]) == 0
    npz = tmp_path / "toy.npz"
    np.savez(npz, X_train=np.zeros((4, 16)), y_train=np.array([0, 1, 0, 1]), X_test=np.zeros((2, 16)), y_test=[0, 1])
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("b_TEST.tsv", "a_TRAIN.tsv", "notes.md"):
        (folder / name).write_text("0\t1\t2\n")
    for argv, command in (
        (["sequence", "predict", str(run), str(data), str(npz)], "cnnkit sequence predict"),
        (["sequence", "eval", str(run), "--data", str(npz)], "cnnkit sequence eval --data"),
        (["explain", str(run), str(npz), "--out", str(tmp_path / "cam.png")], "cnnkit explain"),
    ):
        err = _error(capsys, argv)
        assert f"{npz}: an .npz holds a set's two splits, and `{command}` reads a file of one; give a .ts" in err
        assert f"(`cnnkit sequence train --data {npz}`)" in err and "load_series" not in err, err
    for argv in (
        ["sequence", "predict", str(run), str(data), f"{folder}/"],
        ["sequence", "eval", str(run), "--data", str(folder)],
        ["explain", str(run), str(folder), "--out", str(tmp_path / "cam.png")],
    ):
        err = _error(capsys, argv)
        assert err.endswith(
            f"{folder} is a folder, not a series file; name a .ts, .tsv, .txt or .csv file in it "
            "(it holds a_TRAIN.tsv, b_TEST.tsv)"
        ), err
    assert not (tmp_path / "cam.png").exists()
    capsys.readouterr()
    assert main(["sequence", "train", "--data", str(npz), *FCN, "--out", str(tmp_path / "npz_run"), *FAST]) == 0
    assert main(["sequence", "eval", str(tmp_path / "npz_run"), "--format", "json"]) == 0  # the fix it names
    assert json.loads(capsys.readouterr().out)["series"] == 2  # the .npz's test split


# --- a frame-prediction run on a folder keeps its own clips ------------------------------------------


def test_a_folder_runs_eval_and_resume_keep_the_runs_own_clips(tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(6):
        clip = np.random.default_rng(i).integers(0, 256, (4, 16, 16), dtype=np.uint8)
        np.save(folder / f"c{i}.npy", clip)
    run = tmp_path / "run"
    argv = ["video-predict", "train", "--data", str(folder), "--frames", "2", "--size", "16", "--batch-size", "2"]
    assert main([*argv, "--epochs", "3", "--minutes", "0.00001", "--out", str(run), *FAST]) == 0  # epoch 1 of 3
    split = json.loads((run / "split.json").read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 4, "val": 1, "test": 1}
    assert sorted(sum(split.values(), [])) == [f"c{i}.npy" for i in range(6)]

    def scores(part):
        capsys.readouterr()
        assert main(["video-predict", "eval", str(run), "--split", part, "--format", "json"]) == 0
        return json.loads(capsys.readouterr().out)

    before = {part: scores(part) for part in ("val", "test")}
    for i in range(6, 30):  # clips added after training, and a file that is no clip
        np.save(folder / f"c{i}.npy", np.full((4, 16, 16), 255, dtype=np.uint8))
    (folder / "notes.txt").write_text("not a clip")
    assert {part: scores(part) for part in ("val", "test")} == before

    gone = folder / split["train"][0]
    gone.rename(tmp_path / "kept.npy")
    kept = _digest(run)
    resume = ["video-predict", "train", "--resume", "--minutes", "0", "--out", str(run), *FAST]
    assert f"no clip {gone}; the run's split.json names it" in _error(capsys, resume)
    assert _digest(run) == kept
    (tmp_path / "kept.npy").rename(gone)
    assert main(resume) == 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 4
    assert json.loads((run / "split.json").read_text()) == split


# --- a clip larger than the memory available --------------------------------------------------------


def test_a_clip_larger_than_memory_is_refused_before_it_is_copied(tmp_path, monkeypatch):
    from cnnkit.data.video import VideoClips
    from cnnkit.errors import CnnkitError

    path = tmp_path / "big.npy"
    np.save(path, np.zeros((64, 1, 256, 256), dtype=np.uint8))  # 4 MiB on disk, 16 MiB as float32
    monkeypatch.setattr("cnnkit.errors.memory_available", lambda: 1 << 20)  # 1 MiB free
    with pytest.raises(CnnkitError, match=r"big.npy \(64x1x256x256 uint8 values, read as float32\) needs 16") as exc:
        VideoClips(tmp_path, clips=[path])[0]
    assert str(exc.value).endswith(
        "; cut the clip to fewer or smaller frames (a clip of the frames the run takes is enough)"
    )
    two = VideoClips(tmp_path, clips=[path], num_frames=2)[0]  # 512 KiB: only the frames used are copied
    assert two.shape == (2, 1, 256, 256)


def test_a_folder_of_frames_larger_than_memory_is_refused_before_its_frames_are_read(tmp_path, monkeypatch):
    from PIL import Image

    import cnnkit.data.video as video
    from cnnkit.errors import CnnkitError

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(16):  # each 256x256 frame passes the image reader; the clip is 4 MiB as float32
        Image.fromarray(np.full((256, 256), 16 * i, dtype=np.uint8)).save(folder / f"{i:02d}.png")
    real, read = video.read_image, []
    monkeypatch.setattr(video, "read_image", lambda path, *args: read.append(path.name) or real(path, *args))
    monkeypatch.setattr("cnnkit.errors.memory_available", lambda: 1 << 20)  # 1 MiB free
    with pytest.raises(CnnkitError, match=r"clip \(16x1x256x256 values of 16 frames, as float32\) needs 4.2 MB") as exc:
        video.VideoClips(tmp_path, clips=[folder])[0]
    assert "; cut the clip to fewer or smaller frames" in str(exc.value)
    assert read == ["00.png"]  # the first frame gave the size; the other 15 were never decoded
    read.clear()
    two = video.VideoClips(tmp_path, clips=[folder], num_frames=2)[0]  # 512 KiB: only the frames used
    assert two.shape == (2, 1, 256, 256) and read == ["00.png", "01.png"]
    grey = two.mul(255).round()  # each frame's one grey level, in its place
    assert grey.amin(dim=(1, 2, 3)).tolist() == [0.0, 16.0] == grey.amax(dim=(1, 2, 3)).tolist()

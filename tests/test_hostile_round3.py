"""Audit round 3 (B): bad input to sequence, video, video-predict, generate and style is one line
(exit 2) naming what was wrong, and leaves every file as it was."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from cnnkit.cli import main
from cnnkit.data.series import read_npz, read_series, znormalise

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--threads", "1", "--quiet"]


def _error(capsys, argv) -> str:
    """The one line a refused command prints (exit 2, no traceback)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _digest(folder) -> dict:
    """Every file under ``folder`` and its bytes' hash: what must stay as it was."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _series_file(path, rows: int = 24, length: int = 30, classes=(0, 1), seed: int = 0):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        label = classes[i % len(classes)]
        x = np.sin(np.linspace(0, 3 + 2 * (i % len(classes)), length)) + 0.1 * rng.normal(size=length)
        lines.append("\t".join([str(label), *(f"{v:.5f}" for v in x)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _tamper(src, dst, edit) -> None:
    """``dst``: ``src`` with its cnnkit metadata edited by ``edit(meta)`` (the tensors as they were)."""
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    m = json.loads(meta["cnnkit"])
    edit(m)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata={**meta, "cnnkit": json.dumps(m)})


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    """A synthetic two-class series file and a 2-epoch FCN run on it."""
    root = tmp_path_factory.mktemp("seq")
    data = _series_file(root / "toy_TRAIN.tsv")
    run = root / "fcn"
    argv = ["sequence", "train", "--data", str(data), "--model", "fcn1d", "--steps", "2", "--epochs", "1"]
    assert main([*argv, "--out", str(run), *FAST]) == 0
    return root, data, run


@pytest.fixture(scope="module")
def gan(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("gan") / "run"
    argv = ["generate", "train", "--data-dir", str(data_dir), "--subset", "64", "--batch-size", "32"]
    argv += ["--epochs", "1", "--width", "4", "--latent-dim", "8", "--out", str(run), *FAST]
    assert main(argv) == 0
    return run


def _photo(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def sty(tmp_path_factory):
    root = tmp_path_factory.mktemp("sty")
    (root / "photos").mkdir()
    for i in range(2):
        _photo(root / "photos" / f"p{i}.png", 40, 36, seed=i)
    style = _photo(root / "style.png", 40, 40, seed=9)
    run = root / "run"
    argv = ["style", "train", "--style", str(style), "--data", str(root / "photos"), "--crop", "32"]
    argv += ["--style-size", "32", "--epochs", "1", "--batch-size", "2", "--weights", "none", "--out", str(run)]
    assert main([*argv, *FAST]) == 0
    return root, style, run


@pytest.fixture(scope="module")
def video(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("video")
    cls, pred = root / "cls", root / "pred"
    argv = ["video", "train", "--data-dir", str(data_dir), "--clips", "4", "--val-clips", "0", "--test-clips", "2"]
    assert main([*argv, "--batch-size", "2", "--epochs", "1", "--out", str(cls), *FAST]) == 0
    argv = ["video-predict", "train", "--data-dir", str(data_dir), "--clips", "2", "--val-clips", "0"]
    argv += ["--test-clips", "2", "--batch-size", "2", "--frames", "4", "--epochs", "1", "--out", str(pred), *FAST]
    assert main(argv) == 0
    np.save(root / "clip.npy", (np.random.default_rng(0).random((8, 64, 64)) * 255).astype(np.uint8))
    return root, cls, pred


# --- 3: --resume with changed settings is refused, naming them ---------------------------------------


def test_sequence_resume_with_other_settings_is_refused(seq, tmp_path, capsys):
    root, data, run = seq
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    before = _digest(copy)
    other = _series_file(tmp_path / "other_TRAIN.tsv", seed=3)
    argv = ["sequence", "train", "--data", str(other), "--model", "resnet1d", "--epochs", "4"]
    err = _error(capsys, [*argv, "--out", str(copy), "--resume", *FAST])
    assert "--model fcn1d (given resnet1d)" in err and "--epochs 1 (given 4)" in err and "--data" in err
    assert _digest(copy) == before
    # the run's own settings, typed again, are no change
    assert (
        main(["sequence", "train", "--data", str(data), "--model", "fcn1d", "--out", str(copy), "--resume", *FAST]) == 0
    )


def test_generate_resume_with_other_settings_is_refused(gan, tmp_path, capsys, data_dir):
    copy = tmp_path / "g"
    shutil.copytree(gan, copy)
    before = _digest(copy)
    argv = ["generate", "train", "--data-dir", str(data_dir), "--epochs", "2", "--conditional", "--width", "64"]
    err = _error(capsys, [*argv, "--out", str(copy), "--resume", *FAST])
    assert "--conditional False (given True)" in err and "--width 4 (given 64)" in err and "--epochs 1 (given 2)" in err
    assert _digest(copy) == before


def test_style_resume_with_other_settings_is_refused(sty, tmp_path, capsys):
    root, style, run = sty
    copy = tmp_path / "s"
    shutil.copytree(run, copy)
    before = _digest(copy)
    other = _photo(tmp_path / "mosaic.png", 40, 40, seed=4)
    argv = ["style", "train", "--style", str(other), "--data", str(root / "photos"), "--crop", "64", "--epochs", "2"]
    err = _error(capsys, [*argv, "--out", str(copy), "--resume", *FAST])
    assert "--style" in err and "--crop 32 (given 64)" in err and "--epochs 1 (given 2)" in err
    assert _digest(copy) == before


# --- 4: video --resume takes the run's settings for the flags left out --------------------------------


def test_video_resume_uses_the_runs_own_settings(video, tmp_path, capsys, monkeypatch):
    root, cls, pred = video
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "elsewhere"))  # the run's data folder is used, not a default
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for kind, run in (("video", cls), ("video-predict", pred)):
        copy = tmp_path / kind
        shutil.copytree(run, copy)
        assert main([kind, "train", "--out", str(copy), "--resume", *FAST]) == 0, capsys.readouterr().err
    assert not (tmp_path / "home").exists() and not (tmp_path / "elsewhere").exists()
    copy = tmp_path / "changed"
    shutil.copytree(cls, copy)
    before = _digest(copy)
    err = _error(
        capsys, ["video", "train", "--model", "c3d_deep", "--lr", "0.5", "--out", str(copy), "--resume", *FAST]
    )
    assert "--model c3d_small (given c3d_deep)" in err and "--lr" in err and "damaged" not in err
    assert "batch" not in err and "clips" not in err  # only the flags given
    assert _digest(copy) == before


# --- 6: a checkpoint whose stored settings are not an object -----------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(config=None),
        lambda m: m.update(config=[1]),
        lambda m: m["config"].update(data=None),
    ],
)
def test_damaged_stored_settings_are_one_line(seq, video, tmp_path, capsys, edit):
    root, data, run = seq
    _tamper(run / "model.safetensors", tmp_path / "s" / "model.safetensors", edit)
    for argv in (
        ["sequence", "predict", str(tmp_path / "s"), str(data)],
        ["sequence", "eval", str(tmp_path / "s"), "--split", "val"],
    ):
        assert "damaged or was edited" in _error(capsys, argv)
    _, cls, pred = video
    for kind, run in (("video", cls), ("video-predict", pred)):
        _tamper(run / "model.safetensors", tmp_path / kind / "model.safetensors", edit)
        assert "damaged or was edited" in _error(capsys, [kind, "eval", str(tmp_path / kind), "--clips", "2"])


# --- 7, 16, 23: values, labels and a byte order mark in series files ----------------------------------


def _edit_line(src, dst, line: int, values):
    lines = src.read_text().splitlines()
    fields = lines[line - 1].split("\t")
    lines[line - 1] = "\t".join([fields[0], *(values[i % len(values)] for i in range(len(fields) - 1))])
    dst.write_text("\n".join(lines) + "\n")
    return dst


def test_values_beyond_float32_or_infinite_are_one_line(seq, tmp_path, capsys):
    _, data, _ = seq
    huge = _edit_line(data, tmp_path / "huge_TRAIN.tsv", 3, ["1e300", "-1e300"])
    big = _edit_line(data, tmp_path / "big_TRAIN.tsv", 3, ["1e30", "-1e30"])
    for extra in ([], ["--no-znorm"]):
        err = _error(capsys, ["sequence", "train", "--data", str(huge), *extra, "--out", str(tmp_path / "x"), *FAST])
        assert "huge_TRAIN.tsv, line 3: value 1e+300 does not fit float32" in err
    err = _error(capsys, ["sequence", "train", "--data", str(big), "--no-znorm", "--out", str(tmp_path / "x"), *FAST])
    assert "big_TRAIN.tsv, line 3: value 1e+30 is too large to train on unnormalised" in err
    assert not (tmp_path / "x").exists()
    assert read_series(big).values.isfinite().all()  # z-normalised, 1e30 is fine
    x = np.array([[1e150, -1e150, 3e149, 0.0]])
    assert np.isfinite(znormalise(x)).all() and znormalise(x)[0, 0] > 1  # no overflow in the squares
    rng = np.random.default_rng(0)
    xs, y = rng.normal(size=(20, 50)), np.array([0, 1] * 10)
    np.savez(tmp_path / "inf.npz", X_train=np.where(xs > 2, np.inf, xs), y_train=y, X_test=xs, y_test=y)
    err = _error(
        capsys, ["sequence", "train", "--data", str(tmp_path / "inf.npz"), "--out", str(tmp_path / "x"), *FAST]
    )
    assert "inf.npz, series" in err and "is infinite" in err


def test_a_byte_order_mark_is_not_part_of_a_label(seq, tmp_path):
    _, data, _ = seq
    bom = tmp_path / "bom_TRAIN.tsv"
    bom.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    assert read_series(bom).classes == ["0", "1"]


def test_nan_labels_are_refused(seq, tmp_path, capsys):
    _, data, _ = seq
    lines = data.read_text().splitlines()
    lines[0] = "nan" + lines[0][lines[0].index("\t") :]
    (tmp_path / "nan_TRAIN.tsv").write_text("\n".join(lines) + "\n")
    err = _error(capsys, ["sequence", "train", "--data", str(tmp_path / "nan_TRAIN.tsv"), *FAST])
    assert "nan_TRAIN.tsv, line 1: the label is 'nan'" in err
    xs = np.zeros((4, 5)) + np.arange(5)
    y = np.array([0.0, 1.0, np.nan, 1.0])
    np.savez(tmp_path / "n.npz", X_train=xs, y_train=y, X_test=xs, y_test=y)
    with pytest.raises(Exception, match="series 3: the label is 'nan'"):
        read_npz(tmp_path / "n.npz")


def test_predict_and_eval_refuse_series_of_one_sample(seq, tmp_path, capsys):
    _, _, run = seq
    short = tmp_path / "one_TRAIN.tsv"
    short.write_text("0\t1.0\n1\t2.0\n")
    assert "series 1 has 1 sample" in _error(capsys, ["sequence", "predict", str(run), str(short)])
    assert "series 1 has 1 sample" in _error(capsys, ["sequence", "eval", str(run), "--data", str(short)])


# --- 17, 18: one class, an .npz bomb ----------------------------------------------------------------


def test_a_training_set_of_one_class_is_refused(tmp_path, capsys):
    data = _series_file(tmp_path / "one_TRAIN.tsv", classes=(0,))
    for model in ("fcn1d", "multirocket"):
        err = _error(
            capsys, ["sequence", "train", "--data", str(data), "--model", model, "--out", str(tmp_path / "o"), *FAST]
        )
        assert "training needs at least 2 classes; the training series have 1 (0)" in err
    assert not (tmp_path / "o").exists()


def test_an_npz_is_refused_by_its_header_before_it_is_inflated(tmp_path, capsys):
    header = {"descr": "<f8", "fortran_order": False, "shape": (2000, 1_000_000)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    path = tmp_path / "bomb.npz"
    small = io.BytesIO()
    np.save(small, np.zeros(2))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X_train.npy", buf.getvalue())  # the header alone: 16 GB promised
        for k in ("y_train", "X_test", "y_test"):
            z.writestr(f"{k}.npy", small.getvalue())
    err = _error(capsys, ["sequence", "train", "--data", str(path), "--out", str(tmp_path / "o"), *FAST])
    assert "X_train is 2000x1000000 float64 (16.0 GB as float64), more than the" in err


# --- 8: an --out that cannot be a folder --------------------------------------------------------------


def test_an_out_that_is_a_file_is_one_line(seq, video, tmp_path, capsys):
    _, data, _ = seq
    afile = tmp_path / "afile"
    afile.write_text("hi")
    err = _error(
        capsys, ["sequence", "train", "--data", str(data), "--model", "multirocket", "--out", str(afile), *FAST]
    )
    assert err.endswith(f"cannot create the folder {afile} (File exists); choose another --out")
    err = _error(
        capsys, ["sequence", "train", "--data", str(data), "--model", "multirocket", "--out", str(afile / "sub"), *FAST]
    )
    assert "cannot create the folder" in err
    root, cls, pred = video
    clip = str(root / "clip.npy")
    long_clip = tmp_path / "long.npy"  # as many frames as the classifier reads: only --out is wrong
    np.save(long_clip, np.concatenate([np.load(clip)] * 3))
    assert "cannot create the folder" in _error(
        capsys, ["video", "predict", str(cls), str(long_clip), "--out", str(afile)]
    )
    assert "cannot create the folder" in _error(
        capsys, ["video-predict", "predict", str(pred), clip, "--out", str(afile)]
    )
    assert afile.read_text() == "hi"


# --- 11, 20, 21 (style): small images, the loss log, empty layer lists --------------------------------


def test_tiny_images_are_refused_with_the_least_size(sty, tmp_path, capsys):
    _, style, run = sty
    one = _photo(tmp_path / "1x1.png", 1, 1)
    thin = _photo(tmp_path / "thin.png", 2, 300)
    big = _photo(tmp_path / "big.png", 40, 40)
    fast = ["--size", "32", "--steps", "1", "--weights", "none", *FAST]
    out = tmp_path / "o" / "a.png"
    err = _error(capsys, ["style", "transfer", str(one), str(style), "--out", str(out), *fast])
    assert "the content image" in err and "is 1x1 px; it needs at least 16 px per side" in err
    err = _error(capsys, ["style", "transfer", str(big), str(thin), "--out", str(out), *fast])
    assert "the style image" in err and "is 2x300 px; it needs at least 16 px per side" in err
    assert not (tmp_path / "o").exists()
    err = _error(capsys, ["style", "predict", str(run), str(big), str(one), "--out", str(tmp_path / "p")])
    assert "the photo" in err and "1x1 px" in err
    assert not (tmp_path / "p").exists()  # checked before the first photo is written
    assert "2x300 px" in _error(capsys, ["style", "predict", str(run), str(thin), "--out", str(tmp_path / "p")])


def test_a_diverging_adam_run_is_not_told_to_use_adam(monkeypatch):
    from cnnkit.errors import CnnkitError

    module = importlib.import_module("cnnkit.tasks.style.transfer")
    from cnnkit.tasks.style.config import TransferConfig

    class NanLoss:
        def content_targets(self, photo):
            return {}

        def __call__(self, x, targets):
            loss = (x * float("nan")).sum()
            return loss, {"content": loss, "style": loss, "tv": loss}

    monkeypatch.setattr(module, "perceptual_loss", lambda cfg, style: NanLoss())
    image = torch.rand(1, 3, 32, 32)
    for optimizer, advice in (("adam", False), ("lbfgs", True)):
        cfg = TransferConfig(size=32, steps=1, optimizer=optimizer, weights="none")
        with pytest.raises(CnnkitError) as info:
            module.transfer(image, image, cfg, quiet=True)
        assert ("use --optimizer adam" in str(info.value)) is advice


def test_transfer_never_replaces_a_csv_it_did_not_write(tmp_path, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "photo.csv").write_text("my precious data\n")
    content, style = _photo(tmp_path / "c.png", 40, 36), _photo(tmp_path / "s.png", 40, 40, seed=2)
    argv = ["style", "transfer", str(content), str(style), "--size", "32", "--steps", "1", "--weights", "none", *FAST]
    err = _error(capsys, [*argv, "--out", str(keep / "photo.png")])
    assert "photo.csv exists and is not a loss log" in err and "nothing was written" in err
    assert (keep / "photo.csv").read_text() == "my precious data\n" and not (keep / "photo.png").exists()
    assert main([*argv, "--out", str(keep / "again.png")]) == 0
    assert main([*argv, "--out", str(keep / "again.png")]) == 0  # its own log it may replace


def test_an_empty_layer_list_says_so(tmp_path, capsys):
    content = _photo(tmp_path / "c.png", 40, 36)
    argv = ["style", "transfer", str(content), str(content), "--out", str(tmp_path / "o.png"), "--content-layers"]
    err = _error(capsys, [*argv, "--size", "32", "--steps", "1", "--weights", "none", *FAST])
    assert "--content-layers: no layer given" in err and "no layer is not" not in err


# --- 14, 15, 21 (generate) ----------------------------------------------------------------------------


def test_generate_batch_of_one_and_seeds_out_of_range(gan, tmp_path, capsys, data_dir):
    argv = ["generate", "train", "--data-dir", str(data_dir), "--subset", "64", "--batch-size", "1", "--epochs", "1"]
    assert "--batch-size must be at least 2; received 1" in _error(capsys, [*argv, "--out", str(tmp_path / "g"), *FAST])
    assert not (tmp_path / "g").exists()
    for seed in ("99999999999999999999999", "-1"):
        err = _error(capsys, ["generate", "predict", str(gan), "--out", str(tmp_path / "g.png"), "--seed", seed])
        assert f"--seed must be an integer from 0 to 9,223,372,036,854,775,807; received {seed}" in err
        argv = ["generate", "eval", str(gan), "--classifier", str(gan), "--count", "10", "--seed", seed]
        assert "--seed must be an integer from 0 to" in _error(capsys, argv)
    assert not (tmp_path / "g.png").exists()


def test_generate_names_an_unknown_set_and_writes_png_names_only(gan, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["generate", "train", "--data", "cifar10", "--epochs", "1", *FAST])
    assert err.endswith(
        "--data cifar10: neither a folder nor a digit set `generate` draws; use one of mnist, "
        "fashion_mnist, kmnist, emnist_digits or a folder of 28x28 images"
    )
    for name in ("x.jpg", "x.txt"):
        assert "--out must name a .png file" in _error(capsys, ["generate", "predict", str(gan), "--out", name])
        assert not (tmp_path / name).exists()


# --- 21 (npy): a text file named .npy -----------------------------------------------------------------


def test_a_text_file_named_npy_gets_no_unpickling_advice(video, tmp_path, capsys):
    _, cls, _ = video
    (tmp_path / "notnpy.npy").write_text("hello there\n")
    err = _error(capsys, ["video", "predict", str(cls), str(tmp_path / "notnpy.npy")])
    assert "no NumPy header" in err and "pickle" not in err


def test_too_few_frames_for_the_network_is_one_line(tmp_path, capsys, data_dir):
    argv = ["video", "train", "--data-dir", str(data_dir), "--clips", "4", "--val-clips", "0", "--test-clips", "2"]
    err = _error(capsys, [*argv, "--batch-size", "2", "--frames", "4", "--out", str(tmp_path / "v"), *FAST])
    # c3d_small needs 8 frames: at --stride 2 that is a clip of 15
    assert "--frames must be from 15 to 1000 for --model c3d_small at --stride 2" in err and err.endswith("received 4")
    err = _error(capsys, [*argv, "--batch-size", "2", "--frames", "10", "--out", str(tmp_path / "v"), *FAST])
    assert "--stride must be from 1 to 1 for --model c3d_small at --frames 10" in err and err.endswith("received 2")
    assert not (tmp_path / "v").exists()

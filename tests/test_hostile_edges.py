"""Audit of numbers at their edges: a value at the end of its range (0, a huge count, one beyond the
data) is either a one-line refusal naming the option, the value and the range (exit 2, nothing
written), or the documented behaviour, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.cli import main
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--threads", "1", "--quiet"]


def _error(capsys, argv) -> str:
    """The one line a refused command prints (exit 2, no traceback); data warnings may come first."""
    capsys.readouterr()
    assert main(argv) == 2
    *warnings, err = capsys.readouterr().err.strip().splitlines()
    assert all(w.startswith("warning: ") for w in warnings) and "Traceback" not in err, (warnings, err)
    return err


def _photos(root, classes=("a", "b"), n=4):
    """A small image folder: ``root/<class>/<i>.png``."""
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_finetune_epochs_0_saves_the_network_as_it_is(tmp_path, capsys):
    # --epochs 0 (documented: the network as it is) with the stages chosen by trying them: no stage
    # trains an epoch, so there is no validation loss to choose by, and the run is saved untrained
    data = _photos(tmp_path / "photos")
    out = tmp_path / "ft"
    argv = ["classify", "finetune", "--data", str(data), "--model", "mnist_fast", "--weights", "none"]
    assert main([*argv, "--epochs", "0", "--batch-size", "4", "--out", str(out), *FAST]) == 0
    assert (out / "model.safetensors").is_file() and (out / "test.json").is_file()


def test_finetune_a_batch_larger_than_the_data_up_to_int64_is_the_whole_set(tmp_path, capsys):
    # the cached features were computed in chunks of twice the batch: 2**62 * 2 overflowed torch's int64
    data = _photos(tmp_path / "photos")
    out = tmp_path / "ft"
    argv = ["classify", "finetune", "--data", str(data), "--model", "mnist_fast", "--weights", "none"]
    assert main([*argv, "--epochs", "1", "--batch-size", str(2**62), "--out", str(out), *FAST]) == 0
    assert (out / "model.safetensors").is_file()


BIG = str(2**63)  # one past int64, the most torch takes as a count or a size


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "train", "--latent-dim", BIG], "--latent-dim must be from 1 to 1024"),
        (["generate", "train", "--width", BIG], "--width must be from 1 to 1024"),
        (["video", "train", "--size", BIG], "--size must be from 16 to 256"),
        (["detect", "train", "--data", "digits", "--scenes", BIG, "4"], "--scenes must be an integer from "),
        (["segment", "train", "--data", "digits", "--width", BIG], "--width must be from 1 to 128"),
        (["classify", "finetune", "--data", ".", "--batch-size", BIG], "--batch-size must be an integer from 1 to "),
    ],
)
def test_an_integer_beyond_int64_is_refused_at_once(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    err = _error(capsys, [*argv, "--out", str(out), *FAST])
    assert message in err and err.endswith(f"received {2**63}")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["style", "train", "--crop", "100000"], "--crop must be from 16 to 2048; received 100000"),
        (["style", "train", "--style-size", "100000"], "--style-size must be from 16 to 2048; received 100000"),
        (["segment", "train", "--data", "digits", "--boundary-d", "2000"], "--boundary-d must be from 1 to 1024"),
        (["detect", "train", "--data", "digits", "--head-convs", "1000000"], "--head-convs must be from 0 to 16"),
        (["instance", "train", "--data", "digits", "--mask-convs", "1000000"], "--mask-convs must be from 0 to 16"),
        (["instance", "train", "--data", "digits", "--roi-jitter", "1000000"], "--roi-jitter must be from 0 to 16"),
    ],
)
def test_sizes_and_depths_past_their_range_are_refused_before_any_work(argv, message, tmp_path, capsys):
    # without a bound: a storage-size overflow traceback (crop, style size, boundary band), minutes
    # building a million convolutions before anything is said (head and mask towers), or a run folder
    # left behind by running out of memory in the first step (a million copies of each box)
    out = tmp_path / "run"
    assert message in _error(capsys, [*argv, "--out", str(out), *FAST])
    assert not out.exists()


def test_a_frame_predictor_whose_frames_are_nan_gets_no_score(tmp_path, capsys, data_dir):
    # --lr 1e30 leaves finite weights so large that every predicted frame overflows to NaN: the test
    # split's MSE, MAE and SSIM were printed as nan, by `train` and by `eval` alike
    out = tmp_path / "vp"
    argv = ["video-predict", "train", "--data-dir", str(data_dir), "--clips", "2", "--val-clips", "0"]
    argv += ["--test-clips", "2", "--batch-size", "2", "--frames", "4", "--epochs", "1", "--precision", "fp32"]
    err = _error(capsys, [*argv, "--lr", "1e30", "--out", str(out), *FAST])
    assert "the network predicts frames that are not finite" in err and "lower --lr" in err
    err = _error(capsys, ["video-predict", "eval", str(out), "--data-dir", str(data_dir), "--clips", "2"])
    assert "the network predicts frames that are not finite" in err
    capsys.readouterr()
    argv[argv.index("--val-clips") + 1] = "2"  # validation meets it first: the run stops before it is saved
    err = _error(capsys, [*argv, "--lr", "1e30", "--out", str(tmp_path / "vp2"), *FAST])
    assert "not finite" in err and not (tmp_path / "vp2").exists()


def test_explain_a_class_beyond_int64_is_out_of_range(tmp_path, capsys):
    from test_serve import make_run

    from cnnkit.explain import grad_cam
    from cnnkit.tasks.classify.load import load_classifier

    run = make_run(tmp_path / "run")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    out = tmp_path / "cam.png"
    err = _error(capsys, ["explain", str(run), str(image), "--class", BIG, "--out", str(out)])
    assert err.endswith(
        f"class index {BIG} is out of range: the model has 10 classes (0..9); pass a class between 0 and 9"
    )
    assert not out.exists()
    model = load_classifier(run)
    with pytest.raises(CnnkitError, match=f"class index {BIG} is out of range"):
        grad_cam(model, torch.zeros(1, 28, 28), 2**63)


@pytest.mark.parametrize("batch", ["0", str(2**31), BIG])
def test_export_batch_is_bounded_as_summary_batch_is(batch, tmp_path, capsys):
    # 2**63 stopped with torch's overflow traceback, 10**12 ran out of memory building the example
    from test_serve import make_run

    run = make_run(tmp_path / "run")
    out = tmp_path / "m.onnx"
    err = _error(capsys, ["export", str(run), "--out", str(out), "--batch", batch])
    assert err.endswith(f"--batch must be an integer from 1 to 2,147,483,647. Received: --batch {batch}")
    assert not out.exists()

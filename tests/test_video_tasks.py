"""The video tasks: clip classification and frame prediction through the engine, their CLI and Grad-CAM."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.data.video import MovingMnist, MovingMnistSpec
from cnnkit.engine.runfolder import read_checkpoint
from cnnkit.explain.clip_cam import clip_grad_cam
from cnnkit.models import create_model
from cnnkit.tasks.video import VideoConfig, VideoTask, evaluate, load_video_classifier
from cnnkit.tasks.video import train as train_video
from cnnkit.tasks.video.data import clip_batch
from cnnkit.tasks.video.load import build_model
from cnnkit.tasks.video_predict import PredictConfig, PredictTask, load_predictor
from cnnkit.tasks.video_predict import evaluate as evaluate_predictor
from cnnkit.tasks.video_predict import train as train_predictor
from cnnkit.tasks.video_predict.load import build_model as build_predictor

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny settings: the classifier sees 8 frames of 16x16 (every 2nd of 16)
VIDEO = dict(epochs=2, clips=8, val_clips=4, test_clips=4, batch_size=4, frames=16, stride=2, size=16, threads=1)
PREDICT = dict(epochs=2, clips=4, val_clips=0, test_clips=2, batch_size=2, frames=4, threads=1)


def _random_clips(folder, n: int, frames: int):
    """``folder`` holding n clips ``c<i>.npy`` of random 16x16 grey frames (uint8), seeded by i."""
    folder.mkdir()
    for i in range(n):
        np.save(folder / f"c{i}.npy", np.random.default_rng(i).integers(0, 256, (frames, 16, 16), dtype=np.uint8))
    return folder


def _steps(task, model, batch, n=6, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr)
    losses = []
    for _ in range(n):
        loss = task.loss(model, batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_classifier_steps_lower_the_loss_and_eval_counts(data_dir):
    cfg = VideoConfig(data_dir=str(data_dir), **VIDEO)
    model, task = build_model(cfg), VideoTask(8)
    data = MovingMnist("val", 8, data_dir=data_dir, spec=MovingMnistSpec(num_frames=16))
    x, y = clip_batch(data, range(8))
    assert x.shape == (8, 16, 1, 64, 64) and y.shape == (8, 10)
    assert model.prepare(x).shape == (8, 1, 8, 16, 16)  # every 2nd of the first 15 frames, 16x16
    losses = _steps(task, model, (x, y))
    assert losses[-1] < 0.8 * losses[0]
    # evaluate counts against a hand count: both = named set exactly the truth
    out = evaluate(model, data)
    with torch.no_grad():
        named = model.eval()(x) > 0
    assert out["clips"] == 8 and out["both"] == pytest.approx(float((named == (y > 0.5)).all(1).float().mean()))
    assert out["digit_acc"] == pytest.approx(float((named == (y > 0.5)).float().mean()))


def test_predictor_steps_lower_the_loss_and_mse_is_the_tables(data_dir):
    cfg = PredictConfig(data_dir=str(data_dir), **PREDICT)
    model, task = build_predictor(cfg), PredictTask(8, frames=4)
    data = MovingMnist("val", 8, data_dir=data_dir)
    batch = next(iter(task.batches(data, torch.Generator().manual_seed(0), train=False)))
    assert batch[0].shape == batch[1].shape == (8, 4, 1, 64, 64)
    losses = _steps(task, model, batch, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0]
    out = evaluate_predictor(model, data, frames=4)
    with torch.no_grad():
        pred = model.eval()(batch[0]).clamp(0, 1)
    per_frame = (pred.double() - batch[1].double()).square().sum((2, 3, 4))  # (8, 4) summed over pixels
    assert out["mse"] == pytest.approx(float(per_frame.mean()), rel=1e-6)
    assert out["mse_per_step"] == pytest.approx(per_frame.mean(0).tolist(), rel=1e-6)
    assert len(out["ssim_per_step"]) == 4 and out["clips"] == 8


@pytest.mark.parametrize("kind", ["video", "video_predict"])
def test_resume_is_exact(kind, data_dir, tmp_path):
    if kind == "video":
        cfg, train, load = VideoConfig(data_dir=str(data_dir), **VIDEO), train_video, load_video_classifier
    else:
        cfg, train, load = PredictConfig(data_dir=str(data_dir), **PREDICT), train_predictor, load_predictor
    full = train(cfg, tmp_path / "full", quiet=True)

    def stop(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True, on_epoch_end=stop)
    cut = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    a, b = (
        read_checkpoint(tmp_path / "full" / "model.safetensors")[0],
        read_checkpoint(tmp_path / "cut" / "model.safetensors")[0],
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.test == cut.test
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in cut.history]
    model = cnnkit.load(tmp_path / "full")  # the one loader knows the task
    assert type(model) is type(load(tmp_path / "full")) and model.info["task"] == kind


def test_grad_cam_over_a_clip_has_the_clips_shape(data_dir):
    cfg = VideoConfig(data_dir=str(data_dir), **VIDEO)
    model = build_model(cfg).eval()
    clip = clip_batch(MovingMnist("test", 2, data_dir=data_dir), [0, 1])[0]  # (2, 20, 1, 64, 64)
    cam, cls = clip_grad_cam(model, clip[0])
    assert cam.shape == (20, 64, 64) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert 0 <= int(cls) < 10
    cams, classes = clip_grad_cam(model, clip, target_class=3)
    assert cams.shape == (2, 20, 64, 64) and classes.tolist() == [3, 3]
    # (2+1)-D blocks have 3-D convolutions too; the 2-D frame stacker has none: a one-line error
    wrapped = build_model(VideoConfig(data_dir=str(data_dir), **{**VIDEO, "model": "r2plus1d_small"})).eval()
    assert clip_grad_cam(wrapped, clip[0])[0].shape == (20, 64, 64)
    with pytest.raises(cnnkit.errors.CnnkitError, match="3-D convolutions"):
        clip_grad_cam(create_model("frames2d_small", frames=20), clip[0].transpose(0, 1))


def test_cli_predict_writes_strip_and_gif_and_reads_user_clips(data_dir, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = ["video-predict", "train", "--data-dir", str(data_dir), "--out", str(run), "--quiet"]
    args += ["--epochs", "1", "--clips", "2", "--val-clips", "0", "--test-clips", "2", "--batch-size", "2"]
    assert main([*args, "--frames", "4", "--threads", "1"]) == 0
    assert capsys.readouterr().out == ""  # --quiet: not even the final line
    assert main(["video-predict", "eval", str(run)]) == 0
    assert "MSE" in capsys.readouterr().out
    clips = tmp_path / "clips"
    clips.mkdir()
    np.save(clips / "mine.npy", (np.random.default_rng(0).random((8, 64, 64)) * 255).astype(np.uint8))
    frames = clips / "folder"
    frames.mkdir()
    for i in range(5):  # 5 frames: 4 in, no truth to show
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(frames / f"{i:02d}.png")
    (clips / "notes.txt").write_text("not a clip, and not named")  # a named clip's neighbours are not read
    out = tmp_path / "out"
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "elsewhere"))  # --test reads the run's data folder
    argv = ["video-predict", "predict", str(run), str(clips / "mine.npy"), str(frames), "--test", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    gif = Image.open(out / "test0000.gif")
    assert gif.n_frames == 8  # 4 in + 4 predicted
    strip = Image.open(out / "test0000.png")
    assert strip.size == (4 * 128 + 3 * 2, 3 * 128 + 2 * 2)  # 3 rows (input, truth, prediction) of 4 frames at 2x
    assert Image.open(out / "folder.png").size[1] == 2 * 128 + 2  # no truth: input and prediction
    assert Image.open(out / "mine.gif").n_frames == 8
    assert main(["video-predict", "eval", str(run), "--clips", "2", "--format", "json"]) == 0
    ev = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert ev["clips"] == 2 and len(ev["mse_per_step"]) == 4 and ev["split"] == "test"
    assert main(["video", "eval", str(run)]) == 2  # another task's run: a one-line error
    assert "is not a clip classifier (task 'video_predict')" in capsys.readouterr().err


@pytest.mark.parametrize(("size", "fits"), [(10, 12), (8, 12), (30, 28)])
def test_a_frame_size_the_predictor_cannot_take_is_refused_before_training(tmp_path, capsys, size, fits):
    """--size 10 or 30 (not a multiple of SimVP's 4) is a traceback in the first batch; --size 8 (below
    SSIM's 11x11 window) dies after the first epoch, in validation. Both are one line before any step."""
    clips = _random_clips(tmp_path / "clips", 4, 4)
    run = tmp_path / "run"
    argv = ["video-predict", "train", "--data", str(clips), "--size", str(size), "--frames", "2", "--epochs", "1"]
    assert main([*argv, "--batch-size", "1", "--threads", "1", "--quiet", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"frames of {size}x{size} (--size {size}) cannot be predicted and scored: SSIM needs at "
        f"least 11x11 and --model simvp_tiny sides that are multiples of 4; give --size {fits}"
    )
    assert "\n" not in err and not run.exists()


def test_predictor_refuses_frames_of_another_size_and_resizes_test_clips(data_dir, tmp_path, capsys):
    """A run on 16x16 frames: predict_frames refuses 30x30 frames in one line (its docstring's promise),
    and --test's 64x64 Moving MNIST clips are resized to 16x16, as a named clip is."""
    from cnnkit.errors import CnnkitError
    from cnnkit.tasks.video_predict.predict import predict_frames

    clips = _random_clips(tmp_path / "clips", 4, 8)
    run = tmp_path / "run"
    argv = ["video-predict", "train", "--data", str(clips), "--size", "16", "--frames", "4", "--epochs", "1"]
    assert main([*argv, "--batch-size", "1", "--threads", "1", "--quiet", "--out", str(run)]) == 0
    model = load_predictor(run)
    assert model.size == (16, 16)
    with pytest.raises(CnnkitError, match=r"takes 4 frames of 1 channel\(s\) and 16x16 pixels"):
        predict_frames(model, torch.rand(1, 4, 1, 30, 30))
    out = tmp_path / "out"
    capsys.readouterr()
    assert (
        main(["video-predict", "predict", str(run), "--test", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    )
    assert Image.open(out / "test0000.png").size == (4 * 32 + 3 * 2, 3 * 32 + 2 * 2)  # 16x16 frames drawn at 2x


def test_a_folder_smaller_than_the_batch_is_told_the_batch_that_fits(tmp_path, capsys):
    """Five clips split 3/1/1: the default batch of 16 is refused in one line that names the batch to use."""
    clips = _random_clips(tmp_path / "clips", 5, 4)
    run = tmp_path / "run"
    argv = ["video-predict", "train", "--data", str(clips), "--size", "16", "--frames", "2", "--epochs", "1"]
    assert main([*argv, "--threads", "1", "--quiet", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("3 training clips are fewer than --batch-size 16: use --batch-size 3 or less")
    assert "\n" not in err and not run.exists()


@pytest.mark.parametrize(("bad", "split"), [(0, "test"), (4, "validation")])
def test_a_bad_clip_of_a_folder_is_refused_before_training(tmp_path, capsys, monkeypatch, bad, split):
    """Five clips split 3/1/1 by seed 0 (validation: the fifth, test: the first). A clip saved as
    floats of 0-255 is refused before the first step, wherever the split puts it: not after the first
    epoch (validation) or after the whole run (test), with its training spent."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(5):
        clip = np.random.default_rng(i).integers(0, 256, (4, 16, 16), dtype=np.uint8)
        np.save(clips / f"c{i}.npy", clip.astype(np.float32) if i == bad else clip)
    steps = []
    real_loss = PredictTask.loss
    monkeypatch.setattr(PredictTask, "loss", lambda self, *a: steps.append(1) or real_loss(self, *a))
    run = tmp_path / "run"
    argv = ["video-predict", "train", "--data", str(clips), "--size", "16", "--frames", "2", "--epochs", "2"]
    assert main([*argv, "--batch-size", "1", "--threads", "1", "--quiet", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"c{bad}.npy holds float values outside [0, 1] (min 0, max 2" in err and len(err.splitlines()) == 1
    assert steps == [] and not run.exists()  # no step taken, no run folder left


def test_grad_cam_leaves_the_frames_the_network_never_sees_cold(data_dir):
    """The classifier sees the first (frames - 1) stride + 1 = 15 frames of a clip (every 2nd): of a
    30-frame clip the Grad-CAM lies on those 15, the 15 after it are 0 (they cannot change the answer)."""
    model = build_model(VideoConfig(data_dir=str(data_dir), **VIDEO)).eval()
    clip = torch.zeros(30, 1, 64, 64)
    clip[:20] = clip_batch(MovingMnist("test", 1, data_dir=data_dir), [0])[0][0]
    x = clip.clone().requires_grad_(True)
    model(x[None]).sum().backward()
    assert x.grad[15:].abs().sum() == 0 and x.grad[:15].abs().sum() > 0  # what the network sees
    cam, _ = clip_grad_cam(model, clip)
    assert cam.shape == (30, 64, 64) and cam[15:].abs().sum() == 0 and cam[:15].max() == pytest.approx(1.0)


def test_cli_classifier_predict_keeps_every_cam_and_checks_clips_first(data_dir, tmp_path, capsys):
    """Two clips named c.npy in different folders get c_cam.png and c_2_cam.png (not one over the
    other); a clip too short for the network is refused, naming it, before any cam is written."""
    run = tmp_path / "run"
    train_video(VideoConfig(data_dir=str(data_dir), **{**VIDEO, "epochs": 1}), run, quiet=True)  # sees 15 frames
    rng = np.random.default_rng(0)
    for folder, frames in (("a", 16), ("b", 16), ("short", 14)):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "c.npy", rng.integers(0, 256, (frames, 16, 16), dtype=np.uint8))
    out = tmp_path / "cams"
    assert (
        main(
            [
                "video",
                "predict",
                str(run),
                str(tmp_path / "a" / "c.npy"),
                str(tmp_path / "b" / "c.npy"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["c_2_cam.png", "c_cam.png"]
    capsys.readouterr()
    out = tmp_path / "cams2"
    argv = ["video", "predict", str(run), str(tmp_path / "a" / "c.npy"), str(tmp_path / "short" / "c.npy")]
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err.strip().endswith("c has 14 frames; this network sees 8 frames 2 apart and needs 15")


@pytest.mark.parametrize(
    ("cls", "settings", "split", "clips", "match"),
    [
        (VideoConfig, {}, "test", 10_001, r"--clips 10001 is more than the 10,000 clips of the test set"),
        (VideoConfig, {"val_clips": 0}, "val", None, r"this run kept no validation clips \(--val-clips 0\)"),
        (PredictConfig, {"val_clips": 0}, "val", None, r"this run kept no validation clips \(--val-clips 0\)"),
        (PredictConfig, {"data": "/some/clips"}, "test", 5, r"--clips picks Moving MNIST clips; this run's data"),
    ],
)
def test_eval_refuses_clips_the_split_does_not_have(cls, settings, split, clips, match):
    """The test set has 10,000 clips (as --test-clips and predict --test allow); a run without
    validation clips has none to score; a folder's split is scored whole."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from cnnkit.errors import CnnkitError
    from cnnkit.tasks.video.evaluate import eval_config

    model = SimpleNamespace(info={"config": asdict(cls(**settings))})
    with pytest.raises(CnnkitError, match=match):
        eval_config(model, cls, split, None, clips)
    ok = eval_config(model, cls, "test", None, None if "data" in settings else 10_000)  # the whole test set
    assert ok.test_clips == 10_000

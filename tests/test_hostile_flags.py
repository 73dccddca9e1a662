"""Audit of run settings past any real use: a typo'd count (a run that would train for ever, a
network or a data set too large to build) is one line naming the flag and its range, exit 2,
before anything is written."""

from __future__ import annotations

import pytest

from cnnkit.cli import main


def _error(capsys, argv) -> str:
    """The one line a refused command prints (exit 2, no traceback)."""
    capsys.readouterr()
    assert main(argv) == 2
    *warnings, err = capsys.readouterr().err.strip().splitlines()
    assert all(w.startswith("warning: ") for w in warnings) and "Traceback" not in err, (warnings, err)
    return err


@pytest.mark.parametrize(
    "command",
    [
        ["classify", "train"],
        ["detect", "train", "--data", "digits"],
        ["instance", "train"],
        ["segment", "train", "--data", "digits"],
        ["generate", "train"],
        ["sequence", "train", "--data", "ECG200"],
        ["video", "train"],
        ["video-predict", "train"],
        ["style", "train", "--style", "s.png", "--data", "."],
    ],
)
def test_epochs_past_the_most_a_run_takes_is_refused(command, tmp_path, capsys):
    out = tmp_path / "run"
    err = _error(capsys, [*command, "--epochs", "100001", "--out", str(out), "--quiet"])
    assert err.endswith("--epochs must be an integer from 1 to 100,000; received 100001")
    assert not out.exists()


def test_finetune_epochs_go_from_0_to_the_most_a_run_takes(tmp_path, capsys):
    out = tmp_path / "run"
    err = _error(capsys, ["classify", "finetune", "--data", ".", "--epochs", "100001", "--out", str(out)])
    assert err.endswith("--epochs must be an integer from 0 to 100,000; received 100001")
    assert not out.exists()


@pytest.mark.parametrize("command", [["classify", "train"], ["sequence", "train", "--data", "ECG200"]])
def test_an_ensemble_past_100_networks_is_refused(command, tmp_path, capsys):
    out = tmp_path / "run"
    err = _error(capsys, [*command, "--ensemble", "101", "--out", str(out), "--quiet"])
    assert err.endswith("--ensemble must be an integer from 1 to 100; received 101")
    assert not out.exists()


def test_steps_past_the_most_a_run_takes_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sequence", "train", "--data", "ECG200", "--steps", "1000001", "--out", str(out), "--quiet"]
    assert _error(capsys, argv).endswith("--steps must be an integer from 1 to 1,000,000; received 1000001")
    assert not out.exists()
    image = tmp_path / "styled.png"
    argv = ["style", "transfer", "c.png", "s.png", "--steps", "100001", "--out", str(image), "--quiet"]
    assert _error(capsys, argv).endswith("--steps must be an integer from 1 to 100,000; received 100001")
    assert not image.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "train", "--width", "1025"], "--width must be from 1 to 1024; received 1025"),
        (["generate", "train", "--latent-dim", "1025"], "--latent-dim must be from 1 to 1024; received 1025"),
        (["detect", "train", "--data", "digits", "--width", "1025"], "--width must be from 8 to 1024; received 1025"),
        (["instance", "train", "--mask-width", "1025"], "--mask-width must be from 1 to 1024; received 1025"),
        (["segment", "train", "--data", "digits", "--width", "129"], "--width must be from 1 to 128; received 129"),
    ],
)
def test_a_network_wider_than_any_recipe_is_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert _error(capsys, [*argv, "--out", str(out), "--quiet"]).endswith(message)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["detect", "train", "--data", "digits", "--scenes", "1000001", "4"], "from 1 to 1,000,000; received 1000001"),
        (["segment", "train", "--data", "digits", "--scenes", "1000001"], "from 1 to 1,000,000; received 1000001"),
        (["segment", "train", "--data", "digits", "--canvas", "55"], "--canvas must be from 56 to 4096; received 55"),
        (
            ["segment", "train", "--data", "digits", "--canvas", "4097"],
            "--canvas must be from 56 to 4096; received 4097",
        ),
        (["detect", "train", "--data", "digits", "--train-digits", "0", "4"], "--train-digits must be from 1 to 16"),
        (["detect", "train", "--data", "digits", "--train-digits", "1", "17"], "--train-digits must be from 1 to 16"),
        (
            ["detect", "train", "--data", "digits", "--train-digits", "5", "2"],
            "--train-digits must be the least digits per scene, then the most (such as 1 4); received (5, 2)",
        ),
    ],
)
def test_digit_scene_settings_name_their_flag_and_range(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    err = _error(capsys, [*argv, "--out", str(out), "--quiet"])
    assert message in err and ": error: --" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["detect", "train", "--data", "digits", "--scenes", "100000", "4", "--image-size", "512"],
        ["segment", "train", "--data", "digits", "--scenes", "100000", "--canvas", "512"],
    ],
)
def test_scenes_that_would_not_fit_in_memory_are_refused_before_any_is_drawn(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cnnkit.errors.memory_available", lambda: 8 * 10**9)  # 100,000 scenes of 512 px: 79 GB
    out = tmp_path / "run"
    err = _error(capsys, [*argv, "--data-dir", str(tmp_path), "--out", str(out), "--quiet"])
    assert "drawing 100,000 train scenes of 512x512 px needs 78.6 GB, more than the 8.0 GB" in err
    assert err.endswith(
        "ask for fewer or smaller scenes (--scenes, --image-size or --canvas; n= and canvas= in Python)"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["video", "train", "--size", "15"], "--size must be from 16 to 256; received 15"),
        (["video", "train", "--size", "257"], "--size must be from 16 to 256; received 257"),
        (["video-predict", "train", "--size", "1025"], "--size must be from 8 to 1024; received 1025"),
    ],
)
def test_frame_sizes_past_what_the_clip_networks_take_are_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert _error(capsys, [*argv, "--out", str(out), "--quiet"]).endswith(message)
    assert not out.exists()


def test_finetune_fractions_that_leave_nothing_to_train_on_name_their_flags(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["classify", "finetune", "--data", str(tmp_path), "--model", "resnet18", "--out", str(out)]
    err = _error(capsys, [*argv, "--val-fraction", "0.6", "--test-fraction", "0.5"])
    assert err.endswith(
        "--val-fraction plus --test-fraction must be below 1 (they leave the rest to train on); received "
        "--val-fraction 0.6 --test-fraction 0.5"
    )
    assert not out.exists()

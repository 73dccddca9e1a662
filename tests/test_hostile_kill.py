"""SIGKILL a segmentation and an instance training at several moments; ``--resume`` then finishes
with the weights of an uninterrupted run, and no temporary file survives.

The training runs in a forked copy of this process (no second interpreter to start); the parent
watches the run folder and kills the child at the moment named, without warning.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from cnnkit.cli import main

pytestmark = [
    pytest.mark.usefixtures("one_thread", "quick_curves"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]


@pytest.fixture
def quick_curves(monkeypatch):
    """curves.png as a stand-in written the same atomic way (matplotlib's drawing would be most of
    these tiny runs' time; the kill property is the temporary file's, not the plot's)."""
    from cnnkit.engine.runfolder import atomic_write_bytes

    monkeypatch.setattr("cnnkit.plots.training_curves", lambda history, path: atomic_write_bytes(path, b"curves"))


def _first_write(out) -> bool:  # the first epoch's files are being written
    return out.is_dir() and any(p.name.endswith(".tmp") or p.name == "resume.safetensors" for p in out.iterdir())


def _first_epoch_done(out) -> bool:  # killed while epoch 2 trains (or its files are written)
    m = out / "metrics.csv"
    return m.is_file() and len(m.read_text().splitlines()) >= 2


def _killed(argv: list[str], out, when, timeout: float = 120.0) -> None:
    pid = os.fork()
    if pid == 0:  # the child trains and never returns into pytest
        code = 1
        try:
            code = main(argv)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    try:
        while not when(out):
            done, _ = os.waitpid(pid, os.WNOHANG)
            assert done == 0, "the run ended before the moment to kill it"
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    finally:
        os.waitpid(pid, 0) if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def _same_weights(a, b) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


def _check_kill_and_resume(argv: list[str], tmp_path, capsys, moments=None) -> None:
    full = tmp_path / "full"
    assert main([*argv, "--out", str(full)]) == 0
    for moment in moments or (_first_write, _first_epoch_done):
        out = tmp_path / moment.__name__
        _killed([*argv, "--out", str(out)], out, moment)
        resumable = (out / "resume.safetensors").is_file()
        code = main([*argv, "--out", str(out), *(["--resume"] if resumable else [])])
        assert code == 0, capsys.readouterr().err
        _same_weights(full, out)
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], moment.__name__
    capsys.readouterr()


def test_segment_training_killed_and_resumed(tmp_path, capsys):
    from test_segmentation_cli import make_folder

    data = make_folder(tmp_path / "data", n=6, size=16)
    argv = ["segment", "train", "--data", str(data), "--arch", "unet", "--model", "unet", "--width", "4"]
    argv += ["--epochs", "2", "--batch-size", "5", "--crop", "16", "--threads", "1", "--quiet"]
    _check_kill_and_resume(argv, tmp_path, capsys)


def test_instance_training_killed_and_resumed(tmp_path, capsys, data_dir):
    argv = ["instance", "train", "--data", "digits", "--data-dir", str(data_dir), "--scenes", "8", "4"]
    argv += ["--image-size", "64", "--model", "mobilenet_v3_small", "--width", "16", "--mask-width", "8"]
    argv += ["--epochs", "2", "--batch-size", "4", "--threads", "1", "--quiet"]
    _check_kill_and_resume(argv, tmp_path, capsys, (_first_epoch_done,))  # the costlier task: one moment

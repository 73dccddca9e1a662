"""The benchmark scripts stay runnable: each parses --help without running, and their cheap paths work.

No test here depends on a benchmark's figures: the scripts are loaded as modules and run on tiny
inputs, or stopped at their argument checks.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def load(name: str) -> types.ModuleType:
    """benchmarks/NAME.py as a module (its ``__main__`` block not run)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_accuracy_measures_a_real_model(capsys):
    """memory_accuracy builds each spec and zoo model with weights, so the allocator's peak is measured."""
    bench = load("memory_accuracy")
    bench.CASES = [(str(bench.EXAMPLES / "keras_mnist.yaml"), (1, 28, 28), 2, True, "adam", "quick")]
    assert bench.main(["--quick"]) == 0
    assert "worst |error|" in capsys.readouterr().out


def test_summary_compares_the_rows_once(monkeypatch):
    """The textbook's outputs drop the rows that repeat a neighbour's output: one pass over the row
    pairs per summary, not one per output (ResNet-152 took a minute that way)."""
    import importlib

    import cnnkit

    summary_module = importlib.import_module("cnnkit.analysis.summary")  # the module, not the function

    calls = []
    real = summary_module._same_output
    monkeypatch.setattr(summary_module, "_same_output", lambda *a: calls.append(1) or real(*a))
    cnnkit.summary("resnet18", input_size=(3, 32, 32), batch_size=1)
    assert len(calls) == 1


def test_segmentation_pennfudan_report_names_the_encoder(capsys):
    """segmentation.py's Penn-Fudan line reads the resolved config's fields (training stubbed)."""
    bench = load("segmentation")
    test = {"iou": [0.95, 0.8], "mIoU": 0.875, "pixel_accuracy": 0.96, "boundary_iou": 0.5, "images": 50}
    bench.train = lambda cfg, out, quiet: types.SimpleNamespace(test=test, seconds=1.0)
    bench.pennfudan(types.SimpleNamespace(data_dir=None, threads=1))
    assert "unet on efficientnet_lite1" in capsys.readouterr().out


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_names_its_cpu(script):
    """The project's rule: a benchmark prints the CPU it ran on."""
    assert "cpu_name()" in (BENCHMARKS / script).read_text()


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_help_parses_without_running(script, monkeypatch, capsys):
    """`python benchmarks/X.py --help` prints its usage and exits 0: it runs no benchmark."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # transfer.py imports fcn.py beside it
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    assert not out.split("\n\n")[1].rstrip().endswith(",")  # the description is whole sentences


def test_benchmark_bad_input_is_one_line(tmp_path):
    """A CnnkitError (here: no run at the path) ends a benchmark with one line and a non-zero exit."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "mnist_tta.py"), str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert done.stderr.startswith("error: no checkpoint at") and done.stderr.count("\n") == 1


def test_moving_mnist_speed_needs_two_steps():
    """`speed` times the steps after the first: one step is refused up front."""
    with pytest.raises(SystemExit) as stop:
        load("moving_mnist").main(["speed", "--epochs", "1"])
    assert stop.value.code == 2


def test_mnist_keras_python_checked_before_training(tmp_path, capsys):
    """--keras PYTHON that does not exist is refused before any training, not after it."""
    with pytest.raises(SystemExit) as stop:
        load("mnist").main(["--presets", "--keras", str(tmp_path / "python")])
    assert stop.value.code == 2
    assert "--keras: no Python at" in capsys.readouterr().err


def test_gan_checks_the_classifier_before_training(tmp_path):
    """A wrong --classifier fails before the minutes of GAN training, and no run is started."""
    from cnnkit.errors import CnnkitError

    with pytest.raises(CnnkitError, match="no checkpoint"):
        load("gan").main(["--classifier", str(tmp_path / "none"), "--out", str(tmp_path / "gan")])
    assert not (tmp_path / "gan").exists()

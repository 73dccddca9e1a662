"""Audit of `cnnkit explain` and the video commands: a sequence run explained on a hostile series file,
TorchScript networks explained, and `video predict` / `video-predict predict` holding one clip at a
time. Each bad input is one line (exit 2) naming what was wrong and what to do instead."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_hostile_round3 import _error
from test_hostile_round3 import _series_file as _round3_series_file

from cnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--threads", "1", "--quiet"]
FCN = ["--model", "fcn1d", "--steps", "2", "--epochs", "1"]

_series_file = functools.partial(_round3_series_file, rows=12, length=16)


# --- cnnkit explain RUN SERIES: the file read as sequence predict reads it ----------------------------


@contextlib.contextmanager
def _no_curves():
    """Training runs that the module's tests read, trained without their curves.png (none reads it)."""
    import cnnkit.engine.loop as loop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "_draw_curves", lambda out, history: None)
        yield


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    """A 2-step fcn1d run on a toy file of 12 series of 16 samples."""
    root = tmp_path_factory.mktemp("explain_series")
    data = _series_file(root / "toy_TRAIN.tsv")
    with _no_curves():
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
    with _no_curves():
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


# --- cnnkit explain of a network that is TorchScript as a whole --------------------------------------


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    """An (untrained) mnist_fast run, and ``net.py:build`` handing its network over as TorchScript: saved
    by torch.jit.save (scripted) and read back by torch.jit.load, the run's weights loaded into it."""
    from test_serve import make_run

    from cnnkit.models import create_model

    root = tmp_path_factory.mktemp("scripted")
    make_run(root / "run")
    torch.jit.save(torch.jit.script(create_model("mnist_fast", num_classes=10, in_channels=1)), root / "net.pt")
    (root / "net.py").write_text(
        f"import torch\n\n\ndef build():\n    return torch.jit.load({str(root / 'net.pt')!r})\n"
    )
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "digit.png")
    return root


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_explain_names_torchscript_and_saliency_for_a_network_that_is_torchscript(scripted_run, capsys):
    """Feature maps and patterns of a TorchScript network said "no feature maps to plot; pass
    at least one layer" or "has no convolution; pass --layer NAME" (and --layer is refused inside it);
    each of featuremaps, patterns and gradcam says the network is TorchScript and that (vanilla)
    saliency and filters work, and they do."""
    run = scripted_run / "run"
    argv = ["explain", str(run), str(scripted_run / "digit.png"), "--trust-code", f"{scripted_run / 'net.py'}:build"]
    for method in ("featuremaps", "patterns", "gradcam"):
        out = scripted_run / f"{method}.png"
        err = _error(capsys, [*argv, "--method", method, "--out", str(out)])
        assert err.endswith(
            f"{run} has no convolutional layer outside TorchScript (the network is TorchScript, whose layers run "
            "without hooks, so their outputs cannot be seen); explain it with saliency (vanilla, not guided), which "
            "needs no layer, or with filters, which reads its convolutions' weights, or build it from plain nn modules"
        ), (method, err)
        assert not out.exists()
    out = scripted_run / "works.png"
    for works in ("saliency", "filters"):  # what the line says works, the same line for each method
        assert main([*argv, "--method", works, "--out", str(out)]) == 0
        assert out.is_file() and capsys.readouterr().out.startswith(f"{works}: ")
        out.unlink()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_explain_draws_the_filters_of_a_network_that_is_torchscript(scripted_run, capsys, monkeypatch):
    """`--method filters` of a TorchScript network said it had no convolutional layer outside
    TorchScript, though drawing filters runs no layer: it reads the weights, which TorchScript keeps
    under the same names. It draws them, the first convolution by default, as for the plain network."""
    import cnnkit.plots as plots
    from cnnkit.models import create_model

    drawn = []
    real = plots.filter_grid
    # the first 8 filters, each with its first input channel: the grid itself is test_plots' concern
    record = lambda w, **k: drawn.append((w, k["title"])) or real(w, **k, max_filters=8, max_inputs=1)  # noqa: E731
    monkeypatch.setattr(plots, "filter_grid", record)
    run, out = scripted_run / "run", scripted_run / "f.png"
    argv = ["explain", str(run), str(scripted_run / "digit.png"), "--method", "filters", "--out", str(out)]
    code = ["--trust-code", f"{scripted_run / 'net.py'}:build"]
    assert main([*argv, *code]) == 0  # TorchScript, the run's weights loaded into it
    assert capsys.readouterr().out == f"filters: layer features.0.0 -> {out}\n"
    assert main([*argv, "--layer", "features.1.0", *code]) == 0
    assert main([*argv]) == 0  # the run's own plain network
    (script0, t0), (script1, t1), (plain0, p0) = drawn
    assert (t0, t1, p0) == ("Filters of features.0.0", "Filters of features.1.0", "Filters of features.0.0")
    assert script0.shape == (32, 1, 5, 5) and script1.shape == (48, 32, 3, 3)
    assert torch.equal(script0, plain0)  # the run's weights, read through TorchScript
    net = create_model("mnist_fast", num_classes=10, in_channels=1)
    assert not torch.equal(script0, net.features[0][0].weight.detach())  # not a fresh network's
    out.unlink()
    err = _error(capsys, [*argv, "--layer", "features.0.1", *code])
    assert err.endswith(
        "layer 'features.0.1' is a MaxPool2d, not a Conv2d; pick one of: features.0.0, features.1.0, features.2.0"
    ), err
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_guided_saliency_refuses_relus_it_cannot_guide(scripted_run, capsys):
    """Guided backpropagation hooks each nn.ReLU; inside TorchScript none is hooked (and a network of
    functional relus has none), so the map was vanilla saliency drawn as "guided saliency"."""
    from cnnkit.errors import CnnkitError
    from cnnkit.explain import saliency
    from cnnkit.explain.hooks import guided_relus

    argv = ["explain", str(scripted_run / "run"), str(scripted_run / "digit.png"), "--method", "saliency", "--guided"]
    err = _error(
        capsys, [*argv, "--trust-code", f"{scripted_run / 'net.py'}:build", "--out", str(scripted_run / "g.png")]
    )
    assert err.endswith(
        "guided backpropagation guides the gradient at each rectifier (ReLU, ReLU6), and Classifier runs "
        "rectifiers inside TorchScript (TorchScript: net), whose compiled forward calls them out of "
        "Python's reach; explain it with vanilla saliency (drop --guided; method='vanilla' in Python), or build it "
        "from plain nn modules"
    ), err
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(1, 2, 3), nn.Linear(2, 2)
    x = torch.rand(1, 6, 6)
    linear = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)  # no rectifier at all
    with pytest.raises(CnnkitError, match=r"and Sequential runs none \(tanh, SiLU, LeakyReLU and other activations"):
        saliency(linear, x, method="guided")
    # a TorchScript ReLU that Python calls runs the hooks nn.Module gives it: guided as a plain one is
    plain = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    leaf = nn.Sequential(conv, torch.jit.script(nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    with guided_relus(leaf) as guided:
        leaf(x[None].requires_grad_(True))
        assert guided == {"ReLU": 1}
    torch.testing.assert_close(saliency(leaf, x, 1, "guided")[0], saliency(plain, x, 1, "guided")[0])


class _FunctionalBlock(nn.Module):
    """A convolution and a functional relu: no ReLU module for a hook, one rectifier all the same."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("compile_", ["script", "trace"])
def test_guided_saliency_refuses_a_functional_relu_inside_torchscript(compile_):
    """TorchScript was searched for ReLU modules only: a block compiled from a functional relu was run
    unguided beside the network's plain ReLU, and the map drawn as guided was partly vanilla."""
    from cnnkit.errors import CnnkitError
    from cnnkit.explain import saliency

    torch.manual_seed(0)
    x = torch.rand(1, 6, 6)
    block = (
        torch.jit.script(_FunctionalBlock()) if compile_ == "script" else torch.jit.trace(_FunctionalBlock(), x[None])
    )
    net = nn.Sequential(block, nn.Conv2d(2, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(CnnkitError, match=r"and Sequential runs rectifiers inside TorchScript \(TorchScript: 0\), "):
        saliency(net, x, method="guided")
    assert saliency(net, x)[0].shape == (6, 6)  # vanilla saliency, as the line says


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_clip_grad_cam_names_torchscript_around_the_3d_convolutions(data_dir):
    """A clip classifier whose network is TorchScript was told it has no 3-D convolution."""
    from cnnkit.errors import CnnkitError
    from cnnkit.explain.clip_cam import clip_grad_cam
    from cnnkit.tasks.video import VideoConfig
    from cnnkit.tasks.video.load import build_model

    model = build_model(VideoConfig(data_dir=str(data_dir), frames=16, stride=2, size=16)).eval()
    clip = torch.rand(16, 1, 16, 16)
    model.net.features = torch.jit.trace(model.net.features, model.prepare(clip[None]))
    assert clip_grad_cam(model, clip, layer="net.features")[0].shape == (16, 16, 16)  # the traced block is a layer
    model.net = torch.jit.trace(model.net, model.prepare(clip[None]))
    with pytest.raises(CnnkitError) as err:
        clip_grad_cam(model, clip)
    assert str(err.value).startswith(
        "Grad-CAM over a clip needs a 3-D convolution whose hooks run, and those of VideoClassifier run inside "
        "TorchScript (TorchScript: net), whose compiled forward calls them without hooks; give a network"
    )


# --- options a method does not read are refused, not ignored -----------------------------------------


@pytest.mark.parametrize(
    "extra, line",
    [
        (
            ["--method", "featuremaps", "--class", "3"],
            "--class applies to --method gradcam or saliency, not featuremaps",
        ),
        (["--method", "filters", "--class", "0"], "--class applies to --method gradcam or saliency, not filters"),
        (["--method", "gradcam", "--guided"], "--guided applies to --method saliency, not gradcam"),
        (["--method", "saliency", "--channels", "1"], "--channels applies to --method patterns, not saliency"),
        (["--method", "gradcam", "--steps", "5"], "--steps applies to --method patterns, not gradcam"),
        (
            ["--method", "saliency", "--layer", "c3"],
            "--layer applies to --method featuremaps or filters or patterns or gradcam, not saliency",
        ),
    ],
)
def test_an_option_the_method_does_not_read_is_refused(tmp_path, capsys, extra, line):
    """`--class 3 --method featuremaps` drew the feature maps and said nothing of the class: the option
    is refused before any work, naming the methods that read it."""
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28), 128).save(image)
    out = tmp_path / "x.png"
    err = _error(capsys, ["explain", "lenet5", str(image), "--out", str(out), *extra])
    assert err.endswith(f"{line}; drop {extra[2]} or change --method"), err
    assert not out.exists()


def test_an_image_refuses_a_series_index(tmp_path, capsys):
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (32, 32), 128).save(image)
    err = _error(capsys, ["explain", "lenet5", str(image), "--index", "3", "--out", str(tmp_path / "x.png")])
    assert err.endswith("--index picks a series of a sequence run's file; an image is explained whole: drop --index")
    assert not (tmp_path / "x.png").exists()


def test_a_sequence_run_refuses_the_image_methods_options(series_run, tmp_path, capsys):
    path = _series_file(tmp_path / "s_TEST.tsv")
    out = tmp_path / "cam.png"
    out = tmp_path / "new" / "cam.png"
    for extra, flag in (
        (["--guided"], "--guided"),
        (["--channels", "1"], "--channels"),
        (["--steps", "5"], "--steps"),
        (["--layer", "x"], "--layer"),
    ):
        err = _error(capsys, ["explain", str(series_run), str(path), "--out", str(out), *extra])
        assert f"{flag} does not apply to a sequence run" in err and err.endswith(f"drop {flag}"), err
    assert not out.parent.exists()  # refused before the output's folder is made
    assert main(["explain", str(series_run), str(path), "--out", str(out), "--class", "1"]) == 0

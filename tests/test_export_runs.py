"""Exported runs answer as the runs do: the test-time procedure, decoding and input each task's file
needs travel in its metadata; what a file cannot hold (an instance run's masks) is refused; writing,
naming and checking the file fail in one line."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="ONNX export checks need onnxruntime (pip install 'cnnkit[onnx]')")
pytest.importorskip("onnx", reason="ONNX export needs onnx")

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from PIL import Image  # noqa: E402

import cnnkit.export as export  # noqa: E402
import cnnkit.tasks.export as task_export  # noqa: E402
from cnnkit.cli import main  # noqa: E402
from cnnkit.errors import CnnkitError  # noqa: E402
from cnnkit.export import (  # noqa: E402
    CLASSES_KEY,
    DECODE_KEY,
    INPUT_KEY,
    TEST_TIME_KEY,
    OnnxModel,
    _add_metadata,
    deploy_metadata,
    export_onnx,
)
from cnnkit.models import create_model  # noqa: E402
from cnnkit.models.deploy import Classifier, Ensemble  # noqa: E402
from cnnkit.models.detection import create_detector  # noqa: E402
from cnnkit.models.segmentation import create_segmenter  # noqa: E402
from cnnkit.tasks.classify.predict import onnx_classifier, predict_files  # noqa: E402
from cnnkit.tasks.detect.load import onnx_detector  # noqa: E402
from cnnkit.tasks.detect.predict import predict_images  # noqa: E402
from cnnkit.tasks.generate.predict import Sampler  # noqa: E402
from cnnkit.tasks.segment.load import onnx_segmenter  # noqa: E402
from cnnkit.tasks.segment.predict import Segmenter, predict_image  # noqa: E402
from cnnkit.tasks.sequence.load import SeriesModel  # noqa: E402
from cnnkit.tasks.video.predict import VideoClassifier  # noqa: E402
from cnnkit.tasks.video_predict.predict import FramePredictor  # noqa: E402

# ---------------------------------------------------------------------------------------------
# An exported detector keeps the run's decoding settings and flip: its boxes are the run's.


def test_boxes_of_the_file_are_the_runs_with_its_flip(tmp_path):
    torch.manual_seed(0)
    model = create_detector("tiny", 2, out_strides=(4, 8, 16)).eval()
    decode = {"tta": "flip", "nms_threshold": 0.5, "max_detections": 7}
    model.info = {"task": "detect", "classes": ["person", "bike"], "input_size": [3, 64, 64], "decode": decode}
    path = tmp_path / "det.onnx"
    export_onnx(model, torch.rand(1, 3, 64, 64), path, exporter="torchscript")
    onnx_model = onnx_detector(path)
    assert onnx_model.info["decode"] == decode
    images = [(torch.rand(3, 50, 90) * 255).byte()]
    args = {"score_threshold": 0.0}
    expected = predict_images(model, images, 64, model.info["classes"], **decode, **args)
    got = predict_images(onnx_model, images, 64, onnx_model.classes, **onnx_model.info["decode"], **args)
    assert len(got[0]["boxes"]) == 7 and got[0]["labels"] == expected[0]["labels"]
    assert torch.allclose(torch.tensor(got[0]["boxes"]), torch.tensor(expected[0]["boxes"]), atol=1e-3)
    crafted = tmp_path / "crafted.onnx"
    shutil.copy(path, crafted)
    _add_metadata(str(crafted), {DECODE_KEY: '{"top_k": -1}'})
    with pytest.raises(CnnkitError, match="cnnkit.decode"):
        onnx_detector(crafted)


# ---------------------------------------------------------------------------------------------
# A file that fails the check at another size says that the exporter fixed a size --dynamic-size frees.


class SizeBranch(nn.Module):
    """A Python branch on the input's size: the TorchScript trace keeps the example's branch only."""

    def forward(self, x):
        return x.mean((2, 3)) if x.shape[-1] == 8 else x.amax((2, 3))


def test_a_size_fixed_by_the_exporter_is_named(tmp_path):
    with pytest.raises(CnnkitError) as exc:
        export_onnx(
            SizeBranch(), torch.rand(1, 3, 8, 8), tmp_path / "m.onnx", dynamic_size=True, exporter="torchscript"
        )
    text = str(exc.value)
    assert "of shape (1, 3, 40, 40)" in text and "fixed a size inside the network" in text
    assert "without dynamic_size / --dynamic-size the image size is fixed" not in text
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_folder(tmp_path):
    target = tmp_path / "new" / "deeper" / "m.onnx"
    with pytest.raises(CnnkitError, match="fixed a size"):
        export_onnx(SizeBranch(), torch.rand(1, 3, 8, 8), target, dynamic_size=True, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []  # the folders made for the file are gone with it


def test_a_pipe_is_refused_not_replaced(tmp_path):
    pipe = tmp_path / "p.onnx"
    os.mkfifo(pipe)
    with pytest.raises(CnnkitError, match="it is a named pipe, not a file"):
        export_onnx(torch.nn.Linear(3, 2), torch.rand(1, 3), pipe, exporter="torchscript")
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and list(tmp_path.iterdir()) == [pipe]


def test_a_network_refusing_other_frame_counts_names_the_axes(tmp_path):
    from cnnkit.models import create_model

    net = create_model("frames2d_small").eval()  # (N, C, T=10, H, W): its frame count is fixed
    with pytest.raises(CnnkitError, match=r"runs only at its example's size .* free fewer axes") as exc:
        export_onnx(net, torch.rand(1, 1, 10, 16, 16), tmp_path / "m.onnx", dynamic_size=True, exporter="torchscript")
    assert "frame stacker takes" not in str(exc.value)
    export_onnx(net, torch.rand(1, 1, 10, 16, 16), tmp_path / "m.onnx", dynamic_size=(3, 4), exporter="torchscript")


# ---------------------------------------------------------------------------------------------
# An ensemble run is exported as its members are: no test-time augmentation, the normalisation inside.


def _member(seed):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))  # fmt: skip
    return Classifier(net, [0.2], [0.3], ["a", "b", "c"], (1, 12, 12), tta="shift")


def test_ensemble_file_has_no_tta(tmp_path, monkeypatch):
    model = Ensemble([_member(0), _member(1)]).eval()
    model.info = {"task": "classify", "classes": ["a", "b", "c"], "input_size": [1, 12, 12]}
    monkeypatch.setattr(task_export, "export_source", lambda *a, **k: model)
    task_export.export_model("runs/ens", tmp_path / "ens.onnx", exporter="torchscript")
    assert [m.tta for m in model.members] == ["shift", "shift"]  # restored after the export
    onnx_model = OnnxModel(tmp_path / "ens.onnx")
    assert "normalisation is inside" in json.loads(onnx_model.metadata[INPUT_KEY])
    x = torch.rand(4, 1, 12, 12)
    with torch.no_grad(), model.without_tta():
        plain = model(x)
    assert (onnx_model(x) - plain).abs().max() < 1e-5  # the members' shifted views are not in the graph


# ---------------------------------------------------------------------------------------------
# An --out name near the file system's limit is written (its temporary file's name is cut to fit).


def test_a_long_file_name(tmp_path):
    target = tmp_path / ("a" * 245 + ".onnx")  # 250 bytes: a legal name
    export_onnx(torch.nn.Linear(3, 2), torch.rand(1, 3), target, exporter="torchscript")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# ---------------------------------------------------------------------------------------------
# A model with an empty class list (an unconditional generator) exports a file OnnxModel opens.


def test_unconditional_generator_file_opens(tmp_path):
    torch.manual_seed(0)
    sampler = Sampler(create_model("dcgan_generator"), []).eval()
    sampler.info = {"task": "generate", "classes": []}  # as a run's metadata has it
    export_onnx(sampler, torch.randn(1, 100), tmp_path / "g.onnx", exporter="torchscript")
    onnx_model = OnnxModel(tmp_path / "g.onnx")  # an unconditional generator: no classes
    assert CLASSES_KEY not in onnx_model.metadata and onnx_model.classes is None
    z = torch.randn(2, 100)
    with torch.no_grad():
        assert (onnx_model(z) - sampler(z)).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# A model with NaN weights is refused by name before any export, not by "differs by nan".


def test_nan_weights_are_named(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    with pytest.raises(CnnkitError, match=r"1\.weight holds NaN or infinite values") as exc:
        export_onnx(net, torch.rand(1, 3), tmp_path / "m.onnx")
    assert "differs" not in str(exc.value) and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# A model whose .onnx file would hold only part of its answer is refused in one line, nothing written.


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_weights_are_named_not_blamed_on_the_size(tmp_path, dtype):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).to(dtype)
    with pytest.raises(CnnkitError, match=r"weights are (bfloat16|float16); .* export model.float\(\)") as exc:
        export_onnx(net, torch.rand(1, 1, 5, 5), tmp_path / "m.onnx", exporter="torchscript")
    assert "--input" not in str(exc.value) and list(tmp_path.iterdir()) == []


def test_an_instance_segmenter_is_refused(tmp_path, capsys):
    assert main(["export", "mask_fcos", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "instance-segmentation" in err and "without the masks" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# An exported segmenter keeps the run's test-time procedure (flip, test scales): its masks are the run's.


def test_masks_of_the_file_are_the_runs_with_flip_and_scales(tmp_path):
    torch.manual_seed(0)
    net = create_segmenter("unet", backbone="unet", num_classes=3, width=4)
    model = Segmenter(net, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], ["background", "a", "b"], "flip", (1.5, 2.0)).eval()
    model.input_size = (3, 32, 48)  # as cnnkit export sets it (--input)
    model.info = {"task": "segment", "tta": "flip", "test_scale": [1.5, 2.0], "config": {"max_side": 40}}
    path = tmp_path / "seg.onnx"
    with model.without_tta():  # as cnnkit export writes it: one view
        export_onnx(model, torch.rand(1, 3, 32, 48), path, dynamic_size=True, exporter="torchscript")
    onnx_model = onnx_segmenter(path)
    assert (onnx_model.tta, onnx_model.test_scale) == ("flip", (1.5, 2.0))
    image = (torch.rand(3, 45, 30) * 255).byte()
    mask = predict_image(onnx_model, image, 40)
    assert torch.equal(mask, predict_image(model, image, 40))  # the run's procedure, pixel for pixel
    with model.without_tta(), onnx_model.without_tta():
        assert torch.equal(predict_image(onnx_model, image, 40), predict_image(model, image, 40))
    crafted = tmp_path / "crafted.onnx"
    shutil.copy(path, crafted)
    _add_metadata(str(crafted), {TEST_TIME_KEY: '{"tta": "rotate", "test_scale": [1.0]}'})
    with pytest.raises(CnnkitError, match="cnnkit.test_time"):
        onnx_segmenter(crafted)


# ---------------------------------------------------------------------------------------------
# A segmenter exported without --input is told a size it trained at, and that size exports.


@pytest.mark.parametrize(
    ("channels", "config", "size"), [(1, {"canvas": 32, "crop": None}, "1x32x32"), (3, {"crop": 48}, "3x48x48")]
)
def test_a_segmenter_without_input_is_told_a_size_it_trained_at(tmp_path, monkeypatch, capsys, channels, config, size):
    torch.manual_seed(0)
    net = create_segmenter("unet", backbone="unet", num_classes=2, width=4, in_channels=channels)
    model = Segmenter(net, [0.5] * channels, [0.2] * channels, ["background", "digit"]).eval()
    model.input_size = (channels,)  # as a segmenter run states it
    model.info = {"task": "segment", "config": config}
    monkeypatch.setattr(task_export, "export_source", lambda *a, **k: model)
    out = tmp_path / "seg.onnx"
    assert main(["export", "runs/seg", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    noun = "1 channel " if channels == 1 else "3 channels "
    assert f"images of {noun}at any size" in err and f"--input {size} " in err and len(err.splitlines()) == 1
    assert "288x384" not in err and not out.exists()
    assert main(["export", "runs/seg", "--out", str(out), "--input", size, "--exporter", "torchscript"]) == 0
    assert OnnxModel(out).input_size == tuple(int(v) for v in size.split("x"))


# ---------------------------------------------------------------------------------------------
# Every task's file says what its graph takes: cnnkit.input and cnnkit.input_size.


def _task_model(task: str) -> nn.Module:
    """A small untrained deployable of ``task``, with the metadata its run carries."""
    torch.manual_seed(0)
    if task == "classify":
        net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
        model = Classifier(net, [0.5], [0.2], ["a", "b"], (1, 16, 16))
        model.info = {"task": "classify", "classes": ["a", "b"], "input_size": [1, 16, 16]}
    elif task == "detect":
        model = create_detector("tiny", 2, out_strides=(4, 8, 16))
        model.info = {"task": "detect", "classes": ["a", "b"], "input_size": [3, 32, 32]}
    elif task == "segment":
        net = create_segmenter("unet", backbone="unet", num_classes=2, width=4)
        model = Segmenter(net, [0.5] * 3, [0.2] * 3, ["background", "a"])
        model.info = {"task": "segment", "config": {"crop": 32}}
    elif task == "sequence":
        model = SeriesModel(create_model("fcn1d", num_classes=2, in_channels=1), "fcn1d", ["a", "b"], (1, 24))
        model.info = model.describe()
    elif task == "video":
        model = _clip_run()
    elif task == "video_predict":
        model = FramePredictor(create_model("simvp_tiny", in_channels=1, frames=4), "simvp_tiny", 4, 1, (16, 16))
        model.info = model.describe()
    elif task == "generate":
        model = Sampler(create_model("dcgan_generator"), [])
        model.info = {"task": "generate", "classes": []}
    else:
        model = create_model("johnson_style_slim")
        model.info = {"task": "style", "arch": "johnson_style_slim"}
    return model.eval()


@pytest.mark.parametrize(
    "task",
    [
        "classify",
        pytest.param("detect", marks=pytest.mark.slow),  # a few seconds each to trace
        pytest.param("segment", marks=pytest.mark.slow),
        "sequence",
        "video",
        "video_predict",
        "generate",
        "style",
    ],
)
def test_every_tasks_file_says_what_it_takes(tmp_path, monkeypatch, task):
    model = _task_model(task)
    monkeypatch.setattr(task_export, "export_source", lambda *a, **k: model)
    out = tmp_path / "m.onnx"
    extra = ["--input", "3x32x32"] if task in ("segment", "style") else []  # style: a small size (its own is 256)
    assert main(["export", f"runs/{task}", "--out", str(out), "--exporter", "torchscript", "--no-check", *extra]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["cnnkit.task"]) == task
    size = json.loads(meta["cnnkit.input_size"])
    assert session.get_inputs()[0].shape[1:] == size  # the size the graph takes, without the batch
    assert isinstance(json.loads(meta[INPUT_KEY]), str) and json.loads(meta[INPUT_KEY])


# ---------------------------------------------------------------------------------------------
# --dynamic-size: a size checked that the network itself refuses (SimVP at a side that is no multiple
# of 4) is said in the report and the file, with what ONNX Runtime does there, not skipped silently.


def test_sizes_the_network_refuses_are_said_not_skipped(tmp_path):
    torch.manual_seed(0)
    model = FramePredictor(create_model("simvp_tiny", in_channels=1, frames=4), "simvp_tiny", 4, 1, (16, 16)).eval()
    path = tmp_path / "simvp.onnx"
    report = export_onnx(model, torch.rand(1, 4, 1, 16, 16), path, dynamic_size=(3, 4), exporter="torchscript")
    assert report.input_shapes[2:] == ((1, 4, 1, 48, 48),) and report.refused == ((1, 4, 1, 49, 49),)
    line = str(report)
    assert "PyTorch fails on 1x4x1x49x49 (SimVP takes frames whose sides are multiples of 4" in line
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[3:] != [16, 16]  # the free axes admit 49 ...
    with pytest.raises(Exception):  # noqa: B017 -- ... and ONNX Runtime fails there, as the report says
        session.run(None, {"input": torch.rand(1, 4, 1, 49, 49).numpy()})
    assert "ONNX Runtime fails on them too" in line
    refused = json.loads(session.get_modelmeta().custom_metadata_map[export.REFUSED_KEY])
    assert refused["inputs"] == [[4, 1, 49, 49]] and "multiples of 4" in refused["reason"]
    with pytest.raises(CnnkitError, match=r"shape \(2, 4, 1, 18, 18\).*refuses some sizes.*multiples of 4"):
        OnnxModel(path)(torch.rand(2, 4, 1, 18, 18))
    x = torch.rand(2, 4, 1, 20, 28)  # a multiple of 4: runs, as in PyTorch
    with torch.no_grad():
        assert (OnnxModel(path)(x) - model(x)).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# A series classifier's file says that its input is z-normalised outside the graph.


def test_series_input_is_described():
    model = SeriesModel(create_model("fcn1d", num_classes=2, in_channels=1), "fcn1d", ["a", "b"], (1, 50))
    model.info = {"task": "sequence", "config": {"znorm": True}}
    text = json.loads(deploy_metadata(model, torch.rand(1, 1, 50))[INPUT_KEY])
    assert "z-normalised" in text and "not inside" in text
    model.info = {"task": "sequence", "config": {"znorm": False}}
    assert "as read" in json.loads(deploy_metadata(model, torch.rand(1, 1, 50))[INPUT_KEY])


# ---------------------------------------------------------------------------------------------
# A zoo network's file (random weights, no normalisation inside) says what it takes, as a run's does.


@pytest.mark.parametrize(
    "name, shape", [("dcgan_discriminator", "(N, 1, 28, 28)"), ("c3d_small", "(N, 1, any, any, any)")]
)
def test_a_zoo_networks_file_says_it_takes_unnormalised_tensors(tmp_path, name, shape):
    out = tmp_path / "zoo.onnx"
    extra = ["--dynamic-size"] if name == "c3d_small" else []
    assert main(["export", name, "--out", str(out), "--exporter", "torchscript", "--no-check", *extra]) == 0
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    text = json.loads(meta[INPUT_KEY])
    assert text.startswith(f"tensors {shape} ") and "unnormalised" in text and "random weights" in text
    assert "noise" not in text  # a discriminator takes images (the generate task's noise is its generator's)


def test_a_module_with_nothing_said_about_its_input_is_described_so(tmp_path):
    path = tmp_path / "lin.onnx"
    export_onnx(nn.Linear(3, 2), torch.rand(1, 3), path, exporter="torchscript")
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(meta[INPUT_KEY]).startswith("tensors (N, 3) as the network itself takes them, unnormalised")


# ---------------------------------------------------------------------------------------------
# A style network exported with a free size takes any size: the reflection pad is in the graph.


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_style_network_at_sizes_that_are_no_multiple_of_4(tmp_path, exporter):
    torch.manual_seed(0)
    net = create_model("johnson_style_slim").eval()
    report = export_onnx(net, torch.rand(1, 3, 32, 32), tmp_path / "s.onnx", dynamic_size=True, exporter=exporter)
    assert report.input_shapes[2:] == ((1, 3, 64, 64), (1, 3, 65, 65))  # 65: a size that is not a multiple of 4
    x = torch.rand(2, 3, 33, 46)
    with torch.no_grad():
        assert (OnnxModel(tmp_path / "s.onnx")(x) - net(x)).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# cnnkit export of runs that state their input in their task's words: clips (N, T, C, H, W), noise.


def _clip_run():
    torch.manual_seed(0)
    net = create_model("frames2d_small", num_classes=3, in_channels=1, frames=4)
    model = VideoClassifier(net, "frames2d_small", ["a", "b", "c"], 4, 2, 32, 0.1, 0.3, 1).eval()
    model.info = {"task": "video", "classes": model.classes, "frames": 4, "stride": 2, "size": 32, "channels": 1}
    return model


def test_a_clip_run_exports_at_its_frames_with_frames_and_frame_size_free(tmp_path, monkeypatch, capsys):
    model = _clip_run()
    monkeypatch.setattr(task_export, "export_source", lambda *a, **k: model)
    out = tmp_path / "clips.onnx"
    assert main(["export", "runs/clips", "--out", str(out), "--dynamic-size", "--exporter", "dynamo"]) == 0
    assert "dynamic batch and size" in capsys.readouterr().out
    onnx_model = OnnxModel(out)
    assert onnx_model.input_size == (7, 1, 32, 32)  # (4 - 1) * 2 + 1 frames
    for shape in ((2, 7, 1, 32, 32), (1, 9, 1, 64, 48)):  # at the network's size, and resized inside
        x = torch.rand(*shape)
        with torch.no_grad():
            assert (onnx_model(x) - model(x)).abs().max() < 1e-4


@pytest.mark.parametrize("channels", [1, 3])
def test_a_3d_clip_run_exports_with_the_torchscript_exporter(tmp_path, monkeypatch, capsys, channels):
    torch.manual_seed(0)
    net = create_model("c3d_small", num_classes=3, in_channels=channels)
    if channels == 3:  # as `cnnkit video train --channels-last` leaves them: NDHWC weights
        for p in net.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    model = VideoClassifier(net, "c3d_small", ["a", "b", "c"], 8, 1, 16, 0.1, 0.3, channels).eval()
    model.info = {"task": "video", "classes": model.classes, "frames": 8, "stride": 1, "size": 16, "channels": channels}
    monkeypatch.setattr(task_export, "export_source", lambda *a, **k: model)
    out = tmp_path / "c3d.onnx"
    assert main(["export", "runs/c3d", "--out", str(out), "--exporter", "torchscript"]) == 0
    assert "exporter torchscript" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # ONNX Runtime itself
    for batch in (1, 3):
        x = torch.rand(batch, 8, channels, 16, 16)
        with torch.no_grad():
            ref = model(x)
        assert (torch.from_numpy(session.run(None, {"input": x.numpy()})[0]) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
def test_a_moving_mnist_runs_torchscript_file_takes_its_datas_clips(tmp_path, monkeypatch, dynamic):
    # the run reads 64x64 clips and resizes them to its 32x32 inside: the file (either exporter) takes
    # what the run reads, so its graph holds the antialiased resize (the TorchScript exporter lacks it)
    model = _clip_run()  # 4 frames 2 apart, resized to 32x32
    model.info = {**model.info, "config": {"data": "moving_mnist", "frames": 8}}
    monkeypatch.setattr(task_export, "export_source", lambda *a, **k: model)
    out = tmp_path / "clips.onnx"
    args = ["export", "runs/clips", "--out", str(out), "--exporter", "torchscript"]
    assert main(args + (["--dynamic-size"] if dynamic else [])) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # ONNX Runtime itself
    assert json.loads(session.get_modelmeta().custom_metadata_map["cnnkit.input_size"]) == [8, 1, 64, 64]
    if not dynamic:
        assert session.get_inputs()[0].shape == ["batch", 8, 1, 64, 64]
    shapes = [(3, 8, 1, 64, 64)] + ([(2, 9, 1, 48, 80), (1, 7, 1, 32, 32)] if dynamic else [])
    for shape in shapes:  # Moving MNIST's clips; with --dynamic-size also others, resized inside as the run does
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = model(x)
        assert (torch.from_numpy(session.run(None, {"input": x.numpy()})[0]) - ref).abs().max() < 1e-4


def test_the_torchscript_exporter_writes_an_antialiased_resize_or_refuses_it(tmp_path):
    class Shrink(nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs

        def forward(self, x):
            return nn.functional.interpolate(x, mode="bilinear", antialias=True, **self.kwargs)

    path = tmp_path / "r.onnx"
    for size, shape in (((32, 17), (2, 3, 37, 91)), ((45, 40), (2, 1, 16, 20))):  # down and up, any ratio
        export_onnx(Shrink(size=size), torch.rand(*shape), path, exporter="torchscript")
        x = torch.rand(3, *shape[1:])
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert (torch.from_numpy(got) - Shrink(size=size)(x)).abs().max() < 1e-5
    # ONNX Runtime's Resize answers otherwise with align_corners: refused, not written wrong
    for kwargs in (dict(size=(8, 8), align_corners=True), dict(scale_factor=0.5)):
        with pytest.raises(CnnkitError, match="antialiased bilinear resize is exported to a size given"):
            export_onnx(Shrink(**kwargs), torch.rand(1, 1, 16, 16), path, exporter="torchscript", check=False)


class _Frames(nn.Module):
    """Clips (N, T, C, H, W) -> every frame resized, antialiased, as a clip classifier resizes them."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        b, t, c, h, w = x.shape
        frames = nn.functional.interpolate(x.reshape(b * t, c, h, w), size=self.size, mode="bilinear", antialias=True)
        return frames.view(b, t, c, *self.size)


@pytest.mark.parametrize("opset", [11, 17])
def test_before_opset_18_the_antialiased_resize_is_two_matmuls_with_pytorchs_weights(tmp_path, opset):
    import onnx

    path = tmp_path / "r.onnx"
    cases = [  # Moving MNIST's clips to a network's 32x32; another ratio per axis; an enlargement
        ((32, 32), (2, 20, 1, 64, 64), False, [(3, 20, 1, 64, 64)]),
        ((32, 17), (1, 4, 3, 37, 91), False, [(2, 4, 3, 37, 91)]),
        ((45, 40), (1, 3, 1, 16, 20), False, [(2, 3, 1, 16, 20)]),
        ((32, 32), (1, 20, 1, 64, 64), (1, 3, 4), [(2, 9, 1, 48, 80), (1, 7, 1, 100, 30)]),  # frames, H, W free
    ]
    for size, example, dynamic, shapes in cases:
        export_onnx(
            _Frames(size), torch.rand(*example), path, exporter="torchscript", opset=opset, dynamic_size=dynamic
        )
        graph = onnx.load(path)
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [opset]
        ops = {n.op_type for n in graph.graph.node}
        assert "MatMul" in ops and "Resize" not in ops
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for shape in shapes:
            x = torch.rand(*shape)
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
            assert got.shape == (*shape[:3], *size) and (got - _Frames(size)(x)).abs().max() <= 1e-5


def test_before_opset_11_the_antialiased_resize_is_refused_in_one_line(tmp_path):
    with pytest.raises(CnnkitError) as exc:
        export_onnx(
            _Frames((32, 32)), torch.rand(1, 20, 1, 64, 64), tmp_path / "r.onnx", exporter="torchscript", opset=10
        )
    assert str(exc.value).endswith(
        "an antialiased bilinear resize is written from opset 11 (as MatMuls) or 18 (ONNX Resize), to a constant "
        "size; opset 10 was asked for: export at opset 11 or later"
    )
    assert not list(tmp_path.iterdir())


def test_a_clip_run_exports_at_opset_17(tmp_path, monkeypatch, capsys):
    import onnx

    model = _clip_run()  # 4 frames 2 apart, resized to 32x32 inside
    model.info = {**model.info, "config": {"data": "moving_mnist", "frames": 20}}
    monkeypatch.setattr(task_export, "export_source", lambda *a, **k: model)
    out = tmp_path / "clips.onnx"
    assert main(["export", "runs/clips", "--out", str(out), "--opset", "17", "--dynamic-size"]) == 0
    assert (
        "exporter torchscript (dynamo failed: it wrote opset 18, not the opset 17 asked for)" in capsys.readouterr().out
    )
    assert [o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")] == [17]
    onnx_model = OnnxModel(out)
    assert onnx_model.input_size == (20, 1, 64, 64)
    for shape in ((3, 20, 1, 64, 64), (1, 9, 1, 48, 80)):  # Moving MNIST's clips, and others
        x = torch.rand(*shape)
        with torch.no_grad():
            assert (onnx_model(x) - model(x)).abs().max() < 1e-5
    assert main(["export", "runs/clips", "--out", str(tmp_path / "o.onnx"), "--opset", "6"]) == 2
    err = capsys.readouterr().err
    assert "a whole number from 7 to" in err and "Received: opset=6" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_notes_gan_generator_exports_with_either_exporter(tmp_path, exporter):
    # its Keras Reshape (7, 7, 128) returns channels first: a Transpose whose permutation ONNX Runtime loads
    out = tmp_path / "g.onnx"
    assert main(["export", "gan_generator", "--out", str(out), "--exporter", exporter]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # the export checked its values
    got = session.run(None, {session.get_inputs()[0].name: torch.randn(3, 100).numpy()})[0]
    assert got.shape == (3, 1, 28, 28) and (got >= -1).all() and (got <= 1).all()  # tanh


@pytest.mark.parametrize(
    "layer, shape",
    [("dense", (1, 4, 5, 6)), ("reshape", (1, 98)), ("permute", (1, 4, 5, 6))],
)
def test_keras_imported_layers_that_return_channels_first_export_with_the_torchscript_exporter(tmp_path, layer, shape):
    # Dense on a feature map, Reshape and Permute move Keras' last axis to dim 1: a Transpose whose
    # permutation ONNX Runtime loads, as layers.keras.Reshape's
    import cnnkit.models.keras as keras_layers

    torch.manual_seed(0)
    dense = keras_layers.Dense(4, 3)
    dense.activation = nn.Identity()
    module = {"dense": dense, "reshape": keras_layers.Reshape((7, 7, 2)), "permute": keras_layers.Permute((2, 1, 3))}
    net = nn.Sequential(module[layer]).eval()
    path = tmp_path / "k.onnx"
    export_onnx(net, torch.rand(*shape), path, exporter="torchscript")
    x = torch.rand(3, *shape[1:])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert (torch.from_numpy(got) - net(x)).abs().max() < 1e-5


@pytest.mark.parametrize("choice", [{"clusters": 3}, {"codes": 4}])
def test_a_generator_of_clusters_or_codes_is_refused_in_the_generate_guides_words(tmp_path, data_dir, capsys, choice):
    """`generate train --clusters K` / `--codes N` train unconditional generators that draw a cluster or a
    code beside the noise: the refusal names that flag, never calls them conditional."""
    from cnnkit.tasks.generate.config import GenerateConfig
    from cnnkit.tasks.generate.train import train

    kw = dict(latent_dim=8, width=4, epochs=1, batch_size=32, subset=64, data_dir=str(data_dir), threads=1)
    train(GenerateConfig(**kw, **choice), tmp_path / "run", quiet=True, device="cpu")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "g.onnx")]) == 2
    err = capsys.readouterr().err
    flag = "--" + next(iter(choice))
    assert f"trained with {flag}" in err and "is a conditional generator" not in err
    assert not (tmp_path / "g.onnx").exists()


def test_generators_unconditional_exported_conditional_refused(tmp_path, capsys):
    assert main(["export", "dcgan_generator", "--out", str(tmp_path / "g.onnx"), "--exporter", "torchscript"]) == 0
    assert OnnxModel(tmp_path / "g.onnx")(torch.randn(3, 100)).shape == (3, 1, 28, 28)
    capsys.readouterr()
    assert main(["export", "dcgan_generator_cond", "--out", str(tmp_path / "c.onnx")]) == 2
    err = capsys.readouterr().err
    assert "conditional generator" in err and "288x384" not in err
    assert not (tmp_path / "c.onnx").exists()


# ---------------------------------------------------------------------------------------------
# The .onnx file is written as open() would write it, and a target that cannot be replaced is one line.


def test_the_file_has_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        export_onnx(torch.nn.Linear(3, 2), torch.rand(1, 3), tmp_path / "m.onnx", exporter="torchscript")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644  # as open() makes it, not mkstemp's 0o600


def test_a_target_that_cannot_be_replaced_is_one_line(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"theirs")

    def refuse(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(export.os, "replace", refuse)
    with pytest.raises(CnnkitError, match="cannot write .*Operation not permitted.*choose another --out"):
        export_onnx(torch.nn.Linear(3, 2), torch.rand(1, 3), target, exporter="torchscript")
    assert target.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# ---------------------------------------------------------------------------------------------
# An .onnx file given where a run is read is named as such, not as a damaged checkpoint.


@pytest.mark.parametrize(
    "argv",
    [
        ["sequence", "predict", "{f}", "{f}"],
        ["style", "predict", "{f}", "{p}", "--out", "{o}"],
        ["export", "{f}", "--out", "{o}"],
    ],
)
def test_onnx_file_to_a_run_command(tmp_path, capsys, argv):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"\x08\x0a onnx bytes")
    photo = tmp_path / "photo.png"  # style predict reads its photos' headers first: they are fine
    Image.new("RGB", (64, 48)).save(photo)
    rc = main([a.format(f=f, o=tmp_path / "x.onnx", p=photo) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and "is an ONNX file" in err and "damaged" not in err, err


# ---------------------------------------------------------------------------------------------
# A file exported with --static-batch answers any multiple of its batch (predict sends several images).


def test_static_batch_file_takes_several_images(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    export_onnx(net, torch.rand(1, 3, 2, 2), tmp_path / "one.onnx", dynamic_batch=False, exporter="torchscript")
    x = torch.rand(5, 3, 2, 2)
    with torch.no_grad():
        assert (
            OnnxModel(tmp_path / "one.onnx")(x) - net(x)
        ).abs().max() < 1e-5  # a static-batch file, one image at a time
    export_onnx(net, torch.rand(2, 3, 2, 2), tmp_path / "two.onnx", dynamic_batch=False, exporter="torchscript")
    with pytest.raises(CnnkitError, match="batches of exactly 2"):
        OnnxModel(tmp_path / "two.onnx")(x)


# ---------------------------------------------------------------------------------------------
# predict on a `classify fcn` run (or its .onnx file): its 1x1 map of class scores is one answer per image.


def _fcn(size):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 8))  # 8x8 -> a 1x1 map of 3 class scores
    return Classifier(net, [0.5], [0.5], ["a", "b", "c"], (1, size, size)).eval()


def test_a_one_by_one_map_is_one_answer(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(image)
    rows = predict_files(_fcn(8), [str(image)], top=2)  # the FCN answers a 1x1 map at its own size: one row
    assert len(rows[0]["top"]) == 2 and rows[0]["top"][0][0] in ("a", "b", "c")
    with pytest.raises(CnnkitError, match="map of class scores"):
        predict_files(_fcn(10), [str(image)], top=2)  # a 3x3 map: no single answer


# ---------------------------------------------------------------------------------------------
# A classifier trained on an image folder reads photos by their shorter side and centre crop (a
# fine-tuned one with its crop share and bicubic): its file carries that reading, so predict through
# the file answers what training read, not the photo stretched to the input size.


@pytest.mark.parametrize(
    "kind, crop, interpolation",
    [("config", 1.0, "bilinear"), ("finetune", 0.875, "bicubic")],
    ids=["train", "finetune"],
)
def test_a_folder_runs_file_reads_photos_as_training_did(tmp_path, kind, crop, interpolation, wide_photos):

    from cnnkit.data.imagefolder import load_image_folder

    data = wide_photos(tmp_path / "photos", 2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 2))
    model = Classifier(net, [0.5] * 3, [0.25] * 3, ["a", "b"], (3, 12, 12)).eval()
    setting = {"data": str(data)} if kind == "config" else {"data": str(data), "crop_fraction": crop}
    model.info = {"task": "classify", kind: {**setting, **({"interpolation": interpolation} if crop < 1 else {})}}
    read = load_image_folder(data, "train", (12, 12), val_fraction=0.0, crop_fraction=crop,
                             interpolation=interpolation, cache=False)  # fmt: skip
    with torch.no_grad():
        want = model(read.images.float() / 255).softmax(1)
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.rand(1, 3, 12, 12), path, exporter="torchscript")
    rows = predict_files(onnx_classifier(path), [str(data / p) for p in read.meta["files"]], top=2)
    got = torch.tensor([[dict(r["top"])[c] for c in ("a", "b")] for r in rows])
    assert torch.allclose(got, want, atol=1e-5)
    reading = json.loads(OnnxModel(path).metadata["cnnkit.reading"])
    assert reading == {"crop_fraction": crop, "interpolation": interpolation}


def test_an_input_onnx_runtime_refuses_prints_one_line_only(tmp_path, capfd):
    """OnnxModel turns ONNX Runtime's failure into a CnnkitError; ORT's own error log (a coloured
    ``[E:onnxruntime:...]`` line on stderr) is not printed beside it."""

    class Skip(nn.Module):  # a stride-2 branch upsampled and added back: odd sides fail in both
        def __init__(self):
            super().__init__()
            self.down, self.out = nn.Conv2d(3, 3, 3, 2, 1), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.out(x + nn.functional.interpolate(self.down(x), scale_factor=2.0))

    path = tmp_path / "skip.onnx"
    export_onnx(Skip().eval(), torch.rand(1, 3, 8, 8), path, dynamic_size=True, exporter="torchscript")
    capfd.readouterr()
    with pytest.raises(CnnkitError, match=r"shape \(1, 3, 9, 9\)"):
        OnnxModel(path)(torch.rand(1, 3, 9, 9))
    assert "onnxruntime" not in capfd.readouterr().err

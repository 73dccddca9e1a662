"""ONNX files to deploy: any size through TF "same" padding, series and video networks, the
metadata predict reads (and refuses when crafted), and ``cnnkit predict model.onnx``."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="ONNX export checks need onnxruntime (pip install 'cnnkit[onnx]')")
pytest.importorskip("onnx", reason="ONNX export needs onnx")

from cnnkit.cli import main  # noqa: E402
from cnnkit.errors import CnnkitError  # noqa: E402
from cnnkit.export import OnnxModel, _add_metadata, export_onnx  # noqa: E402
from cnnkit.layers.padding import same_pad  # noqa: E402
from cnnkit.models import create_model  # noqa: E402
from cnnkit.models.deploy import Classifier  # noqa: E402
from cnnkit.models.keras import build_from_keras_config  # noqa: E402
from cnnkit.tasks.classify.predict import onnx_classifier, predict_files  # noqa: E402


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    assert a.shape == b.shape
    return (a - b).abs().max().item() <= 1e-6 + rtol * b.abs().max().item()


def test_same_pad_is_the_ceil_rule():
    """The integer form of the padding (the one exporters can trace) equals TensorFlow's ceil rule."""
    for size in range(1, 30):
        for k in range(1, 7):
            for s in range(1, 4):
                for d in (1, 2):
                    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                    assert same_pad(size, k, s, d) == (total // 2, total - total // 2)
                    assert same_pad(size, k, s, d, "caffe") == (total - total // 2, total // 2)


def _layer(kind: str, **config) -> dict:
    return {"class_name": kind, "config": {"name": config.pop("name"), **config}}


SAME_NET = {
    "class_name": "Sequential",
    "config": {
        "name": "same",
        "layers": [
            _layer("InputLayer", name="in", batch_shape=[None, 13, 12, 3]),
            _layer("Conv2D", name="c1", filters=4, kernel_size=[3, 3], strides=[2, 2], padding="same"),
            _layer("MaxPooling2D", name="p1", pool_size=[2, 2], strides=[2, 2], padding="same"),
            _layer("AveragePooling2D", name="p2", pool_size=[3, 3], strides=[2, 2], padding="same"),
            _layer("Conv2D", name="c2", filters=5, kernel_size=[4, 4], strides=[2, 2], padding="same"),
            _layer("GlobalAveragePooling2D", name="gap"),
            _layer("Dense", name="fc", units=3),
        ],
    },
}


def test_keras_same_padding_net_takes_any_size(tmp_path):
    torch.manual_seed(0)
    net = build_from_keras_config(SAME_NET).eval()
    report = export_onnx(
        net, torch.rand(1, 3, 13, 12), tmp_path / "same.onnx", dynamic_size=True, exporter="torchscript"
    )
    assert report.dynamic_size and len(report.input_shapes) == 4
    onnx_model = OnnxModel(tmp_path / "same.onnx")
    for shape in ((2, 3, 29, 40), (1, 3, 17, 31)):  # odd and even sides, none of them traced
        x = torch.rand(*shape)
        with torch.no_grad():
            assert _close(onnx_model(x), net(x))


def test_series_network_any_length_from_the_zoo_name(tmp_path, capsys):
    out = tmp_path / "fcn1d.onnx"
    args = ["export", "fcn1d", "--out", str(out), "--dynamic-size", "--exporter", "torchscript", "--input", "1x64"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dynamic batch and size" in printed and "ONNX Runtime matches PyTorch" in printed
    onnx_model = OnnxModel(out)
    assert onnx_model.input_size == (1, 64) and onnx_model.task == "classify"
    torch.manual_seed(0)
    x = torch.rand(3, 1, 150)  # another batch and length
    got = onnx_model(x)
    assert got.shape == (3, 2)  # fcn1d's two classes; the weights are random, so only the shape is PyTorch's
    assert torch.isfinite(got).all()


def test_clip_classifier_any_clip_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("c3d_small", num_classes=4).eval()
    export_onnx(model, torch.rand(1, 1, 8, 16, 16), tmp_path / "c3d.onnx", dynamic_size=True, exporter="torchscript")
    x = torch.rand(2, 1, 10, 24, 20)  # more frames, another frame size
    with torch.no_grad():
        assert _close(OnnxModel(tmp_path / "c3d.onnx")(x), model(x))


def test_simvp_frames_fixed_frame_size_free(tmp_path):
    torch.manual_seed(0)
    model = create_model("simvp_tiny").eval()
    report = export_onnx(
        model, torch.rand(1, 10, 1, 16, 16), tmp_path / "simvp.onnx", dynamic_size=(3, 4), exporter="torchscript"
    )
    # checked at 16 + 32; 16 + 33 is named, not checked: SimVP itself takes only multiples of its stride
    assert report.size_axes == (3, 4) and report.input_shapes[2:] == ((1, 10, 1, 48, 48),)
    assert report.refused == ((1, 10, 1, 49, 49),)
    x = torch.rand(2, 10, 1, 24, 20)
    with torch.no_grad():
        ref = model(x)
    got = OnnxModel(tmp_path / "simvp.onnx")(x)
    assert got.shape == ref.shape == (2, 10, 1, 24, 20) and _close(got, ref)
    with pytest.raises(CnnkitError, match="axes 1..4"):
        export_onnx(model, torch.rand(1, 10, 1, 32, 32), tmp_path / "x.onnx", dynamic_size=(0, 3))


# ----------------------------------------------------------------------------- predict from the exported file


@pytest.fixture(scope="module")
def classifier_onnx(tmp_path_factory):
    """A grey 3-class classifier with its normalisation inside, exported with its metadata."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 7 * 7, 3)
    )
    model = Classifier(net, [0.2], [0.3], ["cat", "dog", "owl"], (1, 16, 16)).eval()
    model.info = {"task": "classify", "dataset": {"dark_background": True}}
    path = tmp_path_factory.mktemp("onnx") / "clf.onnx"
    export_onnx(model, torch.rand(1, 1, 16, 16), path, exporter="torchscript")
    return model, path


def test_the_file_carries_what_predict_needs(classifier_onnx):
    model, path = classifier_onnx
    onnx_model = onnx_classifier(path)
    assert onnx_model.classes == ["cat", "dog", "owl"] and onnx_model.input_size == (1, 16, 16)
    assert onnx_model.info["dataset"]["dark_background"] is True
    assert "normalisation is inside" in json.loads(onnx_model.metadata["cnnkit.input"])


def test_predict_through_onnx_prints_what_the_model_prints(classifier_onnx, tmp_path, capsys):
    from PIL import Image

    model, path = classifier_onnx
    images = []
    for i in range(2):
        file = tmp_path / f"digit{i}.png"
        Image.fromarray((torch.rand(20, 18) * 255).byte().numpy(), mode="L").save(file)
        images.append(str(file))
    assert main(["predict", str(path), *images, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = predict_files(model, images, top=3)  # the PyTorch model on the same files
    assert [r["image"] for r in rows] == images
    for got, ref in zip(rows, expected):
        assert [c for c, _ in got["top"]] == [c for c, _ in ref["top"]]
        assert max(abs(p - q) for (_, p), (_, q) in zip(got["top"], ref["top"])) < 1e-5
    assert main(["predict", str(path), images[0], "--top", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{images[0]}: {expected[0]['top'][0][0]} ") and line.endswith("%")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("cnnkit.classes", "[not json", "is not JSON"),
        ("cnnkit.classes", '{"a": 1}', "is not a JSON list"),
        ("cnnkit.classes", '["a", "b"]', "a list of 3 class names"),
        ("cnnkit.classes", json.dumps(["x" * 300] * 3), "at most 200 characters"),
        ("cnnkit.classes", json.dumps(["a"] * 300_000), "characters long"),
        ("cnnkit.input_size", "[1, 16, true]", "1 to 4 sizes"),
        ("cnnkit.input_size", "[1, 16, 1e9]", "1 to 4 sizes"),
        ("cnnkit.dark_background", "1", "JSON bool"),
        ("cnnkit.outputs", "[]", "JSON dict"),
        ("cnnkit.reading", '{"crop_fraction": 2, "interpolation": "bilinear"}', "crop_fraction in"),
        ("cnnkit.reading", '{"crop_fraction": true, "interpolation": "bilinear"}', "crop_fraction in"),
        # at 16x16 a share below sqrt(256 / 89,478,485) resizes every photo past the decoder's limit
        ("cnnkit.reading", '{"crop_fraction": 0.001, "interpolation": "bilinear"}', r"crop_fraction in \[0.0017, 1\]"),
    ],
)
def test_crafted_metadata_is_a_one_line_error(classifier_onnx, tmp_path, key, value, message):
    _, path = classifier_onnx
    crafted = tmp_path / "crafted.onnx"
    shutil.copy(path, crafted)
    _add_metadata(str(crafted), {key: value})
    with pytest.raises(CnnkitError, match=message) as exc:
        OnnxModel(crafted)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 400


def test_a_crop_share_no_photo_can_be_read_with_names_the_metadata_not_the_photo(classifier_onnx, tmp_path, capsys):
    from PIL import Image

    _, path = classifier_onnx
    crafted = tmp_path / "crafted.onnx"
    shutil.copy(path, crafted)
    _add_metadata(str(crafted), {"cnnkit.reading": '{"crop_fraction": 0.001, "interpolation": "bilinear"}'})
    Image.new("L", (40, 30), 200).save(tmp_path / "photo.png")
    assert main(["predict", str(crafted), str(tmp_path / "photo.png")]) == 2
    err = capsys.readouterr().err
    assert f"{crafted}: metadata cnnkit.reading" in err and "cannot read" not in err
    _add_metadata(str(crafted), {"cnnkit.reading": '{"crop_fraction": 0.01, "interpolation": "bilinear"}'})
    assert main(["predict", str(crafted), str(tmp_path / "photo.png")]) == 0  # a share above it: read
    # the floor itself: the 4:3 photo's resized copy (12549 x 9412) is past the decoder's limit, a
    # square one's is not; both are read (the region the centre crop covers is resized)
    _add_metadata(str(crafted), {"cnnkit.reading": '{"crop_fraction": 0.0017, "interpolation": "bilinear"}'})
    Image.new("L", (30, 30), 200).save(tmp_path / "square.png")
    capsys.readouterr()
    assert main(["predict", str(crafted), str(tmp_path / "photo.png"), str(tmp_path / "square.png")]) == 0
    out = capsys.readouterr().out.splitlines()  # one flat grey photo and another: the same answer
    assert len(out) == 2 and out[0].split(": ")[1] == out[1].split(": ")[1]


def test_predict_refuses_another_task(classifier_onnx, tmp_path):
    _, path = classifier_onnx
    other = tmp_path / "det.onnx"
    shutil.copy(path, other)
    _add_metadata(str(other), {"cnnkit.task": '"detect"'})
    with pytest.raises(CnnkitError, match="is a detect model"):
        onnx_classifier(other)


def test_missing_onnxruntime_names_the_extra(classifier_onnx, monkeypatch):
    _, path = classifier_onnx
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(CnnkitError, match=r"pip install 'cnnkit\[onnx\]'"):
        onnx_classifier(path)


def test_detector_predicts_from_its_exported_file(tmp_path, capsys):
    from PIL import Image

    from cnnkit.models.detection import create_detector
    from cnnkit.tasks.detect.load import onnx_detector
    from cnnkit.tasks.detect.predict import predict_images

    torch.manual_seed(0)
    model = create_detector("tiny", 2, out_strides=(4, 8, 16)).eval()
    model.info = {"task": "detect", "classes": ["person", "bike"], "input_size": [3, 64, 64]}
    path = tmp_path / "det.onnx"
    report = export_onnx(model, torch.rand(1, 3, 64, 64), path, exporter="torchscript")
    assert report.outputs[:3] == ["cls", "box", "ctr"] and "points" in report.outputs
    onnx_model = onnx_detector(path)
    images = [(torch.rand(3, 50, 90) * 255).byte(), (torch.rand(3, 70, 40) * 255).byte()]
    args = {"score_threshold": 0.0, "max_detections": 5}
    expected = predict_images(model, images, 64, model.info["classes"], **args)
    got = predict_images(onnx_model, images, 64, onnx_model.classes, **args)
    for g, e in zip(got, expected):
        assert g["labels"] == e["labels"] and len(g["boxes"]) == 5
        assert torch.allclose(torch.tensor(g["boxes"]), torch.tensor(e["boxes"]), atol=1e-3)
        assert torch.allclose(torch.tensor(g["scores"]), torch.tensor(e["scores"]), atol=1e-5)
    photo = tmp_path / "street.png"
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(photo)
    assert main(["detect", "predict", str(path), str(photo), "--score", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{photo}: 100 boxes -> {tmp_path / 'predictions' / 'street_boxes.png'}")
    assert (tmp_path / "predictions" / "street_boxes.png").is_file()
    with pytest.raises(CnnkitError, match="not a detector"):
        onnx_detector(_classifier_file(tmp_path))


def _classifier_file(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    path = tmp_path / "clf.onnx"
    export_onnx(net, torch.rand(1, 3, 4, 4), path, exporter="torchscript")
    return path


def test_segmenter_predicts_from_its_exported_file(tmp_path, capsys):
    from PIL import Image

    from cnnkit.models.segmentation import create_segmenter
    from cnnkit.tasks.segment.load import onnx_segmenter
    from cnnkit.tasks.segment.predict import Segmenter, predict_image

    torch.manual_seed(0)
    net = create_segmenter("unet", backbone="unet", num_classes=2, width=4)
    model = Segmenter(net, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], ["background", "person"]).eval()
    model.input_size = (3, 32, 48)
    model.info = {"task": "segment", "config": {"max_side": 40}}
    path = tmp_path / "seg.onnx"
    export_onnx(model, torch.rand(1, 3, 32, 48), path, dynamic_size=True, exporter="torchscript")
    onnx_model = onnx_segmenter(path)
    assert onnx_model.info["config"]["max_side"] == 40 and onnx_model.classes == ["background", "person"]
    image = (torch.rand(3, 45, 30) * 255).byte()  # shrunk to 40 x 27 for the network, the mask at 45 x 30
    mask = predict_image(onnx_model, image, 40)
    assert mask.shape == (45, 30) and torch.equal(mask, predict_image(model, image, 40))
    photo = tmp_path / "walk.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(photo)
    assert main(["segment", "predict", str(path), str(photo), "--out", str(tmp_path / "pred")]) == 0
    assert capsys.readouterr().out.startswith(f"{photo}: ")
    written = Image.open(tmp_path / "pred" / "walk.png")
    assert written.size == (30, 45) and torch.equal(torch.from_numpy(np.array(written)).long(), mask)
    fixed = tmp_path / "fixed.onnx"  # a network without the size free: refused, with the fix
    small = Segmenter(torch.nn.Conv2d(3, 2, 1), [0.5] * 3, [0.2] * 3, ["background", "person"]).eval()
    small.input_size, small.info = (3, 8, 8), {"task": "segment"}
    export_onnx(small, torch.rand(1, 3, 8, 8), fixed, exporter="torchscript")
    with pytest.raises(CnnkitError, match="--dynamic-size"):
        onnx_segmenter(fixed)


def test_a_classifiers_normalisation_is_kept_as_given_where_its_buffers_still_hold_it():
    """A std of 1/255 is stored in float32 buffers, yet what a checkpoint's metadata records and what
    to_fcn carries over is 1/255 itself; a Classifier whose buffers were loaded with other values
    reports those values."""
    from cnnkit.models.fcn import to_fcn
    from cnnkit.tasks.classify.task import ClassifyTask

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 2))
    clf = Classifier(net, [0.5, 0.25, 0.125], [1 / 255] * 3, ["a", "b"], (3, 6, 6))
    assert clf.std.dtype == torch.float32 and clf.std.flatten().tolist() != [1 / 255] * 3
    assert clf.normalisation() == ([0.5, 0.25, 0.125], [1 / 255] * 3)
    assert ClassifyTask.describe(type("T", (), {"info": {}})(), clf)["std"] == [1 / 255] * 3
    assert to_fcn(clf).normalisation() == ([0.5, 0.25, 0.125], [1 / 255] * 3)
    assert to_fcn(clf).double().std.flatten().tolist() == [1 / 255] * 3
    other = {**clf.state_dict(), "std": torch.full((1, 3, 1, 1), 0.5)}
    clf.load_state_dict(other)
    assert clf.normalisation()[1] == [0.5] * 3 and clf.double().std.flatten().tolist() == [0.5] * 3

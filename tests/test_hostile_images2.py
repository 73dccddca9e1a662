"""Bad input to the image tasks, second round (audit findings 3, 7-11, 14-17): each is exit 2 with one
line naming what was wrong and the fix, no traceback, and the user's files untouched.

The runs are untrained and built once per module (no training here).
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "p.png"
    arr = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _fails(argv, capsys, *phrases) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _retagged(run, dest, edit_meta=None, edit_tensors=None):
    """A copy of ``run`` whose model.safetensors metadata or tensors were edited."""
    shutil.copytree(run, dest)
    file = dest / "model.safetensors"
    with safe_open(str(file), "pt") as f:
        meta = json.loads(f.metadata()["cnnkit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(file), metadata={"cnnkit": json.dumps(meta)})
    return dest


# ----------------------------------------------------------------------------- 7: output paths


def test_outputs_under_a_file_or_onto_a_folder_are_one_line(runs, photo, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_bytes(b"mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    cases = [
        (["explain", runs / "classify", photo, "--resize", "--out", afile / "x.png"], "--out"),
        (["explain", runs / "classify", photo, "--resize", "--out", folder / "sub.png"], None),
        (["eval", runs / "classify", "--confusion", afile / "x.png"], "--confusion"),
        (["eval", runs / "classify", "--confusion", folder], "--confusion"),
        (["detect", "predict", runs / "detect", photo, "--out-dir", afile], "--out-dir"),
        (["instance", "predict", runs / "instance", photo, "--out-dir", afile], "--out-dir"),
        (["segment", "predict", runs / "segment", photo, "--out", afile], "--out"),
        (["segment", "predict", runs / "segment", photo, "--out", afile / "deeper"], "--out"),
    ]
    (folder / "sub.png").mkdir()  # explain's --out names a folder
    for argv, flag in cases:
        err = _fails(argv, capsys, "cannot ")
        assert f"choose another {flag or '--out'}" in err, err
    assert afile.read_bytes() == b"mine" and (folder / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]  # no temp files left
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt", "sub.png"]


def test_save_figure_names_the_flag_and_leaves_no_temp(tmp_path):
    from cnnkit import plots

    fig = plots.training_curves([{"epoch": 1, "train_loss": 1.0, "lr": 0.1}])
    (tmp_path / "taken").mkdir()
    with pytest.raises(CnnkitError, match="it is a folder.*choose another --confusion"):
        plots.save_figure(fig, tmp_path / "taken", "--confusion")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


# ----------------------------------------------------------------------------- 3, 17: damaged checkpoints


@pytest.mark.parametrize("key", ["dataset", "config"])
def test_a_null_dataset_or_config_in_the_metadata_is_damaged(runs, photo, tmp_path, capsys, key):
    run = _retagged(runs / "classify", tmp_path / "ck", edit_meta=lambda m: m.update({key: None}))
    before = (run / "model.safetensors").read_bytes()
    _fails(["predict", run, photo], capsys, "metadata is damaged", repr(key))
    _fails(["explain", run, photo, "--resize", "--out", tmp_path / "e.png"], capsys, "metadata is damaged")
    assert main(["plot", str(run)]) == 0  # the curves; the note says why there is no confusion matrix
    assert "metadata is damaged" in capsys.readouterr().out
    assert (run / "model.safetensors").read_bytes() == before and not (tmp_path / "e.png").exists()


def test_nan_weights_are_refused_by_every_reader(runs, photo, tmp_path, capsys):
    def poison(tensors):
        name = next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim > 1)
        tensors[name] = torch.full_like(tensors[name], float("nan"))

    run = _retagged(runs / "classify", tmp_path / "nan", edit_tensors=poison)
    _fails(["predict", run, photo], capsys, "NaN or infinite")
    _fails(["explain", run, photo, "--resize", "--out", tmp_path / "e.png"], capsys, "NaN or infinite")
    assert not (tmp_path / "e.png").exists()
    _fails(["export", run, "--out", tmp_path / "n.onnx"], capsys, "NaN or infinite")  # the one loader checks
    with pytest.raises(CnnkitError, match="NaN or infinite"):
        cnnkit.load(run)


# ----------------------------------------------------------------------------- 8: plot's metrics.csv


def test_plot_on_a_binary_or_huge_metrics_csv(runs, tmp_path, capsys):
    run = tmp_path / "binary"
    shutil.copytree(runs / "classify", run)
    junk = bytes(np.random.default_rng(1).integers(128, 256, 500, dtype=np.uint8))
    (run / "metrics.csv").write_bytes(junk)
    _fails(["plot", run], capsys, "metrics.csv is not readable text")
    assert (run / "metrics.csv").read_bytes() == junk and not (run / "curves.png").exists()
    huge = tmp_path / "huge"
    shutil.copytree(runs / "classify", huge)
    (huge / "metrics.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n1,1e308,1e308,1e308,1e308,1e308,1e308\n2,-1e308,5,5,5,5,5\n"
    )
    assert main(["plot", str(huge)]) == 0
    assert (huge / "curves.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- 9, 17: detection data


def _coco(tmp_path, annotations, categories=({"id": 1, "name": "person"},)):
    (tmp_path / "images").mkdir(exist_ok=True)
    images = []
    for i in range(6):
        Image.new("RGB", (64, 48), (10 * i, 80, 120)).save(tmp_path / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 64, "height": 48})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


@pytest.mark.parametrize("crowd", [None, 1])
def test_detection_training_refuses_a_data_set_without_boxes(tmp_path, capsys, crowd):
    anns = (
        []
        if crowd is None
        else [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 1} for i in range(6)
        ]
    )
    ann = _coco(tmp_path, anns)
    out = tmp_path / "run"
    argv = ["detect", "train", "--data", ann, "--model", "tiny", "--weights", "none", "--epochs", "1"]
    _fails([*argv, "--batch-size", "2", "--image-size", "64", "--threads", "1", "--out", out, "--quiet"], capsys,
           "no (non-crowd) boxes")  # fmt: skip
    assert not out.exists()


def test_duplicate_class_names_are_refused(tmp_path):
    from cnnkit.data.detection import load_coco, load_yolo

    cats = ({"id": 1, "name": "person"}, {"id": 2, "name": "person"})
    ann = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]}], cats)
    with pytest.raises(CnnkitError, match="categories 1 and 2 are both named 'person'"):
        load_coco(ann)
    yolo = tmp_path / "yolo"
    (yolo / "labels").mkdir(parents=True)
    shutil.copytree(tmp_path / "images", yolo / "images")
    (yolo / "classes.txt").write_text("person\nperson\n")
    with pytest.raises(CnnkitError, match="'person' twice"):
        load_yolo(yolo)


# ----------------------------------------------------------------------------- 10, 11: eval options


def test_detect_eval_has_no_data_option_and_refuses_a_useless_data_dir(runs, tmp_path, capsys):
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.evaluate import eval_config

    for command in ("detect", "instance", "segment"):
        with pytest.raises(SystemExit) as exc:
            main([command, "eval", str(runs / command), "--data", "/nonexistent"])
        assert exc.value.code == 2 and "unrecognized arguments: --data" in capsys.readouterr().err
    _fails(["detect", "eval", runs / "detect", "--data-dir", tmp_path / "nope"], capsys, "is not a folder")
    with pytest.raises(CnnkitError, match="leave --data-dir out"):
        eval_config(DetectConfig(data=str(tmp_path / "ann.json")), str(tmp_path), "test", None)


@pytest.mark.parametrize("scale", ["100", "nan", "inf"])
def test_segment_test_scale_is_capped_at_4(runs, capsys, scale):
    _fails(["segment", "eval", runs / "segment", "--test-scale", "1", scale], capsys, "up to 4")


# ----------------------------------------------------------------------------- 14, 15: numbers and networks


def test_finetune_refuses_a_model_other_than_the_checkpoints(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["classify", "finetune", "--data", tmp_path, "--model", "resnet18", "--weights", runs / "classify"]
    _fails([*argv, "--out", out], capsys, "is a mnist_fast checkpoint, but --model is resnet18")
    assert not out.exists()


def test_unchecked_numbers_are_refused(runs, photo, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["classify", "train", "--data", tmp_path, "--threads", "1", "--out", out]
    _fails([*base, "--eval-batch-size", "0"], capsys, "--eval-batch-size must be a positive integer")
    _fails([*base, "--eval-batch-size", "-1"], capsys, "--eval-batch-size must be a positive integer")
    for name in ("jitter", "dice", "encoder-lr"):
        argv = ["segment", "train", "--data", tmp_path, f"--{name}", "-1", "--threads", "1", "--out", out]
        _fails(argv, capsys, f"--{name} must be a finite number >= 0")
    for command in ("detect", "instance"):
        for score in ("nan", "-1"):
            argv = [command, "predict", runs / command, photo, "--score", score, "--out-dir", out]
            _fails(argv, capsys, "--score must be a number from 0 to 1")
    assert not out.exists()


# ----------------------------------------------------------------------------- 16: wording


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_epochs_zero_and_negative_are_worded_alike(tmp_path, capsys, epochs):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"epochs: {epochs}\n")
    argv = ["classify", "train", "--data", tmp_path, "--threads", "1", "--out", tmp_path / "r"]
    _fails([*argv, "--epochs", epochs], capsys, f"--epochs must be a positive integer; received {epochs}")
    _fails([*argv, "--config", cfg], capsys, f"--epochs must be a positive integer; received {epochs}")


def test_eval_without_the_split_suggests_split_not_a_python_argument(runs, tmp_path, capsys):
    data = tmp_path / "flat"
    for k, cls in enumerate(("a", "b")):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (28, 28), 60 * k + 10 * i).save(data / cls / f"{i}.png")
    run = _retagged(
        runs / "classify",
        tmp_path / "ck",
        edit_meta=lambda m: m.update(
            {"num_classes": 2, "classes": ["a", "b"], "config": {"data": str(data)}, "dataset": {"name": str(data)}}
        ),
        edit_tensors=lambda t: t.update(
            {k: v[:2].clone() for k, v in t.items() if v.shape[:1] == (10,) and k.endswith(("weight", "bias"))}
        ),
    )
    err = _fails(["eval", run], capsys, "has no 'test' split", "--split val")
    assert "test_fraction" not in err


def test_folder_warnings_print_as_one_plain_line(capsys):
    from cnnkit.cli import plain_warnings
    from cnnkit.data.imagefolder import ImageFolderWarning

    with plain_warnings():
        warnings.warn("skipped 1 file", ImageFolderWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: skipped 1 file\n"


def test_instance_train_help_offers_coco_and_voc_but_not_yolo(capsys):
    with pytest.raises(SystemExit):
        main(["instance", "train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "pennfudan | digits | PATH of a COCO JSON file" in out and "Pascal VOC folder" in out
    assert "YOLO" not in out  # YOLO's text labels hold boxes, no masks

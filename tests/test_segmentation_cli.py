"""`cnnkit segment train|eval|predict` end to end on a small image + mask folder: a real (short) run
through the engine, its documented JSON, the prediction PNGs, and one-line errors with exit code 2."""

import json

import numpy as np
import pytest
from PIL import Image
from test_segmentation_data import make_voc

from cnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def make_folder(root, n=12, size=24):
    """n photos of a red square (class 1) on a grey background at a random place, with grey masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    g = np.random.default_rng(0)
    for i in range(n):
        image = np.full((size, size, 3), 90, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        y, x, s = *g.integers(0, size - 10, 2), int(g.integers(6, 10))
        image[y : y + s, x : x + s] = (220, 30, 30)
        mask[y : y + s, x : x + s] = 1
        Image.fromarray(image).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i:02d}.png")
    return root


def test_train_eval_predict(tmp_path, capsys):
    data, run = make_folder(tmp_path / "data"), tmp_path / "run"
    code = main(
        [
            "segment",
            "train",
            "--data",
            str(data),
            "--arch",
            "unet",
            "--model",
            "unet",
            "--width",
            "4",
            "--epochs",
            "15",
            "--batch-size",
            "4",
            "--crop",
            "24",
            "--lr",
            "0.02",
            "--threads",
            "1",
            "--out",
            str(run),
            "--quiet",
        ]
    )
    assert code == 0
    assert {"model.safetensors", "resume.safetensors", "metrics.csv", "split.json"} <= {p.name for p in run.iterdir()}
    split = json.loads((run / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [8, 2, 2]  # validation carved from the 10 training
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_pixel_acc,val_mIoU") and len(lines) == 16
    capsys.readouterr()
    assert main(["segment", "eval", str(run), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"mIoU", "pixel_accuracy", "iou", "boundary_iou"} and set(out["iou"]) == {"background", "1"}
    assert out["images"] == 2 and out["mIoU"] > 0.8, out  # the square is easy: 30 steps learn it
    assert main(["segment", "eval", str(run), "--format", "json", "--tta", "flip", "--test-scale", "1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] > 0.8  # the mirrored, enlarged square too
    photo = np.full((30, 20, 3), 90, np.uint8)  # another size than the training photos
    photo[5:14, 4:12] = (220, 30, 30)
    Image.fromarray(photo).save(tmp_path / "new.png")
    assert main(["segment", "predict", str(run), str(tmp_path / "new.png"), "--out", str(tmp_path / "pred")]) == 0
    grey = np.asarray(Image.open(tmp_path / "pred" / "new.png"))
    assert grey.shape == (30, 20) and set(np.unique(grey)) <= {0, 1}
    assert (grey[5:14, 4:12] == 1).mean() > 0.8 and (grey[20:] == 0).all()
    assert np.asarray(Image.open(tmp_path / "pred" / "new_overlay.png")).shape == (30, 20, 3)


def test_a_test_split_with_every_pixel_ignored_prints_nan_not_a_traceback(tmp_path, capsys):
    """Masks that are all "ignore" (255) in the scored split leave mIoU, pixel accuracy and boundary
    IoU undefined: the final line of train and eval print them as nan (JSON: null)."""
    data = make_folder(tmp_path / "data")
    argv = ["segment", "train", "--data", str(data), "--arch", "unet", "--model", "unet", "--width", "4"]
    argv += ["--epochs", "1", "--batch-size", "4", "--crop", "24", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    for name in json.loads((tmp_path / "run" / "split.json").read_text())["test"]:
        Image.fromarray(np.full((24, 24), 255, np.uint8)).save(data / "masks" / name)
    capsys.readouterr()
    assert main(["segment", "eval", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{data} test (2 images): mIoU nan  pixel accuracy nan  boundary IoU nan", lines
    assert main(["segment", "eval", str(tmp_path / "run"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["mIoU"], out["pixel_accuracy"], out["boundary_iou"]) == (None, None, None)
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0  # the same split: the same test photos
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert done.startswith("done: test mIoU nan, pixel accuracy nan, boundary IoU nan in "), done


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["segment", "train", "--data", "no/such/folder"],
            "--data is pennfudan, digits, a folder of images/ + masks/ (or a VOC folder) or a COCO JSON file",
        ),
        (["segment", "eval", "no/such/run"], "no checkpoint at no/such/run"),
        (["segment", "eval", "no/such/run", "--test-scale", "0"], "--test-scale takes positive numbers"),
        (["segment", "train", "--data", "{data}", "--test-scale", "1.5", "-1"], "--test-scale takes positive numbers"),
        (["segment", "train", "--data", "{data}", "--epochs", "0"], "--epochs must be an integer from 1 to 100,000"),
        (["segment", "train", "--data", "{data}", "--val-every", "-1"], "--val-every must be an integer >= 0"),
        (["segment", "train", "--data", "{data}", "--arch", "segnet"], "unknown segmentation architecture"),
        (
            ["segment", "train", "--data", "{data}", "--arch", "deeplabv3", "--model", "resnet18", "--batch-size", "1"],
            "DeepLab-v3's image pooling gives its batch norm one value per channel per image",
        ),
        (
            ["segment", "train", "--data", "{data}", *"--model unet --crop 16 --batch-size 1".split()],
            "a 16-px crop is 1x1 px at stride 16",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    data = make_folder(tmp_path / "data", n=4)
    code = main([a.format(data=data) for a in argv] + ["--out", str(tmp_path / "run")] * (argv[1] == "train"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err


def test_missing_mask_names_the_file(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=4)
    (data / "masks" / "im02.png").unlink()
    assert main(["segment", "train", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing mask file" in err and "im02.png" in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_the_summary_counts_the_frozen_stem_and_says_where_the_encoder_starts(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=6)
    args = ["segment", "train", "--data", str(data), "--model", "resnet18", "--weights", "none", "--freeze-to", "4"]
    code = main([*args, "--epochs", "1", "--batch-size", "2", "--crop", "32", "--out", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("encoder resnet18: from scratch (random weights; --weights imagenet")
    # resnet18 up to stride 4: conv1 9,408 + bn1 128 + layer1 147,968 parameters, frozen before the table is made
    assert " ".join(next(line for line in out.splitlines() if "Non-trainable params" in line).split()) == (
        "Non-trainable params 157,504"
    )


def test_a_voc_folder_trains_validates_and_tests_on_its_official_lists(tmp_path, capsys):
    """VOC's ImageSets/Segmentation: train.txt trains (with the validation part carved from it) and
    val.txt tests; the run says so, split.json records it, and eval scores the val.txt photos."""
    data, run = tmp_path / "voc", tmp_path / "run"
    ids = make_voc(data)
    argv = ["segment", "train", "--data", str(data), "--model", "unet", "--width", "4", "--epochs", "1"]
    assert main([*argv, "--batch-size", "2", "--crop", "16", "--threads", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "split: the official lists of" in out and "val.txt (4) tests" in out
    split = json.loads((run / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == [f"{s}.jpg" for s in ids[:6]] and len(split["val"]) == 1
    assert split["test"] == [f"{s}.jpg" for s in ids[6:]] and "train.txt" in split["source"]
    assert main(["segment", "eval", str(run), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4  # val.txt's photos


@pytest.mark.parametrize("typed, weights", [(["--weights", "none"], "none"), ([], "imagenet")])
def test_weights_none_trains_the_recipes_encoder_from_scratch(segment_trains, tmp_path, typed, weights):
    # Penn-Fudan's recipe starts from ImageNet's weights; `--weights none` asks for none of them
    with pytest.raises(SystemExit):
        main(["segment", "train", "--data", "pennfudan", *typed, "--out", str(tmp_path / "run")])
    assert segment_trains["cfg"].weights == weights and segment_trains["cfg"].model == "efficientnet_lite1"

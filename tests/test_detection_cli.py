"""`cnnkit detect train|eval|predict` end to end on a small digit-scene run (through the engine), the
resume that continues it exactly, and one-line errors for bad input."""

import json

import pytest

from cnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("detect") / "run"
    args = [
        "detect",
        "train",
        "--data",
        "digits",
        "--data-dir",
        str(data_dir),
        "--scenes",
        "24",
        "8",
        "--image-size",
        "64",
        "--model",
        "resnet18",
        "--width",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    return out, args


def test_train_writes_the_run(digits_run):
    out, _ = digits_run
    for name in ("model.safetensors", "resume.safetensors", "metrics.csv", "curves.png", "split.json"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 24 and len(split["test"]) == 8
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_box", "val_AP", "val_AP50"} <= set(header), header


def test_eval_json(digits_run, capsys):
    out, _ = digits_run
    assert main(["detect", "eval", str(out), "--format", "json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"AP", "AP50", "AP75", "AR100", "images"} <= set(m) and m["images"] == 8
    assert 0 <= m["AP"] <= m["AP50"] <= 1


def test_eval_of_the_validation_part_and_a_refused_test_scale(digits_run, capsys):
    out, _ = digits_run
    assert main(["detect", "eval", str(out), "--split", "val", "--format", "json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["split"] == "val" and m["images"] == 8
    assert main(["detect", "eval", str(out), "--test-scale", "1.5"]) == 2  # digit scenes are drawn at one size
    assert "--test-scale must be 1 on digit scenes" in capsys.readouterr().err


def test_predict_json_and_png(digits_run, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    out, _ = digits_run
    img = tmp_path / "scene.png"
    Image.fromarray(np.zeros((50, 90), dtype=np.uint8)).save(img)
    assert (
        main(
            [
                "detect",
                "predict",
                str(out),
                str(img),
                "--score",
                "0.0",
                "--format",
                "json",
                "--out-dir",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["image"] == str(img) and set(row) >= {"boxes", "scores", "labels"}
    assert all(0 <= b[0] <= b[2] <= 90 and 0 <= b[1] <= b[3] <= 50 for b in row["boxes"])
    assert all(name in [str(d) for d in range(10)] for name in row["labels"])
    assert Image.open(row["png"]).size == (90, 50)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["detect", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "is not pennfudan, digits, a COCO JSON file, a YOLO folder or a VOC folder" in err
    )
    assert main(["detect", "eval", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["detect", "train", "--data", "digits", "--epochs", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--epochs must be an integer from 1 to 100,000; received 0" in capsys.readouterr().err
    assert main(["detect", "train", "--data", "digits", "--val-every", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "--val-every must be an integer >= 0" in capsys.readouterr().err


def test_a_voc_folder_trains_on_its_official_lists_and_eval_scores_its_test_photos(tmp_path, capsys):
    from test_detection_data import make_voc_boxes

    data, run = tmp_path / "voc", tmp_path / "run"
    ids = make_voc_boxes(data, lists={"train": [], "val": []})
    (data / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:6]))
    (data / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[6:]))
    argv = ["detect", "train", "--data", str(data), "--model", "tiny", "--weights", "none", "--epochs", "1"]
    assert main([*argv, "--batch-size", "2", "--image-size", "64", "--out", str(run)]) == 0
    assert "split: the official lists of" in capsys.readouterr().out
    split = json.loads((run / "split.json").read_text())
    assert split["test"] == [f"{s}.jpg" for s in ids[6:]] and "val.txt (2) tests" in split["source"]
    assert main(["detect", "eval", str(run), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2


def test_a_batch_larger_than_the_training_photos_says_the_batch_that_fits(tmp_path, capsys):
    """Eight photos of one's own: 6 train and 2 test, then one of the 6 validates; a batch of 8 is refused
    saying which batch sizes fit, before the run folder is written."""
    from test_detection_data import make_voc_boxes

    make_voc_boxes(tmp_path / "voc")
    argv = ["detect", "train", "--data", str(tmp_path / "voc"), "--model", "tiny", "--weights", "none"]
    assert main([*argv, "--batch-size", "8", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("use --batch-size 5 or less") and "(5 images)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["voc", "yolo", "coco"])
def test_eval_reads_only_the_photos_it_scores_and_takes_the_classes_from_the_run(tmp_path, capsys, kind):
    """`detect eval` of a run on a VOC folder, a YOLO folder or a COCO file decodes the photos of the part
    it scores alone, their labels indexing the run's classes: with every training and validation photo
    gone (their annotations left, and in a VOC or YOLO folder a class only they hold), the test split
    scores as before; the photos it scores must be there."""
    from test_detection_data import make_voc_boxes, make_yolo, voc_xml
    from test_instance_data import make_coco

    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data

    if kind == "voc":
        data = tmp_path / "voc"
        make_voc_boxes(data)
        folder = data / "JPEGImages"
    elif kind == "yolo":
        data = make_yolo(tmp_path / "yolo")
        folder = data / "images"
    else:
        data = make_coco(tmp_path / "coco", n_images=8)
        folder = data.parent / "images"
    drawn = load_split_data(DetectConfig(data=str(data), model="tiny", weights="none").resolved())[3]
    for name in drawn["train"]:  # a class only training photos hold
        stem = name.rsplit(".", 1)[0]
        if kind == "voc":
            objects = [("dog", (5, 3, 14, 22), False), ("bird", (20, 10, 40, 30), False)]
            (data / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem, objects))
        elif kind == "yolo":
            (data / "labels" / f"{stem}.txt").write_text("2 0.5 0.5 0.4 0.4\n")
    out = tmp_path / "run"
    argv = ["detect", "train", "--data", str(data), "--model", "tiny", "--weights", "none", "--epochs", "1"]
    assert main([*argv, "--batch-size", "2", "--image-size", "64", "--threads", "1", "--out", str(out), "--quiet"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert {k: split[k] for k in ("train", "val", "test")} == {k: drawn[k] for k in ("train", "val", "test")}
    assert main(["detect", "eval", str(out), "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert list(before["per_class_AP"]) == {"voc": ["bird", "cat", "dog"], "yolo": ["0", "1", "2"]}.get(
        kind, ["red", "green"]
    )
    for name in split["train"] + split["val"]:
        (folder / name).unlink()
    assert main(["detect", "eval", str(out), "--format", "json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after == before and after["images"] == len(split["test"]) == 2
    assert main(["detect", "eval", str(out), "--split", "val"]) == 2  # the photos it scores must be there
    err = capsys.readouterr().err.strip()
    assert split["val"][0] in err and "\n" not in err


def strict_json(text: str):
    """``text`` parsed as JSON proper: the tokens NaN and Infinity, which Python's json writes and reads
    but JavaScript's JSON.parse refuses, fail the test."""

    def refuse(token):
        raise AssertionError(f"{token} is not JSON: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def test_voc_ap50_of_photos_without_ground_truth_is_null_in_json(tmp_path, capsys):
    """A VOC folder whose validation and test photos hold no object: VOC AP50 is not defined there (the
    mean over classes of nothing, NaN). `detect eval --format json` says null, as strict JSON; the table
    says nan; the model file's history holds the validation's null, and its metrics.csv nan."""
    from safetensors import safe_open
    from test_detection_data import make_voc_boxes, voc_xml

    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data

    data, out = tmp_path / "voc", tmp_path / "run"
    make_voc_boxes(data)
    drawn = load_split_data(DetectConfig(data=str(data), model="tiny", weights="none").resolved())[3]
    for name in drawn["val"] + drawn["test"]:
        stem = name.rsplit(".", 1)[0]
        (data / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem, []))
    argv = ["detect", "train", "--data", str(data), "--model", "tiny", "--weights", "none", "--epochs", "1"]
    assert main([*argv, "--batch-size", "2", "--image-size", "64", "--threads", "1", "--out", str(out), "--quiet"]) == 0
    assert main(["detect", "eval", str(out), "--format", "json"]) == 0
    m = strict_json(capsys.readouterr().out)
    assert m["VOC_AP50"] is None and m["images"] == len(drawn["test"]) == 2
    assert (m["AP"], m["AP50"], m["per_class_AP"]) == (-1.0, -1.0, {"cat": -1.0, "dog": -1.0})  # COCO's undefined
    assert main(["detect", "eval", str(out)]) == 0
    assert "VOC AP50 nan" in capsys.readouterr().out
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        info = strict_json(f.metadata()["cnnkit"])
    assert [row["val_VOC_AP50"] for row in info["history"]] == [None]
    assert (out / "metrics.csv").read_text().splitlines()[1].split(",")[-3] == "nan"


def test_eval_and_resume_of_a_yolo_run_refuse_a_class_list_that_is_not_the_runs(tmp_path, capsys):
    """A YOLO label's id means the class at that place of the run's list: `detect eval` and `--resume`
    refuse, in one line naming the first id that differs and the fix, a classes.txt renamed, reordered,
    added to or cut since the run trained (the run's files untouched); the run's list scores as before,
    and so does a folder that declares no names (ids alone)."""
    from test_detection_data import make_yolo

    from cnnkit.engine.runfolder import read_info

    data, out = make_yolo(tmp_path / "yolo"), tmp_path / "run"
    (data / "classes.txt").write_text("cat\ndog\n")
    argv = ["detect", "train", "--data", str(data), "--model", "tiny", "--weights", "none", "--epochs", "1"]
    argv += ["--batch-size", "2", "--image-size", "64", "--threads", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert main(["detect", "eval", str(out), "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert list(before["per_class_AP"]) == ["cat", "dog"]
    model = (out / "model.safetensors").read_bytes()
    for names, differs in [
        ("dog\ncat\n", "id 0 is 'dog' here, 'cat' in the run"),
        ("kitty\ndog\n", "id 0 is 'kitty' here, 'cat' in the run"),
        ("cat\ndog\nbird\n", "id 2 is 'bird' here, no class in the run"),
        ("cat\n", "id 1 is no class here, 'dog' in the run"),
    ]:
        (data / "classes.txt").write_text(names)
        for command in (["detect", "eval", str(out)], [*argv, "--resume"]):
            assert main(command) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and f"{data / 'classes.txt'}: the classes " in err and differs in err, err
            assert "the run's ['cat', 'dog']" in err and "put the run's names back in classes.txt in that order" in err
    assert (out / "model.safetensors").read_bytes() == model and read_info(out / "model.safetensors")["classes"] == [
        "cat",
        "dog",
    ]
    (data / "classes.txt").write_text("cat\ndog\n")
    assert main(["detect", "eval", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == before
    (data / "classes.txt").unlink()  # no names declared: the ids index the run's classes
    assert main(["detect", "eval", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == before

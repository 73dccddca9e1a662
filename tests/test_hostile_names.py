"""Audit of names: class and file names with spaces, commas, quotes, newlines, tabs, rich markup,
unicode and dollar signs travel from the user's data to the run, its printed lines, tables, figures,
its export and the workbench as themselves, and a printed line reads back."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.console import shown
from cnnkit.data.detection import load_coco, load_yolo
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")

# a class folder's name as the user's data has it, each a case that once printed as something else
ODD = ["[red]", "[bold]b", ":bee:", "new\nline", "tab\tx", "a: b", "c,d", '"q"', "$\\foo$", "猫 🐝", "x" * 120]


def _photos(root, classes, n=3):
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 20 * k + 5 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A one-epoch run on a folder of the odd class names."""
    root = tmp_path_factory.mktemp("names")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNKIT_HOME", str(root / "home"))
    data, out = _photos(root / "data", ODD), root / "run"
    argv = ["train", "--data", str(data), "--model", "mnist_fast", "--image-size", "28", "28"]
    assert main([*argv, "--epochs", "1", "--batch-size", "4", "--out", str(out), "--quiet"]) == 0
    yield out, data
    mp.undo()


def _read_back(field: str) -> str:
    """A name of a printed line as a program reads it: JSON where it is quoted, else as it stands."""
    return json.loads(field) if field.startswith('"') else field


def test_shown_reads_back_and_leaves_plain_names_alone():
    for name in [*ODD, "a b", "café", "-dash", "01", "1.0", "", " x", "x  y", "\u200f", "a\udcffb"]:
        text = shown(name)
        assert "\n" not in text and "\t" not in text and text.isprintable(), (name, text)
        assert _read_back(text) == name
    for plain in ("a b", "c,d", "café", "猫 🐝", "-dash", "1.0", "it's", "[red]"):
        assert shown(plain) == plain


def test_eval_table_prints_every_class_name_on_one_row(odd_run, capsys):
    run, _ = odd_run
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    want = [shown(c) for c in sorted(ODD)]
    # the long name is one cell; every other row is its name, markup and emoji codes included, once
    assert [r for r in rows if not r.startswith("xxx")] == [w for w in want if not w.startswith("xxx")]
    assert len(rows) == len(ODD)
    assert (run / "confusion_val.png").stat().st_size > 0  # "$\foo$" is drawn as text, not as TeX


def test_predict_lines_and_json_read_back(odd_run, tmp_path, capsys):
    run, data = odd_run
    photo = tmp_path / "x: y\nz.png"
    photo.write_bytes((data / "c,d" / "0.png").read_bytes())
    capsys.readouterr()
    assert main(["predict", str(run), str(photo), "--top", str(len(ODD))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    # IMAGE: NAME P%  NAME P%  ...: a quoted field holds no ": " or "  " of its own that splits it
    image, rest = re.match(r'^("(?:[^"\\]|\\.)*"|[^"].*?): (.*)$', lines[0]).groups()
    assert _read_back(image) == str(photo)
    fields = re.findall(r'("(?:[^"\\]|\\.)*"|\S(?:.*?\S)?) (\d+\.\d)%(?:  |$)', rest)
    assert sorted(_read_back(name) for name, _ in fields) == sorted(ODD)
    assert main(["predict", str(run), str(photo), "--top", "3", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["image"] == str(photo) and {name for name, _ in row["top"]} <= set(ODD)


def test_load_export_and_workbench_give_back_the_names(odd_run, tmp_path):
    run, data = odd_run
    assert cnnkit.load(run).classes == sorted(ODD)
    from cnnkit.serve import predict as serve
    from cnnkit.serve.limits import Limits
    from cnnkit.serve.runs import Runs

    runs = Runs(run.parent)
    (item,) = [i for i in runs.listing() if i["name"] == run.name]
    assert item["classes"] == sorted(ODD)
    reply = serve.predict(
        serve.Models(runs), {"file": (data / "c,d" / "0.png").read_bytes(), "model": run.name}, Limits()
    )
    assert {t["name"] for t in reply["top"]} <= set(ODD) and len(reply["top"]) == 5


def test_class_folders_one_name_in_two_unicode_forms_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = _photos(tmp_path / "data", ["caf\u00e9", "cafe\u0301", "Cafe"])
    capsys.readouterr()
    argv = ["train", "--data", str(data), "--model", "mnist_fast", "--epochs", "1", "--batch-size", "2"]
    argv += ["--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'cafe\\u0301' and 'caf\\xe9' are one name written in two Unicode forms" in err
    assert not (tmp_path / "r").exists()
    # names that differ by case are two classes (a letter's cases may be two classes)
    from cnnkit.data.imagefolder import ImageFolderWarning, load_image_folder

    ok = _photos(tmp_path / "cases", ["A", "a"])
    with pytest.warns(ImageFolderWarning, match="fewer than 100 images"):
        assert load_image_folder(ok, image_size=(8, 8), val_fraction=0.0, cache=False).classes == ["A", "a"]


def _yolo(root, names_file: str, text: str):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / names_file).write_text(text)
    return root


def test_a_blank_or_empty_declared_class_name_is_refused_not_skipped(tmp_path):
    # line 2 is class 1: skipping the blank line would give the label's id 1 the name "dog"
    with pytest.raises(CnnkitError, match=r"classes.txt: line 2 is blank, so class 1 has no name"):
        load_yolo(_yolo(tmp_path / "txt", "classes.txt", "cat\n\ndog\n"))
    with pytest.raises(CnnkitError, match=r"data.yaml: names\[1\] is empty, so class 1 has no name"):
        load_yolo(_yolo(tmp_path / "yaml", "data.yaml", "names: [cat, '', dog]\n"))
    d = load_yolo(_yolo(tmp_path / "tail", "classes.txt", "cat\r\ndog\r\n\r\n\n"))  # blank lines at the end: none
    assert d.classes == ["cat", "dog"] and d.labels[0].tolist() == [1]
    d = load_yolo(_yolo(tmp_path / "bom", "classes.txt", "\ufeffcat\ndog\n"))  # as Notepad saves UTF-8
    assert d.classes == ["cat", "dog"]
    (tmp_path / "coco").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "coco" / "a.png")
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 3, 2]}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": " "}],
    }
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(CnnkitError, match=r"categories\[1\] field 'name' must be a name; received ' '"):
        load_coco(tmp_path / "coco" / "ann.json")


def test_a_figure_draws_dollar_signs_and_long_names_as_text(tmp_path):
    from cnnkit.plots import MAX_LABEL, confusion_matrix, save_figure

    fig = confusion_matrix(torch.eye(3, dtype=torch.long), ["$\\foo$", "new\nline", "y" * 300])
    save_figure(fig, tmp_path / "cm.png")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["$\\foo$", '"new\\nline"', "y" * (MAX_LABEL - 3) + "..."]
    assert Image.open(tmp_path / "cm.png").size[0] > 0


def test_detect_predict_lines_read_back(tmp_path, capsys):
    from cnnkit.engine.runfolder import FORMAT, save_model
    from cnnkit.tasks.detect.load import new_detector
    from cnnkit.tasks.detect.task import DetectTask

    classes = ["new\nline", "a: b"]
    torch.manual_seed(0)
    det, info = new_detector("mobilenet_v3_small", classes, 3, 64, width=16)
    task = DetectTask(classes, info=info)
    save_model(tmp_path / "run" / "model.safetensors", task.deployable(det), {"format": FORMAT, **task.describe(det)})
    photo = tmp_path / "x\ny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(photo)
    capsys.readouterr()
    argv = ["detect", "predict", str(tmp_path / "run"), str(photo), "--score", "0", "--out-dir", str(tmp_path / "p")]
    assert main(argv) == 0
    head, *boxes = capsys.readouterr().out.splitlines()
    image, count = re.match(r'^(".*"): (\d+) boxes -> ', head).groups()
    assert _read_back(image) == str(photo) and int(count) == len(boxes) > 0
    names = {_read_back(re.match(r'^  (".*") \d\.\d\d \[', line).group(1)) for line in boxes}
    assert names <= set(classes) and names

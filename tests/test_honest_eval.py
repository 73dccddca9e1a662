"""Honest numbers: `segment eval` scores what `segment predict` writes, at each photo's own size, and
per-epoch validation runs on a part carved from the training photos, never on the test split."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.cli import main
from cnnkit.data.pennfudan import carve_validation, split_names
from cnnkit.metrics.segmentation import SegmentationMeter

pytestmark = pytest.mark.usefixtures("one_thread")


def photos(root, n=14):
    """n photos of several sizes (all longer than the run's max_side) with a red square of class 1."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    g = np.random.default_rng(1)
    for i in range(n):
        h, w = int(g.integers(26, 40)), int(g.integers(26, 40))
        image = np.full((h, w, 3), 90, np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x, s = int(g.integers(0, h - 12)), int(g.integers(0, w - 12)), int(g.integers(7, 12))
        image[y : y + s, x : x + s] = (220, 30, 30)
        mask[y : y + s, x : x + s] = 1
        Image.fromarray(image).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i:02d}.png")
    return root


@pytest.mark.parametrize(
    "kind, crop, interpolation",
    [("config", 1.0, "bilinear"), ("finetune", 0.875, "bicubic")],
    ids=["train", "finetune"],
)
def test_predict_reads_a_folder_runs_photos_as_training_and_eval_do(tmp_path, kind, crop, interpolation, wide_photos):
    """`cnnkit predict` on a run trained on an image folder answers what `cnnkit eval` scores: each
    photo's shorter side resized, the centre cropped by the run's share, with its interpolation."""
    from cnnkit.data.imagefolder import load_image_folder
    from cnnkit.models import create_model
    from cnnkit.models.deploy import Classifier
    from cnnkit.tasks.classify.predict import predict_files

    data = wide_photos(tmp_path / "photos", 3)
    torch.manual_seed(0)
    model = Classifier(
        create_model("mnist_fast", num_classes=2, in_channels=3), [0.5] * 3, [0.25] * 3, ["a", "b"], (3, 24, 24)
    )
    model.eval().info = {
        "dataset": {"name": str(data)},
        kind: {"data": str(data)}
        if kind == "config"
        else {"data": str(data), "crop_fraction": crop, "interpolation": interpolation},
    }
    read = load_image_folder(
        data, "train", (24, 24), val_fraction=0.0, crop_fraction=crop, interpolation=interpolation, cache=False
    )
    with torch.no_grad():
        want = model(read.images.float() / 255).softmax(1)
    rows = predict_files(model, [str(data / p) for p in read.meta["files"]], top=2)
    got = torch.tensor([[dict(r["top"])[c] for c in ("a", "b")] for r in rows])
    assert torch.allclose(got, want, atol=1e-6)


def recipe_test_time() -> str:
    """The Penn-Fudan recipe's test-time procedure as flags: flip TTA and its test scales."""
    from cnnkit.tasks.segment.config import DATA_DEFAULTS

    recipe = DATA_DEFAULTS["pennfudan"]
    return f"--tta {recipe['tta']} --test-scale {' '.join(map(str, recipe['test_scale']))}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short run on photos longer than its max_side, answering by the Penn-Fudan recipe's test-time
    procedure (flipped and rescaled views averaged); trained long enough to draw the square (after 3
    epochs it calls every pixel class 1, a map no procedure changes)."""
    tmp = tmp_path_factory.mktemp("honest")
    data, out = photos(tmp / "data"), tmp / "run"
    argv = "--arch unet --model unet --width 4 --epochs 15 --batch-size 4 --crop 16 --max-side 20 --lr 0.02 "
    argv += recipe_test_time()
    assert (
        main(["segment", "train", "--data", str(data), *argv.split(), "--threads", "1", "--out", str(out), "--quiet"])
        == 0
    )
    return data, out


def test_split_has_train_val_test_and_validation_never_sees_test(run):
    data, out = run
    split = json.loads((out / "split.json").read_text())
    assert list(split) == ["train", "val", "test"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (9, 2, 3)  # 11 train -> 9 + 2
    assert not (set(split["train"]) & set(split["val"]) or set(split["val"]) & set(split["test"]))
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == {f"im{i:02d}.png" for i in range(14)}
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "val_mIoU" in header


def test_eval_equals_scoring_predicts_files_at_own_size(run, tmp_path, capsys):
    from cnnkit.data.images import read_pixels
    from cnnkit.tasks.segment.config import DATA_DEFAULTS
    from cnnkit.tasks.segment.load import load_segmenter
    from cnnkit.tasks.segment.predict import predict_image

    data, out = run
    model = load_segmenter(out)  # the recipe's test-time procedure is what both commands run
    recipe = DATA_DEFAULTS["pennfudan"]
    assert (model.tta, model.test_scale) == (recipe["tta"], tuple(recipe["test_scale"])) != ("", (1.0,))
    split = json.loads((out / "split.json").read_text())
    tests = [data / "images" / n for n in split["test"]]
    assert main(["segment", "predict", str(out), *map(str, tests), "--out", str(tmp_path / "pred")]) == 0
    meter = SegmentationMeter(2, 255, 3, ["background", "1"])
    changed = 0  # pixels the test-time procedure decides: the comparison below can tell the procedures apart
    for path in tests:
        pred = torch.from_numpy(np.array(Image.open(tmp_path / "pred" / path.name))).long()
        truth = torch.from_numpy(np.array(Image.open(data / "masks" / path.name))).long()
        assert pred.shape == truth.shape and max(truth.shape) > 20  # the photo's own size, not max_side
        assert set(pred.unique().tolist()) == {0, 1}  # the square drawn, not one class everywhere
        with model.without_tta():
            changed += int((predict_image(model, read_pixels(path), 20) != pred).sum())
        meter.update(pred, truth)
    assert changed > 0
    mine = meter.compute()
    capsys.readouterr()
    assert main(["segment", "eval", str(out), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == 3
    assert got["mIoU"] == pytest.approx(mine["mIoU"], abs=1e-12)
    assert got["pixel_accuracy"] == pytest.approx(mine["pixel_accuracy"], abs=1e-12)


def test_eval_and_resume_keep_the_runs_own_photos_when_the_folder_grows(tmp_path, capsys):
    """Photos added to the folder after training: `segment eval` (and benchmarks/segment_errors.py) still
    score the run's own test photos (its split.json), and a resumed run loads the same three parts."""
    import importlib.util
    import re
    import shutil
    from pathlib import Path

    from cnnkit.engine.runfolder import read_split
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    data, out = photos(tmp_path / "data"), tmp_path / "run"
    argv = "--arch unet --model unet --width 4 --epochs 1 --batch-size 4 --crop 16 --max-side 20"
    assert (
        main(["segment", "train", "--data", str(data), *argv.split(), "--threads", "1", "--out", str(out), "--quiet"])
        == 0
    )
    split = read_split(out)
    capsys.readouterr()
    assert main(["segment", "eval", str(out), "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    more = photos(tmp_path / "more", n=20)
    for i in range(14, 20):  # six photos the run never saw
        for sub in ("images", "masks"):
            shutil.copy(more / sub / f"im{i:02d}.png", data / sub)
    fresh = load_splits(SegmentConfig(data=str(data)).resolved())[3]
    assert fresh["test"] != split["test"]  # a new split of the grown folder would score other photos
    assert main(["segment", "eval", str(out), "--format", "json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["images"] == len(split["test"]) == 3 and after["mIoU"] == before["mIoU"]
    # benchmarks/segment_errors.py counts the same photos and gives eval's person IoU
    spec = importlib.util.spec_from_file_location(
        "segment_errors", Path(__file__).parents[1] / "benchmarks" / "segment_errors.py"
    )
    errors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(errors)
    assert errors.main([str(out), "--data-dir", str(data), "--split", "test", "--worst", "1"]) == 0
    text = capsys.readouterr().out
    assert "test split, 3 photos" in text
    assert float(re.search(r"foreground IoU ([0-9.]+)", text).group(1)) == pytest.approx(after["iou"]["1"], abs=5e-5)
    cfg = SegmentConfig(data=str(data), max_side=20).resolved()
    parts = load_splits(cfg, split=split)
    assert [s.names for s in parts[:3]] == [split["train"], split["val"], split["test"]] and parts[3] == split

    (data / "images" / split["test"][0]).unlink()
    assert main(["segment", "eval", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert split["test"][0] in err and "split.json" in err and "\n" not in err


def test_eval_reads_only_the_photos_it_scores_and_takes_the_classes_from_the_run(tmp_path, capsys):
    """`segment eval` of a mask-folder run decodes the scored part's photos alone and counts the run's
    classes, not the folder's: with every training and validation photo gone (class 2 was drawn in
    training masks only), the test split scores as before, class 2 listed."""
    from cnnkit.engine.runfolder import read_split
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    data, out = photos(tmp_path / "data"), tmp_path / "run"
    drawn = load_splits(SegmentConfig(data=str(data), model="unet").resolved(), parts=())[3]
    for name in drawn["train"][:2]:  # a class only training photos hold
        mask = np.array(Image.open(data / "masks" / name))
        mask[:3, :3] = 2
        Image.fromarray(mask).save(data / "masks" / name)
    argv = "--arch unet --model unet --width 4 --epochs 1 --batch-size 4 --crop 16 --max-side 20"
    assert (
        main(["segment", "train", "--data", str(data), *argv.split(), "--threads", "1", "--out", str(out), "--quiet"])
        == 0
    )
    split = read_split(out)
    assert split == {k: drawn[k] for k in ("train", "val", "test")}
    capsys.readouterr()
    assert main(["segment", "eval", str(out), "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert list(before["iou"]) == ["background", "1", "2"]
    for name in split["train"] + split["val"]:
        (data / "images" / name).unlink()
        (data / "masks" / name).unlink()
    assert main(["segment", "eval", str(out), "--format", "json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after == before and after["images"] == len(split["test"]) == 3
    assert main(["segment", "eval", str(out), "--split", "val"]) == 2  # the photos it scores must be there
    assert split["val"][0] in capsys.readouterr().err
    bad = np.array(Image.open(data / "masks" / split["test"][0]))
    bad[0, 0] = 3  # a label the run has no class for
    Image.fromarray(bad).save(data / "masks" / split["test"][0])
    assert main(["segment", "eval", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{split['test'][0]} holds label 3, outside the 3 classes" in err and "\n" not in err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not readable JSON"),
        ('["a.png"]', "not a run's split"),
        ('{"train": ["a.png"]}', "not a run's split"),
        ('{"train": ["a.png"], "test": [1]}', "not a run's split"),
        ('{"train": ["a.png"], "val": "b.png", "test": ["c.png"]}', "not a run's split"),
        ('{"train": ["a.png", "b.png"], "val": [], "test": ["b.png"]}', "'b.png' in both train and test"),
        ('{"train": ["a.png"], "test": ["../../etc/b.png"]}', "not an image inside the data folder"),
        ('{"train": ["/tmp/a.png"], "test": ["b.png"]}', "not an image inside the data folder"),
    ],
)
def test_a_damaged_split_json_is_refused_in_one_line(tmp_path, text, says):
    from cnnkit.engine.runfolder import read_split
    from cnnkit.errors import CnnkitError

    assert read_split(tmp_path) is None  # no split.json: the caller splits the data itself
    (tmp_path / "split.json").write_text(text)
    with pytest.raises(CnnkitError, match=says) as err:
        read_split(tmp_path / "model.safetensors")  # a run's file names its folder
    assert "\n" not in str(err.value) and "split.json" in str(err.value)


def test_a_damaged_split_json_stops_segment_eval(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run[1], copy)
    (copy / "split.json").write_text('{"train": [], "test": 5}')
    assert main(["segment", "eval", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert "split.json is not a run's split" in err and "\n" not in err


def test_interrupted_finetune_resumes_on_its_own_split_when_the_folder_grows(tmp_path, monkeypatch, capsys):
    """A fine-tuning run writes split.json with its first epoch's files: cut there (Ctrl-C), it is
    resumed (and evaluated) on the images it started with, though images were added to the folder."""
    from cnnkit.data.imagefolder import load_image_folder
    from cnnkit.engine import loop

    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "flat"
    add = _noise_photos(data, 20)
    fractions = dict(val_fraction=0.15, test_fraction=0.2, seed=0, cache=False)
    started = {s: load_image_folder(data, s, (16, 16), **fractions).meta["files"] for s in ("train", "val", "test")}
    save = loop._save_run

    def save_then_stop(out, *args):
        save(out, *args)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's files

    run = tmp_path / "run"
    argv = ["--model", "resnet18", "--image-size", "16", "--stages", "all", "--epochs", "2", "--test-fraction", "0.2"]
    monkeypatch.setattr(loop, "_save_run", save_then_stop)
    assert main(["classify", "finetune", "--data", str(data), *argv, "--out", str(run), "--quiet"]) == 130
    monkeypatch.setattr(loop, "_save_run", save)
    for i in range(20, 26):  # images added before the run is resumed: a fresh seeded split differs
        for c in ("a", "b"):
            add(i, c)
    assert main(["classify", "finetune", "--resume", "--out", str(run), "--quiet"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert {s: split[s] for s in started} == started
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(started["test"]) == 8


def test_carve_validation_is_seeded_and_keeps_a_given_val():
    split = split_names([f"{i}.png" for i in range(30)], 24)
    a, b = carve_validation(split), carve_validation(split)
    assert a == b and len(a["val"]) == 4 and len(a["train"]) == 20 and a["test"] == split["test"]
    assert sorted(a["train"] + a["val"]) == split["train"]
    assert carve_validation(a) == a  # a run's split.json with val is kept as it is


def test_busy_cores_reads_the_cores_busy_now(monkeypatch):
    """Two /proc/stat readings a quarter-second apart: the busy share of the ticks times the cores;
    without /proc/stat, the load average."""
    import builtins
    import io
    import os

    from cnnkit.engine.config import busy_cores

    lines = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 150 1000 0 0 0 0 0 0\n"])
    real_open = builtins.open
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(
        builtins, "open", lambda p, *a, **k: io.StringIO(next(lines)) if p == "/proc/stat" else real_open(p, *a, **k)
    )
    assert busy_cores(0.0) == pytest.approx(2 * 200 / 400)  # 200 busy ticks of 400: one core
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 0.0, 0.0))
    assert busy_cores(0.0) == 1.7


def test_busy_cores_counts_only_the_cores_this_process_may_use(monkeypatch):
    """A container pinned to cores 0 and 1 of a host whose cores 2-7 are busy: its cores are free."""
    import builtins
    import io
    import os

    from cnnkit.engine.config import busy_cores, free_cores

    def stat(t: int, own: int) -> str:  # cores 0 and 1 busy `own` ticks of 100 a second, 2-7 all of them
        busy = [own * t] * 2 + [100 * t] * 6
        lines = [f"cpu  {sum(busy)} 0 0 {800 * t - sum(busy)} 0 0 0 0 0 0\n"]
        return "".join(lines + [f"cpu{i} {b} 0 0 {100 * t - b} 0 0 0 0 0 0\n" for i, b in enumerate(busy)])

    real_open = builtins.open
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for own, busy, free in ((0, 0.0, 2), (50, 1.0, 1)):
        lines = iter([stat(1, own), stat(2, own)])
        monkeypatch.setattr(
            builtins,
            "open",
            lambda p, *a, **k: io.StringIO(next(lines)) if p == "/proc/stat" else real_open(p, *a, **k),
        )
        assert busy_cores(0.0) == pytest.approx(busy)
        lines = iter([stat(1, own), stat(2, own)])
        assert free_cores() == free


def test_run_metadata_says_the_threads_it_used(run):
    from cnnkit.tasks.segment.load import load_segmenter

    assert load_segmenter(run[1]).info["threads"] == 1  # --threads 1 wins


@pytest.mark.parametrize(
    ("cores", "load", "world", "expected"),
    [(2, 0.05, None, 2), (2, 1.2, None, 1), (2, 9.0, None, 1), (16, 3.4, None, 13), (16, 0.0, 4, 4), (8, 0.6, 1, 7)],
)
def test_free_cores_is_the_affinity_less_the_busy_cores(monkeypatch, cores, load, world, expected):
    import os

    from cnnkit.engine import config
    from cnnkit.engine.config import free_cores, use_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(config, "busy_cores", lambda: load)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert free_cores(world) == 3  # a fixed OMP_NUM_THREADS wins over the load
    for unusable in ("²", "0", "x"):  # "²" is a digit to str.isdigit(), not to int()
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert free_cores(world) == expected
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert free_cores(world) == expected
    before = torch.get_num_threads()
    try:
        assert use_threads(3) == 3 and torch.get_num_threads() == 3  # --threads wins
        assert use_threads(0) == free_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_moving_an_instance_set_keeps_its_masks():
    from cnnkit.tasks.detect.data import _to
    from cnnkit.tasks.instance.data import InstanceSet, from_instances

    inst = torch.zeros(1, 20, 30, dtype=torch.uint8)
    inst[0, 4:10, 5:15] = 1
    s = from_instances(torch.zeros(1, 3, 20, 30, dtype=torch.uint8), inst, None, ["person"], 32)
    moved = _to(s, "cpu")
    assert isinstance(moved, InstanceSet) and torch.equal(moved.masks, s.masks) and moved.originals is s.originals


def test_finetune_run_on_a_relative_folder_is_evaluated_from_any_folder(tmp_path, monkeypatch, capsys):
    """A fine-tuning run records its image folder as an absolute path: `cnnkit eval` run from another
    folder scores the run's own images, never a folder of the same name there."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    g = np.random.default_rng(0)
    for where in ("first", "second"):  # two folders named "photos" whose images differ
        for c in ("a", "b"):
            (tmp_path / where / "photos" / c).mkdir(parents=True)
            for i in range(10):
                image = g.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / where / "photos" / c / f"{c}{i:02d}.png")
    monkeypatch.chdir(tmp_path / "first")
    argv = ["--model", "resnet18", "--image-size", "16", "--stages", "all", "--epochs", "1", "--test-fraction", "0.2"]
    assert main(["classify", "finetune", "--data", "photos", *argv, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--split", "test", "--format", "json"]) == 0
    here = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(tmp_path / "second")
    assert main(["eval", str(tmp_path / "run"), "--split", "test", "--format", "json"]) == 0
    there = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(tmp_path / "run"), "--split", "test", "--format", "json"]) == 0
    elsewhere = json.loads(capsys.readouterr().out)
    assert here["n"] == 4 and there == here and elsewhere == here


def _noise_photos(data, n: int = 0):
    """``n`` 20x20 noise photos in each of ``data/a`` and ``data/b`` (``c{i}.png``, one seeded stream),
    and ``add(i, c)``, which writes one more."""
    g = np.random.default_rng(0)

    def add(i, c):
        (data / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / c / f"{c}{i:02d}.png")

    for i in range(n):
        for c in ("a", "b"):
            add(i, c)
    return add


def test_finetune_eval_scores_the_runs_own_test_images_when_the_folder_grows(tmp_path, monkeypatch, capsys):
    """A fine-tuning run's `cnnkit eval --split test` reads its split.json: images added to a class
    folder after training are not scored, and a training image never becomes a test one."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "flat"
    add = _noise_photos(data, 20)
    run = tmp_path / "run"
    argv = ["--model", "resnet18", "--image-size", "16", "--stages", "all", "--epochs", "1"]
    assert main(["classify", "finetune", "--data", str(data), *argv, "--test-fraction", "0.2", "--out", str(run)]) == 0
    split = json.loads((run / "split.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test", "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    for i in range(20, 32):  # twelve images the run never saw
        for c in ("a", "b"):
            add(i, c)
    assert main(["eval", str(run), "--split", "test", "--format", "json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert len(split["test"]) == 8 and after == before
    (data / split["test"][0]).unlink()
    assert main(["eval", str(run), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert split["test"][0] in err and "split.json" in err and "\n" not in err


def test_train_on_a_folder_records_its_split_and_ensemble_members_share_it(tmp_path, monkeypatch, capsys):
    """`cnnkit train` on an image folder writes split.json (an ensemble's members all train on the
    split of the run's seed, so none trains on the ensemble's validation images), and `cnnkit eval
    --split val` scores those images however the folder grows."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "flat"
    add = _noise_photos(data, 20)
    run = tmp_path / "ens"
    argv = ["--model", "mnist_fast", "--image-size", "28", "28", "--epochs", "1", "--batch-size", "8", "--quiet"]
    assert main(["train", "--data", str(data), *argv, "--threads", "1", "--ensemble", "2", "--out", str(run)]) == 0
    member0, member1, whole = (
        json.loads((p / "split.json").read_text()) for p in (run / "member0", run / "member1", run)
    )
    assert member0 == member1 == whole
    assert len(whole["val"]) == 8 and len(whole["train"]) == 32 and not set(whole["val"]) & set(whole["train"])
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    for i in range(20, 26):  # images the run never saw: the seeded split of 26 per class differs
        for c in ("a", "b"):
            add(i, c)
    assert main(["eval", str(run), "--split", "val", "--format", "json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert before["n"] == 8 and after == before


def test_a_containers_cpu_quota_bounds_the_default_threads(tmp_path, monkeypatch):
    """`docker --cpus 1.5` on a bigger machine: cgroup v2 cpu.max "150000 100000" grants 2 cores
    (rounded up), v1's cfs quota the same; "max" or -1 is no quota; the default threads stay within it."""
    import cnnkit.engine.config as config

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert config.quota_cores(str(v2)) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert config.quota_cores(str(v2)) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert config.quota_cores(str(tmp_path / "v1")) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert config.quota_cores(str(tmp_path / "v1")) is None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(config, "busy_cores", lambda interval=0.25: 0.0)
    monkeypatch.setattr(config, "quota_cores", lambda root=config.CGROUP_ROOT: 2)
    assert config.free_cores(1) == 2

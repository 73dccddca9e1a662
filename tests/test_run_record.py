"""What a run folder records of its run, and what ``--resume`` and ``eval`` read it by: the classes of
a run stopped before its first model file (its resume state records them), the digests of a sequence
run's series files, and a config that lists only the settings the task uses, with one convention for
``threads`` (unset is null; the model records the number used)."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save

import cnnkit.engine.loop as loop
from cnnkit.cli import main
from cnnkit.engine.runfolder import MODEL_FILE, RESUME_FILE, atomic_write_bytes, read_info

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """The process dies here (SIGKILL): no handler of the engine runs."""


def _killed_before_the_first_model_file(monkeypatch, argv) -> None:
    """``main(argv)`` killed after its first resume state, before its first model file."""

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(loop, "_save_model", killed)
        with pytest.raises(Killed):
            main(argv)


def _photos(root, classes, count: int = 6, side: int = 32) -> None:
    """``count`` small photos of each class, a class a shade darker than the next."""
    rng = np.random.default_rng(len(classes))
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 100, (side, side, 3)) + 50 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.png")


def _series(path, labels, seed: int) -> None:
    """A UCR .tsv file: one series of 24 values per label, the label first."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in labels:
        x = np.sin(np.linspace(0, 3 + label, 24)) + 0.1 * rng.standard_normal(24)
        rows.append("\t".join([str(label)] + [f"{v:.5f}" for v in x]))
    path.write_text("\n".join(rows) + "\n")


# -----------------------------------------------------------------------------------------------
# A run stopped between its first resume state and its first model file resumes with its own classes


def test_a_folder_run_stopped_before_its_first_model_file_resumes_with_its_own_classes(tmp_path, monkeypatch):
    """The resume state records the classes the model file was about to hold: a class folder added
    while the run was stopped is left out, and the run ends as the uninterrupted one does."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "photos"
    _photos(data, ["ants", "bees"])
    argv = ["train", "--data", str(data), "--model", "mnist_fast", "--image-size", "28", "28", "--epochs", "2"]
    argv += ["--batch-size", "4", "--threads", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    run = tmp_path / "cut"
    _killed_before_the_first_model_file(monkeypatch, [*argv, "--out", str(run)])
    assert not (run / MODEL_FILE).exists()
    record = read_info(run / RESUME_FILE)["record"]
    assert {k: record[k] for k in ("classes", "input_size")} == {"classes": ["ants", "bees"], "input_size": [3, 28, 28]}
    assert {k: v["file"] for k, v in record["data_files"].items()} == {"train": "photos", "val": "photos"}
    _photos(data, ["aphids"], count=3)  # a class folder added while the run is stopped (sorted first)
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert read_info(run)["classes"] == ["ants", "bees"] and read_info(run)["epoch"] == 2
    full, resumed = load_file(tmp_path / "full" / MODEL_FILE), load_file(run / MODEL_FILE)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_sequence_run_stopped_before_its_first_model_file_refuses_a_train_file_with_another_class(
    tmp_path, monkeypatch, capsys
):
    train = tmp_path / "Toy_TRAIN.tsv"
    _series(train, [1, 2] * 10, 0)
    argv = ["sequence", "train", "--data", str(train), "--model", "fcn1d", "--steps", "4", "--epochs", "2"]
    run = tmp_path / "cut"
    _killed_before_the_first_model_file(monkeypatch, [*argv, "--threads", "1", "--quiet", "--out", str(run)])
    _series(train, [1, 2, 3] * 7, 0)  # a third class in TRAIN
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["sequence", "train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err
        and f"{train} is not the data the run in {run} trained on: classes 1, 2, 3 (the run's: 1, 2)" in err
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_resume_state_that_records_no_classes_without_a_model_file_is_refused(tmp_path, monkeypatch, capsys):
    """A resume state of an earlier cnnkit (no record) in a folder without a model file: the run's
    classes cannot be known, and counting them afresh from the data could be wrong: one line."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "photos"
    _photos(data, ["ants", "bees"])
    argv = ["train", "--data", str(data), "--model", "mnist_fast", "--image-size", "28", "28", "--epochs", "2"]
    run = tmp_path / "cut"
    _killed_before_the_first_model_file(monkeypatch, [*argv, "--batch-size", "4", "--threads", "1", "--out", str(run)])
    path = run / RESUME_FILE
    tensors, meta = load_file(path), read_info(path)
    del meta["record"]
    atomic_write_bytes(path, save(tensors, metadata={"cnnkit": json.dumps(meta)}))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cnnkit train: error: {run} stopped before its first model file, and its resume state does not record "
        "the run's classes and data (an earlier cnnkit wrote it); start a new run without --resume"
    )


# -----------------------------------------------------------------------------------------------
# A sequence run records the sha256 of its TRAIN and TEST files


@pytest.fixture
def toy(tmp_path):
    """A sequence run on a toy TRAIN/TEST pair: (run folder, TRAIN, TEST, the argv that trained it)."""
    train, test = tmp_path / "Toy_TRAIN.tsv", tmp_path / "Toy_TEST.tsv"
    _series(train, [1, 2] * 10, 0)
    _series(test, [1, 2] * 5, 1)
    argv = ["sequence", "train", "--data", str(train), "--model", "fcn1d", "--steps", "4", "--epochs", "2"]
    argv += ["--threads", "1", "--quiet"]
    return train, test, argv


def _values_sha256(path, classes=None) -> str:
    """The sha256 of a series file's classes, labels, lengths and z-normalised values, computed here."""
    import hashlib

    from cnnkit.data.series import read_series

    data = read_series(path, classes=classes)
    h = hashlib.sha256(json.dumps(data.classes).encode())
    for t in (data.labels, data.lengths, data.values):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_a_sequence_run_records_the_digests_of_its_files(tmp_path, toy):
    train, test, argv = toy
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    files = read_info(tmp_path / "run")["data_files"]
    assert files == {
        "train": {"file": "Toy_TRAIN.tsv", "sha256": _values_sha256(train)},
        "test": {"file": "Toy_TEST.tsv", "sha256": _values_sha256(test, ["1", "2"])},
    }


def _stopped_after_first_save(monkeypatch, argv: list) -> None:
    """Run ``cnnkit`` with ``argv``, stopped as Ctrl-C would stop it right after its first save."""
    save_run = loop._save_run

    def save_then_stop(out, *args):
        save_run(out, *args)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(loop, "_save_run", save_then_stop)
        assert main(argv) == 130


def test_the_same_values_written_otherwise_resume_and_score_without_a_word(tmp_path, monkeypatch, capsys, toy):
    """The digests are of the values read, not of the bytes: a TRAIN and TEST copied with CRLF line
    ends and numbers written with more digits (the same floats), as another --data-dir, resume the
    run and score without a warning; a value changed in that copy is still refused."""
    train, test, argv = toy
    run = tmp_path / "half"
    _stopped_after_first_save(monkeypatch, [*argv, "--data", "ucr:Toy", "--data-dir", str(tmp_path), "--out", str(run)])
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in (train, test):
        rows = [line.split("\t") for line in f.read_text().splitlines()]
        text = "".join("\t".join([r[0]] + [v + "000" for v in r[1:]]) + "\r\n" for r in rows)
        (moved / f.name).write_bytes(text.encode())
    assert (moved / train.name).read_bytes() != train.read_bytes()
    capsys.readouterr()
    resume = ["sequence", "train", "--resume", "--out", str(run), "--data-dir", str(moved), "--quiet"]
    assert main(resume) == 0, capsys.readouterr().err
    assert capsys.readouterr().err == "" and read_info(run)["epoch"] == 2
    assert main(["sequence", "eval", str(run), "--data-dir", str(moved), "--format", "json"]) == 0
    assert capsys.readouterr().err == ""
    changed = (moved / train.name).read_text().replace("\t", "\t1", 1)  # the first value of the first series
    (moved / train.name).write_text(changed)
    assert main(["sequence", "eval", str(run), "--data-dir", str(moved), "--split", "val", "--format", "json"]) == 0
    assert f"{moved / train.name} is not the TRAIN file the run in {run} recorded" in capsys.readouterr().err


def test_resume_refuses_a_train_file_whose_values_changed(tmp_path, monkeypatch, capsys, toy):
    train, _, argv = toy
    run = tmp_path / "half"
    _stopped_after_first_save(monkeypatch, [*argv, "--out", str(run)])
    _series(train, [1, 2] * 10, 7)  # the same classes and length, other values
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["sequence", "train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{train} is not the file the run in {run} trained on: its values changed" in err
    assert "put back the file it trained on, or start a new run in another --out" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    _series(train, [1, 2] * 10, 0)  # the file put back: the run resumes
    assert main(["sequence", "train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert read_info(run)["epoch"] == 2


def test_an_npz_runs_splits_are_each_checked_against_their_own_digest(tmp_path, capsys, toy):
    """An .npz is the run's TRAIN and TEST file at once (one name): each split is compared with its own
    record, not warned of for not being the other; a changed X_test is warned of as the TEST file."""
    from cnnkit.data.series import read_series

    train, test, argv = toy
    arrays = {}
    for split, f in (("train", train), ("test", test)):
        data = read_series(f, znorm=False)
        arrays[f"X_{split}"] = data.values[:, 0].numpy()
        arrays[f"y_{split}"] = np.array(data.classes)[data.labels.numpy()]
    np.savez(tmp_path / "Toy.npz", **arrays)
    run = tmp_path / "run"
    assert main([*argv, "--data", str(tmp_path / "Toy.npz"), "--out", str(run)]) == 0
    capsys.readouterr()
    for split in ("test", "train", "val"):
        assert main(["sequence", "eval", str(run), "--split", split, "--format", "json"]) == 0
        assert capsys.readouterr().err == "", split
    np.savez(tmp_path / "Toy.npz", **{**arrays, "X_test": arrays["X_test"][:, ::-1].copy()})
    assert main(["sequence", "eval", str(run), "--format", "json"]) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'Toy.npz'} is not the TEST file the run in {run} recorded: its values changed" in err
    assert main(["sequence", "eval", str(run), "--split", "train", "--format", "json"]) == 0
    assert capsys.readouterr().err == ""


def test_eval_warns_of_a_test_file_whose_values_changed_and_scores_it(tmp_path, capsys, toy):
    train, test, argv = toy
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sequence", "eval", str(run), "--format", "json"]) == 0
    same = capsys.readouterr()
    assert same.err == ""
    _series(test, [2, 1] * 5, 1)  # the same classes and length, other labels and values
    for command in (["sequence", "eval", str(run)], ["sequence", "eval", str(run), "--data", str(test)]):
        assert main([*command, "--format", "json"]) == 0
        out = capsys.readouterr()
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"warning: {test} is not the TEST file the run in {run} recorded: its values changed"
        ), out.err
        assert json.loads(out.out)["series"] == 10  # scored all the same
    assert main(["sequence", "eval", str(run), "--split", "val", "--format", "json"]) == 0
    assert capsys.readouterr().err == ""  # TRAIN is as it was


def test_eval_of_a_run_without_digests_scores_without_a_warning(tmp_path, capsys, toy):
    """A run folder written before the digests were recorded keeps working."""
    _, test, argv = toy
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run)]) == 0
    tensors, meta = load_file(run / MODEL_FILE), read_info(run)
    del meta["data_files"]
    atomic_write_bytes(run / MODEL_FILE, save(tensors, metadata={"cnnkit": json.dumps(meta)}))
    _series(test, [2, 1] * 5, 1)
    capsys.readouterr()
    assert main(["sequence", "eval", str(run), "--format", "json"]) == 0
    assert capsys.readouterr().err == ""


# -----------------------------------------------------------------------------------------------
# A run's config lists what its task uses; threads: null when unset, the number used in the metadata


def test_a_generate_runs_config_lists_only_what_the_task_uses(tmp_path, data_dir):
    run = tmp_path / "gan"
    argv = ["generate", "train", "--data-dir", str(data_dir), "--epochs", "1", "--subset", "64"]
    assert main([*argv, "--batch-size", "32", "--out", str(run), "--quiet"]) == 0
    written = yaml.safe_load((run / "config.yaml").read_text())
    from cnnkit.tasks.generate.config import GenerateConfig

    assert not set(written) & set(GenerateConfig.unsupported)  # no optimizer, schedule, momentum, ...
    assert "optimizer" not in read_info(run)["config"] and "schedule" not in read_info(run)["config"]
    assert written["beta1"] == 0.5 and written["lr"] == 0.0002
    assert written["threads"] is None and read_info(run)["threads"] == torch.get_num_threads()
    # it reads back as a config file, and --resume continues the run
    assert main(["generate", "train", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "again")]) == 0


def test_a_fitted_run_whose_model_did_not_fit_on_the_disk_runs_again_in_its_folder(tmp_path, monkeypatch, capsys, toy):
    """A full disk at the model file leaves no metrics.csv (the model is written first, as the engine
    writes it): once space is freed, the same command runs, not refused as a folder of someone else's files."""
    import cnnkit.engine.runfolder as runfolder

    train, _, _ = toy
    run = tmp_path / "rocket"
    argv = ["sequence", "train", "--data", str(train), "--model", "multirocket", "--out", str(run), "--quiet"]

    def full(path, *args, **kwargs):
        raise runfolder.disk_full(path)

    with monkeypatch.context() as m:
        m.setattr(runfolder, "save_model", full)
        assert main(argv) == 2
    assert "disk full writing" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.csv", "model.safetensors"]
    assert read_info(run)["epoch"] == 1


def test_a_fitted_sequence_runs_config_leaves_out_gradient_training_and_records_its_threads(tmp_path, toy):
    train, _, _ = toy
    run = tmp_path / "rocket"
    assert (
        main(["sequence", "train", "--data", str(train), "--model", "multirocket", "--out", str(run), "--quiet"]) == 0
    )
    from cnnkit.tasks.sequence.config import GRADIENT_ONLY

    written = yaml.safe_load((run / "config.yaml").read_text())
    assert not set(written) & set(GRADIENT_ONLY) and written["model"] == "multirocket"
    assert written["threads"] is None and read_info(run)["threads"] == torch.get_num_threads()
    # a folder holding the user's config.yaml, given with --config: the file is kept, as the engine keeps it
    mine = tmp_path / "mine"
    mine.mkdir()
    text = "# my settings\nmodel: multirocket\n"
    (mine / "config.yaml").write_text(text)
    argv = ["sequence", "train", "--data", str(train), "--config", str(mine / "config.yaml"), "--out", str(mine)]
    assert main([*argv, "--quiet"]) == 0
    assert (mine / "config.yaml").read_text() == text and read_info(mine)["config"]["model"] == "multirocket"


# -----------------------------------------------------------------------------------------------
# A photo run records the sha256 of each part of its data as read: --resume refuses changed pixels
# under the same names, eval warns and scores them; a copy of the same photos passes


def _repaint(path, value: int) -> None:
    """The photo at ``path``, same name and size, every pixel ``value``."""
    with Image.open(path) as im:
        size, mode = im.size, im.mode
    Image.new(mode, size, (value,) * len(mode)).save(path)


def _pixels_sha256(data) -> str:
    """The sha256 of an ImageSet's class names, labels and pixels, computed here."""
    import hashlib

    h = hashlib.sha256(json.dumps(data.classes).encode())
    for t in (data.labels, data.images):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _photo_run_stopped_after_its_first_save(tmp_path, monkeypatch):
    """(photos, run): a two-class folder and a run on it stopped after its first save."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "photos"
    _photos(data, ["ants", "bees"])
    argv = ["train", "--data", str(data), "--model", "mnist_fast", "--image-size", "28", "28", "--epochs", "2"]
    run = tmp_path / "half"
    _stopped_after_first_save(monkeypatch, [*argv, "--batch-size", "4", "--threads", "1", "--quiet", "--out", str(run)])
    return data, run


def test_a_folder_run_records_its_parts_and_resume_refuses_changed_pixels(tmp_path, monkeypatch, capsys):
    import shutil

    from cnnkit.data.imagefolder import load_image_folder

    data, run = _photo_run_stopped_after_its_first_save(tmp_path, monkeypatch)
    split = json.loads((run / "split.json").read_text())
    parts = {k: load_image_folder(data, k, (28, 28), files=split[k], cache=False) for k in ("train", "val")}
    want = {k: {"file": "photos", "sha256": _pixels_sha256(p)} for k, p in parts.items()}
    assert read_info(run)["data_files"] == want == read_info(run / RESUME_FILE)["record"]["data_files"]
    # a copy of the same photos (new inodes, times) in the run's folder: resumed without a word
    shutil.copytree(data, tmp_path / "copy")
    shutil.rmtree(data)
    shutil.copytree(tmp_path / "copy", data)
    _repaint(data / split["train"][0], 7)  # the same name and size, other pixels
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"cnnkit train: error: {data} is not the data the run in {run} trained on: the images of its train part "
        f"changed (sha256 "
    ) and err.endswith("put back the images it trained on, or start a new run in another --out")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    for split_name, warned in (("train", True), ("val", False)):
        assert main(["eval", str(run), "--split", split_name, "--format", "json"]) == 0
        out = capsys.readouterr()
        said = [line for line in out.err.splitlines() if "is not the data the run" in line]
        assert len(said) == warned and json.loads(out.out)["n"] == len(split[split_name])
        if warned:
            assert said[0].startswith(f"warning: {data} is not the data the run in {run} recorded: the images of its")
            assert said[0].endswith("they are scored as they are")
    shutil.rmtree(data)
    shutil.copytree(tmp_path / "copy", data)  # the photos put back: the run resumes
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert read_info(run)["epoch"] == 2 and read_info(run)["data_files"] == want


def test_a_photo_run_without_digests_resumes_and_scores_changed_pixels_without_a_word(tmp_path, monkeypatch, capsys):
    """A run folder written before the digests were recorded keeps working: no refusal, no warning."""
    data, run = _photo_run_stopped_after_its_first_save(tmp_path, monkeypatch)
    for path in (run / MODEL_FILE, run / RESUME_FILE):
        tensors, meta = load_file(path), read_info(path)
        meta.pop("data_files", None)
        meta.get("record", {}).pop("data_files", None)
        atomic_write_bytes(path, save(tensors, metadata={"cnnkit": json.dumps(meta)}))
    for name in json.loads((run / "split.json").read_text())["train"][:2]:
        _repaint(data / name, 7)
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "train", "--format", "json"]) == 0
    assert "is not the data" not in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert "is not the data" not in capsys.readouterr().err
    assert read_info(run)["epoch"] == 2


def test_a_built_in_data_sets_run_records_the_digest_of_each_part(tmp_path, data_dir):
    from cnnkit.data.datasets import load_dataset

    run = tmp_path / "mnist"
    argv = ["train", "--data", "mnist", "--data-dir", str(data_dir), "--model", "lenet5", "--epochs", "1"]
    assert main([*argv, "--subset", "256", "--batch-size", "64", "--threads", "1", "--quiet", "--out", str(run)]) == 0
    files = read_info(run)["data_files"]
    assert files == {  # the whole part as read: --subset trains on its first 256 images
        k: {"file": "mnist", "sha256": _pixels_sha256(load_dataset("mnist", k, data_dir))} for k in ("train", "val")
    }


def _split_folder(root, classes, count: int = 6) -> None:
    """``root/{train,val,test}/<class>/`` photos, a class a shade darker than the next."""
    for part in ("train", "val", "test"):
        _photos(root / part, classes, count)


def _split_folder_run(tmp_path, monkeypatch):
    """(photos, run): a folder of train/ and test/ of ants and bees, and a finished one-epoch run on it."""
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data = tmp_path / "photos"
    _split_folder(data, ["ants", "bees"])
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", "mnist_fast", "--image-size", "28", "28", "--epochs", "1"]
    assert main([*argv, "--batch-size", "4", "--threads", "1", "--quiet", "--out", str(run)]) == 0
    return data, run


def test_eval_of_a_folder_run_leaves_out_a_class_folder_added_since(tmp_path, monkeypatch, capsys):
    """A class folder the run does not know (added to the test folder since it trained, or a folder of
    another --data) is left out, said on one line, and the run's classes scored as before; a test
    folder of only unknown classes is refused in one line. `cnnkit plot` draws the run's classes."""
    from cnnkit.tasks.classify.plot import plot_run

    data, run = _split_folder_run(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["eval", str(run), "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    _photos(data / "test", ["aphids"], count=3)  # sorted first: as a class it would shift every label
    _photos(data / "train", ["aphids"], count=3)
    assert main(["eval", str(run), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert out.err.strip() == (
        f"note: {data}: left out the class folder 'aphids', not a class of the run ('ants', 'bees'); "
        "scored the run's classes"
    )
    after = json.loads(out.out)
    assert {k: after[k] for k in ("n", "classes", "confusion")} == {k: before[k] for k in ("n", "classes", "confusion")}
    assert after["n"] == 12
    other = tmp_path / "other"  # another folder, with one class of the run and one it does not know
    _photos(other / "train", ["bees", "wasps"], count=4)
    _photos(other / "test", ["bees", "wasps"], count=4)
    assert main(["eval", str(run), "--data", str(other), "--format", "json"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)
    assert got["n"] == 4 and got["classes"] == ["ants", "bees"] and sum(got["confusion"][1]) == 4
    assert "left out the class folder 'wasps'" in out.err
    written, notes = plot_run(run)
    assert [p.name for p in written] == ["curves.png", "confusion_test.png", "errors_test.png"]
    assert notes == [
        f"{data}: left out the class folder 'aphids', not a class of the run ('ants', 'bees'); scored the run's classes"
    ]
    for name in ("ants", "bees"):
        import shutil

        shutil.rmtree(data / "test" / name)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cnnkit eval: error: {data}: the 'test' split holds no image of the run's classes ('ants', 'bees'), only "
        "of class folders it does not know ('aphids'); give data with images of the run's classes"
    )


def test_plot_labels_a_folder_runs_confusion_matrix_by_the_runs_classes(tmp_path, monkeypatch):
    """`cnnkit plot` (and the workbench's plot) reads the images eval scores: a class folder added
    since training does not shift the labels of the run's classes."""
    import cnnkit.plots as plots
    from cnnkit.tasks.classify.evaluate import evaluate_run
    from cnnkit.tasks.classify.plot import plot_run

    data, run = _split_folder_run(tmp_path, monkeypatch)
    want = evaluate_run(run)[0].confusion.tolist()
    _photos(data / "test", ["aphids"], count=3)
    _photos(data / "train", ["aphids"], count=3)
    drawn = {}
    draw = plots.confusion_matrix

    def spy(matrix, classes, title=None):
        drawn.update(matrix=matrix.tolist(), classes=list(classes))
        return draw(matrix, classes, title=title)

    monkeypatch.setattr(plots, "confusion_matrix", spy)
    plot_run(run)
    assert drawn == {"matrix": want, "classes": ["ants", "bees"]}


def _said(err: str) -> list[str]:
    """The lines of ``err`` that say the run's data changed."""
    return [line for line in err.splitlines() if "is not the data the run" in line]


def test_a_detection_run_checks_its_photos_by_their_digests(tmp_path, monkeypatch, capsys):
    """A YOLO folder's run: eval reads the scored part alone and finds it as recorded (no warning); a
    test photo repainted under its name is warned of and scored; a training photo refuses --resume."""
    from test_detection_data import make_yolo

    data, run = make_yolo(tmp_path / "yolo", n=10), tmp_path / "run"
    for i, path in enumerate(sorted((data / "images").iterdir())):  # photos told apart by their pixels
        _repaint(path, 20 * i)
    argv = ["detect", "train", "--data", str(data), "--model", "tiny", "--weights", "none", "--epochs", "2"]
    argv += ["--batch-size", "2", "--image-size", "64", "--threads", "1", "--quiet", "--out", str(run)]
    _stopped_after_first_save(monkeypatch, argv)
    files = read_info(run)["data_files"]
    assert sorted(files) == ["test", "train", "val"] and {v["file"] for v in files.values()} == {"yolo"}
    assert len({v["sha256"] for v in files.values()}) == 3
    split = json.loads((run / "split.json").read_text())
    capsys.readouterr()
    for part in ("val", "test"):
        assert main(["detect", "eval", str(run), "--split", part, "--format", "json"]) == 0
        assert _said(capsys.readouterr().err) == [], part
    _repaint(data / "images" / split["test"][0], 255)
    assert main(["detect", "eval", str(run), "--format", "json"]) == 0
    out = capsys.readouterr()
    (said,) = _said(out.err)
    assert said.startswith(f"warning: {data} is not the data the run in {run} recorded: the photos of its test part")
    assert json.loads(out.out)["images"] == len(split["test"])
    _repaint(data / "images" / split["train"][0], 255)
    assert main(["detect", "train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err and f"{data} is not the data the run in {run} trained on: the photos of its train part" in err
    )


def test_a_segmentation_run_checks_its_photos_shrunk_as_it_read_them(tmp_path, capsys):
    """Training reads its photos shrunk to --max-side, eval at their own size: each part digests alike
    (no warning while nothing changed); a training photo repainted refuses --resume and is warned of."""
    from test_honest_eval import photos

    data, run = photos(tmp_path / "data"), tmp_path / "run"
    argv = ["segment", "train", "--data", str(data), "--arch", "unet", "--model", "unet", "--width", "4"]
    argv += ["--epochs", "2", "--batch-size", "4", "--crop", "16", "--max-side", "20", "--threads", "1"]
    assert main([*argv, "--minutes", "1e-9", "--quiet", "--out", str(run)]) == 0  # stopped after its first epoch
    assert sorted(read_info(run)["data_files"]) == ["test", "train", "val"] and read_info(run)["epoch"] == 1
    split = json.loads((run / "split.json").read_text())
    capsys.readouterr()
    for part in ("train", "val", "test"):
        assert main(["segment", "eval", str(run), "--split", part, "--format", "json"]) == 0
        assert _said(capsys.readouterr().err) == [], part
    _repaint(data / "images" / split["train"][0], 3)
    assert main(["segment", "train", "--resume", "--out", str(run), "--minutes", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err and f"{data} is not the data the run in {run} trained on: the photos of its train part" in err
    )
    assert main(["segment", "eval", str(run), "--split", "train", "--format", "json"]) == 0
    assert len(_said(capsys.readouterr().err)) == 1


@pytest.mark.parametrize("kind", ["voc", "coco"])
def test_an_instance_parts_digest_is_of_its_photos_whatever_size_it_is_read_at(tmp_path, kind):
    """What an instance run records of a part: the same for the whole read at training and the scored
    part read alone at another test scale (eval), another once a photo of it is repainted."""
    from dataclasses import replace

    from test_instance_data import make_coco, make_voc

    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data

    root = make_voc(tmp_path / "voc", n_images=8) if kind == "voc" else make_coco(tmp_path / "coco", n_images=8)
    cfg = InstanceConfig(data=str(root), model="tiny", weights=None, image_size=64).resolved()
    whole = load_instance_data(cfg)
    split, classes = whole[3], whole[0].classes
    assert len({s.sha256 for s in whole[:3]}) == 3 and all(len(s.sha256) == 64 for s in whole[:3])
    for i, part in enumerate(("train", "val", "test")):
        alone = load_instance_data(replace(cfg, test_scale=2.0), split, parts=(part,), classes=classes)[i]
        assert alone.sha256 == whole[i].sha256, part
    photos = root / "JPEGImages" if kind == "voc" else root.parent / "images"
    _repaint(photos / split["test"][0], 9)
    again = load_instance_data(cfg, split, classes=classes)
    assert [a.sha256 == b.sha256 for a, b in zip(again[:3], whole[:3])] == [True, True, False]


def test_a_finetuning_run_checks_its_images_by_their_digests(tmp_path, monkeypatch, capsys):
    from test_honest_eval import _noise_photos

    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    data, run = tmp_path / "flat", tmp_path / "run"
    _noise_photos(data, 10)
    argv = ["classify", "finetune", "--data", str(data), "--model", "resnet18", "--image-size", "16"]
    argv += ["--stages", "all", "--epochs", "2", "--test-fraction", "0.2", "--quiet", "--out", str(run)]
    _stopped_after_first_save(monkeypatch, argv)
    assert {k: v["file"] for k, v in read_info(run)["data_files"].items()} == {
        "train": "flat",
        "val": "flat",
        "test": "flat",
    }
    split = json.loads((run / "split.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--format", "json"]) == 0
    assert _said(capsys.readouterr().err) == []
    _repaint(data / split["test"][0], 9)
    assert main(["eval", str(run), "--format", "json"]) == 0
    (said,) = _said(capsys.readouterr().err)
    assert said.startswith(f"warning: {data} is not the data the run in {run} recorded: the images of its test part")
    _repaint(data / split["val"][0], 9)
    assert main(["classify", "finetune", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{data} is not the data the run in {run} trained on: the images of its val part" in err

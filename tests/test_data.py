"""The IDX reader and the dataset registry, against the real MNIST files and broken copies."""

import gzip
import shutil

import pytest
import torch

from cnnkit.data.datasets import load_dataset
from cnnkit.data.idx import read_idx
from cnnkit.errors import CnnkitError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
LABELS_MD5 = "d53e105ee54ea40749a09fcbcd1e9432"


def test_idx_real_files(data_dir):
    images = read_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert int(images.max()) == 255 and int(images.min()) == 0
    train = read_idx(data_dir / "mnist" / "train-labels-idx1-ubyte.gz", LABELS_MD5)
    test = read_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert torch.bincount(train.long()).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.long()).tolist() == TEST_COUNTS


def test_splits(data_dir):
    sizes = {s: len(load_dataset("mnist", s, data_dir)) for s in ("train", "val", "test")}
    assert sizes == {"train": 55000, "val": 5000, "test": 10000}
    val = load_dataset("mnist", "val", data_dir)
    full = read_idx(data_dir / "mnist" / "train-labels-idx1-ubyte.gz")
    assert torch.equal(val.labels, full[-5000:].long())          # the notes' last 5,000
    assert val.images.shape == (5000, 1, 28, 28) and val.classes[3] == "3"


def test_truncated_gzip_names_file_and_md5(data_dir, tmp_path):
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes((data_dir / "mnist" / bad.name).read_bytes()[:20000])
    with pytest.raises(CnnkitError, match=r"train-labels-idx1-ubyte\.gz.*md5 [0-9a-f]{32}"):
        read_idx(bad)
    with pytest.raises(CnnkitError, match=f"expected md5 {LABELS_MD5}"):
        read_idx(bad, LABELS_MD5)


def test_raw_file_bad_magic_and_truncation(data_dir, tmp_path):
    raw = gzip.decompress((data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    ok = tmp_path / "labels.idx1"
    ok.write_bytes(raw)
    assert read_idx(ok).shape == (10000,)                         # raw files work too
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(CnnkitError, match="bad IDX magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(raw[:-7])
    with pytest.raises(CnnkitError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\x00")
    with pytest.raises(CnnkitError, match="trailing"):
        read_idx(tmp_path / "long")


def test_download_from_mirror(data_dir, tmp_path):
    mirror = (data_dir / "mnist").as_uri() + "/"
    with pytest.raises(CnnkitError, match="missing"):
        load_dataset("mnist", "test", tmp_path, download=False)
    test = load_dataset("mnist", "test", tmp_path, mirrors=(mirror,))
    assert torch.bincount(test.labels).tolist() == TEST_COUNTS
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(
        p.name for p in (data_dir / "mnist").glob("*.gz"))        # no temporary files left


def test_download_corrupt_mirror_leaves_nothing(data_dir, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(data_dir / "mnist", mirror)
    (mirror / "t10k-labels-idx1-ubyte.gz").chmod(0o644)
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip")
    with pytest.raises(CnnkitError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", "test", tmp_path / "data", mirrors=(mirror.as_uri(),))
    assert not (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_unknown_dataset_and_split(data_dir):
    with pytest.raises(CnnkitError, match="unknown dataset 'mnsit'"):
        load_dataset("mnsit", "train", data_dir)
    with pytest.raises(CnnkitError, match="unknown split"):
        load_dataset("mnist", "valid", data_dir)

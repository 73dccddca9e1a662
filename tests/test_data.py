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
    assert torch.equal(val.labels, full[-5000:].long())  # the notes' last 5,000
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
    assert read_idx(ok).shape == (10000,)  # raw files work too
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
        p.name for p in (data_dir / "mnist").glob("*.gz")
    )  # no temporary files left


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


def _md5(path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _idx(array) -> bytes:
    """An IDX file (gzipped) of a uint8 array, as LeCun's format writes it."""
    import struct

    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes())


def test_emnist_digits_from_its_zip_archive(tmp_path, monkeypatch):
    """EMNIST comes as one zip of IDX files, stored column-major: downloaded from a (file://) mirror,
    checked against the archive's md5, extracted atomically, and transposed back."""
    import dataclasses
    import zipfile

    import numpy as np

    from cnnkit.data import datasets

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "gzip.zip", "w") as zf:
        for split in ("train", "test"):
            zf.writestr(f"gzip/emnist-digits-{split}-images-idx3-ubyte.gz", _idx(images.transpose(0, 2, 1)))
            zf.writestr(f"gzip/emnist-digits-{split}-labels-idx1-ubyte.gz", _idx(labels))
    info = dataclasses.replace(datasets.DATASETS["emnist_digits"], archive_md5=_md5(mirror / "gzip.zip"))
    monkeypatch.setitem(datasets.DATASETS, "emnist_digits", info)
    test = load_dataset("emnist_digits", "test", tmp_path / "data", mirrors=(mirror.as_uri(),))
    assert test.images.shape == (12, 1, 28, 28) and test.classes == [str(d) for d in range(10)]
    assert torch.equal(test.images[:, 0], torch.from_numpy(images))  # transposed back to rows
    assert torch.equal(test.labels, torch.from_numpy(labels).long())
    assert not list((tmp_path / "data" / "emnist").glob(".*part*"))  # no temporary files left
    bad = dataclasses.replace(info, archive_md5="0" * 32)
    monkeypatch.setitem(datasets.DATASETS, "emnist_digits", bad)
    with pytest.raises(CnnkitError, match="gzip.zip"):
        load_dataset("emnist_digits", "test", tmp_path / "other", mirrors=(mirror.as_uri(),))
    assert not (tmp_path / "other" / "emnist" / "gzip.zip").exists()


def test_cifar10_binary_archive(tmp_path, monkeypatch):
    """CIFAR-10's binary tar (1 label byte + 3,072 plane-ordered pixel bytes a record) is read
    without unpickling anything; a truncated batch is refused with the member's name."""
    import dataclasses
    import io
    import tarfile

    import numpy as np

    from cnnkit.data import datasets

    def batch(first: int, n: int = 10000) -> bytes:
        records = np.zeros((n, 3073), dtype=np.uint8)
        records[:, 0] = (np.arange(n) + first) % 10  # labels
        records[:, 1] = np.arange(n) % 251  # R plane, pixel (0, 0)
        records[:, 1 + 1024 + 33] = 7  # G plane, pixel (1, 1)
        return records.tobytes()

    def archive(path, short: bool = False) -> None:
        with tarfile.open(path, "w:gz", compresslevel=1) as tf:
            names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
            for k, name in enumerate(names):
                data = batch(k)[: -3073 if short and name == "test_batch.bin" else None]
                member = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                member.size = len(data)
                tf.addfile(member, io.BytesIO(data))

    folder = tmp_path / "cifar10"
    folder.mkdir()
    path = folder / "cifar-10-binary.tar.gz"
    archive(path)
    info = dataclasses.replace(datasets.DATASETS["cifar10"], files={path.name: _md5(path)})
    monkeypatch.setitem(datasets.DATASETS, "cifar10", info)
    test = load_dataset("cifar10", "test", tmp_path)
    train = load_dataset("cifar10", "train", tmp_path)
    assert test.images.shape == (10000, 3, 32, 32) and len(train) == 45000
    assert test.labels[:3].tolist() == [5, 6, 7] and test.classes[5] == "dog"
    assert test.images[:3, 0, 0, 0].tolist() == [0, 1, 2] and int(test.images[0, 1, 1, 1]) == 7
    archive(path, short=True)
    monkeypatch.setitem(datasets.DATASETS, "cifar10", dataclasses.replace(info, files={path.name: _md5(path)}))
    with pytest.raises(CnnkitError, match="test_batch.bin has 30726927 bytes, expected 30730000"):
        load_dataset("cifar10", "test", tmp_path)


def test_a_killed_downloads_part_file_is_removed_by_the_next_download(data_dir, tmp_path):
    """kill -9 mid-download leaves ``.<name>.<random>.part`` (never the file itself); the next
    download of that file removes it once it is stale, and leaves one still being written alone."""
    import os
    import time

    from cnnkit.download import STALE_PART_SECONDS, download_url

    name = "t10k-labels-idx1-ubyte.gz"
    folder = tmp_path / "mnist"
    folder.mkdir()
    killed, writing = folder / f".{name}.k1ll3d.part", folder / f".{name}.n0wn0w.part"
    killed.write_bytes(b"x" * 1000)
    writing.write_bytes(b"y" * 10)
    old = time.time() - STALE_PART_SECONDS - 60
    os.utime(killed, (old, old))
    download_url(
        (data_dir / "mnist" / name).as_uri(), folder / name, md5=_md5(data_dir / "mnist" / name), progress=False
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, writing.name])

"""Hostile built-in data: IDX files that lie, gzip bombs, downloads that fail or break off, a
--data-dir with things in the way, damaged archives and Penn-Fudan masks. Each is refused in one
line (CnnkitError; exit 2 from the CLI), leaving no half-written file and no empty folder behind."""

import dataclasses
import gzip
import hashlib
import io
import struct
import urllib.error
import urllib.request
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnkit.cli import main
from cnnkit.data import datasets
from cnnkit.data.datasets import load_dataset
from cnnkit.data.idx import read_idx
from cnnkit.download import download_url
from cnnkit.errors import CnnkitError

EMNIST = datasets.DATASETS["emnist_digits"]


def _header(dims, dtype=0x08) -> bytes:
    return struct.pack(">HBB", 0, dtype, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _zeros_gz(header: bytes, n: int) -> bytes:
    """A gzip of ``header`` then ``n`` zero bytes, compressed as it goes (a small file, a big inflation)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out, block = [c.compress(header)], bytes(1 << 20)
    while n > 0:
        out.append(c.compress(block[: min(n, len(block))]))
        n -= len(block)
    return b"".join(out) + c.flush()


def test_gzip_bomb_declaring_its_size_is_refused_before_inflating(tmp_path, peak_mb):
    bomb = tmp_path / "x-labels-idx1-ubyte.gz"
    bomb.write_bytes(_zeros_gz(_header([300 << 20]), 300 << 20))  # 300 MB of zeros in ~300 KB
    assert bomb.stat().st_size < 1 << 20

    def read():
        with pytest.raises(CnnkitError, match="never compresses that well") as err:
            read_idx(bomb)
        assert "\n" not in str(err.value) and str(bomb) in str(err.value)

    assert peak_mb(read) < 20  # the file's own bytes, not its inflation


def test_gzip_bomb_behind_a_small_header_stops_past_the_declared_size(tmp_path, peak_mb):
    bomb = tmp_path / "x-labels-idx1-ubyte.gz"
    bomb.write_bytes(_zeros_gz(_header([6000]), 200 << 20))  # declares 6,000 bytes, inflates to 200 MB

    def read():
        with pytest.raises(CnnkitError, match="trailing bytes"):
            read_idx(bomb)

    assert peak_mb(read) < 40


def test_well_formed_idx_still_reads_in_one_buffer(tmp_path):
    labels = np.arange(70000, dtype=np.uint8) % 10
    p = tmp_path / "l.gz"
    p.write_bytes(gzip.compress(_header([70000]) + labels.tobytes()))
    assert read_idx(p).tolist() == labels.tolist()
    p.write_bytes(gzip.compress(_header([0x7FFFFFFF]) + labels.tobytes())[:40])  # header lies, file cut
    with pytest.raises(CnnkitError, match="corrupt or truncated IDX"):
        read_idx(p)


def _emnist_dir(root, images=None, labels=None, image_type=0x08):
    """An EMNIST folder (its files have no published md5, so only their content is checked)."""
    folder = root / "emnist"
    folder.mkdir(parents=True)
    n = 5100
    images = np.zeros((n, 28, 28), np.uint8) if images is None else images
    labels = (np.arange(n) % 10).astype(np.uint8) if labels is None else labels
    for split in ("train", "test"):
        body = images.astype(np.dtype(">f8") if image_type == 0x0E else np.uint8).tobytes()
        (folder / f"emnist-digits-{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_header(images.shape, image_type) + body)
        )
        (folder / f"emnist-digits-{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_header(labels.shape) + labels.tobytes())
        )
    return root


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"labels": (np.arange(5100) % 10 * 20).astype(np.uint8)}, "holds label 180, outside the 10 classes"),
        ({"image_type": 0x0E}, "holds float64 images"),
        ({"images": np.zeros((5100, 0, 0), np.uint8)}, "images of 0x0 px"),
        ({"images": np.zeros((100, 28, 28), np.uint8), "labels": np.zeros(100, np.uint8)}, "too few"),
    ],
)
def test_idx_files_that_are_not_this_data_set(tmp_path, capsys, kw, message):
    root = _emnist_dir(tmp_path / "data", **kw)
    with pytest.raises(CnnkitError, match=message):
        load_dataset("emnist_digits", "train", root, download=False)
    argv = ["train", "--data", "emnist_digits", "--data-dir", str(root), "--threads", "1", "--epochs", "1"]
    assert main([*argv, "--batch-size", "16", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def _offline(monkeypatch):
    def refuse(url, timeout=None):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    _offline(monkeypatch)
    data = tmp_path / "data"
    data.mkdir()
    argv = ["generate", "train", "--data", "fashion_mnist", "--data-dir", str(data), "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and err.count("\n") == 1
    assert list(data.iterdir()) == []  # no empty data/fashion_mnist
    assert main(["train", "--data", "emnist_digits", "--data-dir", str(data), "--out", str(tmp_path / "r2")]) == 2
    assert list(data.iterdir()) == []  # no empty data/emnist
    with pytest.raises(CnnkitError, match="could not download"):
        download_url("https://example.invalid/x.gz", tmp_path / "a" / "b" / "x.gz", progress=False)
    assert not (tmp_path / "a").exists()


def test_a_download_that_breaks_off_keeps_nothing_and_tries_the_next_mirror(tmp_path, monkeypatch, data_dir):
    real = urllib.request.urlopen

    class Cut(io.BytesIO):
        headers = {"Content-Length": "999999"}

        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(100)

    def flaky(url, timeout=None):
        return Cut(b"\x1f\x8b" + bytes(300)) if url.startswith("https://") else real(url, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    dest = tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(CnnkitError, match="broke off.*nothing was kept"):
        download_url("https://mirror/t10k-labels-idx1-ubyte.gz", dest, md5="0" * 32, progress=False)
    assert not (tmp_path / "dl").exists()  # no partial file, no folder
    mirrors = ("https://mirror/", (data_dir / "mnist").as_uri() + "/")
    test = load_dataset("mnist", "test", tmp_path / "data", mirrors=mirrors)
    assert len(test) == 10000
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(datasets.DATASETS["mnist"].files)


def test_things_in_the_way_of_a_download(tmp_path, data_dir, capsys):
    mirror = ((data_dir / "mnist").as_uri() + "/",)
    (tmp_path / "mnist").write_text("not a folder")
    with pytest.raises(CnnkitError, match="is not a folder"):
        load_dataset("mnist", "test", tmp_path, mirrors=mirror)
    assert main(["train", "--data-dir", str(tmp_path), "--threads", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and err.count("\n") == 1
    other = tmp_path / "other"
    (other / "mnist" / "t10k-labels-idx1-ubyte.gz").mkdir(parents=True)
    with pytest.raises(CnnkitError, match="t10k-labels-idx1-ubyte.gz is not a file"):
        load_dataset("mnist", "test", other, mirrors=mirror)
    with pytest.raises(CnnkitError, match="cannot download into"):
        download_url(mirror[0] + "t10k-labels-idx1-ubyte.gz", tmp_path / "mnist" / "x.gz", progress=False)
    with pytest.raises(CnnkitError, match="not a file is there"):
        download_url(mirror[0] + "t10k-labels-idx1-ubyte.gz", other / "mnist" / "t10k-labels-idx1-ubyte.gz")


def test_a_damaged_archive_with_the_right_md5_is_refused_without_leftovers(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("gzip/emnist-digits-test-images-idx3-ubyte.gz", bytes(100000))
    raw = bytearray(buf.getvalue())
    raw[60:400] = bytes(340)  # the member's data damaged, the directory intact
    (mirror / "gzip.zip").write_bytes(bytes(raw))
    info = dataclasses.replace(EMNIST, archive_md5=hashlib.md5(raw).hexdigest())
    monkeypatch.setitem(datasets.DATASETS, "emnist_digits", info)
    with pytest.raises(CnnkitError, match="gzip.zip") as err:
        load_dataset("emnist_digits", "test", tmp_path / "data", mirrors=(mirror.as_uri(),))
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (tmp_path / "data" / "emnist").iterdir()) == ["gzip.zip"]  # no .part


def _pennfudan(root, stray: bool):
    for sub in ("PNGImages", "PedMasks"):
        (root / "pennfudan" / sub).mkdir(parents=True)
    for i in range(125):
        name = f"PennPed{i:05d}"
        Image.new("RGB", (6, 5), (90, 90, 90)).save(root / "pennfudan" / "PNGImages" / f"{name}.png")
        mask = np.zeros((5, 6), np.uint8)
        mask[1:3, 1:3], mask[3:, 4:] = 1, 2
        if stray:
            mask[0, 5] = 9  # a stray value: no pedestrians 3..8
        Image.fromarray(mask, "L").save(root / "pennfudan" / "PedMasks" / f"{name}_mask.png")
    return root


def test_a_penn_fudan_mask_with_a_stray_instance_id_is_refused(tmp_path):
    from cnnkit.data.segmentation import pennfudan_segmentation

    good = pennfudan_segmentation("test", _pennfudan(tmp_path / "good", stray=False), limit=2)
    assert [sorted(i.unique().tolist()) for i in good.instances] == [[0, 1, 2]] * 2
    with pytest.raises(CnnkitError, match="holds pedestrian 9 but no pedestrian 3"):
        pennfudan_segmentation("test", _pennfudan(tmp_path / "bad", stray=True), limit=2)


def test_a_penn_fudan_photo_the_split_names_but_the_folder_lacks_is_a_damaged_folder(tmp_path):
    # not "give the path of a PNG or JPEG file", which is for a photo the user names (the detector's
    # reader says "missing image ...: the annotation names it")
    from cnnkit.data.pennfudan import pennfudan_split
    from cnnkit.data.segmentation import pennfudan_segmentation

    data = _pennfudan(tmp_path, stray=False)
    root = data / "pennfudan"
    names = pennfudan_split(root)["test"][:2]
    (root / "PNGImages" / names[0]).unlink()
    with pytest.raises(CnnkitError) as err:
        pennfudan_segmentation("test", data, names=names)
    assert f"missing photo {root / 'PNGImages' / names[0]}, which the Penn-Fudan split names" in str(err.value)
    assert "PennFudanPed.zip" in str(err.value) and "give the path" not in str(err.value)

"""Zip bombs: members that declare far more than they store, or more than their content can need, or
that inflate past the size they declare, refused by every zip reader (``.keras`` files, ``.npz``
series caches, ``.pth`` weights, data set archives) before anything big is inflated."""

import bz2
import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from test_hostile_export import keras_file

from cnnkit import errors
from cnnkit.cli import main
from cnnkit.data.datasets import _extract
from cnnkit.data.series import read_npz
from cnnkit.errors import CnnkitError, human_bytes, unzip
from cnnkit.models.keras import load_keras
from cnnkit.models.weights import read_state_dict

MB = 1 << 20
CONFIG = {
    "class_name": "Sequential",
    "config": {
        "name": "s",
        "layers": [
            {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 4]}},
            {"class_name": "Dense", "config": {"name": "fc", "units": 2}},
        ],
    },
}


def _zeros_deflated(mb: int) -> bytes:
    """A raw deflate stream of ``mb`` MB of zeros, about 1 KB a MB: one MB compressed and flushed so
    that the next starts afresh, repeated (no 3 GB to compress)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(MB)) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * mb + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def _zeros_crc(mb: int) -> int:
    crc, block = 0, bytes(MB)
    for _ in range(mb):
        crc = zlib.crc32(block, crc)
    return crc


def _zip(path, members) -> None:
    """A zip written by hand, its sizes as given: ``(name, stream, method, crc, declared size,
    compressed size stated or None for the stream's own[, flag bits])``."""
    body, central = b"", b""
    for name, data, method, crc, declared, stated, *flags in members:
        nb, offset, csize = name.encode(), len(body), len(data) if stated is None else stated
        flag = flags[0] if flags else 0
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flag, method, 0, 0, crc, csize, declared, len(nb), 0)
        body += nb + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            flag,
            method,
            0,
            0,
            crc,
            csize,
            declared,
            len(nb),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += nb
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(body + central + end)


def _stored(name: str, data: bytes):
    return (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data), None)


def _bomb(name: str, mb: int, declared: int | None = None, stated: int | None = None):
    """A member of ``mb`` MB of deflated zeros; ``declared``/``stated`` make its central directory lie."""
    crc = _zeros_crc(mb if declared is None else min(mb, declared // MB))
    return (name, _zeros_deflated(mb), zipfile.ZIP_DEFLATED, crc, declared or mb * MB, stated)


def _keras(path, *weights):
    _zip(path, [_stored("config.json", json.dumps(CONFIG).encode()), *weights])
    return path


@pytest.fixture
def opened(monkeypatch):
    """Call it to start watching: the names zipfile opens from then on, where opening any member but
    config.json fails the test (nothing may be inflated)."""
    names, real = [], zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        names.append(getattr(name, "filename", name))
        assert names[-1] == "config.json", f"{names[-1]} was opened"
        return real(self, name, *args, **kwargs)

    def start():
        monkeypatch.setattr(zipfile.ZipFile, "open", spy)
        return names

    return start


def test_the_default_refuses_a_3_gb_bomb_of_3_mb_unread(tmp_path, capsys, opened):
    """The real thresholds: model.weights.h5 declaring 3.1 GB (3,000 MB of zeros, deflated to 3 MB) is
    refused from its zip entry; only config.json is opened, and the command says so in one line."""
    path = _keras(tmp_path / "bomb.keras", _bomb("model.weights.h5", 3000))
    assert path.stat().st_size < 4 * MB
    names = opened()
    rc = main(["convert", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model.weights.h5")
    assert info.file_size == 3000 * MB and 1000 < info.file_size / info.compress_size < 1040
    assert err.endswith(
        f"{path}: its member model.weights.h5 declares 3.1 GB inflated from 3.1 MB "
        f"({info.file_size / info.compress_size:,.0f} times; real data compresses a few times at most): a zip bomb "
        "or a damaged file; save the model again from Keras"
    ), err
    assert names == ["config.json"] and not (tmp_path / "run").exists()


@pytest.fixture
def floor(monkeypatch):
    """The ratio checked from 1 MB up (64 MB by default), so that small bombs stand for real ones."""
    monkeypatch.setattr(errors, "RATIO_FLOOR", MB)


def _npz(path, member):
    small = io.BytesIO()
    np.save(small, np.arange(4) % 2)
    _zip(path, [member, *(_stored(f"{k}.npy", small.getvalue()) for k in ("y_train", "X_test", "y_test"))])
    return path


def _pth(path, mbs: list[int]):
    """A torch.save file of tensors of zeros of ``mbs`` MB each, its records deflated by hand."""
    torch.save({f"w{i}": torch.zeros(mb * MB // 4) for i, mb in enumerate(mbs)}, path)
    with zipfile.ZipFile(path) as z:
        records = [i.filename for i in z.infolist()]
        kept = {name: _stored(name, z.read(name)) for name in records if "/data/" not in name}
    _zip(path, [kept.get(name) or _bomb(name, mbs[int(name.rsplit("/", 1)[1])]) for name in records])
    return path


@pytest.mark.parametrize("reader", ["keras", "npz", "pth", "archive"])
def test_every_zip_reader_refuses_a_bomb_before_inflating_it(tmp_path, floor, opened, reader):
    """8 MB of zeros in 8 KB: each reader names the file, the member, both sizes and its own fix."""
    if reader == "keras":
        path = _keras(tmp_path / "m.keras", _bomb("model.weights.h5", 8))
        read, member, fix = (lambda: load_keras(path)), "model.weights.h5", "save the model again from Keras"
    elif reader == "npz":
        path = _npz(tmp_path / "s.npz", _bomb("X_train.npy", 8))
        read, member, fix = (lambda: read_npz(path)), "X_train.npy", "re-create it with numpy.savez"
    elif reader == "pth":
        path = _pth(tmp_path / "w.pth", [8])
        read, member, fix = (lambda: read_state_dict(path)), "/data/0", "save the weights again with torch.save"
    else:
        path = tmp_path / "gzip.zip"
        _zip(path, [_bomb("gzip/a.gz", 8), _stored("gzip/b.gz", b"b")])
        (tmp_path / "out").mkdir()
        read, member, fix = (lambda: _extract(path, ["b.gz", "a.gz"], tmp_path / "out")), "gzip/a.gz", "download"
    names = opened()
    with pytest.raises(CnnkitError) as exc:
        read()
    msg = str(exc.value)
    assert msg.startswith(f"{path}: its member ") and member in msg and "\n" not in msg, msg
    assert "declares 8.4 MB inflated from 8.3 KB (1,01" in msg and fix in msg, msg
    assert set(names) <= {"config.json"}
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # b.gz not written either


def test_members_small_alone_are_refused_together(tmp_path, monkeypatch):
    """torch.load inflates every record: four of 1 MB of zeros each pass alone under a 2 MB floor,
    their 4.2 MB from a file of a few KB do not."""
    monkeypatch.setattr(errors, "RATIO_FLOOR", 2 * MB)
    path = _pth(tmp_path / "w.pth", [1, 1, 1, 1])
    with zipfile.ZipFile(path) as z:
        n = len(z.namelist())
    with pytest.raises(CnnkitError) as exc:
        read_state_dict(path)
    assert str(exc.value).startswith(
        f"{path}: its {n} members declare 4.2 MB together, inflated from the file's {human_bytes(path.stat().st_size)} ("
    )


def test_a_stated_compressed_size_beyond_the_file_is_not_believed(tmp_path, floor, opened):
    """The central directory says 8 MB are stored (ratio 1): the file holds 8 KB, and that is the ratio."""
    path = _keras(tmp_path / "m.keras", _bomb("model.weights.h5", 8, stated=8 * MB))
    opened()
    with pytest.raises(CnnkitError, match=f"declares 8.4 MB inflated from {human_bytes(path.stat().st_size)} "):
        load_keras(path)


def test_unpacking_stops_at_the_declared_size(tmp_path, peak_mb):
    """model.weights.h5 declares 1 MB and inflates to 200 MB (below any threshold): 1 MB is inflated,
    not 200 (zipfile's read() of a whole member inflates the whole stream before it cuts it)."""
    path = _keras(tmp_path / "m.keras", _bomb("model.weights.h5", 200, declared=MB))

    def read():
        with pytest.raises(CnnkitError, match="its weights cannot be read"):
            load_keras(path)

    assert peak_mb(read) < 20
    with zipfile.ZipFile(path) as z:
        assert len(unzip(z, "model.weights.h5", "fix")) == MB


def test_weights_beyond_what_the_config_can_hold_are_refused(tmp_path, floor):
    """8 MB stored uncompressed (ratio 1) for a Dense(4 -> 2): 10 values, 2 arrays, can need at most
    64 bytes each, each array counted as 1,024 values, and 1 MB: 1,179,264 bytes."""
    path = _keras(tmp_path / "m.keras", _stored("model.weights.h5", bytes(8 * MB)))
    with pytest.raises(CnnkitError) as exc:
        load_keras(path)
    assert str(exc.value) == (
        f"{path}: its member model.weights.h5 declares 8.4 MB inflated from 8.4 MB, more than the 1.2 MB its "
        "config's 10 weight values can need: a zip bomb or a damaged file; save the model again from Keras"
    )


def test_a_real_keras_file_passes_both_checks(tmp_path, monkeypatch):
    """With every check applied from 1 KB, a .keras file in Keras' layout loads, stored or deflated."""
    monkeypatch.setattr(errors, "RATIO_FLOOR", 1024)
    path = keras_file(tmp_path)
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(tmp_path / "deflated.keras", "w", zipfile.ZIP_DEFLATED) as out:
        assert z.getinfo("model.weights.h5").file_size > 1024
        for name in z.namelist():
            out.writestr(name, z.read(name))
    for p in (path, tmp_path / "deflated.keras"):
        net, size = load_keras(p)
        assert size == (3, 16, 16) and tuple(net(torch.zeros(2, 3, 16, 16)).shape) == (2, 3)


def test_an_npz_whose_members_lack_the_npy_suffix_is_read_and_checked(tmp_path, floor, opened):
    """numpy reads an array stored as ``X_train`` (a zip written by other tools) as it reads
    ``X_train.npy``: so does read_npz, and the bomb check weighs that member, not a missing one."""
    arrays = {"X_train": np.arange(12.0).reshape(3, 4), "y_train": np.array([0, 1, 0])}
    arrays |= {"X_test": np.arange(8.0).reshape(2, 4), "y_test": np.array([1, 0])}
    members = []
    for name, a in arrays.items():
        buf = io.BytesIO()
        np.save(buf, a)
        members.append(_stored(name, buf.getvalue()))
    _zip(tmp_path / "plain.npz", members)
    train = read_npz(tmp_path / "plain.npz", znorm=False)
    assert train.values.shape == (3, 1, 4) and train.values[2, 0].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert train.labels.tolist() == [0, 1, 0]
    bomb = tmp_path / "bomb.npz"
    _zip(bomb, [_bomb("X_train", 8), *members[1:]])
    names = opened()
    with pytest.raises(CnnkitError) as exc:
        read_npz(bomb)
    assert str(exc.value).startswith(f"{bomb}: its member X_train declares 8.4 MB inflated from 8.3 KB (1,01")
    assert names == []


def _unreadable(name: str, data: bytes, how: str):
    """A member holding ``data`` that zipfile (or torch.load) cannot read: its header's encrypted bit
    set ("encrypted"; "aes" with WinZip's method 99 as well, as an AES archive has it), method 99
    alone, a made-up method 77, or real bzip2 data ("bzip2", which Python reads and torch.load does not)."""
    crc = zlib.crc32(data)
    if how == "bzip2":
        return (name, bz2.compress(data), zipfile.ZIP_BZIP2, crc, len(data), None)
    method = {"encrypted": zipfile.ZIP_STORED, "aes": 99, "99": 99, "77": 77}[how]
    return (name, data, method, crc, len(data), None, 0x1 if how in ("encrypted", "aes") else 0)


def _with_unreadable(tmp_path, reader: str, how: str):
    """(file, reading it, the member made unreadable, the reader's fix)."""
    if reader == "keras":
        with zipfile.ZipFile(keras_file(tmp_path, "real.keras")) as z:
            parts = {n: z.read(n) for n in z.namelist()}
        path = tmp_path / "m.keras"
        _zip(path, [_stored(n, d) if n != "model.weights.h5" else _unreadable(n, d, how) for n, d in parts.items()])
        return path, lambda: load_keras(path), "model.weights.h5", "save the model again from Keras"
    if reader == "npz":
        buf = io.BytesIO()
        np.save(buf, np.arange(8.0).reshape(2, 4))
        path = _npz(tmp_path / "s.npz", _unreadable("X_train.npy", buf.getvalue(), how))
        return path, lambda: read_npz(path), "X_train.npy", "re-create it with numpy.savez"
    if reader == "pth":
        path = tmp_path / "w.pth"
        torch.save({"w": torch.arange(6.0)}, path)
        with zipfile.ZipFile(path) as z:
            parts = {n: z.read(n) for n in z.namelist()}
        member = next(n for n in parts if n.endswith("/data/0"))
        _zip(path, [_stored(n, d) if n != member else _unreadable(n, d, how) for n, d in parts.items()])
        return path, lambda: read_state_dict(path), member, "save the weights again with torch.save"
    path = tmp_path / "gzip.zip"
    _zip(path, [_unreadable("gzip/a.gz", b"a" * 100, how), _stored("gzip/b.gz", b"b")])
    (tmp_path / "out").mkdir()
    return path, lambda: _extract(path, ["b.gz", "a.gz"], tmp_path / "out"), "gzip/a.gz", "download it again"


@pytest.mark.parametrize("how", ["encrypted", "aes", "99", "77"])
@pytest.mark.parametrize("reader", ["keras", "npz", "pth", "archive"])
def test_every_zip_reader_names_an_encrypted_or_unknown_member(tmp_path, opened, reader, how):
    """zipfile raises a RuntimeError for an encrypted member and a NotImplementedError for a method it
    does not inflate (torch.load an internal miniz error): each reader refuses it in one line naming
    the file, the member and its own fix, before opening it."""
    path, read, member, fix = _with_unreadable(tmp_path, reader, how)
    names = opened()
    with pytest.raises(CnnkitError) as exc:
        read()
    msg = str(exc.value)
    readable = "store or deflate" if reader == "pth" else "store, deflate, bzip2 or lzma"
    why = {
        "encrypted": "is encrypted (the archive has a password), and cnnkit reads no encrypted file",
        "99": f"is compressed with AES encryption (zip method 99), which this reader cannot inflate (it reads {readable})",
        "77": f"is compressed with zip method 77, which this reader cannot inflate (it reads {readable})",
    }
    assert msg == f"{path}: its member {member} {why['encrypted' if how == 'aes' else how]}; {msg.split('; ')[-1]}"
    assert msg.endswith(fix) and "\n" not in msg, msg
    assert set(names) <= {"config.json"}
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # b.gz not written either


def test_a_pth_of_bzip2_records_is_named_and_other_readers_read_bzip2_and_lzma(tmp_path):
    """torch.load reads stored and deflated records only: a bzip2 one is refused by name (not "an internal
    miniz error"). Python's zipfile inflates bzip2 and LZMA, and so does every other reader."""
    path, read, member, _ = _with_unreadable(tmp_path, "pth", "bzip2")
    with pytest.raises(CnnkitError) as exc:
        read()
    assert str(exc.value) == (
        f"{path}: its member {member} is compressed with bzip2 (zip method 12), which this reader cannot inflate "
        "(it reads store or deflate); save the weights again with torch.save"
    )
    for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        (tmp_path / str(method)).mkdir()
        folder = tmp_path / str(method)
        real = keras_file(folder)
        with zipfile.ZipFile(real) as z:
            parts = {n: z.read(n) for n in z.namelist()}
        with zipfile.ZipFile(real, "w", method) as z:
            for n, data in parts.items():
                z.writestr(n, data)
        net, size = load_keras(real)
        assert size == (3, 16, 16) and tuple(net(torch.zeros(2, 3, 16, 16)).shape) == (2, 3)
        x = np.arange(12.0).reshape(3, 4)
        with zipfile.ZipFile(folder / "s.npz", "w", method) as z:
            for k, a in {
                "X_train": x,
                "y_train": np.array([0, 1, 0]),
                "X_test": x,
                "y_test": np.array([1, 0, 1]),
            }.items():
                buf = io.BytesIO()
                np.save(buf, a)
                z.writestr(f"{k}.npy", buf.getvalue())
        assert read_npz(folder / "s.npz", znorm=False).values[2, 0].tolist() == [8.0, 9.0, 10.0, 11.0]
        with zipfile.ZipFile(folder / "gzip.zip", "w", method) as z:
            z.writestr("gzip/a.gz", b"a" * 100)
        _extract(folder / "gzip.zip", ["a.gz"], folder)
        assert (folder / "a.gz").read_bytes() == b"a" * 100

"""Reader for the IDX format of MNIST and its siblings (Fashion-MNIST, KMNIST, EMNIST).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian int32
dimensions, then the values in C order. Files may be gzip-compressed (detected from their first
bytes, not their name). See http://yann.lecun.com/exdb/mnist/ ("file formats").
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from cnnkit.download import file_digest
from cnnkit.errors import CnnkitError, human_bytes, memory_available, too_compressed

# type byte -> big-endian numpy dtype
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 8 << 30  # the largest IDX set (EMNIST by_class) is ~0.7 GB
_CHUNK = 16 << 20  # gzip is inflated this much at a time, into a buffer of the declared size


def read_idx(path: str | os.PathLike, md5: str | None = None) -> torch.Tensor:
    """Read an IDX file (raw or gzip) into a tensor of its stored shape.

    Args:
        path: the ``.idx*-ubyte`` or ``.gz`` file.
        md5: the expected md5 of the file as stored; checked before decoding when given.

    Returns:
        A tensor with the file's dimensions, e.g. ``(60000, 28, 28)`` uint8 for MNIST images.

    Raises:
        CnnkitError: the file is missing, does not match ``md5``, or is not a well-formed IDX file
            (bad magic, truncated, trailing bytes). The message names the file and its md5.
    """
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"IDX file not found: {path}; check --data-dir or let cnnkit download it")
    if md5 is not None:
        got = file_digest(path)
        if got != md5.lower():
            _corrupt(path, "checksum mismatch", md5, got)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CnnkitError(f"cannot read {path} ({exc.strerror or exc}); check the file's permissions") from None
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip(path, raw, md5)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES or not 1 <= raw[3] <= 4:
        _corrupt(path, f"bad IDX magic number {raw[:4].hex() or '(empty)'}", md5)
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        _corrupt(path, f"header truncated ({len(raw)} bytes)", md5)
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if len(raw) < expected:
        _corrupt(path, f"truncated: {len(raw)} bytes after decompression, dims {dims} need {expected}", md5)
    if len(raw) > expected:
        _corrupt(path, f"has trailing bytes: more than the {expected} bytes dims {dims} need", md5)
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _valid_magic(head: bytes) -> bool:
    return len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in _DTYPES and 1 <= head[3] <= 4


def _gunzip(path: Path, data: bytes, md5: str | None) -> bytearray:
    """The inflated bytes of a gzip stream, bounded by the size its IDX header declares.

    The header (the first bytes inflated) says how many bytes the file must hold; a declared size
    beyond the memory available, beyond :data:`MAX_BYTES` or beyond what :func:`~cnnkit.errors.too_compressed`
    allows (MNIST inflates 5 times, its label files 2 times; no real IDX data compresses
    :data:`~cnnkit.errors.MAX_RATIO` times: a gzip bomb) is refused before anything
    big is allocated, and inflating stops one byte past the declared size (the caller then reports
    trailing bytes). A bad magic number stops after 4 bytes. Memory is the declared size, once.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            head = f.read(4)
            if not _valid_magic(head):
                return bytearray(head)  # the caller names the bad magic number
            head += f.read(4 * head[3])
            if len(head) < 4 + 4 * head[3]:
                return bytearray(head)  # the caller reports the truncated header
            dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(head[3])]
            expected = len(head) + math.prod(dims) * _DTYPES[head[2]].itemsize
            _check_declared(path, dims, expected, len(data), md5)
            out = bytearray(expected + 1)  # one byte more: room to notice trailing bytes
            n = len(head)
            with memoryview(out) as view:
                view[:n] = head
                while n < len(out):
                    got = f.readinto(view[n : n + _CHUNK])
                    if not got:
                        break
                    n += got
            del out[n:]
            return out
    except (EOFError, OSError, zlib.error) as exc:
        _corrupt(path, f"gzip stream is broken ({exc})", md5)


def _check_declared(path: Path, dims: list[int], expected: int, compressed: int, md5: str | None) -> None:
    """Refuse a gzip IDX file whose header declares more bytes than can or should be inflated."""
    if expected > MAX_BYTES:
        _corrupt(path, f"its header declares dims {dims}: {human_bytes(expected)}, more than any IDX set", md5)
    if too_compressed(expected, compressed):
        _corrupt(
            path,
            f"its header declares dims {dims}: {human_bytes(expected)} from {human_bytes(compressed)} of gzip, "
            f"{expected // compressed:,} times more; IDX data never compresses that well: the header is damaged or the file is a gzip bomb",
            md5,
        )
    free = memory_available()
    if expected > free // 2:
        raise CnnkitError(
            f"{path}: decoding it needs {human_bytes(expected)} (dims {dims}), more than half the "
            f"{human_bytes(free)} of memory available; free some memory and try again"
        )


def _corrupt(path: Path, problem: str, md5: str | None, got: str | None = None) -> None:
    got = got or file_digest(path)
    expected = f"expected md5 {md5}" if md5 else "no expected md5 given"
    raise CnnkitError(
        f"{path}: corrupt or truncated IDX file ({problem}); it has md5 {got}, {expected}: "
        "delete it and download it again"
    )

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
from cnnkit.errors import CnnkitError, memory_available

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
_CHUNK = 16 << 20  # gzip is inflated this much at a time: memory grows with the data only


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
        limit = min(memory_available() // 2, MAX_BYTES)  # a gzip bomb stops here, not in the allocator
        try:
            raw = _gunzip(raw, limit)
        except (EOFError, OSError, zlib.error) as exc:
            _corrupt(path, f"gzip stream is broken ({exc})", md5)
        if raw is None:
            _corrupt(path, f"it decompresses to more than {limit:,} bytes", md5)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES or not 1 <= raw[3] <= 4:
        _corrupt(path, f"bad IDX magic number {raw[:4].hex() or '(empty)'}", md5)
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        _corrupt(path, f"header truncated ({len(raw)} bytes)", md5)
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        _corrupt(path, f"{what}: {len(raw)} bytes after decompression, dims {dims} need {expected}", md5)
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _gunzip(data: bytes, limit: int) -> bytearray | None:
    """The inflated bytes of a gzip stream, or None past ``limit`` bytes.

    Inflated chunk by chunk: ``GzipFile.read(n)`` allocates ``n`` bytes up front, so reading with the
    bound as ``n`` would reserve gigabytes of address space for a 47 MB file (and fail under ``ulimit -v``).
    """
    out = bytearray()
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        while chunk := f.read(_CHUNK):
            out += chunk
            if len(out) > limit:
                return None
    return out


def _corrupt(path: Path, problem: str, md5: str | None, got: str | None = None) -> None:
    got = got or file_digest(path)
    expected = f"expected md5 {md5}" if md5 else "no expected md5 given"
    raise CnnkitError(
        f"{path}: corrupt or truncated IDX file ({problem}); it has md5 {got}, {expected}: "
        "delete it and download it again"
    )

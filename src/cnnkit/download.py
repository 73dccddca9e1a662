"""The only module that touches the network: checksummed, atomic downloads.

Anything fetched (datasets, pretrained weights) goes through :func:`download_url`,
which streams to a temporary file beside the destination, verifies the checksum,
then renames it into place -- a failed or interrupted download never leaves a
half-written file behind. ``file://`` URLs work too (that is how the tests run here).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cnnkit.errors import CnnkitError, disk_full, human_bytes, is_disk_full, short_error, temp_prefix

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: str | os.PathLike, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise :class:`CnnkitError` unless ``path`` exists and matches the given checksum(s)."""
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"file not found: {path}")
    bad = _mismatch(path, md5, sha256)
    if bad:
        raise CnnkitError(f"{path}: {bad}; the file is corrupt or truncated: delete it and download it again")


def _mismatch(path: Path, md5: str | None, sha256: str | None) -> str | None:
    """``"<algorithm> checksum mismatch (expected .., got ..)"`` for the first checksum ``path`` fails, else None."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        got = file_digest(path, algorithm)
        if not got.startswith(expected.lower()):  # timm/torchvision publish sha256 prefixes
            return f"{algorithm} checksum mismatch (expected {expected}, got {got})"
    return None


def download_url(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its checksum.

    An existing ``dest`` with the right checksum is kept as it is (no download).
    Returns the destination path. Raises :class:`CnnkitError` on a network error
    or a checksum mismatch; in both cases nothing is left at ``dest``.
    """
    dest = Path(dest)
    if dest.is_file():
        try:
            check_file(dest, md5, sha256)
            return dest
        except CnnkitError:
            pass  # stale or corrupt: download again
    elif dest.exists() or dest.is_symlink():
        raise CnnkitError(f"cannot download to {dest}: something that is not a file is there; move it away")
    created = _make_parents(dest.parent)
    _remove_stale_parts(dest)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=".part", dir=dest.parent)
        with os.fdopen(fd, "wb") as out:
            _fetch(url, dest, out, progress, timeout)
        bad = _mismatch(Path(tmp), md5, sha256)
        if bad:  # the temporary file goes below: the message names the URL fetched, not a file to delete
            raise CnnkitError(
                f"{url}: {bad}; it serves a damaged file or not the published one, and nothing was kept "
                f"at {dest}: try again later or another mirror, or put the right file there yourself"
            )
        os.replace(tmp, dest)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(dest) from None
        raise CnnkitError(f"cannot write {dest} ({exc.strerror or exc}); check that its folder is writable") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not dest.is_file():
            _remove_empty(created)  # a failed download leaves no empty folders behind
    return dest


def _fetch(url: str, dest: Path, out, progress: bool, timeout: float) -> None:
    """Stream ``url`` into the open file ``out``; a network error at any point is a CnnkitError."""
    where = f"check the connection, or put the file at {dest} yourself"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (checksummed)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        # the server writes an HTTP error's reason and a bad status line: either may be long or hold a
        # line break; a URLError's own text wraps its reason (an OSError or a text) in "<urlopen error ...>"
        reason = exc.reason if type(exc) is urllib.error.URLError else exc
        why = short_error(reason if isinstance(reason, BaseException) else ValueError(reason), clause=True)
        raise CnnkitError(f"could not download {url}: {why}; {where}") from None
    with response:
        total = _announced(response)
        if total is not None and total > shutil.disk_usage(dest.parent).free:
            raise CnnkitError(
                f"{url} is {human_bytes(total)}, more than the {human_bytes(shutil.disk_usage(dest.parent).free)} "
                f"free in {dest.parent}; free some space, or point cnnkit at another folder (--data-dir, $CNNKIT_HOME)"
            )
        bar = _progress(dest.name, total) if progress else None
        received = 0
        try:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.HTTPException, OSError) as exc:  # reset, timeout, cut short
                    raise CnnkitError(
                        f"download of {url} broke off ({type(exc).__name__}: {exc}); nothing was kept: {where}"
                    ) from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar[0].update(bar[1], advance=len(chunk))
        finally:
            if bar is not None:
                bar[0].stop()
    if total is not None and received < total:  # the connection closed early: urllib reads it as the end
        raise CnnkitError(
            f"download of {url} broke off after {received:,} of its {total:,} bytes; nothing was kept: {where}"
        )


def _announced(response) -> int | None:
    """The size a response's Content-Length announces; None where it announces none, or no number."""
    try:
        total = int(response.headers.get("Content-Length") or "")
    except ValueError:  # absent, or not a number: the length is unknown (the checksum still decides)
        return None
    return total if total >= 0 else None


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest first."""
    missing = []
    for f in (folder, *folder.parents):
        if f.is_dir():
            break
        missing.append(f)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CnnkitError(
            f"cannot download into {folder}: a file of that name (or of a folder above it) is in the way; "
            "move it away or pass another --data-dir"
        ) from None
    except OSError as exc:
        raise CnnkitError(f"cannot create {folder} ({exc.strerror or exc}); pass a writable --data-dir") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for f in folders:  # deepest first
        try:
            f.rmdir()
        except OSError:
            return  # not empty (another download's files), or gone


STALE_PART_SECONDS = 600  # a download in progress writes its .part at least every read timeout (60 s)


def _remove_stale_parts(dest: Path) -> None:
    """Remove the ``.<name>.*.part`` files of downloads of ``dest`` that were killed (untouched for
    :data:`STALE_PART_SECONDS`); a download in progress in another process is left alone."""
    import glob
    import time

    for part in dest.parent.glob(f"{glob.escape(temp_prefix(dest))}*.part"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def _progress(name: str, total: int | None):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
    )
    bar.start()
    return bar, bar.add_task(f"downloading {name}", total=total)

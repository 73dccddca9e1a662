"""cnnkit.download against a local HTTP server that misbehaves: a transfer cut short, a size it
cannot have, a Content-Length that is no number, a status line of its own making. Nothing
half-written is ever left at the destination."""

import errno
import hashlib
import http.server
import os
import socket
import threading

import pytest

from cnnkit.download import download_url
from cnnkit.errors import SHORT_CHARS, CnnkitError

DATA = bytes(range(256)) * 40  # 10,240 bytes
MD5 = hashlib.md5(DATA).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/<mode>/<name>``: ``good``, ``short`` (half the body, then the connection closes),
    ``huge`` (announces a petabyte), ``nonumber`` (a Content-Length that is not a number); the
    server's own status lines: ``reason`` (a 404 whose reason is 33,000 characters), ``stop`` (a
    reason ending in a full stop), ``garbage`` (a status line that is no HTTP, 40,000 characters)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        mode = self.path.strip("/").split("/")[0]
        if mode in ("reason", "stop", "garbage"):
            line = {
                "reason": "HTTP/1.1 404 " + "Not Found. " * 3000,
                "stop": "HTTP/1.1 503 Service Unavailable. Try again later.",
                "garbage": "XYZ " + "garbage " * 5000,
            }[mode]
            self.wfile.write(f"{line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            self.close_connection = True
            return
        length = {"good": len(DATA), "short": len(DATA), "huge": 10**15, "nonumber": "ten"}[mode]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(DATA[: len(DATA) // 2] if mode in ("short", "huge") else DATA)
        self.close_connection = True


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _left(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("md5", [MD5, None], ids=["checksum", "no-checksum"])
def test_a_transfer_cut_short_is_refused_and_nothing_is_kept(server, tmp_path, md5):
    """Half the announced bytes, then the connection closes: without a checksum (weights published
    without one) the half file must not be kept as the whole one, where it would be trusted forever."""
    with pytest.raises(CnnkitError) as err:
        download_url(f"{server}/short/w.bin", tmp_path / "w.bin", md5=md5, progress=False)
    assert "broke off after 5,120 of its 10,240 bytes" in str(err.value) and "\n" not in str(err.value)
    assert _left(tmp_path) == []
    assert download_url(f"{server}/good/w.bin", tmp_path / "w.bin", md5=md5, progress=False).read_bytes() == DATA


def test_a_size_beyond_the_free_disk_is_refused_before_writing(server, tmp_path):
    with pytest.raises(CnnkitError, match=r"w.bin is 1.0 PB, more than the .* free in"):
        download_url(f"{server}/huge/w.bin", tmp_path / "w.bin", progress=False)
    assert _left(tmp_path) == []


def test_a_content_length_that_is_no_number_is_an_unknown_length(server, tmp_path):
    """No traceback (a ValueError would also stop the dataset's other mirrors from being tried):
    the body is read to its end and the checksum decides."""
    path = download_url(f"{server}/nonumber/w.bin", tmp_path / "w.bin", md5=MD5, progress=False)
    assert path.read_bytes() == DATA and _left(tmp_path) == ["w.bin"]


def test_a_mirror_that_fails_then_one_that_works(server, tmp_path):
    from cnnkit.data import datasets

    info = datasets.DatasetInfo("toy", "toy", (), {"w.bin": MD5}, ("a", "b"))
    folder = datasets.fetch(info, tmp_path, mirrors=(f"{server}/short", f"{server}/nonumber"))
    assert (folder / "w.bin").read_bytes() == DATA and _left(folder) == ["w.bin"]


@pytest.mark.parametrize("mode", ["reason", "garbage"])
def test_a_status_line_of_any_length_is_quoted_in_one_short_line(server, tmp_path, mode):
    """The server writes an HTTP error's reason and a status line that is no HTTP: a long one is cut
    to whole sentences (its line break dropped), and the fix still ends the message."""
    with pytest.raises(CnnkitError) as err:
        download_url(f"{server}/{mode}/w.bin", tmp_path / "w.bin", progress=False)
    text = str(err.value)
    start = f"could not download {server}/{mode}/w.bin: " + (
        "HTTP Error 404: Not Found. " if mode == "reason" else "XYZ "
    )
    where = f"; check the connection, or put the file at {tmp_path / 'w.bin'} yourself"
    assert text.startswith(start) and text.endswith(" ..." + where) and "\n" not in text and "\r" not in text
    assert len(text) <= len(f"could not download {server}/{mode}/w.bin: ") + SHORT_CHARS + len(where)
    assert _left(tmp_path) == []


def test_a_reason_that_ends_in_a_full_stop_reads_on_into_the_fix(server, tmp_path):
    with pytest.raises(CnnkitError) as err:
        download_url(f"{server}/stop/w.bin", tmp_path / "w.bin", progress=False)
    assert str(err.value) == (
        f"could not download {server}/stop/w.bin: HTTP Error 503: Service Unavailable. Try again later; "
        f"check the connection, or put the file at {tmp_path / 'w.bin'} yourself"
    )


def test_a_connection_refused_is_its_reason_without_urllibs_wrapping(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CnnkitError) as err:
        download_url(f"http://127.0.0.1:{port}/w.bin", tmp_path / "w.bin", progress=False)
    assert str(err.value) == (
        f"could not download http://127.0.0.1:{port}/w.bin: [Errno {errno.ECONNREFUSED}] "
        f"{os.strerror(errno.ECONNREFUSED)}; "
        f"check the connection, or put the file at {tmp_path / 'w.bin'} yourself"
    )

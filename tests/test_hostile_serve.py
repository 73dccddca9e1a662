"""Hostile input, round 3, for the workbench and the files it reads and writes.

The workbench over raw loopback sockets (bounded in count and time): a negative, missing, malformed or
lying Content-Length is refused before the body is read; a silent connection is dropped after
``Limits.connection_seconds``; a client that hangs up is one log line, never a traceback; bodies and
specs nested too deep are a one-line 400; runs of other tasks are refused by the Predict page by name.
Then the MNIST reader under a small address-space limit, and figures written through temp files that
no kill leaves behind for good.
"""

import gzip
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_serve import digit_png, make_run, start, stop

from cnnkit.serve import Limits
from cnnkit.serve.limits import Refused

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------- raw HTTP


def connect(server, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=timeout)


def head(server, method: str, path: str, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.server_address[1]}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(s: socket.socket) -> tuple[int, dict]:
    """Read an answer until the server closes: (status, JSON body). Times out with the socket."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    status = int(data.split(b" ", 2)[1])
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return status, body


def post_raw(
    server, path: str, headers: dict, body: bytes = b"", close_write: bool = False, timeout: float = 10.0
) -> tuple[int, dict]:
    s = connect(server, timeout)
    s.sendall(head(server, "POST", path, headers) + body)
    if close_write:
        s.shutdown(socket.SHUT_WR)
    return answer(s)


@pytest.fixture(scope="module")
def bench():
    server, client = start(None, Limits(json_bytes=1000, connection_seconds=1.0))
    yield server, client
    stop(server)


# ----------------------------------------------------------------------------- Content-Length


@pytest.mark.parametrize(
    "length,status,words",
    [
        ("-1", 400, "bad Content-Length '-1'"),
        ("abc", 400, "bad Content-Length"),
        ("+5", 400, "bad Content-Length"),
        ("1_0", 400, "bad Content-Length"),  # int() would take it
        ("0x10", 400, "bad Content-Length"),
        ("99999999999999999999999", 400, "bad Content-Length"),
        ("5000", 413, "at most 1,000"),
    ],
)
def test_a_bad_content_length_is_refused_before_the_body_is_read(bench, length, status, words):
    """The body follows and the connection stays open: a server that read to the end would hang."""
    server, _ = bench
    t0 = time.monotonic()
    got, res = post_raw(
        server,
        "/api/conv",
        {"Content-Type": "application/json", "Content-Length": length},
        b'{"input": [5], "kernel": 3}' + b" " * 2000,
    )
    assert (got, res["status"]) == (status, status) and words in res["error"], res
    assert time.monotonic() - t0 < 0.9  # answered at once, not after the connection timeout


def test_no_content_length_or_a_chunked_body_is_411(bench):
    server, _ = bench
    got, res = post_raw(server, "/api/conv", {"Content-Type": "application/json"}, b'{"input": [5]}')
    assert got == 411 and "Content-Length" in res["error"]
    got, res = post_raw(server, "/api/conv", {"Transfer-Encoding": "chunked"}, b"5\r\n{}   \r\n0\r\n\r\n")
    assert got == 411 and "chunked" in res["error"]


def test_two_different_content_lengths_are_refused(bench):
    server, _ = bench
    s = connect(server)
    s.sendall(head(server, "POST", "/api/conv", {"Content-Length": "2"})[:-2] + b"Content-Length: 30\r\n\r\n{}")
    got, res = answer(s)
    assert got == 400 and "2 different Content-Length" in res["error"]


def test_a_body_shorter_than_announced_is_refused(bench):
    server, _ = bench
    # the client stops sending: a 400 at once
    got, res = post_raw(server, "/api/conv", {"Content-Length": "100"}, b'{"input": [5]}', close_write=True)
    assert got == 400 and "ended after 14 of the 100 bytes" in res["error"]
    # the client stays silent with the connection open: a 408 after the connection timeout (1 s)
    t0 = time.monotonic()
    got, res = post_raw(server, "/api/conv", {"Content-Length": "100"}, b'{"input": [5]}')
    assert got == 408 and "did not arrive within 1 s" in res["error"]
    assert 0.9 < time.monotonic() - t0 < 5


def test_a_correct_body_still_works(bench):
    server, _ = bench
    body = json.dumps({"input": [7], "kernel": 3}).encode()
    got, res = post_raw(
        server, "/api/conv", {"Content-Type": "application/json", "Content-Length": str(len(body))}, body
    )
    assert got == 200 and res["output"] == [5], res


# ----------------------------------------------------------------------------- slow and stalled clients


def test_stalled_clients_are_dropped_and_others_are_served():
    """Three clients send half a request and stall; eight others are answered meanwhile; the stalled
    connections are closed by the server after connection_seconds (0.5 s)."""
    server, client = start(None, Limits(connection_seconds=0.5))
    try:
        stalled = []
        for what in (b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0", b"POST /api/conv HTTP/1.1\r\n", b"GE"):
            s = connect(server)
            s.sendall(what)
            stalled.append(s)
        results = []

        def one(k):
            results.append(client.json("/api/conv", {"input": [7 + k], "kernel": 3}))

        threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r[1]["output"][0] for r in results) == [5 + k for k in range(8)]
        t0 = time.monotonic()
        for s in stalled:
            assert s.recv(1024) == b""  # closed by the server (the socket's own timeout is 10 s)
            s.close()
        assert time.monotonic() - t0 < 5
        assert client.json("/api/conv", {"input": [7], "kernel": 3})[0] == 200
    finally:
        stop(server)


# ----------------------------------------------------------------------------- hang-ups


def _hang_up(server, request: bytes, wait: float) -> None:
    s = connect(server)
    s.sendall(request)
    time.sleep(wait)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    s.close()


def test_a_burst_of_connections_waits_for_the_server_rather_than_being_dropped():
    """32 clients connect while the server has not accepted any yet: the kernel holds them all."""
    from cnnkit.serve import make_server

    server = make_server(None, "127.0.0.1", 0)  # listening, not serving yet
    clients = []
    try:
        for _ in range(32):
            try:
                clients.append(socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=0.3))
            except OSError:
                break
        assert len(clients) == 32
    finally:
        for c in clients:
            c.close()
        server.server_close()
        server.app.close()


def test_a_client_that_hangs_up_is_one_log_line(capsys):
    server, _ = start(None)

    def slow_refusal(query):
        time.sleep(0.3)  # the client has gone by then: the error answer meets a reset connection
        raise Refused("no such thing", 404)

    server.app.get_routes["/api/slow"] = slow_refusal
    try:
        err = ""
        cases = [
            head(server, "GET", "/api/slow", {}),  # hangs up before the answer
            head(server, "GET", "/api/runs", {})[:30],
        ]  # hangs up amid the headers
        for k, request in enumerate(cases, 1):
            _hang_up(server, request, 0.05)
            deadline = time.monotonic() + 5
            while err.count("hung up") < k and "Traceback" not in err and time.monotonic() < deadline:
                time.sleep(0.05)
                err += capsys.readouterr().err
        assert "Traceback" not in err and "Exception" not in err, err
        hung = [line for line in err.splitlines() if "hung up" in line]
        assert len(hung) == 2 and all(len(line) < 100 for line in hung), err
        assert re.search(r"client hung up \((ConnectionResetError|BrokenPipeError)\)", hung[0])
    finally:
        stop(server)


# ----------------------------------------------------------------------------- nesting


def _one_line_400(status: int, res: dict, words: str) -> None:
    assert status == 400 and words in res["error"] and "\n" not in res["error"], (status, res)


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b'{"target": ' + b"[" * 100_000, b'{"target": ' + b'{"a": ' * 500 + b"1" + b"}" * 501]
)
def test_deeply_nested_json_is_a_400(body):
    server, client = start(None)
    try:
        status, _, raw = client.request("/api/analyse", body, {"Content-Type": "application/json"})
        _one_line_400(status, json.loads(raw), "nested")
    finally:
        stop(server)


@pytest.mark.parametrize(
    "layers",
    [
        "\n" + "- " * 3000 + "conv2d",
        " " + "[" * 60_000,
        " " + "{a: " * 10_000,
        "\n" + "".join(" " * (i + 1) + "a:\n" for i in range(300)),
    ],
)
def test_deeply_nested_yaml_spec_is_a_400_in_a_second(layers):
    server, client = start(None)
    try:
        t0 = time.monotonic()
        status, res = client.json("/api/analyse", {"target": "input: 1x12x12\nlayers:" + layers})
        _one_line_400(status, res, "nested more than 64 levels")
        assert time.monotonic() - t0 < 10
    finally:
        stop(server)


def test_a_spec_within_the_nesting_limit_still_builds():
    server, client = start(None)
    try:
        spec = "input: 1x12x12\nlayers:\n  - conv2d: {filters: 4, kernel_size: 3}\n  - flatten\n  - dense: {units: 3}\n"
        status, res = client.json("/api/analyse", {"target": spec})
        assert status == 200 and res["totals"]["params"] == 4 * 9 + 4 + (4 * 10 * 10) * 3 + 3, res
    finally:
        stop(server)


def test_deeply_nested_multipart_is_a_400(tmp_path):
    server, client = start(None)
    try:
        body = b"x"
        for i in reversed(range(2000)):  # each part a multipart of the next boundary
            body = (
                (
                    f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n"
                    f'Content-Disposition: form-data; name="file"\r\n\r\n'
                ).encode()
                + body
                + f"\r\n--b{i}--\r\n".encode()
            )
        status, _, raw = client.request("/api/predict", body, {"Content-Type": "multipart/form-data; boundary=b0"})
        _one_line_400(status, json.loads(raw), "nests multiparts too deeply")
    finally:
        stop(server)


# ----------------------------------------------------------------------------- runs of other tasks


def fake_task_run(folder: Path, task: str) -> Path:
    """A run folder whose model.safetensors metadata names another task (metadata as `cnnkit detect
    train` writes it; one stand-in tensor: the workbench must refuse before it loads weights)."""
    from safetensors.torch import save_file

    from cnnkit.engine.runfolder import FORMAT

    info = {
        "format": FORMAT,
        "task": task,
        "backbone": "tiny",
        "in_channels": 1,
        "out_strides": [8],
        "width": 64,
        "head_convs": 2,
        "input_size": [1, 64, 64],
        "classes": [str(k) for k in range(10)],
        "num_classes": 10,
        "mean": [0.5],
        "std": [0.25],
        "decode": {},
    }
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"), metadata={"cnnkit": json.dumps(info)})
    (folder / "metrics.csv").write_text("epoch,train_loss,val_AP,lr,seconds\n1,1.8,0.1,0.004,9.0\n")
    return folder


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_runs")
    make_run(root / "digits")
    for task in ("detect", "segment", "instance"):
        fake_task_run(root / f"{task}_run", task)
    server, client = start(root)
    yield client
    stop(server)


def test_runs_are_listed_with_their_task(task_runs):
    status, res = task_runs.json("/api/runs")
    assert status == 200
    tasks = {r["name"]: (r["task"], r["has_model"], r["model"]) for r in res["runs"]}
    assert tasks == {
        "digits": ("classify", True, "mnist_fast"),
        "detect_run": ("detect", True, "tiny"),
        "segment_run": ("segment", True, "tiny"),
        "instance_run": ("instance", True, "tiny"),
    }


@pytest.mark.parametrize("task", ["detect", "segment", "instance"])
@pytest.mark.parametrize(
    "path,fields",
    [("/api/predict", {}), ("/api/explain", {"method": "saliency"}), ("/api/explain", {"method": "filters"})],
)
def test_predict_refuses_a_run_of_another_task_by_name(task_runs, tmp_path, task, path, fields):
    png = digit_png(tmp_path / "d.png").read_bytes()
    status, res = task_runs.upload(path, {"model": f"{task}_run", **fields}, {"file": ("d.png", png)})
    assert status == 400, res
    assert re.fullmatch(
        f"run '{task}_run' is a {task} run; the Predict page handles classification "
        f"runs: use `cnnkit {task} predict /.+/{task}_run IMAGE( --out DIR)?`",
        res["error"],
    ), res


@pytest.mark.parametrize(
    "task", ["detect", "segment", "instance", "sequence", "video", "video_predict", "generate", "style"]
)
def test_the_command_a_refused_run_is_pointed_to_parses(tmp_path, task):
    from cnnkit.cli import build_parser
    from cnnkit.serve.runs import Runs

    fake_task_run(tmp_path / "run", task)
    with pytest.raises(Refused) as refused:
        Runs(tmp_path).checkpoint("run")
    command = re.search(r"`cnnkit (.+)`", str(refused.value)).group(1).split()
    args = build_parser().parse_args(command)  # argparse exits on a missing argument or an unknown command
    assert args.run == str(tmp_path / "run") and command[1] == "predict"


def test_the_classification_run_beside_them_still_predicts(task_runs, tmp_path):
    png = digit_png(tmp_path / "d.png").read_bytes()
    status, res = task_runs.upload("/api/predict", {"model": "digits"}, {"file": ("d.png", png)})
    assert status == 200 and len(res["top"]) == 5


def test_the_predict_page_offers_classification_runs_only():
    js = (SRC / "cnnkit" / "serve" / "static" / "predict.js").read_text()
    assert 'r.has_model && r.task === "classify"' in js


# ----------------------------------------------------------------------------- the MNIST reader, address space

_UNDER_LIMIT = """
import resource, sys
from cnnkit.data.idx import read_idx
extra = int(sys.argv[2])
with open("/proc/self/status") as f:
    size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
limit = size + extra if extra else int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
x = read_idx(sys.argv[1])
print(tuple(x.shape), int(x.sum()))
"""


def _read_under_limit(path, extra: int = 0, limit: int = 0) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run(
        [sys.executable, "-c", _UNDER_LIMIT, str(path), str(extra), str(limit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_gzip_idx_file_reads_with_256_mb_of_address_space_to_spare(tmp_path):
    """The reader allocates what the data needs (a few MB here), not its 8 GiB bound up front."""
    images = np.random.default_rng(0).integers(0, 256, (2000, 28, 28), dtype=np.uint8)
    raw = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape) + images.tobytes()
    (tmp_path / "images.gz").write_bytes(gzip.compress(raw))
    got = _read_under_limit(tmp_path / "images.gz", extra=256 << 20)
    assert got == f"{(2000, 28, 28)} {int(images.astype(np.int64).sum())}"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_mnist_loads_with_1_gb_of_address_space_to_spare(data_dir):
    """MNIST's 47 MB of training images need far less than the reader's 8 GiB bound; 1 GiB above what
    the interpreter has mapped after importing torch (more with a CUDA build of torch than without)."""
    got = _read_under_limit(data_dir / "mnist" / "train-images-idx3-ubyte.gz", extra=1 << 30)
    assert got.startswith("(60000, 28, 28) ")


# ----------------------------------------------------------------------------- figures: no temp file left for good


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _curves(path):
    from cnnkit import plots

    rows = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1}]
    return plots.training_curves(rows, path)


def test_a_temp_file_left_by_a_killed_writer_goes_at_the_next_write(tmp_path):
    dead = tmp_path / f".curves.png.{_dead_pid()}.tmp"
    dead_random = tmp_path / f".curves.png.{_dead_pid()}.k3x9q_1a.tmp"
    live = tmp_path / f".curves.png.{os.getpid()}.zz.tmp"  # a writer still at work: kept
    old_live = tmp_path / f".curves.png.{os.getppid()}.tmp"  # alive, but hours old: pid reused
    other = tmp_path / ".confusion_test.png.1.tmp"  # another figure's: not this write's business
    for f in (dead, dead_random, live, old_live, other):
        f.write_bytes(b"half a png")
    os.utime(old_live, (time.time() - 7200, time.time() - 7200))
    _curves(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live.name, other.name, "curves.png"])


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    (tmp_path / "curves.png").write_bytes(b"the previous figure")

    def fail(self, *a, **k):
        raise KeyboardInterrupt  # a Ctrl-C amid the write

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(KeyboardInterrupt):
        _curves(tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    assert (tmp_path / "curves.png").read_bytes() == b"the previous figure"

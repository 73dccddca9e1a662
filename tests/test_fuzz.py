"""Property-based fuzzing of every place user input enters: each case is a clean CnnkitError or a success.

Covered: generated network specs (valid and absurd layer arguments) and YAML/JSON spec text;
generated network descriptions and checkpoint metadata; byte-level corruption of checkpoints,
IDX files and images; absurd CLI values (summary, fit, train, predict). Never another exception;
each case within a deadline of CPU time; the process's memory bounded. Derandomised with fixed
example counts (>= 1,000 cases in all), so CI runs the same cases every time.
"""

import functools
import io
import json
import resource
import struct
import time
import zlib

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as st_save

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")


def fuzz(n: int, deadline_s: float | None = 3.0):
    """``n`` derandomised cases, each within ``deadline_s`` seconds of this process's CPU time (None:
    no deadline).

    The deadline is CPU time (``time.process_time``, every thread of the process; the tests run torch
    on one thread), not hypothesis's wall-clock ``deadline``: CPU time is what a case computes and
    does not grow while the process waits for a core other processes hold, so a loaded machine does
    not fail a case, and a case that computes too long fails on any machine. A case that waits rather
    than computes (a sleep, a lock, a network call) spends no CPU time: it fails past
    ``WAIT_FACTOR`` times the deadline in wall time, a bound no load short of that factor reaches."""
    chosen = settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )

    def apply(test):
        if deadline_s is not None:
            test.hypothesis.inner_test = within(deadline_s, test.hypothesis.inner_test)
        return chosen(test)

    return apply


WAIT_FACTOR = 10


def within(deadline_s: float, case):
    """``case`` failing (an AssertionError that hypothesis shrinks like any other) when one call spends
    more than ``deadline_s`` seconds of CPU time, or more than ``WAIT_FACTOR`` times that in wall time."""

    @functools.wraps(case)
    def timed(*args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        result = case(*args, **kwargs)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert cpu <= deadline_s, f"the case took {cpu:.2f} s of CPU time, past its deadline of {deadline_s} s"
        assert wall <= WAIT_FACTOR * deadline_s, (
            f"the case took {wall:.1f} s, {wall / deadline_s:.0f} times its deadline"
        )
        return result

    return timed


def test_a_case_fails_past_its_deadline_of_cpu_time_and_not_for_waiting_on_a_loaded_machine():
    @fuzz(2, deadline_s=0.1)
    @given(st.just(0))
    def waits(_):  # the wall time a busy machine adds to a case: no CPU time spent
        time.sleep(0.15)

    @fuzz(2, deadline_s=0.1)
    @given(st.just(0))
    def computes(_):
        end = time.process_time() + 0.15
        while time.process_time() < end:
            pass

    @fuzz(2, deadline_s=0.01)
    @given(st.just(0))
    def hangs(_):
        time.sleep(0.15)

    waits()
    with pytest.raises(AssertionError, match="CPU time, past its deadline of 0.1 s"):
        computes()
    with pytest.raises(AssertionError, match="times its deadline"):
        hangs()


def clean(fn, *args, **kwargs):
    """Run ``fn``: a CnnkitError is a clean answer; anything else propagates and fails the test."""
    try:
        return fn(*args, **kwargs)
    except CnnkitError as exc:
        assert str(exc).strip(), "a CnnkitError must say what was wrong"
        return exc


# ----------------------------------------------------------------------------- values

# the odd values a user (or a crafted file) may put anywhere
ODD = st.one_of(
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, 10**8, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([3.7, 0.5, -0.0]),
    st.text(max_size=8),
    st.sampled_from(["abc", "same", "valid", "caffe", "", "relu", "3x3"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-2, 9), max_size=4),
)
SIZES = st.integers(1, 6)

LAYER_TYPES = [
    "conv2d",
    "conv1d",
    "conv3d",
    "separable_conv2d",
    "depthwise_conv2d",
    "conv2d_transpose",
    "max_pooling2d",
    "average_pooling2d",
    "global_average_pooling2d",
    "global_max_pooling2d",
    "upsampling2d",
    "batch_normalization",
    "dropout",
    "flatten",
    "dense",
    "activation",
    "reshape",
    "relu",
    "softmax",
    "lrn",
    "add",
    "concatenate",
    "no_such_layer",
]
ARG_NAMES = [
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "dilation_rate",
    "groups",
    "units",
    "pool_size",
    "rate",
    "size",
    "activation",
    "use_bias",
    "depth_multiplier",
    "target_shape",
    "inputs",
    "name",
    "bogus",
]


REQUIRED = {
    "conv1d": ("filters", "kernel_size"),
    "conv2d": ("filters", "kernel_size"),
    "conv3d": ("filters", "kernel_size"),
    "separable_conv2d": ("filters", "kernel_size"),
    "conv2d_transpose": ("filters", "kernel_size"),
    "depthwise_conv2d": ("kernel_size",),
    "dense": ("units",),
    "activation": ("activation",),
}
PLAUSIBLE_TYPES = [
    "conv2d",
    "conv2d",
    "separable_conv2d",
    "depthwise_conv2d",
    "conv2d_transpose",
    "max_pooling2d",
    "average_pooling2d",
    "batch_normalization",
    "dropout",
    "relu",
    "activation",
    "upsampling2d",
    "global_average_pooling2d",
    "flatten",
    "dense",
]


def _plausible(arg: str):
    return {
        "filters": st.integers(1, 8),
        "units": st.integers(1, 8),
        "kernel_size": st.integers(1, 3),
        "strides": st.integers(1, 2),
        "padding": st.sampled_from(["same", "valid"]),
        "dilation_rate": st.integers(1, 2),
        "pool_size": st.integers(1, 2),
        "rate": st.floats(0, 0.9),
        "size": st.integers(1, 2),
        "use_bias": st.booleans(),
        "depth_multiplier": st.integers(1, 2),
        "activation": st.sampled_from(["relu", "tanh", "softmax", "linear", "nope"]),
    }.get(arg, ODD)


@st.composite
def layer(draw):
    """A quarter of the layers are absurd (any type, any argument, any value), the rest plausible
    (required arguments present, values in range) so that many specs build and run."""
    if draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(LAYER_TYPES))
        names = draw(st.lists(st.sampled_from(ARG_NAMES), max_size=4, unique=True))
        args = {a: draw(ODD) for a in names}
    else:
        kind = draw(st.sampled_from(PLAUSIBLE_TYPES))
        optional = ["strides", "padding", "dilation_rate", "pool_size", "rate", "size", "use_bias"]
        names = list(REQUIRED.get(kind, ())) + draw(st.lists(st.sampled_from(optional), max_size=2, unique=True))
        allowed = {
            "max_pooling2d": {"pool_size", "strides", "padding"},
            "average_pooling2d": {"pool_size", "strides", "padding"},
            "dropout": {"rate"},
            "upsampling2d": {"size"},
            "dense": {"units", "use_bias"},
            "activation": {"activation"},
        }.get(kind)
        args = {a: draw(_plausible(a)) for a in names if allowed is None or a in allowed}
        if kind in ("batch_normalization", "relu", "flatten", "global_average_pooling2d"):
            args = {}
    return {kind: args} if draw(st.booleans()) else {"type": kind, **args}


@st.composite
def spec(draw):
    if draw(st.booleans()):
        dims = [draw(st.integers(1, 4)), draw(st.integers(4, 16)), draw(st.integers(4, 16))]
    else:
        dims = draw(st.lists(SIZES, min_size=1, max_size=4))
    text = draw(st.sampled_from(["x", ","]))
    return {
        "input": text.join(map(str, dims)) if draw(st.booleans()) else dims,
        "layers": draw(st.lists(layer(), min_size=1, max_size=5)),
    }


@fuzz(350)
@given(spec())
def test_generated_specs_build_or_fail_cleanly(s):
    from cnnkit.models.spec import build_from_spec

    out = clean(build_from_spec, s)
    if isinstance(out, tuple):  # it built: it must also run on its own input size
        model, size = out
        with torch.no_grad():
            y = model.eval()(torch.rand(2, *size))
        assert y.shape[0] == 2


@fuzz(80)
@given(st.text(max_size=200), st.sampled_from([".yaml", ".json"]))
def test_spec_text_never_crashes_the_reader(tmp_path_factory, text, suffix):
    from cnnkit.models.spec import load_spec

    path = tmp_path_factory.mktemp("spec") / f"s{suffix}"
    path.write_text(text)
    clean(load_spec, path)


# ----------------------------------------------------------------------------- network descriptions

NN_TYPES = [
    "Sequential",
    "Conv2d",
    "Linear",
    "BatchNorm2d",
    "ReLU",
    "MaxPool2d",
    "Flatten",
    "Dropout",
    "AdaptiveAvgPool2d",
    "Softmax",
    "os.system",
    "Module",
    "__import__",
]


@st.composite
def tree(draw, depth=0):
    kind = draw(st.sampled_from(NN_TYPES))
    if kind == "Sequential" and depth < 3:
        return {"type": kind, "layers": draw(st.lists(tree(depth + 1), max_size=4))}
    from cnnkit.models.network import LAYERS

    args = {a: draw(ODD) for a in LAYERS.get(kind, ("command",)) if draw(st.integers(0, 5))}
    return {"type": kind, **args}


@fuzz(200)
@given(tree())
def test_generated_network_descriptions_build_or_fail_cleanly(t):
    from cnnkit.models.network import build

    clean(build, {"kind": "modules", "tree": t}, 2, 1, "fuzz.safetensors", input_size=(1, 8, 8))


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    from cnnkit.tasks.classify.finetune import save_finetuned

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    out = tmp_path_factory.mktemp("good")
    return save_finetuned(
        out, net, "net.py:build", ["a", "b"], (1, 8, 8), (0.5,), (0.25,), [], {"stages": []}
    ).read_bytes()


@st.composite
def byte_damage(draw, n: int):
    ops = draw(
        st.lists(
            st.tuples(st.sampled_from(["cut", "flip", "insert", "zero8"]), st.integers(0, n - 1), st.integers(0, 255)),
            min_size=1,
            max_size=4,
        )
    )
    return ops


def _damage(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        pos = min(pos, max(len(b) - 1, 0))
        if op == "cut":
            del b[pos:]
        elif op == "flip" and b:
            b[pos] ^= val or 1
        elif op == "insert":
            b[pos:pos] = bytes([val]) * (val % 7 + 1)
        elif op == "zero8":
            b[pos : pos + 8] = b"\xff" * 8 if val % 2 else b"\x00" * 8
    return bytes(b)


@fuzz(200)
@given(st.data())
def test_corrupted_checkpoints_load_or_fail_cleanly(tmp_path_factory, good_checkpoint, data):
    ops = data.draw(byte_damage(len(good_checkpoint)))
    path = tmp_path_factory.mktemp("ck") / "model.safetensors"
    path.write_bytes(_damage(good_checkpoint, ops))
    out = clean(cnnkit.load, path)
    if isinstance(out, nn.Module):
        with torch.no_grad():
            assert out(torch.rand(1, *out.input_size)).shape[0] == 1


INFO_KEYS = [
    "num_classes",
    "input_size",
    "classes",
    "mean",
    "std",
    "tta",
    "fcn",
    "network",
    "ensemble",
    "model",
    "format",
]


@fuzz(150)
@given(
    st.dictionaries(
        st.sampled_from(INFO_KEYS),
        st.one_of(ODD, st.lists(ODD, max_size=3), st.dictionaries(st.text(max_size=5), ODD, max_size=3)),
        max_size=4,
    )
)
def test_crafted_metadata_loads_or_fails_cleanly(tmp_path_factory, good_checkpoint, edits):
    n = int.from_bytes(good_checkpoint[:8], "little")
    header = json.loads(good_checkpoint[8 : 8 + n])
    info = json.loads(header["__metadata__"]["cnnkit"])
    info.update(edits)
    from safetensors.torch import load as st_load

    tensors = st_load(good_checkpoint)
    path = tmp_path_factory.mktemp("meta") / "model.safetensors"
    path.write_bytes(st_save(tensors, metadata={"cnnkit": json.dumps(info, default=str)}))
    out = clean(cnnkit.load, path)
    if isinstance(out, nn.Module):
        with torch.no_grad():
            out(torch.rand(1, *out.input_size))


# ----------------------------------------------------------------------------- data files and images


def _idx(dims, dtype=0x08) -> bytes:
    body = bytes(int(torch.tensor(dims).prod()) if dims else 0)
    return bytes([0, 0, dtype, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + body


@fuzz(120)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=3),
    st.sampled_from([0x08, 0x09, 0x0D, 0x07]),
    st.booleans(),
    st.lists(
        st.tuples(st.sampled_from(["cut", "flip", "insert", "zero8"]), st.integers(0, 80), st.integers(0, 255)),
        max_size=3,
    ),
)
def test_corrupted_idx_files_read_or_fail_cleanly(tmp_path_factory, dims, dtype, gz, ops):
    import gzip

    from cnnkit.data.idx import read_idx

    raw = _damage(_idx(dims, dtype), ops) if ops else _idx(dims, dtype)
    path = tmp_path_factory.mktemp("idx") / "x-idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = clean(read_idx, path)
    if isinstance(out, torch.Tensor) and not ops:
        assert list(out.shape) == dims


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    out = {}
    for fmt in ("PNG", "JPEG", "BMP"):
        buf = io.BytesIO()
        Image.new("RGB", (12, 9), (200, 30, 90)).save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


@fuzz(200)
@given(st.sampled_from(["PNG", "JPEG", "BMP"]), st.data(), st.integers(1, 3), st.booleans())
def test_corrupted_images_read_or_fail_cleanly(tmp_path_factory, images, fmt, data, channels, resize):
    from cnnkit.data.images import read_image

    good = images[fmt]
    ops = data.draw(byte_damage(len(good)))
    damaged = bytearray(_damage(good, ops))
    if fmt == "PNG" and len(damaged) > 33 and data.draw(st.booleans()):  # a header that lies, valid CRC
        w, h = data.draw(st.integers(0, 2**31 - 1)), data.draw(st.integers(0, 2**31 - 1))
        damaged[16:24] = struct.pack(">II", w, h)
        damaged[29:33] = struct.pack(">I", zlib.crc32(bytes(damaged[12:29])))
    path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    path.write_bytes(bytes(damaged))
    out = clean(read_image, path, channels, (8, 8) if resize else None)
    if isinstance(out, torch.Tensor):
        assert out.shape[0] == channels and out.dtype == torch.float32


# ----------------------------------------------------------------------------- the command line

INTS = st.one_of(st.integers(-5, 3), st.sampled_from(["0", "-5", "1e9", "abc", "3.7", "99999999999999999999"]))
INPUTS = st.one_of(
    st.sampled_from(
        ["3x16x16", "0x8x8", "3x-1x8", "3xx8", "abc", "3x8x8x8x8", "1x4", "3x100000x100000", "1x1x1", "3x1x1"]
    ),
    st.lists(st.integers(-2, 40), min_size=1, max_size=5).map(lambda d: "x".join(map(str, d))),
)


@pytest.fixture(scope="module")
def small_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "net.yaml"
    path.write_text(
        "input: 3x16x16\nlayers:\n  - conv2d: {filters: 4, kernel_size: 3, padding: same}\n"
        "  - global_average_pooling2d\n  - dense: {units: 2}\n"
    )
    return str(path)


def _exit(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: a bad flag or type, usage line, exit 2
        return exc.code


@fuzz(100, deadline_s=None)
@given(INPUTS, INTS, st.sampled_from(["float32", "bfloat16"]), st.sampled_from(["table", "json"]))
def test_cli_summary_with_absurd_values(small_spec, capsys, monkeypatch, tmp_path_factory, size, batch, dtype, fmt):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path_factory.getbasetemp() / "home"))
    code = _exit(["summary", small_spec, "--input", size, "--batch", str(batch), "--dtype", dtype, "--format", fmt])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2 and "usage:" not in err:
        assert err.count("\n") == 1 and "Traceback" not in err


ABSURD_TRAIN = {
    "--epochs": ["0", "-5", "abc", "1e9"],
    "--batch-size": ["0", "-5", "abc"],
    "--subset": ["0", "-5", "abc"],
    "--threads": ["-1", "-5"],  # 0 is a value: the free cores
    "--ensemble": ["0", "-5"],
    "--image-size": ["0", "-5", "100000"],
    "--lr": ["0", "-5", "nan", "inf", "-inf", "abc", "1e999"],
    "--ema": ["-5", "nan", "inf", "1.5", "1"],
    "--label-smoothing": ["-0.5", "nan", "1.5", "1"],
    "--weight-decay": ["-0.5", "nan", "inf"],
    "--optimizer": ["sgdd", ""],
    "--schedule": ["cosin"],
    "--preset": ["fastest"],
}
TRAIN_PAIRS = [(f, v) for f, vs in ABSURD_TRAIN.items() for v in vs]


@fuzz(len(TRAIN_PAIRS), deadline_s=None)  # each pair once: hypothesis stops when they are used up
@given(st.sampled_from(TRAIN_PAIRS))
def test_cli_train_refuses_absurd_values_before_any_work(data_dir, tmp_path_factory, capsys, pair):
    flag, value = pair
    out = tmp_path_factory.mktemp("train") / "run"
    argv = ["train", flag, value] + (["64"] if flag == "--image-size" else [])
    code = _exit(argv + ["--data-dir", str(data_dir), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    name = flag.lstrip("-").replace("-", "_")
    assert flag in err or name in err or "invalid" in err, err  # the value is named
    assert not out.exists()


@fuzz(60, deadline_s=None)
@given(
    st.sampled_from(["--memory"]),
    st.sampled_from(["0", "-1GB", "abc", "1e999GB", "8GiB", "1KB", "nanGB", "10**9", "3.5TB", ""]),
    INTS,
)
def test_cli_fit_with_absurd_values(small_spec, capsys, monkeypatch, tmp_path_factory, flag, memory, batch):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path_factory.getbasetemp() / "home"))
    code = _exit(["memory", small_spec, flag, memory, "--batch", str(batch)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err


def test_memory_stayed_bounded():
    """Runs last in this file: nothing above made the process grow past 3 GB."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_kb < 3 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"

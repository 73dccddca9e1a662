"""One hostile-image set through every command that reads a user's image: classify predict, explain,
detect / segment / instance predict, the workbench's predict route and finetune's data folder.

A damaged file (a bomb header, truncated PNG/JPEG, zero bytes, text named .jpg) is exit 2 with one
line naming it and nothing written; an odd but valid one (1x1, CMYK, 16-bit, palette, animated GIF)
is exit 0. The runs are untrained and built once per module (no training here).
"""

from __future__ import annotations

import io
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _noise(w: int, h: int, mode: str = "RGB") -> Image.Image:
    arr = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _bomb() -> bytes:
    png = bytearray(_bytes(Image.new("L", (8, 8)), "PNG"))
    png[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")  # IHDR claims 100000x100000
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # with a valid CRC
    return bytes(png)


def _gif() -> bytes:
    frames = [_noise(20, 16, "P"), _noise(20, 16, "P").rotate(90)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


BAD = {
    "bomb.png": (_bomb, "more than the 89,478,485 cnnkit decodes"),
    "truncated.png": (lambda: _bytes(_noise(48, 40), "PNG")[:900], "truncated or damaged"),
    "truncated.jpg": (lambda: _bytes(_noise(48, 40), "JPEG")[:400], "bomb"),
    "empty.png": (lambda: b"", "cannot read"),
    "text.jpg": (lambda: b"not an image, a text file\n", "cannot read"),
}
GOOD = {
    "one.png": lambda: _bytes(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    "cmyk.jpg": lambda: _bytes(_noise(24, 20, "CMYK"), "JPEG"),
    "deep.png": lambda: _bytes(Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100), "PNG"),
    "palette.png": lambda: _bytes(_noise(24, 20, "P"), "PNG"),
    "anim.gif": _gif,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_images")
    for name, make in {**{k: v[0] for k, v in BAD.items()}, **GOOD}.items():
        (root / name).write_bytes(make())
    assert Image.open(root / "deep.png").mode.startswith("I")  # the set is what it says
    assert Image.open(root / "anim.gif").n_frames == 2
    return root


COMMANDS = {
    "classify predict": lambda r, img, out: ["predict", str(r / "classify"), str(img)],
    "explain": lambda r, img, out: [
        "explain",
        str(r / "classify"),
        str(img),
        "--method",
        "saliency",
        "--resize",
        "--out",
        str(out / "x.png"),
    ],
    "detect predict": lambda r, img, out: ["detect", "predict", str(r / "detect"), str(img), "--out-dir", str(out)],
    "segment predict": lambda r, img, out: ["segment", "predict", str(r / "segment"), str(img), "--out", str(out)],
    "instance predict": lambda r, img, out: [
        "instance",
        "predict",
        str(r / "instance"),
        str(img),
        "--out-dir",
        str(out),
    ],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_image_command_refuses_damaged_files_and_reads_odd_ones(runs, images, tmp_path, capsys, command):
    for name, (_, message) in BAD.items():
        out = tmp_path / f"bad-{name}"
        code = main(COMMANDS[command](runs, images / name, out))
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "Traceback" not in err, (name, err)
        assert name in err and (message in err or "cannot" in err), (name, err)
        assert not out.exists() or not any(out.iterdir()), (name, list(out.iterdir()))
    out = tmp_path / "good"
    if command == "explain":  # one image a call
        codes = {name: main(COMMANDS[command](runs, images / name, out)) for name in GOOD}
    else:  # every odd image in one call
        argv = COMMANDS[command](runs, images / "one.png", out)
        at = argv.index(str(images / "one.png"))
        codes = {"all": main([*argv[:at], *(str(images / n) for n in GOOD), *argv[at + 1 :]])}
    err = capsys.readouterr().err
    assert set(codes.values()) == {0} and "Traceback" not in err, (codes, err)


def test_the_workbench_predict_route(runs, images):
    from test_serve import start, stop

    server, client = start(runs)
    try:
        for name in BAD:  # 413 for the bomb, 415 for what is no image, 400 for the rest
            status, res = client.upload(
                "/api/predict", {"model": "classify"}, {"file": (name, (images / name).read_bytes())}
            )
            assert 400 <= status < 500 and "\n" not in res["error"], (name, res)
        for name in GOOD:
            status, res = client.upload(
                "/api/predict", {"model": "classify"}, {"file": (name, (images / name).read_bytes())}
            )
            assert status == 200 and len(res["top"]) == 5, (name, res)
    finally:
        stop(server)


def test_finetune_refuses_a_damaged_photo_in_its_data_folder_before_writing(runs, images, tmp_path, capsys):
    for name in BAD:
        data = tmp_path / f"data-{name}"
        for cls in ("a", "b"):
            (data / cls).mkdir(parents=True)
            for i in range(3):
                (data / cls / f"{i}.png").write_bytes((images / "palette.png").read_bytes())
        (data / "a" / name).write_bytes((images / name).read_bytes())
        out = tmp_path / f"run-{name}"
        argv = ["classify", "finetune", "--data", str(data), "--weights", str(runs / "classify" / "model.safetensors")]
        code = main([*argv, "--epochs", "1", "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and name in err, (name, err)
        assert not out.exists(), name


# ----------------------------------------------------------------------------- run metadata fuzz
META_VALUES = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([0, -1, 10**9, 2**70]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["resnet18", "tiny", "unet", "../x.py:build", "mobilenet_v3_small"]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-2, 80), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-1, 3), max_size=2),
)


@settings(
    max_examples=int(os.environ.get("CNNKIT_FUZZ_EXAMPLES", "120")),  # 1,000 and more: set the variable
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: building the networks makes it minutes
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.sampled_from(["detect", "segment", "instance"]), st.data())
def test_fuzzed_run_metadata_loads_or_fails_cleanly(runs, tmp_path_factory, task, data):
    import json

    from safetensors.torch import load_file, save_file

    import cnnkit
    from cnnkit.engine.runfolder import read_metadata
    from cnnkit.errors import CnnkitError

    src = runs / task / "model.safetensors"
    info = read_metadata(src)
    keys = sorted(info)
    for _ in range(data.draw(st.integers(1, 3))):
        info[data.draw(st.sampled_from(keys))] = data.draw(META_VALUES)
    out = tmp_path_factory.mktemp("meta") / "model.safetensors"
    save_file(load_file(src), str(out), metadata={"cnnkit": json.dumps(info)})
    try:
        cnnkit.load(out)
    except CnnkitError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


def test_metadata_asking_for_a_billion_layers_is_refused_quickly(runs, tmp_path):
    import json
    import time

    from safetensors.torch import load_file, save_file

    import cnnkit
    from cnnkit.engine.runfolder import read_metadata
    from cnnkit.errors import CnnkitError

    src = runs / "detect" / "model.safetensors"
    info = {**read_metadata(src), "head_convs": 10**9}
    out = tmp_path / "model.safetensors"
    save_file(load_file(src), str(out), metadata={"cnnkit": json.dumps(info)})
    tick = time.perf_counter()
    with pytest.raises(CnnkitError, match=r"asks for more than [\d,]+ layers for [\d,]+ weight tensors"):
        cnnkit.load(out)
    assert time.perf_counter() - tick < 10

"""``cnnkit.errors.short_error``: an exception's text as the one line a CnnkitError quotes, the same
for every reader that quotes one (images, run folders, exports, configs, data files)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib

import pytest
import torch

from cnnkit import errors
from cnnkit.errors import CnnkitError


def _short(text: str, kind: type[BaseException] = RuntimeError) -> str:
    return errors.short_error(kind(text))


def test_lines_tabs_and_colour_codes_become_one_plain_line():
    text = 'Error(s) in loading state_dict for Linear:\n\tMissing key(s) in state_dict: "bias". '
    assert _short(text) == 'Error(s) in loading state_dict for Linear: Missing key(s) in state_dict: "bias".'
    assert _short("\x1b[1m\x1b[31mFailed\x1b[0m to export\r\n  the model") == "Failed to export the model"


def test_an_empty_text_is_the_exceptions_type():
    assert errors.short_error(KeyError()) == "KeyError"
    assert _short(" \n\t ", OSError) == "OSError"


def test_a_text_of_the_limit_is_whole():
    text = "a" * (errors.SHORT_CHARS - 5) + ". end"
    assert len(text) == errors.SHORT_CHARS and _short(text) == text


def test_a_long_text_keeps_the_whole_sentences_that_fit():
    sentences = [f"sentence {i} " + "x" * 89 for i in range(6)]  # 100 characters each
    got = _short(". ".join(sentences) + ".")
    assert got == ". ".join(sentences[:3]) + " ..."  # 3 sentences: 304 characters; 4 would be 406
    assert len(got) == 308


def test_a_first_sentence_past_the_limit_is_cut():
    got = _short("word " * 200)
    assert len(got) == errors.SHORT_CHARS and got.endswith(" ...") and got.startswith("word word")


def test_an_exception_summary_page_is_its_first_sentence_and_first_error():
    page = (
        "\x1b[31mFailed to convert the exported program to an ONNX model. \x1b[0mThis is step 3/3 of exporting.\n\n"
        "## Next steps\n- Create an issue in the PyTorch GitHub repository.\n\n"
        "## Exception summary\n\n"
        "<class 'torch.onnx._internal.exporter._errors.DispatchError'>: No ONNX function found for aten.x\n"
        "<class 'RuntimeError'>: a later error\n"
    )
    assert _short(page) == "Failed to convert the exported program to an ONNX model: No ONNX function found for aten.x"


@pytest.mark.parametrize("kind", [RuntimeError, ValueError, OSError])
def test_the_result_is_one_line_of_at_most_the_limit(kind):
    text = "\n".join(f"line {i}.\tpart\x1b[0m" for i in range(500))
    got = _short(text, kind)
    assert "\n" not in got and "\t" not in got and "\x1b" not in got and len(got) <= errors.SHORT_CHARS


def test_a_clause_drops_the_reasons_full_stop_for_the_sentence_that_goes_on():
    assert _short("the image cannot be cut into patches.") == "the image cannot be cut into patches."
    assert errors.short_error(ValueError("cannot be cut into patches."), clause=True) == "cannot be cut into patches"
    assert errors.short_error(ValueError("it goes on..."), clause=True) == "it goes on..."
    assert errors.short_error(ValueError("word " * 200), clause=True).endswith(" ...")


# ----------------------------------------------------------------------------- stacks are not reasons

# torch 2.13's text of a shape error under TORCH_SHOW_CPP_STACKTRACES=1, its C++ frames cut to three
VIEW_WITH_CPP_FRAMES = (
    "shape '[7]' is invalid for input of size 6\n"
    "Exception raised from infer_size_impl at /__w/pytorch/pytorch/aten/src/ATen/InferSize.h:99 "
    "(most recent call first):\n"
    "C++ CapturedTraceback:\n"
    "#4 std::_Function_handler<std::shared_ptr<c10::LazyValue<std::__cxx11::basic_string<char> > const> ()>"
    "::_M_invoke(std::_Any_data const&) from Logging.cpp:0\n"
    "#5 c10::Error::Error(c10::SourceLocation, std::__cxx11::basic_string<char>) from ??:0\n"
    "#7 at::native::view(at::Tensor const&, c10::ArrayRef<long>) from ??:0\n"
)


def test_pytorchs_cpp_frames_are_dropped():
    assert _short(VIEW_WITH_CPP_FRAMES) == "shape '[7]' is invalid for input of size 6"
    older = (  # builds that list "frame #N" lines
        "Given groups=1, weight of size [8, 3, 3, 3], expected input[1, 4, 8, 8] to have 3 channels, but got 4 "
        "channels instead\nException raised from check_shape_forward at aten/src/ATen/native/Convolution.cpp:725 "
        "(most recent call first):\nframe #0: c10::Error::Error(c10::SourceLocation, std::string) + 0xb0 "
        "(0x7f3e in /usr/lib/python3/torch/lib/libc10.so)\n"
    )
    assert _short(older).endswith("to have 3 channels, but got 4 channels instead")


def test_pytorchs_cpp_frames_as_this_torch_appends_them():
    code = "import torch\ntry:\n    torch.ones(2, 3).view(7)\nexcept RuntimeError as e:\n    print(e, end='')\n"
    env = {**os.environ, "TORCH_SHOW_CPP_STACKTRACES": "1", "TORCH_DISABLE_ADDR2LINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    text = run.stdout
    assert "(most recent call first):" in text and len(text.splitlines()) > 5, (text, run.stderr)  # frames appended
    assert _short(text) == "shape '[7]' is invalid for input of size 6"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_traceback_keeps_the_exception_it_ends_with():
    scripted = torch.jit.script(torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(RuntimeError) as exc:
        scripted(torch.ones(1, 4, 8, 8))
    assert str(exc.value).startswith("The following operation failed in the TorchScript interpreter.\nTraceback")
    assert errors.short_error(exc.value) == (
        "The following operation failed in the TorchScript interpreter. RuntimeError: Given groups=1, weight of "
        "size [8, 3, 3, 3], expected input[1, 4, 8, 8] to have 3 channels, but got 4 channels instead"
    )
    traced = (  # a traced module's frames are paths; with C++ frames on, the reason is said twice
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript (most recent call last):\n"
        "/venv/lib/python3.11/site-packages/torch/nn/modules/linear.py(134): forward\n"
        "net.py(13): build\n"
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x4 and 3x2)\n"
        "mat1 and mat2 shapes cannot be multiplied (1x4 and 3x2)\n"
        "Exception raised from meta at aten/src/ATen/native/LinearAlgebra.cpp:194 (most recent call first):\n"
        "C++ CapturedTraceback:\n#4 ?? from libc10.so:700674\n"
    )
    assert _short(traced) == (
        "The following operation failed in the TorchScript interpreter. "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x4 and 3x2)"
    )


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_python_error_inside_torchscript_drops_the_frames_pybind_lists_after_at():
    scripted = torch.jit.script(torch.nn.Conv2d(3, 8, 3)).to("meta")  # the meta kernel's check is Python
    with pytest.raises(RuntimeError) as exc:
        scripted(torch.ones(1, 4, 8, 8, device="meta"))
    assert "RuntimeError: RuntimeError: Invalid channel dimensions\n\nAt:\n" in str(exc.value)
    assert errors.short_error(exc.value) == (
        "The following operation failed in the TorchScript interpreter. RuntimeError: Invalid channel dimensions"
    )


def test_a_quoted_python_traceback_keeps_the_exception_it_ends_with():
    text = (  # a DataLoader worker's error
        "Caught ValueError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "/venv/lib/python3.11/site-packages/torch/utils/data/_utils/worker.py", line 349, in _worker_loop\n'
        "    data = fetcher.fetch(index)\n"
        "           ^^^^^^^^^^^^^^^^^^^^\n"
        "ValueError: image 7 is 3x0 pixels:\n"
        "  drop it from the folder\n"
    )
    assert _short(text) == (
        "Caught ValueError in DataLoader worker process 0. ValueError: image 7 is 3x0 pixels: drop it from the folder"
    )


def test_a_text_that_is_only_a_stack_is_the_exceptions_type():
    assert _short('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n', OSError) == "OSError"


# ----------------------------------------------------------------------------- the readers that quote it


def test_weights_that_do_not_fit_name_the_unexpected_key_too(tmp_path):
    from cnnkit.engine.runfolder import load_checked

    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(6)])
    with pytest.raises(CnnkitError) as exc:
        load_checked(model, {"weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    text = str(exc.value)
    assert '"5.bias". Unexpected key(s) in state_dict: "weight".' in text and "\n" not in text


def test_a_yolo_data_yaml_that_is_not_yaml_says_where(tmp_path):
    from cnnkit.data.detection import _yolo_classes

    (tmp_path / "data.yaml").write_text("names: [cat, dog\nnc: 2\n")
    with pytest.raises(CnnkitError) as exc:
        _yolo_classes(tmp_path)
    assert str(exc.value) == (
        f'{tmp_path / "data.yaml"}: not valid YAML (while parsing a flow sequence in "<unicode string>", '
        "line 1, column 8: names: [cat, dog ^ expected ',' or ']', but got ':' in \"<unicode string>\", "
        "line 2, column 3: nc: 2 ^)"
    )


# a YAML error whose problem is on its second mark: "while parsing ... line 3" then "expected ... line 4"
BLOCK_MISALIGNED = "input: 3x32x32\nlayers:\n  - conv2d: {filters: 3}\n   - dense: 4\n"
BLOCK_MISALIGNED_REASON = (
    'while parsing a block collection in "<unicode string>", line 3, column 3: - conv2d: {filters: 3} ^ '
    "expected <block end>, but found '<block sequence start>' in \"<unicode string>\", line 4, column 4: - dense: 4 ^"
)


def test_a_spec_that_is_not_yaml_says_what_the_parser_expected_and_where(tmp_path):
    from cnnkit.models.spec import build_from_spec

    path = tmp_path / "net.yaml"
    path.write_text(BLOCK_MISALIGNED)
    with pytest.raises(CnnkitError) as exc:
        build_from_spec(path)
    assert str(exc.value) == f"{path} is not valid YAML: {BLOCK_MISALIGNED_REASON}"


def test_the_workbenchs_spec_that_is_not_yaml_says_what_the_parser_expected_and_where():
    from cnnkit.serve.analyse import resolve
    from cnnkit.serve.limits import Limits, Refused

    with pytest.raises(Refused) as exc:
        resolve(BLOCK_MISALIGNED, Limits())
    assert str(exc.value) == f"the spec is not valid YAML: {BLOCK_MISALIGNED_REASON}"


def test_a_spec_layer_whose_builder_fails_quotes_the_reason_without_cpp_frames(monkeypatch):
    from cnnkit.models import spec

    def fails(shape, **args):
        raise RuntimeError(VIEW_WITH_CPP_FRAMES)

    monkeypatch.setitem(spec._BUILDERS, "flatten", (fails, "flatten"))
    with pytest.raises(CnnkitError) as exc:
        spec.build_from_spec({"input": "3x4x4", "layers": [{"flatten": {}}]})
    assert str(exc.value) == "layer flatten_1 (flatten) on input 3x4x4: shape '[7]' is invalid for input of size 6"


def test_a_factory_and_a_checkpoints_layer_quote_the_reason_without_cpp_frames(tmp_path):
    (tmp_path / "call.py").write_text("import torch\ndef net():\n    return torch.ones(2, 3).view(7)\n")
    (tmp_path / "imp.py").write_text("import torch\ntorch.ones(2, 3).view(7)\ndef net():\n    pass\n")
    code = (
        "import sys\nfrom pathlib import Path\nfrom cnnkit.errors import CnnkitError\n"
        "from cnnkit.models.network import build_modules, load_factory\n"
        "for call in (lambda: load_factory(Path(sys.argv[1], 'call.py'), 'net'),\n"
        "             lambda: load_factory(Path(sys.argv[1], 'imp.py'), 'net'),\n"
        "             lambda: build_modules({'type': 'Linear', 'in_features': -1, 'out_features': 2, 'bias': True})):\n"
        "    try:\n        call()\n    except CnnkitError as e:\n        print(e)\n"
    )
    env = {**os.environ, "TORCH_SHOW_CPP_STACKTRACES": "1", "TORCH_DISABLE_ADDR2LINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.stdout.splitlines() == [
        f"{tmp_path / 'call.py'}:net() raised RuntimeError: shape '[7]' is invalid for input of size 6",
        f"{tmp_path / 'imp.py'} raised RuntimeError on import: shape '[7]' is invalid for input of size 6",
        "Linear(in_features=-1, out_features=2, bias=True): Trying to create tensor with negative dimension -1: [2, -1]",
    ], (run.stdout, run.stderr)


class _RealOnly(torch.nn.Module):
    """A layer that refuses real tensors (meta ones pass): it fails only when run for real."""

    def forward(self, x):
        if x.device.type != "meta":
            raise ValueError("RealOnly: real tensors are refused.")
        return x


class _Patchify(torch.nn.Module):
    def forward(self, x):
        raise ValueError("Patchify: the image cannot be cut into patches.")


def test_a_reason_quoted_before_the_fix_does_not_read_full_stop_semicolon():
    import cnnkit

    with pytest.raises(CnnkitError) as exc:
        cnnkit.summary(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), _Patchify()), input_size=(3, 8, 8))
    assert str(exc.value) == (
        "Sequential fails on input (3, 8, 8) at layer '1' (_Patchify) with input (4, 8, 8): Patchify: the image "
        "cannot be cut into patches; fix the layer's sizes or pass another --input"
    )
    with pytest.raises(CnnkitError) as exc:
        cnnkit.summary(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), _RealOnly()), input_size=(3, 8, 8), time_steps=1)
    assert str(exc.value) == (
        "the network failed when run for real while timing a training step at batch 1 (--time): RealOnly: real "
        "tensors are refused; run without --time"
    )


def test_keras_configs_and_the_workbench_count_nesting_with_one_walk():
    """nested_deeper_than counts the lists and dicts (a scalar is no level), and both readers that refuse
    a document nested too deep for Python's stack (a Keras config, the workbench's spec or body) refuse
    at that count: MAX_NESTING (100) and Limits.nesting (64) levels pass, one more does not."""
    from cnnkit.errors import nested_deeper_than
    from cnnkit.models.keras import MAX_NESTING, _check_nesting
    from cnnkit.serve.limits import Limits, Refused

    def deep(levels: int, leaf=1):
        for _ in range(levels):
            leaf = [leaf]
        return leaf

    assert [nested_deeper_than(deep(n), 3) for n in (0, 3, 4)] == [False, False, True]
    assert nested_deeper_than({"a": deep(2)}, 2) and not nested_deeper_than({"a": deep(2, "x")}, 3)
    _check_nesting({"config": deep(MAX_NESTING - 1)})  # 100 levels, the dict's included
    with pytest.raises(CnnkitError, match="nests lists and objects more than 100 deep"):
        _check_nesting({"config": deep(MAX_NESTING)})
    Limits().check_nesting({"layers": deep(63)}, "the spec")
    with pytest.raises(Refused, match="the spec is nested more than 64 levels deep"):
        Limits().check_nesting({"layers": deep(64)}, "the spec")


# ---------------------------------------------------------------- sites that quote another exception's text


@pytest.mark.parametrize("stem", ["n" * 5000, "n"], ids=["long", "short"])
def test_a_damaged_zip_archive_is_one_short_line_that_reads_on_into_the_fix(tmp_path, stem):
    """zipfile quotes the member names it compares ("File name in directory '...' and header b'...'
    differ."): a name of any length, and a full stop before the fix."""
    import zipfile

    from cnnkit.data.datasets import _extract

    archive = tmp_path / "gzip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{stem}/a.bin", b"abc")
    raw = bytearray(archive.read_bytes())
    raw[raw.find(f"{stem}/a.bin".encode())] = ord("m")  # the local header's name: the central directory's stays
    archive.write_bytes(bytes(raw))
    with pytest.raises(CnnkitError) as exc:
        _extract(archive, ["a.bin"], tmp_path)
    text, fix = str(exc.value), "; delete it and download it again"
    if stem == "n":
        assert (
            text
            == f"{archive}: damaged zip archive (File name in directory 'n/a.bin' and header b'm/a.bin' differ){fix}"
        )
    else:
        assert text.startswith(f"{archive}: damaged zip archive (File name in directory 'nnn") and text.endswith(
            f" ...){fix}"
        )
        assert len(text) <= len(f"{archive}: damaged zip archive (){fix}") + errors.SHORT_CHARS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gzip.zip"]  # no member half-written


def test_class_names_longer_than_a_file_name_can_be_are_a_list():
    """Over 255 bytes with no "/", the text cannot name a file: it is the list, not a file that cannot
    be read ("File name too long"; give names separated by commas, which it is)."""
    from cnnkit.tasks.classify.convert import read_class_names

    names = [f"class_number_{i}" for i in range(40)]
    assert read_class_names(",".join(names)) == names


def _crafted_run(folder, **info):
    """A run folder whose checkpoint's metadata is ``info`` over a plain mnist_fast classifier's."""
    import json

    from safetensors.torch import save

    import cnnkit
    from cnnkit.engine.runfolder import FORMAT
    from cnnkit.models.deploy import Classifier

    net = cnnkit.create_model("mnist_fast", num_classes=2, in_channels=1)
    clf = Classifier(net, [0.5], [0.25], ["a", "b"], (1, 28, 28))
    meta = {"format": FORMAT, "model": "mnist_fast", "num_classes": 2, "input_size": [1, 28, 28]}
    meta |= {"classes": ["a", "b"], "mean": [0.5], "std": [0.25], "dataset": {"name": "mnist"}, **info}
    folder.mkdir(parents=True)
    tensors = {k: v.contiguous() for k, v in clf.state_dict().items()}
    (folder / "model.safetensors").write_bytes(save(tensors, metadata={"cnnkit": json.dumps(meta)}))
    (folder / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n1,1,0.5,1,0.5,0.1,1\n")
    return folder


def test_plots_note_says_why_there_is_no_confusion_matrix_once_in_one_short_line(tmp_path):
    """The test and val splits missing for the same reason say it once; an OSError (a dataset name
    too long for a file name, from edited metadata) is cut to a short line."""
    from cnnkit.tasks.classify.plot import plot_run

    empty = tmp_path / "data"
    empty.mkdir()
    _, notes = plot_run(_crafted_run(tmp_path / "missing"), data_dir=str(empty))
    reason = (
        f"mnist: missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        f"t10k-labels-idx1-ubyte.gz in {empty / 'mnist'}; pass --data-dir pointing to the folder that holds "
        "mnist/, or allow downloads"
    )
    assert notes == [f"curves only: no confusion matrix or mistakes ({reason})"]
    _, notes = plot_run(_crafted_run(tmp_path / "long", dataset={"name": "x" * 3000}), data_dir=str(empty))
    assert len(notes) == 1 and notes[0].startswith("curves only: no confusion matrix or mistakes (")
    assert notes[0].endswith(" ...)") and len(notes[0]) <= errors.SHORT_CHARS + 50


def test_a_resume_states_damaged_config_is_quoted_in_one_short_line(tmp_path):
    """Python's TypeError quotes an unknown keyword as it is stored: here 3,000 characters, a line
    break and a line that reads as a traceback."""
    import json

    from safetensors.torch import save

    from cnnkit.engine.runfolder import FORMAT, RESUME_FILE
    from cnnkit.tasks.classify.config import TrainConfig
    from cnnkit.tasks.classify.train import _resumed_config

    cfg = TrainConfig(model="mnist_fast")
    key = "k" * 3000 + "\nTraceback (most recent call last):\n  File x"
    meta = {"format": FORMAT, "config": {**cfg.to_dict(), "augment": {key: 1}}}
    (tmp_path / RESUME_FILE).write_bytes(save({"x": torch.zeros(1)}, metadata={"cnnkit": json.dumps(meta)}))
    with pytest.raises(CnnkitError) as exc:
        _resumed_config(tmp_path, cfg)
    text = str(exc.value)
    start = f"{tmp_path / RESUME_FILE}: the stored training config is damaged ("
    assert text.startswith(start + "AugmentConfig.__init__() got an unexpected keyword argument 'kkk")
    assert text.endswith(" ...); start a new run") and "\n" not in text
    assert len(text) <= len(start + "); start a new run") + errors.SHORT_CHARS


def test_the_workbench_refuses_a_long_unknown_name_and_a_pillow_bomb_in_one_short_line():
    """The workbench's answers (Refused) follow the one-line rule: an unknown model name of 100,000
    characters is not sent back whole; Pillow's bomb refusal reads on into the fix, the size accepted."""
    from PIL import Image

    from cnnkit.serve.analyse import resolve
    from cnnkit.serve.limits import Limits, Refused
    from cnnkit.serve.predict import open_image

    with pytest.raises(Refused) as exc:
        resolve("x" * 100_000, Limits())
    assert str(exc.value).startswith("unknown model name 'xxx") and str(exc.value).endswith(" ...; or type a YAML spec")
    assert len(str(exc.value)) <= errors.SHORT_CHARS + len("; or type a YAML spec")
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = (30_000).to_bytes(4, "big") * 2  # IHDR's width and height: 900 M pixels
    png[29:33] = zlib.crc32(png[12:29]).to_bytes(4, "big")  # and its CRC
    with pytest.raises(Refused) as exc:
        open_image(bytes(png), Limits(image_pixels=1_000_000))
    assert exc.value.status == 413 and str(exc.value) == (
        f"the image is refused as a decompression bomb (Image size (900000000 pixels) exceeds limit of "
        f"{2 * Image.MAX_IMAGE_PIXELS} pixels, could be decompression bomb DOS attack); upload an image of at "
        "most 1,000,000 pixels"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "a" * 300],
        ["eval", "a" * 300],
        ["predict", "a" * 300, "x.png"],
        ["sequence", "eval", "a" * 300],
        ["summary", "/tmp/" + "a" * 300 + "/net.yaml"],
    ],
)
def test_a_name_longer_than_the_file_system_allows_is_one_line_naming_it(argv, capsys):
    """Path.exists() and is_file() raise ENAMETOOLONG for a name over 255 bytes: every command says
    so in one line, the path cut to a readable length, instead of a traceback."""
    from cnnkit.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) < 250, err
    assert err.endswith(
        "characters): a name in it is 300 bytes long, more than a file system allows (255); give a shorter path"
    ), err


def test_a_path_longer_than_the_system_allows_is_named_by_its_length():
    path = "/".join(["b" * 200] * 25)
    assert str(errors.name_too_long(path)) == (
        f"{path[:56]}...{path[-16:]} (5,024 characters): it is 5,024 bytes long, more than a path may be; give a shorter path"
    )
    assert str(errors.name_too_long("/tmp/x")).startswith("/tmp/x: it is 6 bytes long")

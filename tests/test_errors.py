"""``cnnkit.errors.short_error``: an exception's text as the one line a CnnkitError quotes, the same
for every reader that quotes one (images, run folders, exports, configs, data files)."""

from __future__ import annotations

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

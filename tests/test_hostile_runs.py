"""Nothing lost: a refused run leaves the folder as it was, and prediction never replaces an input."""

from __future__ import annotations

import pytest

from cnnkit.engine.runfolder import MODEL_FILE, RESUME_FILE, check_new_run, output_stems
from cnnkit.errors import CnnkitError


def test_outputs_never_replace_an_input_and_equal_names_stay_apart(tmp_path):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"photo")
    assert output_stems([a, b, tmp_path / "a" / "y.png"], tmp_path / "out", (".png",)) == ["x", "x_2", "y"]
    with pytest.raises(CnnkitError, match="would replace your image") as err:
        output_stems([a], tmp_path / "a", (".png", "_overlay.png"))  # --out is the photo's own folder
    assert "\n" not in str(err.value)
    assert output_stems([a], tmp_path / "a", ("_boxes.png",)) == ["x"]  # another name: allowed
    assert a.read_bytes() == b"photo"


def test_a_refused_run_touches_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / RESUME_FILE).write_bytes(b"state")
    (run / "split.json").write_text('{"train": ["a"]}')
    with pytest.raises(CnnkitError, match="already holds a run"):
        check_new_run(run, resume=False)
    with pytest.raises(CnnkitError, match="nothing to resume"):
        check_new_run(tmp_path / "empty", resume=True)
    check_new_run(run, resume=True)
    check_new_run(tmp_path / "new", resume=False)
    assert (run / "split.json").read_text() == '{"train": ["a"]}'
    fitted = tmp_path / "fitted"  # a model without resume state (MultiRocket's run) is not overwritten either
    fitted.mkdir()
    (fitted / MODEL_FILE).write_bytes(b"model")
    with pytest.raises(CnnkitError, match="already holds a trained model"):
        check_new_run(fitted, resume=False)


def test_detect_train_into_an_existing_run_is_refused_before_its_split_is_rewritten(tmp_path, data_dir, capsys):
    from cnnkit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / RESUME_FILE).write_bytes(b"state")
    (run / "split.json").write_text("original")
    argv = [
        "detect",
        "train",
        "--data",
        "digits",
        "--data-dir",
        str(data_dir),
        "--scenes",
        "16",
        "8",
        "--seed",
        "7",
        "--out",
        str(run),
        "--quiet",
    ]
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "split.json").read_text() == "original"


def test_segment_predict_into_the_photos_folder_is_refused(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from cnnkit.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    before = photo.read_bytes()
    run = tmp_path / "missing-run"
    code = main(["segment", "predict", str(run), str(photo), "--out", str(tmp_path)])
    assert code == 2 and photo.read_bytes() == before
    assert "would replace your image" in capsys.readouterr().err  # refused before the run is even read


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["detect", "train", "--ema", "nan"], "--ema must be a finite number"),
        (["detect", "train", "--ema", "5"], "--ema must be at least 0 and below 1"),
        (["train", "--subset", "-1"], "--subset must be"),
        (["segment", "train", "--max-side", "0"], "--max-side must be at least 16"),
        (["segment", "train", "--jitter", "nan"], "--jitter must be a finite number"),
        (["segment", "train", "--lr", "nan"], "--lr must be a finite number"),
        (["segment", "train", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
        (["instance", "train", "--threads", "-1"], "--threads must be an integer >= 0"),
        (["train", "--seed", str(2**70)], "--seed must be an integer from 0 to"),
        (["classify", "finetune", "--data", "x", "--lr", "-1"], "--lr must be"),
        (["detect", "train", "--optimizer", "adam"], "--optimizer must be one of sgd, adamw, nadam"),
    ],
)
def test_settings_out_of_bounds_are_one_line_before_any_work(argv, message, tmp_path, capsys):
    from cnnkit.cli import main

    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_non_finite_ema_copy_is_never_saved(tmp_path):
    import torch
    import torch.nn as nn

    from cnnkit.engine.ema import EMA
    from cnnkit.engine.loop import _check_weights

    model = nn.Linear(2, 1)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        ema.module.weight.fill_(float("nan"))
    _check_weights(model, 0, "", 0.1)  # the trained weights alone are fine
    with pytest.raises(CnnkitError, match="non-finite"):
        _check_weights(model, 0, "", 0.1, ema)


def test_resuming_another_tasks_run_is_refused(tmp_path):
    import json

    import torch
    from safetensors.torch import save

    from cnnkit.engine.runfolder import FORMAT, MODEL_FILE, atomic_write_bytes, resumed_config

    run = tmp_path / "seg"
    for name, meta in (
        (MODEL_FILE, {"format": FORMAT, "task": "segment"}),
        (RESUME_FILE, {"format": FORMAT, "config": {"data": "pennfudan"}}),
    ):
        atomic_write_bytes(run / name, save({"w": torch.zeros(1)}, metadata={"cnnkit": json.dumps(meta)}))
    assert resumed_config(run, "segment") == {"data": "pennfudan"}
    with pytest.raises(CnnkitError, match="is a 'segment' run, not a 'detect' one"):
        resumed_config(run, "detect")


def test_no_two_inputs_outputs_share_a_name(tmp_path):
    """``x.png`` and ``x_overlay.png`` in one call: the map of the second is not written over the first's overlay."""
    x, xo = tmp_path / "x.png", tmp_path / "x_overlay.png"
    stems = output_stems([x, xo], tmp_path / "out", (".png", "_overlay.png"))
    names = [f"{s}{suffix}" for s in stems for suffix in (".png", "_overlay.png")]
    assert stems == ["x", "x_overlay_2"] and len(set(names)) == len(names)
    stems = output_stems([xo, x], tmp_path / "out", (".png", "_overlay.png"))
    assert stems == ["x_overlay", "x_2"]

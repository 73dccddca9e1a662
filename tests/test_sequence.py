"""The sequence task: 1-D CNNs trained on UCR series through the engine and the CLI."""

from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnkit.cli import main
from cnnkit.errors import CnnkitError
from cnnkit.tasks.sequence import SequenceConfig, evaluate_run, load_sequence, predict_file, train

train_module = importlib.import_module("cnnkit.tasks.sequence.train")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ucr_dir(data_dir):
    folder = data_dir / "ucr"
    if not (folder / "ItalyPowerDemand_TRAIN.ts").is_file():
        pytest.skip(f"no UCR data at {folder}")
    return folder


@pytest.fixture(scope="module")
def italy_run(ucr_dir, tmp_path_factory):
    """60 steps of FCN on ItalyPowerDemand (TRAIN 67 series less 14 for validation), through the CLI."""
    run = tmp_path_factory.mktemp("seq") / "italy"
    argv = ["sequence", "train", "--data", "ucr:ItalyPowerDemand", "--data-dir", str(ucr_dir.parent)]
    assert main([*argv, "--model", "fcn1d", "--steps", "60", "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    return run


def test_train_through_the_cli_learns_italy_power_demand(italy_run, capsys):
    """60 Adam steps (lr 1e-3, batch 5): test accuracy 0.94 (1029 series); the published FCN error is 0.030-0.037."""
    assert {"model.safetensors", "resume.safetensors", "metrics.csv", "config.yaml"} <= {
        p.name for p in italy_run.iterdir()
    }
    lines = (italy_run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc") and len(lines) == 3
    assert main(["sequence", "eval", str(italy_run), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == 1029 and out["split"] == "test" and out["accuracy"] >= 0.90, out
    assert sum(map(sum, out["confusion"])) == 1029 and out["errors"] == round(out["error"] * 1029)
    val = evaluate_run(italy_run, "val")
    assert val["series"] == 14  # 20 % of each class of TRAIN's 67, stratified
    model = load_sequence(italy_run)
    assert model.classes == ["1", "2"] and model.input_size == (1, 24) and not model.training
    import cnnkit

    assert type(cnnkit.load(italy_run)) is type(model)  # the one loader knows the task


def test_a_runs_config_yaml_repeats_the_run(italy_run, ucr_dir, tmp_path, capsys):
    # the file names the data as ucr:NAME (not a path) and lists the settings the run uses
    again = tmp_path / "again"
    assert main(["sequence", "train", "--config", str(italy_run / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    assert [r.split(",")[:5] for r in (again / "metrics.csv").read_text().splitlines()] == [
        r.split(",")[:5] for r in (italy_run / "metrics.csv").read_text().splitlines()
    ]
    # a fitted model's run leaves the gradient settings out of its file, which reads back too
    fitted, twice = tmp_path / "fitted", tmp_path / "twice"
    argv = ["sequence", "train", "--data", "ucr:ItalyPowerDemand", "--data-dir", str(ucr_dir.parent), "--quiet"]
    capsys.readouterr()
    assert main([*argv, "--model", "multirocket", "--out", str(fitted)]) == 0
    assert capsys.readouterr().out == ""  # --quiet: no line at all, the final one included
    assert "batch_size" not in (fitted / "config.yaml").read_text()
    assert main(["sequence", "train", "--config", str(fitted / "config.yaml"), "--out", str(twice), "--quiet"]) == 0
    assert evaluate_run(twice)["errors"] == evaluate_run(fitted)["errors"]


def test_eval_and_predict_on_a_series_file(italy_run, ucr_dir, tmp_path, capsys):
    lines = (ucr_dir / "ItalyPowerDemand_TEST.ts").read_text().splitlines()
    data = [i for i, line in enumerate(lines) if line.lower().startswith("@data")][0]
    tsv = tmp_path / "mine.tsv"  # five test series as a .tsv file, labels first
    rows = [line.rsplit(":", 1) for line in lines[data + 1 : data + 6]]
    tsv.write_text("".join(f"{label}\t" + "\t".join(v.split(",")) + "\n" for v, label in rows))
    model = load_sequence(italy_run)
    preds = predict_file(model, tsv)
    assert len(preds) == 5 and [p["label"] for p in preds] == [label for _, label in rows]
    for p in preds:
        assert p["class"] in ("1", "2") and abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["probability"] == max(p["probabilities"].values())
    x = np.array([list(map(float, v.split(","))) for v, _ in rows])
    z = torch.tensor((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True), dtype=torch.float32)[:, None]
    with torch.no_grad():
        expected = model(z).softmax(1)[:, 1]
    np.testing.assert_allclose([p["probabilities"]["2"] for p in preds], expected.numpy(), atol=1e-5)
    assert main(["sequence", "eval", str(italy_run), "--data", str(tsv), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == 5 and out["split"] == "file"
    assert out["errors"] == sum(p["class"] != p["label"] for p in preds)
    assert main(["sequence", "predict", str(italy_run), str(tsv)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and printed[0].startswith(f"{tsv}[0]: {preds[0]['class']}  p=")


def test_explain_writes_the_cam_plot(italy_run, ucr_dir, tmp_path, capsys):
    from cnnkit.explain import class_activation_map
    from cnnkit.tasks.sequence.explain import explain_series

    out = tmp_path / "cam.png"
    series = ucr_dir / "ItalyPowerDemand_TEST.ts"
    assert main(["explain", str(italy_run), str(series), "--index", "2", "--out", str(out)]) == 0
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert capsys.readouterr().out.startswith("cam: class ")
    r = explain_series(italy_run, series, 2)
    model = load_sequence(italy_run)
    logit = model(r["series"][None])[0, r["class"]]
    assert r["cam"].shape == (24,) and r["series"].shape == (1, 24)
    torch.testing.assert_close(r["cam"].mean() + model.net.fc.bias[r["class"]], logit.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r["cam"], class_activation_map(model.net, r["series"], r["class"]))


def test_resume_continues_exactly(ucr_dir, tmp_path, monkeypatch):
    cfg = SequenceConfig(data="ucr:ItalyPowerDemand", data_dir=str(ucr_dir.parent), model="fcn1d", steps=8, epochs=2)
    whole = train(cfg, tmp_path / "whole", quiet=True)
    real_fit = train_module.fit_run

    def cut_after_first_epoch(*args, **kwargs):
        def stop(epoch, row):
            raise KeyboardInterrupt

        return real_fit(*args, **kwargs, on_epoch_end=stop)

    monkeypatch.setattr(train_module, "fit_run", cut_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True)
    monkeypatch.setattr(train_module, "fit_run", real_fit)
    resumed = train(SequenceConfig(data="ignored"), tmp_path / "cut", resume=True, quiet=True)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    assert resumed.test["errors"] == whole.test["errors"]


def test_ensemble_averages_its_members(ucr_dir, tmp_path):
    cfg = SequenceConfig(
        data="ucr:ItalyPowerDemand", data_dir=str(ucr_dir.parent), model="fcn1d", steps=6, epochs=1, ensemble=2
    )
    r = train(cfg, tmp_path / "ens", quiet=True)
    members = [load_sequence(tmp_path / "ens" / f"member{i}") for i in range(2)]
    x = torch.randn(3, 1, 24)
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        torch.testing.assert_close(r.model(x).exp(), mean)
        torch.testing.assert_close(load_sequence(tmp_path / "ens")(x).exp(), mean)
    assert members[0].info["config"]["seed"] == 0 and members[1].info["config"]["seed"] == 1
    assert not torch.equal(members[0].net.fc.weight, members[1].net.fc.weight)


BAD_CLI = [
    (["sequence", "train", "--data", "ucr:GunPiont"], "did you mean GunPoint"),
    (["sequence", "train", "--data", "no/such/file.tsv"], "neither a file, a folder nor ucr:NAME"),
    (["sequence", "train", "--data", "ucr:ItalyPowerDemand", "--model", "resnet50"], "--model"),
    (["sequence", "train", "--data", "BAD", "--quiet"], "line 2: value 'x'"),
    (["sequence", "train", "--data", "ucr:ItalyPowerDemand", "--lr", "0.1"], "--lr: a gradient-training setting"),
    (["sequence", "eval", "RUN", "--split", "dev"], "--split is train, val or test"),
    (["sequence", "predict", "RUN", "BAD"], "line 2: value 'x'"),
    (["sequence", "predict", "RUN", "no_such.ts"], "series file not found: no_such.ts"),
    (["sequence", "eval", "BAD"], "not a readable safetensors|is not a"),
]


@pytest.mark.parametrize("argv, message", BAD_CLI, ids=[" ".join(a[:3]) for a, _ in BAD_CLI])
def test_malformed_input_is_one_line_at_the_cli(argv, message, italy_run, ucr_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad_TRAIN.tsv"
    bad.write_text("1\t0.5\t0.2\t0.1\n2\t0.1\tx\t0.3\n")
    argv = [{"RUN": str(italy_run), "BAD": str(bad)}.get(a, a) for a in argv]
    if argv[1] == "train":
        argv += ["--data-dir", str(ucr_dir.parent), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_critical_difference_diagram(tmp_path):
    from cnnkit.plots import critical_difference

    ranks = {"a": 1.5, "b": 2.0, "c": 3.1, "d": 3.4}
    fig = critical_difference(ranks, 1.2, [["a", "b"], ["c", "d"]], tmp_path / "cd.png", title="t")
    assert (tmp_path / "cd.png").read_bytes()[:4] == b"\x89PNG"
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "CD = 1.20" in texts and "a (1.50)" in texts and "d (3.40)" in texts
    assert len(fig.axes[0].lines) >= 4 + 1 + 4 + 2  # ticks, the CD bar, four leaders, two cliques


def _ragged_file(path, lengths, seed):
    """A .tsv of series of ``lengths`` (NaN-padded to the longest, as the archive pads them), two
    classes: a slow sine (label 1) and a fast one (label 2)."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    rows = []
    for i, n in enumerate(lengths):
        t = np.arange(n) * (0.3 if i % 2 else 0.9)
        values = [f"{v:.6f}" for v in np.sin(t) + 0.1 * rng.standard_normal(n)] + ["NaN"] * (width - n)
        rows.append("\t".join([str(1 + i % 2), *values]))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_series_answer_does_not_depend_on_the_other_series_of_its_file(tmp_path):
    """fcn1d ends in global average pooling: fed a series padded to another length than training's
    (40 here), its answer moves. Each series is padded to the training length, so the same series
    gets the same probabilities alone, in a file padded to 25, or in a file padded to 55."""
    from cnnkit.tasks.sequence.explain import explain_series

    train_file = _ragged_file(tmp_path / "rag_TRAIN.tsv", [20 + i for i in range(21)], 0)
    cfg = SequenceConfig(data=str(train_file), model="fcn1d", steps=6, epochs=1, val_fraction=0)
    train(cfg, tmp_path / "run", quiet=True)
    model = load_sequence(tmp_path / "run")
    assert model.input_size == (1, 40)
    lengths = [12, 25, 18, 21]
    short = _ragged_file(tmp_path / "short.tsv", lengths, 1)  # padded to 25 by its longest series
    alone = _ragged_file(tmp_path / "alone.tsv", lengths[:1], 1)  # the first series, not padded
    longer = tmp_path / "longer.tsv"  # the same four and one of 55 samples: padded to 55
    longer.write_text(
        "".join(line + "\tNaN" * 30 + "\n" for line in short.read_text().splitlines())
        + _ragged_file(tmp_path / "l.tsv", [55], 2).read_text()
    )
    p_short = [r["probabilities"]["1"] for r in predict_file(model, short)]
    p_longer = [r["probabilities"]["1"] for r in predict_file(model, longer)]
    p_alone = predict_file(model, alone)[0]["probabilities"]["1"]
    assert p_longer[:4] == pytest.approx(p_short, abs=1e-6)
    assert p_alone == pytest.approx(p_short[0], abs=1e-6)
    assert explain_series(tmp_path / "run", alone, 0)["probability"] == pytest.approx(
        max(p_alone, 1 - p_alone), abs=1e-6
    )
    # eval scores what predict answers
    out = evaluate_run(tmp_path / "run", data=str(longer))
    rows = predict_file(model, longer)
    assert out["errors"] == sum(r["class"] != r["label"] for r in rows)


def test_the_loss_is_the_mean_of_the_series_losses_taken_in_float64():
    """`cnnkit sequence eval --format json` prints every number as a float64 value, as every task's
    eval does: the shares of counts, and the loss, each series' in float32 summed in float64."""
    import math

    import torch.nn.functional as F

    from cnnkit.data.series import SeriesSet
    from cnnkit.tasks.sequence.evaluate import evaluate

    class Mean(torch.nn.Module):  # logits (mean, -mean) of each series
        classes = ["a", "b"]

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            m = x.mean((1, 2)) * self.scale
            return torch.stack([m, -m], 1)

    g = torch.Generator().manual_seed(0)
    values = torch.randn(227, 1, 6, generator=g)
    labels = (torch.rand(227, generator=g) < 0.3).long()
    out = evaluate(Mean(), SeriesSet(values, labels, ["a", "b"]), batch_size=64)
    text = json.dumps(out)
    m = values.mean((1, 2))
    probs = torch.stack([m, -m], 1).softmax(1)
    each = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="none").tolist()  # float32 per series
    assert json.loads(text)["loss"] == math.fsum(each) / 227
    assert json.loads(text)["accuracy"] == 1 - out["errors"] / 227


@pytest.mark.parametrize(
    "net, reason",
    [
        ({"net": "nope"}, "its net, classes or input_size is not one cnnkit writes"),
        ({}, "'net'"),
    ],
)
def test_metadata_that_builds_no_series_model_is_one_line_with_the_hint_once(tmp_path, net, reason):
    from safetensors.torch import save_file

    from cnnkit.engine.runfolder import CHECKPOINT_HINT, FORMAT

    info = {"format": FORMAT, "task": "sequence", "classes": ["a", "b"], "input_size": [1, 10], **net}
    path = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"cnnkit": json.dumps(info)})
    with pytest.raises(CnnkitError) as err:
        load_sequence(path)
    assert str(err.value) == f"{path}: its metadata does not describe a series model ({reason}); {CHECKPOINT_HINT}"

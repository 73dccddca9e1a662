"""MultiRocket: fixed dilated convolutions, four pooling operators, a ridge classifier fitted in closed form."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnkit.cli import main
from cnnkit.data.series import SeriesSet, load_series
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.models.rocket import (
    _LOW,
    FixedConv1d,
    HydraBranch,
    _leave_out,
    _pool,
    dilations_for,
    kernel_weights,
    quantile_sequence,
    series_lengths,
)
from cnnkit.tasks.sequence import load_sequence
from cnnkit.tasks.sequence.rocket import COLUMNS, fit, fit_head, ridge_loo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_84_kernels_sum_to_zero_with_three_taps_of_two():
    w = kernel_weights()
    assert w.shape == (84, 9) and len({tuple(r.tolist()) for r in w}) == 84
    assert torch.equal(w.sum(1), torch.zeros(84)) and torch.equal((w == 2).sum(1), torch.full((84,), 3))


@pytest.mark.parametrize("length, per_kernel", [(150, 74), (24, 74), (1751, 74), (10, 5)])
def test_dilations_reach_the_series_length_and_share_the_biases(length, per_kernel):
    dilations, counts = dilations_for(length, per_kernel)
    assert dilations[0] == 1 and dilations == sorted(set(dilations)) and len(dilations) <= 32
    assert 8 * dilations[-1] <= max(length - 1, 8)  # the widest kernel spans the series, no more
    assert sum(counts) == per_kernel and min(counts) >= 1


def test_quantiles_are_the_golden_ratio_sequence():
    q = quantile_sequence(3)
    phi = (5**0.5 + 1) / 2
    torch.testing.assert_close(q, torch.tensor([phi % 1, 2 * phi % 1, 3 * phi % 1], dtype=torch.float64))


def test_the_four_pools_on_a_hand_example():
    """Response 1, -1, 2, 3, -2 less bias 0: 3 of 5 positive, their mean 2, mean index 5/3, longest run 2;
    less bias 5: nothing positive (MIPV -1); the last position left out, bias 0.5: 3 of 4, mean 1.5."""
    r = torch.tensor([1.0, -1.0, 2.0, 3.0, -2.0])[:, None, None]  # (L, B, K)
    out = _pool(r, torch.tensor([[5]]), torch.tensor([[0.0, 5.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.6, 2.0, 5 / 3, 2.0, 0.0, 0.0, -1.0, 0.0]]))
    n = _leave_out(r, torch.tensor([4]), 0, torch.tensor([False]))
    assert n.tolist() == [[4]] and r[4, 0, 0] == _LOW
    torch.testing.assert_close(_pool(r, n, torch.tensor([[0.5]])), torch.tensor([[0.75, 1.5, 5 / 3, 2.0]]))


def test_positions_left_out_are_the_padding_and_for_valid_kernels_the_ends():
    """Series of lengths 6, 3, 2 padded to 7, receptive field 3 (pad 1): a "valid" kernel pools
    positions 1..4, 1..1 and (the series no longer than 2 pad) 0..1; a "same" kernel each series."""
    r = torch.zeros(7, 3, 2)
    n = _leave_out(r, torch.tensor([6, 3, 2]), 1, torch.tensor([True, False]))
    assert n.tolist() == [[4, 6], [1, 3], [2, 2]]
    pooled = (r == 0).permute(1, 2, 0)  # (B, K, L)
    assert [[row.nonzero().flatten().tolist() for row in s] for s in pooled] == [
        [[1, 2, 3, 4], [0, 1, 2, 3, 4, 5]],
        [[1], [0, 1, 2]],
        [[0, 1], [0, 1]],
    ]
    assert (r[r != 0] == _LOW).all()


def test_the_fixed_convolution_is_torchs_convolution():
    """The time-first matrix product answers what nn.Conv1d answers, channels and dilation included."""
    g = torch.Generator().manual_seed(0)
    conv = FixedConv1d(3, 84, 9, padding=4 * 5, dilation=5, bias=False)
    x = torch.randn(4, 3, 60, generator=g)
    out = conv(x)
    assert out.shape == (4, 84, 60) and out.permute(2, 0, 1).is_contiguous()
    torch.testing.assert_close(out, nn.functional.conv1d(x, conv.weight, padding=20, dilation=5), rtol=1e-5, atol=1e-5)


def test_ridge_leave_one_out_equals_refitting_without_each_series():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 30, generator=g, dtype=torch.float64)
    y = torch.where(torch.randn(12, 2, generator=g) > 0, 1.0, -1.0).double()
    w, b, alpha, loo, rows, _ = ridge_loo(x, y, [0.5])
    assert rows.tolist() == list(range(12))
    close = dict(rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(x @ w + b, _ridge(x, y, alpha)(x), **close)  # the fit itself
    for i in range(12):
        keep = torch.arange(12) != i
        torch.testing.assert_close(loo[i], _ridge(x[keep], y[keep], alpha)(x[i : i + 1])[0], **close)


def test_ridge_on_many_rows_chooses_the_penalty_on_a_subset_and_solves_all():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 30, generator=g, dtype=torch.float64)
    y = x[:, :1] + 0.5 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    w, b, alpha, loo, rows, _ = ridge_loo(x, y, [0.1, 10.0, 1000.0], subset=25)
    assert len(rows) == 25 == len(loo) and len(set(rows.tolist())) == 25
    assert alpha == ridge_loo(x[rows], y[rows], [0.1, 10.0, 1000.0])[2]  # the subset's own choice
    torch.testing.assert_close(x @ w + b, _ridge(x, y, alpha)(x))  # the whole set solved at it


def test_ridge_chooses_the_column_set_with_the_smaller_leave_one_out_residual():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 200, generator=g, dtype=torch.float64)
    y = x[:, 3:5].sum(dim=1, keepdim=True) + 0.1 * torch.randn(30, 1, generator=g, dtype=torch.float64)
    signal, other = torch.arange(0, 10), torch.arange(100, 200)  # the target's columns are in the first set
    for sets, pick in (([torch.arange(200), signal], 1), ([other, signal], 1), ([signal, other], 0)):
        fit = ridge_loo(x.clone(), y, [0.01, 1.0], columns=sets)  # x is a scratch copy there
        assert fit.columns == pick
        keep = sets[pick]
        dropped = torch.ones(200, dtype=torch.bool)
        dropped[keep] = False
        assert fit.w[dropped].abs().max() == 0  # the other columns carry no weight
        alone = ridge_loo(x[:, keep], y, [0.01, 1.0])  # the same as fitting the chosen columns alone
        assert fit.alpha == alone.alpha
        torch.testing.assert_close(fit.w[keep], alone.w)
        torch.testing.assert_close(fit.loo, alone.loo)


def test_fit_head_refuses_an_unknown_feature_set():
    net = create_model("multirocket_hydra", num_classes=2, length=40, features=700)
    with pytest.raises(CnnkitError, match="unknown feature sets"):
        fit_head(net, torch.randn(6, net.num_features, dtype=torch.float64), torch.tensor([0, 1] * 3), columns=("mpv",))
    sets = net.column_sets()
    assert sets["ppv"].tolist() == list(range(0, net.sparse_features.start, 4))  # the first of the four pools
    assert len(sets["all"]) == net.num_features
    assert sets["minirocket"].tolist() == list(range(0, net.raw.num_features, 4))  # the series' own PPV
    assert sets["hydra"].tolist() == list(range(net.sparse_features.start, net.num_features))


def test_fit_head_leaves_out_a_default_set_the_model_lacks():
    net = create_model("multirocket", num_classes=2, length=40, features=700)
    assert "hydra" in COLUMNS and "hydra" not in net.column_sets()  # plain MultiRocket has no Hydra counts
    g = torch.Generator().manual_seed(0)
    fitted = fit_head(net, torch.randn(8, net.num_features, dtype=torch.float64, generator=g), torch.tensor([0, 1] * 4))
    assert fitted["columns"] in ("all", "ppv", "minirocket")
    with pytest.raises(CnnkitError, match=r"unknown feature sets \[.hydra.\]; use some of all, ppv, minirocket"):
        fit_head(
            net, torch.randn(8, net.num_features, dtype=torch.float64), torch.tensor([0, 1] * 4), columns=("hydra",)
        )


def _ridge(x, y, alpha):
    """Ridge with an unpenalised intercept by the normal equations (the reference)."""
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - ym))
    return lambda z: (z - xm) @ w + ym


def test_fit_through_the_cli_classifies_gunpoint(data_dir, tmp_path, capsys):
    """GunPoint (50 training series, 150 test): 0 or 1 test errors (the issue's target), in seconds."""
    if not (data_dir / "ucr" / "GunPoint_TRAIN.ts").is_file():
        pytest.skip("no UCR data")
    run = tmp_path / "gp"
    argv = ["sequence", "train", "--data", "ucr:GunPoint", "--data-dir", str(data_dir), "--model", "multirocket"]
    assert main([*argv, "--val-fraction", "0", "--out", str(run), "--quiet"]) == 0
    assert {p.name for p in run.iterdir()} == {"model.safetensors", "metrics.csv", "config.yaml"}
    capsys.readouterr()
    assert main(["sequence", "eval", str(run), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == 150 and out["errors"] <= 1, out
    model = load_sequence(run)
    assert model.input_size == (1, 150) and model.net.num_features == 49_728
    rebuilt = create_model("multirocket", num_classes=2, length=150)
    assert rebuilt.raw.dilations == model.net.raw.dilations  # the layout follows the training length
    assert main([*argv, "--out", str(run), "--quiet"]) == 2  # never over a run
    assert "already holds a trained model" in capsys.readouterr().err
    argv_fcn = ["sequence", "train", "--data", "ucr:GunPoint", "--data-dir", str(data_dir), "--model", "fcn1d"]
    assert main([*argv_fcn, "--steps", "2", "--epochs", "1", "--out", str(run), "--quiet"]) == 2  # nor a trained one
    assert main([*argv, "--out", str(run), "--resume", "--quiet"]) == 2
    assert main(["explain", str(run), str(data_dir / "ucr" / "GunPoint_TEST.ts")]) == 2
    assert "no class activation map" in capsys.readouterr().err


def test_an_npz_trains_on_its_train_split_and_scores_its_test_split(data_dir, tmp_path, capsys):
    """GunPoint saved as tslearn caches a set: the run fits on X_train and scores X_test (0 or 1 errors)."""
    if not (data_dir / "ucr" / "GunPoint_TRAIN.ts").is_file():
        pytest.skip("no UCR data")
    train, test = (load_series("ucr:GunPoint", s, data_dir) for s in ("train", "test"))
    npz = tmp_path / "GunPoint.npz"
    np.savez(
        npz,
        X_train=train.values[:, 0].numpy(),
        y_train=train.labels.numpy() + 1,
        X_test=test.values[:, 0].numpy(),
        y_test=test.labels.numpy() + 1,
    )
    run = tmp_path / "run"
    assert main(["sequence", "train", "--data", str(npz), "--val-fraction", "0", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sequence", "eval", str(run), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == 150 and out["errors"] <= 1, out


def test_no_znorm_keeps_the_level_and_files_given_later_are_read_the_same_way(tmp_path, capsys):
    """Two classes of the same shape at levels 0 and 3: z-normalised they are one class (about
    chance); with --no-znorm the run separates them, and eval and predict of a file read it raw too."""
    g = np.random.default_rng(0)
    t = np.linspace(0, 6.28, 50)
    for split, n in (("TRAIN", 20), ("TEST", 40)):
        y = np.arange(n) % 2
        x = np.sin(t)[None] + 3.0 * y[:, None] + 0.1 * g.standard_normal((n, 50))
        np.savetxt(tmp_path / f"Level_{split}.tsv", np.column_stack([y, x]), delimiter="\t", fmt="%.5f")
    errors = {}
    for flag in ("--znorm", "--no-znorm"):
        run = tmp_path / flag
        argv = ["sequence", "train", "--data", str(tmp_path / "Level_TRAIN.tsv"), "--val-fraction", "0"]
        assert main([*argv, flag, "--out", str(run), "--quiet"]) == 0
        capsys.readouterr()
        assert main(["sequence", "eval", str(run), "--data", str(tmp_path / "Level_TEST.tsv"), "--format", "json"]) == 0
        errors[flag] = json.loads(capsys.readouterr().out)["errors"]
    assert errors["--no-znorm"] == 0 and errors["--znorm"] >= 10, errors
    argv = ["sequence", "predict", str(tmp_path / "--no-znorm"), str(tmp_path / "Level_TEST.tsv"), "--format", "json"]
    assert main(argv) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]  # one a line
    assert len(answers) == 40 and all(a["class"] == a["label"] for a in answers)


def test_multichannel_series_use_channel_subsets():
    net = create_model("multirocket", num_classes=4, in_channels=6, length=100)
    used = torch.stack([(c.weight.abs().sum(2) > 0) for c in net.raw.convs])  # (dilations, 84, 6)
    assert used.any(2).all() and not used.all()  # every kernel sees a channel; not every kernel all six
    net.fit_biases(torch.randn(8, 6, 100))
    assert net(torch.randn(3, 6, 100)).shape == (3, 4)


def test_padding_a_series_further_changes_no_feature():
    """A file's longest series sets its padding: the same series padded to 90 or 120 samples (and a
    training set padded to 100) must give the same features."""
    g = torch.Generator().manual_seed(0)
    train = torch.zeros(16, 1, 100)
    for i in range(16):
        n = 60 + 2 * i
        train[i, 0, :n] = torch.randn(n, generator=g)
    net = create_model("multirocket", num_classes=2, length=100)
    net.fit_biases(train)
    series = torch.randn(1, 1, 70, generator=g)
    a = net.forward_features(torch.nn.functional.pad(series, (0, 20)))
    b = net.forward_features(torch.nn.functional.pad(series, (0, 50)))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(
        net.forward_features(series), a
    )  # nor padding it at all: the step down to the padding is no difference
    assert series_lengths(torch.nn.functional.pad(series, (0, 50))).tolist() == [70]


def test_summary_counts_the_fixed_convolutions_exactly():
    """A summary of multirocket runs (shapes only first) and counts 84 x 9 multiply-adds per output of
    each dilation's convolution, on the series and its difference (length 40: four dilations, each with
    its own number of biases; the pools' time loop makes every further step and dilation cost)."""
    import cnnkit

    model = create_model("multirocket", length=40)
    assert len(model.raw.convs) == len(model.diff.convs) == 4
    s = cnnkit.summary(model, input_size=(1, 40), batch_size=2)
    convs = 2 * 84 * 9 * (40 * len(model.raw.convs) + 39 * len(model.diff.convs))
    assert s.totals["macs"] == convs + 2 * model.num_features * 2  # and the linear layer's, 2 classes


def test_the_transform_runs_in_float32_under_bf16_autocast():
    """Counts of up to L positions are not exact in bfloat16: autocast leaves the transform alone."""
    net = create_model("multirocket", length=40, features=2000)
    x = torch.randn(3, 1, 40, generator=torch.Generator().manual_seed(0))
    net.fit_biases(x)
    with torch.no_grad():
        plain = net.forward_features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = net.forward_features(x)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)


def test_hydra_counts_one_winner_and_one_loser_per_group_and_step():
    """Per group and time step the largest response adds itself, the smallest adds 1: over a series of
    length n the second counts of a group sum to n (n - 1 on the difference), the first to the sum
    of the group's step-wise maxima, computed here with a plain convolution."""
    g = torch.Generator().manual_seed(0)
    branch = HydraBranch(1, 60, 4, g)  # 2 groups on the series, 2 on its difference
    assert branch.dilations == [1, 2, 4] and branch.num_features == 3 * 2 * 2 * 8 * 2
    x = torch.zeros(2, 1, 60)
    x[0, 0, :] = torch.randn(60, generator=g)
    x[1, 0, :45] = torch.randn(45, generator=g)  # a shorter series, zero-padded
    n = series_lengths(x)
    diff = torch.nn.functional.pad(x.diff(dim=2), (0, 1))
    out = branch(x, diff, n).view(2, 3, 2, 2, 2, 8)  # (B, dilation, representation, wins|losses, group, kernel)
    for b, length in enumerate([60, 45]):
        torch.testing.assert_close(out[b, :, 0, 1].sum(-1), torch.full((3, 2), float(length)))
        torch.testing.assert_close(out[b, :, 1, 1].sum(-1), torch.full((3, 2), float(length - 1)))
        for i, d in enumerate(branch.dilations):
            z = torch.nn.functional.conv1d(x[b : b + 1, :, :length], branch.weight[i, 0], padding=4 * d, dilation=d)
            maxima = z.view(2, 8, length).max(dim=1).values.sum(-1)  # each group's step-wise maxima, summed
            torch.testing.assert_close(out[b, i, 0, 0].sum(-1), maxima)
    w = branch.weight
    torch.testing.assert_close(w.sum(-1), torch.zeros(w.shape[:-1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.abs().sum(-1), torch.ones(w.shape[:-1]))


def test_hydra_multichannel_groups_read_channel_subsets():
    net = create_model("multirocket_hydra", num_classes=3, in_channels=6, length=50, features=2000, hydra=8)
    used = net.hydra.weight.abs().sum(-1) > 0  # (dilations, 2, 4 groups * 8, 6 channels)
    assert used.sum(-1).unique().tolist() == [3]  # clip(6 // 2, 2, 8) channels a group
    per_group = used.view(*used.shape[:2], 4, 8, 6)
    assert (per_group == per_group[:, :, :, :1]).all()  # the group's 8 kernels read the same channels


def test_multirocket_hydra_pads_like_multirocket_and_keeps_zero_counts_zero():
    """Hydra's counts of a series padded further are the same; after the fit's scaling a count of 0 is
    still 0 (the sparse scaling), the other columns standardised."""
    g = torch.Generator().manual_seed(1)
    values = torch.zeros(24, 1, 80)
    for i in range(24):
        values[i, 0, : 50 + i] = torch.randn(50 + i, generator=g)
    labels = torch.arange(24) % 2
    values[labels == 1] *= 2.0
    train = SeriesSet(values, labels, ["a", "b"])
    net = create_model("multirocket_hydra", num_classes=2, length=80, features=2000, hydra=16)
    fitted = fit(net, train)
    assert fitted["features"] == net.num_features == net.sparse_features.stop
    series = values[:1, :, :50]
    a = net.forward_features(torch.nn.functional.pad(series, (0, 30)))
    b = net.forward_features(torch.nn.functional.pad(series, (0, 60)))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(net.forward_features(series), a)
    counts = net.hydra(series, torch.nn.functional.pad(series.diff(dim=2), (0, 1)), torch.tensor([50]))
    assert (counts == 0).any() and torch.equal(a[0, net.sparse_features] == 0, counts[0] == 0)
    assert (net.scale[net.sparse_features] > 1e-8).all()

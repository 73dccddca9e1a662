"""The GAN task: the engine's own-step path, exact resume with two optimisers, the quality scores, predict."""

import math
import re

import numpy as np
import pytest
import torch

import cnnkit
from cnnkit.cli import main
from cnnkit.data.imageset import ImageSet
from cnnkit.engine import Data, Phase, Plan, Setup, fit
from cnnkit.engine.runfolder import read_checkpoint
from cnnkit.errors import CnnkitError
from cnnkit.models.deploy import Classifier
from cnnkit.tasks.generate import (
    GenerateConfig,
    GenerateTask,
    build_gan,
    evaluate_run,
    frechet_distance,
    mnist_score,
    predict,
    train,
)
from cnnkit.tasks.generate.predict import grid_size

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = [str(d) for d in range(10)]


def tiny(conditional: bool = True):
    return build_gan(8, 4, DIGITS if conditional else [])


def fake_digits(n: int = 64) -> ImageSet:
    g = torch.Generator().manual_seed(1)
    return ImageSet(torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10, DIGITS)


def optimizers(model, lr: float = 2e-4):
    return [
        torch.optim.Adam(model.generator.parameters(), lr, betas=(0.5, 0.999)),
        torch.optim.Adam(model.discriminator.parameters(), lr, betas=(0.5, 0.999)),
    ]


def setup(model) -> Setup:
    opt_g, opt_d = optimizers(model)
    return Setup(opt_g, others=[opt_d])


def test_a_gan_step_moves_both_networks_and_both_losses():
    model, task = tiny(), GenerateTask(batch_size=16, latent_dim=8)
    batch = next(iter(task.batches(fake_digits(), torch.Generator().manual_seed(0))))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def losses():  # both losses on the same batch at the current weights, without updating anything
        with torch.no_grad():
            x, y, z, fy = batch
            fake = model.generator.net(model.generator.condition(z, fy))
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            d = bce(model.judge(x, y)[:, 0], torch.ones(16)) + bce(model.judge(fake, fy)[:, 0], torch.zeros(16))
            return float(d), float(bce(model.judge(fake, fy)[:, 0], torch.ones(16)))

    model.eval()
    d0, g0 = losses()
    model.train()
    stats = task.step(model, batch, optimizers(model, lr=1e-2))  # Adam moves every weight by about lr
    model.eval()
    d1, g1 = losses()
    assert set(stats) == {"d_loss", "g_loss", "d_real", "d_fake", "n"} and float(stats["n"]) == 16
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert abs(d1 - d0) > 1e-4 and abs(g1 - g0) > 1e-4
    moved = {
        k.split(".")[0]
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    }
    assert moved == {"generator", "discriminator"}
    # every weight of both networks moved (the generator's through the discriminator's judgement)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name


def test_a_bf16_step_measures_the_beliefs_in_float32():
    """d_real and d_fake under CPU bf16 autocast equal the sigmoid of the step's own logits summed in float64."""
    torch.manual_seed(0)
    model, task = tiny(), GenerateTask(batch_size=64, latent_dim=8)
    batch = next(iter(task.batches(fake_digits(), torch.Generator().manual_seed(0))))
    logits, judge = [], model.judge

    def recorded(x, labels):
        out = judge(x, labels)
        logits.append(out[:, 0].detach().double())
        return out

    model.judge = recorded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = task.step(model, batch, optimizers(model))
    assert logits[0].dtype == torch.float64 and len(logits) == 3  # real, generated for D, generated for G
    for key, logit in (("d_real", logits[0]), ("d_fake", logits[1])):
        assert stats[key].dtype == torch.float32
        assert float(stats[key]) == pytest.approx(float(torch.sigmoid(logit).sum()), abs=1e-4), key


def test_an_infogan_code_is_learnt_by_both_networks_and_kept_by_the_sampler():
    torch.manual_seed(0)
    model = build_gan(8, 4, [], codes=10)  # unconditional, with a 10-way code (InfoGAN)
    assert model.discriminator.classifier.out_features == 11 and model.generator.net.classes == 10
    task = GenerateTask(batch_size=32, latent_dim=8, codes=10)
    opts = optimizers(model, lr=2e-3)
    data, g = fake_digits(), torch.Generator().manual_seed(0)

    def code_loss():  # how well the discriminator reads the code of fresh generated digits
        with torch.no_grad():
            z, c = torch.randn(256, 8, generator=g), torch.arange(256) % 10
            fake = model.generator.net(model.generator.condition(z, c))
            return float(torch.nn.functional.cross_entropy(model.judge(fake, c)[:, 1:], c))

    before = code_loss()
    for _ in range(30):
        for batch in task.batches(data, g):
            task.step(model, batch, opts)
    after = code_loss()
    assert before > 2.0 and after < 0.5 * before  # ln 10 = 2.30: the code went from unread to read
    sampler = model.generator.eval()
    a, b = sampler.sample(12, seed=3), sampler.sample(12, seed=3)
    assert torch.equal(a, b) and a.shape == (12, 1, 28, 28)  # the drawn codes follow the seed
    info = sampler.describe()
    assert info["codes"] == 10 and info["classes"] == []
    rebuilt = type(sampler).from_info(info)
    rebuilt.load_state_dict(sampler.state_dict())
    assert torch.equal(rebuilt.eval().sample(12, seed=3), a)
    with pytest.raises(CnnkitError, match="--codes and --clusters are for an unconditional generator"):
        train(GenerateConfig(conditional=True, codes=10), quiet=True)


def test_clusters_label_the_digits_without_their_labels_and_the_sampler_draws_them_by_share():
    from cnnkit.tasks.generate.train import cluster_digits

    # three kinds of image: blank, a bar on the left, a bar on the right; their labels say nothing
    images = torch.zeros(60, 1, 28, 28, dtype=torch.uint8)
    images[20:50, :, :, 2:8] = 255
    images[50:, :, :, 20:26] = 255
    digits = ImageSet(images, torch.zeros(60, dtype=torch.long), DIGITS)
    labelled, prior = cluster_digits(digits, 3, seed=0)
    groups = [set(labelled.labels[a:b].tolist()) for a, b in ((0, 20), (20, 50), (50, 60))]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3  # each kind its own cluster
    by_cluster = {next(iter(g)): n / 60 for g, n in zip(groups, (20, 30, 10))}
    assert prior == pytest.approx([by_cluster[c] for c in range(3)])
    assert labelled.classes == ["cluster 0", "cluster 1", "cluster 2"] and labelled.meta["clusters"] == 3
    with pytest.raises(CnnkitError, match="needs at least 100 training digits"):
        cluster_digits(digits, 100)

    model = build_gan(8, 4, [], prior=[0.0, 1.0, 0.0])  # every new digit from cluster 1
    d = model.discriminator
    assert d.features[0].in_channels == 1 and d.embed.weight.shape == (3, d.num_features)  # no class planes
    assert d.classifier.out_features == 1  # no code to read back: not InfoGAN
    x0 = torch.rand(2, 1, 28, 28)
    h = d.forward_head(d.forward_features(x0), pre_logits=True)
    labels = torch.tensor([0, 2])
    expect = d.classifier(h) + (d.embed(labels) * h).sum(1, keepdim=True)  # the projection discriminator
    torch.testing.assert_close(model.judge(x0, labels), expect)
    sampler = model.generator.eval()
    assert sampler.draw_codes(50, torch.Generator().manual_seed(0)).tolist() == [1] * 50
    task = GenerateTask(batch_size=16, latent_dim=8, prior=[0.0, 1.0, 0.0])
    x, y, z, fake_y = next(iter(task.batches(labelled, torch.Generator().manual_seed(0))))
    assert fake_y.tolist() == [1] * 16
    parts = task.step(model, (x, y, z, fake_y), optimizers(model))
    assert all(math.isfinite(float(v)) for v in parts.values())
    rebuilt = type(sampler).from_info(sampler.describe())
    rebuilt.load_state_dict(sampler.state_dict())
    assert rebuilt.prior == [0.0, 1.0, 0.0] and torch.equal(rebuilt.eval().sample(4, seed=2), sampler.sample(4, seed=2))
    with pytest.raises(CnnkitError, match="non-negative numbers with a positive sum"):
        type(sampler)(sampler.net, [], 3, [0.0, 0.0, 0.0])
    with pytest.raises(CnnkitError, match="two ways to give the generator a discrete choice"):
        train(GenerateConfig(codes=10, clusters=10), quiet=True)


def test_the_engine_runs_a_task_step_logs_every_loss_and_guards_each(tmp_path):
    model, task = tiny(False), GenerateTask(batch_size=16, latent_dim=8)
    plan = Plan([Phase(2, setup)])
    result = fit(task, model, Data(fake_digits(), None), plan, tmp_path / "run", quiet=True, device="cpu")
    assert [list(r)[:5] for r in result.history] == [
        ["epoch", "train_d_loss", "train_g_loss", "train_d_real", "train_d_fake"]
    ] * 2
    assert result.images == 2 * 64
    tensors, meta = read_checkpoint(tmp_path / "run" / "resume.safetensors")
    assert any(k.startswith("optim.") for k in tensors) and any(k.startswith("optim1.") for k in tensors)
    assert "param_groups1" in meta
    assert cnnkit.load(tmp_path / "run").info["task"] == "generate"

    class Diverging(GenerateTask):
        def step(self, model, batch, optimizers):
            stats = super().step(model, batch, optimizers)
            return {**stats, "g_loss": stats["g_loss"] * float("nan")}

    plan = Plan([Phase(1, setup)])
    with pytest.raises(CnnkitError, match=r"the g loss became nan at epoch 1, step 4: training diverged"):
        fit(Diverging(16, 8), tiny(False), Data(fake_digits(), None), plan, quiet=True, device="cpu")


def test_zero_epochs_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(CnnkitError, match="--epochs must be a positive integer. Received: --epochs 0"):
        train(GenerateConfig(epochs=0), tmp_path / "run", quiet=True)
    assert main(["generate", "train", "--epochs", "0", "--out", str(tmp_path / "cli"), "--quiet"]) == 2
    assert "--epochs must be an integer from 1 to 100,000; received 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cli").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two epochs straight, and one epoch then one more resumed: a tiny conditional GAN on 96 digits."""
    root = tmp_path_factory.mktemp("gan")
    kw = dict(conditional=True, latent_dim=8, width=4, epochs=2, batch_size=32, subset=96, data_dir=str(data_dir))
    train(GenerateConfig(**kw, threads=1), root / "straight", quiet=True, device="cpu")
    cfg = GenerateConfig(**kw, threads=1, minutes=1e-9)  # the budget stops the first call after epoch 1
    first = train(cfg, root / "resumed", quiet=True, device="cpu")
    assert len(first.history) == 1 and not (root / "resumed" / "samples" / "epoch_002.png").exists()
    train(GenerateConfig(), root / "resumed", resume=True, quiet=True, device="cpu")  # the run's own settings win
    return root


def test_resume_is_exact_for_both_networks_and_both_optimisers(runs):
    a, _ = read_checkpoint(runs / "straight" / "resume.safetensors")
    b, meta = read_checkpoint(runs / "resumed" / "resume.safetensors")
    assert meta["epoch"] == 2 and set(a) == set(b)
    assert any(k.startswith("model.discriminator.") for k in a) and any(k.startswith("optim1.") for k in a)
    for key in a:
        if not key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key
    grids = sorted(p.name for p in (runs / "resumed" / "samples").iterdir())
    assert grids == ["epoch_001.png", "epoch_002.png"]
    from PIL import Image

    with Image.open(runs / "straight" / "samples" / "epoch_002.png") as im:
        assert im.size == grid_size(100, 10)  # ten digits a row, a row per class
    assert (runs / "straight" / "curves.png").stat().st_size > 0
    header = (runs / "straight" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_d_loss,train_g_loss")


def test_resuming_a_conditional_run_prints_a_predict_command_that_names_a_digit(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "cgan"
    shutil.copytree(runs / "straight", run)  # finished: --resume trains nothing and prints the next command
    assert main(["generate", "train", "--resume", "--out", str(run)]) == 0
    said = capsys.readouterr().out
    assert f"cnnkit generate predict {run} --digit 7 --out digits.png" in said
    # the epochs are the run's, the seconds this call's (none trained): not "2 epochs ... in 0.0 s"
    assert re.search(r"done: the run's 2 epochs, d_loss [0-9.]+ g_loss [0-9.]+ this call trained 0\.0 s ->", said)


def test_scores_on_known_inputs():
    assert mnist_score(torch.full((50, 10), 0.1)) == pytest.approx(1.0)
    assert mnist_score(torch.eye(10).repeat(5, 1)) == pytest.approx(10.0)
    assert mnist_score(torch.eye(10)[[3] * 20]) == pytest.approx(1.0)  # confident, but all one digit
    # by hand: p(y) = (0.75, 0.25); KL = log(4/3) and 0.5 log(2/3) + 0.5 log 2
    expected = math.exp((math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2)
    assert mnist_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]])) == pytest.approx(expected, rel=1e-9)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.arange(16.0, dtype=torch.float64) / 10
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    # two Gaussians' covariances differing by a scale s: tr(S + s^2 S - 2 s S) = (1 - s)^2 tr(S)
    assert frechet_distance(x, 3 * x) == pytest.approx(
        4 * float(torch.cov(x.T).trace()) + 4 * float(x.mean(0).square().sum()), rel=1e-6
    )
    with pytest.raises(CnnkitError, match="at least 2 vectors"):
        frechet_distance(x[:1], x)


def test_mnist_score_takes_zero_probabilities_as_0_log_0_0():
    # confident one-hot rows score exactly the number of classes (its docstring's example); an
    # epsilon added to the probabilities would give 9.9999999976
    assert mnist_score(torch.eye(10)) == 10.0
    # against NumPy summing p log(p / p(y)) over the non-zero probabilities only
    probs = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.2, 0.0, 0.8, 0.0], [0.0, 0.0, 0.0, 1.0]])
    p = probs.double().numpy()
    m = p.mean(0)
    kl = [sum(pi * np.log(pi / mi) for pi, mi in zip(row, m) if pi > 0) for row in p]
    assert mnist_score(probs) == round(float(np.exp(np.mean(kl))), 10)


def test_predict_writes_a_grid_of_the_right_size(runs, tmp_path):
    from PIL import Image

    assert (
        main(
            [
                "generate",
                "predict",
                str(runs / "resumed"),
                "--out",
                str(tmp_path / "g.png"),
                "--count",
                "10",
                "--digit",
                "3",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == grid_size(10) == ((4 * 30 + 2) * 2, (3 * 30 + 2) * 2)
    sampler = cnnkit.load(runs / "resumed")
    path = predict(sampler, tmp_path / "wide.png", count=12, digit=0, cols=12)
    with Image.open(path) as im:
        assert im.size == grid_size(12, 12)
    with pytest.raises(CnnkitError, match=r"conditional: pass --digit 0..9. Received: no --digit$"):
        predict(sampler, tmp_path / "x.png", count=4)
    with pytest.raises(CnnkitError, match="unconditional"):
        predict(tiny(False).generator, tmp_path / "x.png", count=4, digit=1)


def test_predict_refuses_a_grid_too_large_before_drawing_a_digit(runs, tmp_path, monkeypatch):
    sampler = cnnkit.load(runs / "resumed")

    def sample(*args, **kwargs):
        raise AssertionError("digits drawn for a refused grid")

    monkeypatch.setattr(sampler, "sample", sample)
    assert grid_size(1_000_000) == (60_004, 60_004)
    with pytest.raises(
        CnnkitError, match=r"--count 1,000,000 draws a grid of 60,004 x 60,004 pixels, more than the 89,"
    ):
        predict(sampler, tmp_path / "g.png", count=1_000_000, digit=3)
    with pytest.raises(CnnkitError, match=r"--count 40,000 draws a grid of 2,400,004 x 64 pixels"):
        predict(sampler, tmp_path / "g.png", count=40_000, digit=3, cols=40_000)
    assert not (tmp_path / "g.png").exists()


def test_predict_refuses_an_out_it_cannot_write_before_drawing_a_digit(runs, tmp_path, monkeypatch):
    """A folder named like the PNG, or a file where its folder would be, is said before the digits
    are drawn (not after, by the writer)."""
    sampler = cnnkit.load(runs / "resumed")

    def sample(*args, **kwargs):
        raise AssertionError("digits drawn for an --out that cannot be written")

    monkeypatch.setattr(sampler, "sample", sample)
    (tmp_path / "g.png").mkdir()
    with pytest.raises(CnnkitError, match=r"--out .*g\.png is a folder; give the PNG file to write"):
        predict(sampler, tmp_path / "g.png", count=4, digit=3)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(CnnkitError, match=r"cannot create the folder .*f/sub \(.*f is a file\); choose another --out"):
        predict(sampler, tmp_path / "f" / "sub" / "g.png", count=4, digit=3)


def test_evaluate_run_refuses_more_digits_than_the_real_sets_hold(runs, monkeypatch):
    from importlib import import_module

    def classify(*args, **kwargs):
        raise AssertionError("scored sets of different sizes")

    monkeypatch.setattr(import_module("cnnkit.tasks.generate.evaluate"), "classify", classify)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    clf = Classifier(net, [0.13], [0.31], DIGITS, (1, 28, 28))
    with pytest.raises(CnnkitError, match=r"--count 10,001 is more than the 10,000 test digits of mnist"):
        evaluate_run(runs / "resumed", clf, count=10_001)


def test_evaluate_run_scores_generated_and_real_digits(runs):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    clf = Classifier(net, [0.13], [0.31], DIGITS, (1, 28, 28))
    out = evaluate_run(runs / "resumed", clf, count=40)
    g, r = out["generated"], out["real"]
    assert out["conditional"] and out["count"] == 40
    assert 1 <= g["score"] <= 10 and 1 <= r["score"] <= 10 and g["fd"] >= 0 and r["fd"] >= 0
    assert len(g["accuracy_by_class"]) == 10
    assert g["accuracy"] == pytest.approx(sum(g["accuracy_by_class"].values()) / 10)  # four of each class

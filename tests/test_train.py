"""The trainer on real MNIST: a short run that must learn, exact resume, checkpoints, the CLI."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import cnnkit
from cnnkit.cli import main
from cnnkit.data.augment import AugmentConfig
from cnnkit.data.datasets import load_dataset
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.config import preset
from cnnkit.tasks.classify.evaluate import evaluate
from cnnkit.tasks.classify.train import train

TINY = """
import torch.nn as nn

def tiny(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # -> 14x14
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),          # -> 7x7
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, num_classes))

def broken(num_classes=10, in_channels=1):
    net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))
    nn.init.constant_(net[1].weight, float("nan"))
    return net
"""


@pytest.fixture
def tiny(tmp_path):
    """A ~1.5 k-parameter net with BN and dropout (RNG state matters) as file.py:factory."""
    (tmp_path / "tiny.py").write_text(TINY)
    return str(tmp_path / "tiny.py")


def small(data_dir, **kw):
    """A few hundred steps at most, one thread: seconds, not minutes."""
    values = dict(
        data_dir=str(data_dir),
        subset=8192,
        epochs=2,
        batch_size=128,
        threads=1,
        tta=False,
        augment=AugmentConfig(shift=2),
        optimizer="sgd",  # the preset's own recipe for the tests' batch-normalised nets too
        lr=0.3,
    )  # whole images: any net of the tests
    return preset("fast", **{**values, **kw})


def test_a_short_run_learns_and_its_checkpoint_serves_load_eval_and_predict(data_dir, tmp_path, capsys):
    """One short run, trained in this one test (a module fixture would train again in each xdist
    worker that got one of its tests): it learns; its checkpoint loads back as it was; the CLI's
    eval and predict read it; predict refuses an image it cannot read."""
    run = train(small(data_dir), tmp_path / "run", quiet=True)
    _short_run_learns(run)
    _checkpoint_round_trip(run, data_dir)
    _cli_eval_and_predict(run, data_dir, tmp_path, capsys)
    _cli_predict_bad_image(run, tmp_path, capsys)


def _short_run_learns(run):
    # 128 steps of 128 images (8,192 distinct digits, 2 epochs): >= 96% on the 5,000 validation digits
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.history[-1]["val_acc"] >= 0.96
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    lines = (run.out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds" and len(lines) == 3
    assert (run.out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _checkpoint_round_trip(run, data_dir):
    model = cnnkit.load(run.out)
    same = cnnkit.load(run.out / "model.safetensors")
    assert not model.training and model.classes == [str(d) for d in range(10)]
    assert model.input_size == (1, 28, 28) and isinstance(model.net, torch.nn.Module)
    val = load_dataset("mnist", "val", data_dir)
    acc = evaluate(model, val).accuracy
    assert acc == pytest.approx(run.history[-1]["val_acc"], abs=1e-4)
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 10) and torch.equal(model(x), same(x))
    # the weights are plain safetensors: the same tensors, no pickle anywhere
    tensors = load_file(run.out / "model.safetensors")
    assert torch.equal(tensors["mean"], model.mean)


def test_resume_gives_the_same_weights(data_dir, tmp_path, tiny):
    cfg = small(data_dir, model=tiny + ":tiny", subset=1024, epochs=3, ema=0.9)  # 8 steps an epoch

    def stop_after_first(epoch, row):
        if epoch == 0:
            raise KeyboardInterrupt

    train(cfg, tmp_path / "full", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True, on_epoch_end=stop_after_first)
    assert cnnkit.load(tmp_path / "cut").info["epoch"] == 1  # Ctrl-C left a usable checkpoint
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for name in ("model.safetensors", "resume.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for k in a:
            if not k.startswith("rng"):
                assert torch.equal(a[k], b[k]), k


def test_fast_crops_for_nets_of_any_size_and_shifts_for_fixed_size_ones(data_dir, tmp_path, capsys):
    """The fast preset's 24x24 windows reach a net that takes any size; a Flatten -> Linear net gets
    the same +-2 px shifts of whole images, said in one line; a crop too large fails before any file."""
    from cnnkit.models.network import build_network
    from cnnkit.tasks.classify.train import trainable_augment

    cfg = preset("fast", data_dir=str(data_dir))
    assert cfg.augment == AugmentConfig(crop=24)
    data = load_dataset("mnist", "val", data_dir)
    assert trainable_augment(cfg, build_network("mnist_fast", 10, 1), data) == AugmentConfig(crop=24)
    fixed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    capsys.readouterr()
    assert trainable_augment(cfg, fixed, data) == AugmentConfig(shift=2)
    assert (
        "takes only 28x28 inputs: training on shifts of up to 2 px of whole images instead of 24x24 "
        "crops" in " ".join(capsys.readouterr().out.split())
    )
    assert fixed.training  # the probe restored the mode
    with pytest.raises(CnnkitError, match="crop 33 is larger than the 28x28 images padded by their shift 2"):
        train(small(data_dir, augment=AugmentConfig(shift=2, crop=33)), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


def test_nan_loss_stops_with_a_clear_message(data_dir, tmp_path, tiny):
    with pytest.raises(CnnkitError, match="loss became nan at epoch 1, step 4: training diverged"):
        train(small(data_dir, model=tiny + ":broken", subset=512, epochs=1), tmp_path / "r", quiet=True)


def test_ensemble_averages_probabilities(data_dir, tmp_path, tiny):
    res = train(small(data_dir, model=tiny + ":tiny", subset=1024, epochs=1, ensemble=2), tmp_path / "e", quiet=True)
    tmp_path = tmp_path / "e"
    ens = cnnkit.load(tmp_path)
    members = [cnnkit.load(tmp_path / f"member{i}") for i in range(2)]
    x = torch.rand(5, 1, 28, 28)
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    torch.testing.assert_close(ens(x).softmax(1), expected)
    assert ens.classes == members[0].classes and 0 <= res.val_acc <= 1
    assert [m.out for m in res.members] == [tmp_path / "member0", tmp_path / "member1"]


def test_epochs_validate_without_tta_and_the_result_with_it(data_dir, tmp_path, tiny):
    res = train(small(data_dir, model=tiny + ":tiny", subset=1024, epochs=1, tta=True), tmp_path / "t", quiet=True)
    model = cnnkit.load(tmp_path / "t")
    val = load_dataset("mnist", "val", data_dir)
    # on CUDA the run validated under bf16 autocast and this CPU copy runs fp32: a near-random net's
    # ties then flip a few of the 5,000 answers
    tol = 2e-3 if torch.cuda.is_available() else 1e-6
    assert model.tta == "shift" and res.val_acc == pytest.approx(evaluate(model, val).accuracy, abs=tol)
    with model.without_tta():
        plain = evaluate(model, val).accuracy
    assert model.tta == "shift"  # restored after the block
    assert res.history[-1]["val_acc"] == pytest.approx(plain, abs=max(tol, 1e-4))
    assert res.val_acc != pytest.approx(plain, abs=1e-6)  # five views answer differently


def test_trainval_trains_on_all_60000_and_the_cli_records_it(data_dir, tmp_path, tiny, capsys):
    from cnnkit.tasks.classify.train import load_splits

    train_set, val_set = load_splits(small(data_dir, subset=0, trainval=True), torch.device("cpu"))
    plain = load_dataset("mnist", "train", data_dir)
    assert len(train_set) == 60000 and len(val_set) == 5000 and train_set.name == "mnist/train+val"
    assert torch.equal(train_set.images[:55000], plain.images)
    assert torch.equal(train_set.images[55000:], val_set.images)
    assert torch.equal(train_set.labels[55000:], val_set.labels)
    assert (
        main(
            [
                "train",
                "--trainval",
                "--model",
                tiny + ":tiny",
                "--subset",
                "512",
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--threads",
                "1",
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "tv"),
            ]
        )
        == 0
    )
    assert "val (trained on) acc" in capsys.readouterr().out
    assert cnnkit.load(tmp_path / "tv").info["config"]["trainval"] is True
    assert main(["eval", str(tmp_path / "tv"), "--split", "val", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 5000 and "trained on the val split too" in err


def _cli_eval_and_predict(run, data_dir, tmp_path, capsys):
    assert (
        main(["eval", str(run.out), "--split", "val", "--format", "json", "--confusion", str(tmp_path / "cm.png")]) == 0
    )
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["n"] == 5000 and result["accuracy"] == pytest.approx(run.history[-1]["val_acc"], abs=1e-4)
    c = result["confusion"]  # each class's precision and recall: its counts' shares, in float64
    assert result["precision"] == [c[k][k] / sum(row[k] for row in c) for k in range(10)]
    assert result["recall"] == [c[k][k] / sum(c[k]) for k in range(10)]
    assert "trained on the val split" not in err  # held out: no note
    assert (tmp_path / "cm.png").stat().st_size > 1000
    test = load_dataset("mnist", "test", data_dir)
    # black-on-white, 56x56 RGB: converted, resized and inverted like the training digits
    img = 255 - test.images[0, 0].numpy()
    Image.fromarray(img).convert("RGB").resize((56, 56)).save(tmp_path / "digit.png")
    assert main(["predict", str(run.out), str(tmp_path / "digit.png"), "--format", "json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert top[0][0] == str(int(test.labels[0])) and top[0][1] > 0.5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "--epochs must be a positive integer; received 0"),
        (["train", "--data", "mnsit"], "unknown dataset 'mnsit'"),
        (["train", "--resume"], "--resume needs --out"),
        (["eval", "no/such/run"], "no checkpoint at no/such/run"),
        (["predict", "no/such/run", "x.png"], "no checkpoint at no/such/run"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys, data_dir):
    assert main(argv + (["--data-dir", str(data_dir)] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_device_cuda_without_a_gpu(capsys, data_dir, tmp_path):
    assert main(["train", "--device", "cuda", "--data-dir", str(data_dir), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda, but PyTorch sees no CUDA GPU here; use --device cpu" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()  # nothing written


def _cli_predict_bad_image(run, tmp_path, capsys):
    (tmp_path / "x.png").write_text("not an image")
    assert main(["predict", str(run.out), str(tmp_path / "x.png")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_pruning_leaves_out_well_learned_images_and_weights_the_others_below_the_mean():
    """InfoBatch: the first epoch sees every image; then images whose last loss is below the mean are
    left out at the ``prune`` rate, the kept ones below it weighted 1 / (1 - prune), the rest weighted 1."""
    from cnnkit.data.imageset import ImageSet
    from cnnkit.tasks.classify.task import ClassifyTask

    n = 400
    data = ImageSet(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n) % 2, ["a", "b"])
    task = ClassifyTask(batch_size=10, prune=0.75, drop_last=False)  # every kept image in a batch
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    first = task.batches(data, g)
    assert len(first) == n // 10  # no losses yet: every image
    for batch in first:
        _, _, idx, weight = batch
        assert torch.equal(weight, torch.ones(len(idx)))
        task.loss(model, batch)
    hard = torch.arange(n) < 40  # give a tenth of the images a large last loss
    task._fresh = torch.where(hard, 5.0, 0.1)
    second = task.batches(data, g)
    kept = torch.cat([b[2] for b in second])
    assert hard[kept].sum() == 40  # every image above the mean is kept
    easy = (~hard[kept]).sum().item()
    assert 360 * 0.25 - 30 < easy < 360 * 0.25 + 30  # about a quarter of the others
    assert len(kept) == 40 + easy and len(second) == -(-len(kept) // 10)  # steps from the kept images only
    for _, _, idx, weight in second:
        assert torch.equal(weight, torch.where(hard[idx], 1.0, 4.0))
    state = task.state_dict()  # what the resume file keeps: the merged losses
    assert torch.equal(state["losses"], torch.where(hard, 5.0, 0.1))
    with pytest.raises(CnnkitError, match="--prune must be in"):
        train(preset("fast", prune=1.0), "unused", quiet=True)


def test_pruning_keeps_at_least_one_batch_of_a_split_as_large_as_a_batch():
    """A training split of one batch passes the size check; pruning then keeps enough of the images
    it would leave out to fill that batch, rather than an epoch without a batch (a run that cannot end)."""
    from cnnkit.data.imageset import ImageSet
    from cnnkit.tasks.classify.task import ClassifyTask

    def task_on(n: int) -> tuple[ClassifyTask, ImageSet]:
        task = ClassifyTask(batch_size=64, prune=0.65)
        task._losses = torch.where(torch.arange(n) < 2, 9.0, 0.1)  # all but 2 below the mean
        return task, ImageSet(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n) % 2, ["a", "b"])

    task, data = task_on(64)
    batches = task.batches(data, torch.Generator().manual_seed(0))
    assert len(batches) == 1 and sorted(next(iter(batches))[2].tolist()) == list(range(64))
    # a larger split prunes as drawn: the images below the mean whose draw is under the rate are left out
    task, _ = task_on(256)
    kept = task._pruned(256, torch.Generator().manual_seed(0))[0]
    draw = torch.rand(256, generator=torch.Generator().manual_seed(0))
    assert sorted(kept.tolist()) == torch.arange(256)[(torch.arange(256) < 2) | (draw >= 0.65)].tolist()


def test_accuracy_is_the_share_of_right_answers_in_float64():
    """192 right of 227 is 0.8458149...: its five decimals are 0.84581, where a float32 share
    (0.8458150) would give 0.84582."""
    from cnnkit.data.imageset import Features

    x = torch.zeros(227, 2)
    x[:192, 0] = x[192:, 1] = 1.0
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
        net.bias.zero_()
    result = evaluate(net, Features(x, torch.zeros(227, dtype=torch.long), ["a", "b"]), 64, False, "fp32")
    assert result.accuracy == 192 / 227 and round(result.accuracy, 5) == 0.84581


def test_precision_recall_and_loss_are_float64_in_the_json():
    """Per-class precision and recall are the counts' shares divided in float64, as the accuracy is
    (192 of 227 is 0.8458149779735683; a float32 share reads 0.8458150029182434), and the loss is the
    mean of the images' losses taken in float64: `cnnkit eval --format json` prints them whole."""
    import math

    import torch.nn.functional as F

    from cnnkit.data.imageset import Features

    x = torch.zeros(230, 2)
    x[:192, 0] = x[192:, 1] = 1.0  # 192 of the 227 a's answered a, 35 answered b; the 3 b's answered b
    labels = torch.tensor([0] * 227 + [1] * 3)
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
        net.bias.zero_()
    result = evaluate(net, Features(x, labels, ["a", "b"]), 64, False, "fp32")
    text = json.dumps(result.to_dict())
    assert '"precision": [1.0, 0.07894736842105263]' in text  # 192 / 192, 3 / 38
    assert '"recall": [0.8458149779735683, 1.0]' in text  # 192 / 227, 3 / 3
    with torch.no_grad():
        each = F.cross_entropy(net(x), labels, reduction="none").tolist()  # float32 per image
    assert json.loads(text)["loss"] == math.fsum(each) / 230


def test_freeze_after_stops_the_layers_before_freeze_until_and_the_preset_freezes_its_stem(data_dir, tmp_path, tiny):
    """--freeze-after 1 --freeze-until 3: the tiny net's first conv and batch norm keep the weights
    the first epoch left them; the layers from `3` on train on. A name the network lacks, or one of
    the two flags alone, is refused before anything is written."""
    import dataclasses
    import shutil

    assert (preset("fast").freeze_after, preset("fast").freeze_until) == (1, "features.1")
    mine = preset("fast", model=tiny + ":tiny")
    assert mine.freeze_after == 0 and "freeze_until" not in mine.to_dict()  # another network: no freeze

    def keep_first(epoch, row):
        if epoch == 0:
            shutil.copy(tmp_path / "run" / "model.safetensors", tmp_path / "epoch1.safetensors")

    cfg = small(data_dir, model=tiny + ":tiny", subset=1024, epochs=2, ema=0.0, freeze_after=1, freeze_until="3")
    train(cfg, tmp_path / "run", quiet=True, on_epoch_end=keep_first)
    a, b = load_file(tmp_path / "epoch1.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    frozen = [
        k
        for k in a
        if k.startswith(("net.0.", "net.1.")) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert sorted(frozen) == ["net.0.bias", "net.0.weight", "net.1.bias", "net.1.weight"]
    assert all(torch.equal(a[k], b[k]) for k in frozen)
    assert not torch.equal(a["net.3.weight"], b["net.3.weight"]) and not torch.equal(
        a["net.9.weight"], b["net.9.weight"]
    )
    assert "freeze_until: '3'" in (tmp_path / "run" / "config.yaml").read_text()

    # --freeze-after 0 over a recipe that names a layer (the fast preset's features.1): nothing is frozen
    def keep_first0(epoch, row):
        if epoch == 0:
            shutil.copy(tmp_path / "run0" / "model.safetensors", tmp_path / "epoch1.safetensors")

    train(dataclasses.replace(cfg, freeze_after=0), tmp_path / "run0", quiet=True, on_epoch_end=keep_first0)
    a, b = load_file(tmp_path / "epoch1.safetensors"), load_file(tmp_path / "run0" / "model.safetensors")
    assert not torch.equal(a["net.0.weight"], b["net.0.weight"])
    assert "freeze_until" not in (tmp_path / "run0" / "config.yaml").read_text()

    bad = [
        (dict(freeze_after=1), "--freeze-after 1 needs --freeze-until LAYER"),
        (dict(freeze_until="3"), "--freeze-until '3' needs --freeze-after N"),
        (dict(freeze_after=1, freeze_until="nope"), "unknown layer freeze_until='nope'"),
        (dict(freeze_after=-1, freeze_until="3"), "--freeze-after must be a non-negative integer"),
    ]
    for i, (kw, message) in enumerate(bad):
        with pytest.raises(CnnkitError, match=message):
            train(small(data_dir, model=tiny + ":tiny", subset=256, epochs=1, **kw), tmp_path / f"bad{i}", quiet=True)
        assert not (tmp_path / f"bad{i}").exists() or not any((tmp_path / f"bad{i}").iterdir())


def test_a_strided_pointwise_convolution_of_few_channels_trains_in_nchw(data_dir, tmp_path, capsys):
    """A strided 1x1 convolution over fewer than 8 channels (a spec file's) makes the run train in
    NCHW layout, said in one line: oneDNN's channels-last AVX2 kernels for it corrupt memory."""
    from cnnkit.layers import nhwc_breaker

    spec = tmp_path / "net.yaml"
    spec.write_text(
        "input: 1x28x28\nlayers:\n  - conv2d: {filters: 4, kernel_size: 3, strides: 2}\n"
        "  - conv2d: {filters: 8, kernel_size: 1, strides: 2}\n  - flatten\n  - dense: {units: 10}\n"
    )
    argv = ["train", "--data-dir", str(data_dir), "--model", str(spec), "--subset", "256", "--epochs", "1"]
    assert main(argv + ["--batch-size", "64", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps at its width
    assert "conv2d_2: a strided 1x1 convolution of 4 to 8 channels; the run trains in NCHW layout" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()
    net = cnnkit.load(tmp_path / "run").net
    assert nhwc_breaker(net)[0] == "conv2d_2"
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1, stride=2))
    assert nhwc_breaker(wide) is None  # 8 input channels: channels-last trains
    transposed = torch.nn.Sequential(torch.nn.ConvTranspose2d(16, 4, 1, stride=2))
    assert nhwc_breaker(transposed)[0] == "0"  # 4 output channels: its backward runs a 4-channel input
    assert nhwc_breaker(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1, stride=2, groups=4))) is None

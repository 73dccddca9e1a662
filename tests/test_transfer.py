"""Fine-tuning stages freeze what they should (requires_grad, BN statistics), layer names resolve,
a zoo model fine-tunes on the ants/bees folders end to end, Keras-style augmentation, bad input."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn

from cnnkit.data.augment import ImageAugment
from cnnkit.data.imageset import ImageSet
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.finetune import finetune, plan_stage

pytestmark = pytest.mark.usefixtures("one_thread")


def small_vgg(num_classes=3):
    """Two VGG blocks with BN (Keras names block1_conv1 .. block2_pool), a Flatten head."""

    def conv_bn(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *conv_bn(3, 8),
        *conv_bn(8, 8),
        nn.MaxPool2d(2),  # block 1: (B, 8, 8, 8)
        *conv_bn(8, 16),
        *conv_bn(16, 16),
        nn.MaxPool2d(2),  # block 2: (B, 16, 4, 4)
        nn.Flatten(),
        nn.Linear(256, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def toy_set(n=24, classes=("a", "b"), size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(classes)
    images = torch.randint(0, 120, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] += 100  # class b is redder: learnable in a few steps
    return ImageSet(images, labels, list(classes))


def _requires_grad(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_stage_plans_set_requires_grad():
    net = small_vgg()
    head = {"15.weight", "15.bias", "17.weight", "17.bias"}
    plan = plan_stage(net, "head", None, (3, 16, 16))
    assert _requires_grad(net) == head and set(plan.trainable) == head
    assert len(plan.frozen_bn) == 4  # every BN of the base in eval
    plan = plan_stage(net, "top", None, (3, 16, 16))  # default: the last convolution (10) on
    assert _requires_grad(net) == head | {"10.weight", "10.bias", "11.weight", "11.bias"}
    assert len(plan.frozen_bn) == 4  # train_bn=False: all stay eval
    plan_stage(net, "top", "block2_conv1", (3, 16, 16))  # Keras name -> module 7: the last block
    assert _requires_grad(net) == head | {f"{i}.{w}" for i in (7, 8, 10, 11) for w in ("weight", "bias")}
    plan = plan_stage(net, "all", None, (3, 16, 16))
    assert _requires_grad(net) == {n for n, _ in net.named_parameters()}
    lrs = {n: g["lr"] for g in plan.groups for n in g["names"]}  # discriminative: deeper, lower
    assert lrs["17.weight"] == 1e-4 and lrs["7.weight"] == 5e-5 and lrs["0.weight"] == 2.5e-5


def test_resnet_layer_names():
    from cnnkit.models import create_model

    net = create_model("resnet18", num_classes=2)
    plan_stage(net, "top", None, (3, 32, 32))
    assert {n.split(".")[0] for n in _requires_grad(net)} == {"layer4", "fc"}
    plan_stage(net, "top", "layer3", (3, 32, 32))
    assert {n.split(".")[0] for n in _requires_grad(net)} == {"layer3", "layer4", "fc"}
    plan_stage(net, "top", "conv5_block2_1_conv", (3, 32, 32))  # Keras ResNet name: layer4.1.conv1
    assert min(_requires_grad(net) - {"fc.weight", "fc.bias"}) == "layer4.1.bn1.bias"
    with pytest.raises(CnnkitError, match="unknown layer freeze_until='layer9'.*layer4"):
        plan_stage(net, "top", "layer9", (3, 32, 32))


def test_chollet_fine_tunes_vgg16_from_block5_conv1():
    """Seed 004 unfreezes VGG16 from Keras' block5_conv1: torchvision's features.24, the first of the
    three convolutions after the fourth pooling; the ten below stay frozen."""
    from cnnkit.models import create_model

    with torch.device("meta"):
        net = create_model("vgg16", num_classes=1)
    plan_stage(net, "top", "block5_conv1", (3, 150, 150))
    trained = {n.rsplit(".", 1)[0] for n in _requires_grad(net)}
    assert trained == {"features.24", "features.26", "features.28", "classifier.0", "classifier.3", "classifier.6"}


def test_frozen_batch_norm_keeps_its_statistics():
    torch.manual_seed(0)
    net = small_vgg(num_classes=5)
    net.train()(torch.randn(8, 3, 16, 16))  # give the BN layers non-trivial statistics
    before = copy.deepcopy(net.state_dict())
    history = finetune(
        net, toy_set(), toy_set(seed=1), stages=("head", "top"), epochs=2, batch_size=8, lr_head=1e-2, lr_top=1e-2
    )
    after = net.state_dict()
    assert [(r["stage"], r["epoch"]) for r in history] == [("head", 1), ("head", 2), ("top", 1), ("top", 2)]
    assert net[17].out_features == 2 and not net.training  # a new classifier; eval mode
    for key in before:
        if key.startswith(("0.", "1.", "3.", "4.")):  # block 1: frozen throughout
            assert torch.equal(before[key], after[key]), key
    for key in ("8.running_mean", "8.running_var", "11.running_mean", "11.running_var"):
        assert torch.equal(before[key], after[key]), key  # unfrozen BN, train_bn=False
    assert not torch.equal(before["10.weight"], after["10.weight"])  # the last conv trained in "top"
    assert torch.equal(before["7.weight"], after["7.weight"])  # below it: frozen
    assert all(p.requires_grad for p in net.parameters())  # flags restored afterwards
    finetune(net, toy_set(), None, stages=("top",), epochs=1, batch_size=8, train_bn=True)
    assert not torch.equal(before["11.running_mean"], net.state_dict()["11.running_mean"])
    assert torch.equal(before["8.running_mean"], net.state_dict()["8.running_mean"])


def test_head_stage_with_cached_features_learns():
    torch.manual_seed(0)
    net = small_vgg()
    # defaults otherwise (mirror images cached, zero head, cosine); at lr 3e-3 this toy, whose classes
    # differ by 0.0005 in feature mean, needs ~25 epochs (measured: 0.58 after 15)
    history = finetune(net, toy_set(48), toy_set(48, seed=1), stages=("head",), epochs=15, batch_size=16, lr_head=1e-2)
    assert history[-1]["val_acc"] >= 0.9 and history[-1]["trainable"] == 256 * 32 + 32 + 32 * 2 + 2


def test_cached_head_stage_trains_without_the_networks_dropout_unless_asked():
    def net_with_dropout():
        torch.manual_seed(0)
        net = small_vgg()
        net.insert(15, nn.Dropout(1.0))  # after the Flatten: in train mode the head would see zeros
        return net

    kw = dict(stages=("head",), epochs=15, batch_size=16, lr_head=1e-2)
    off = finetune(net_with_dropout(), toy_set(48), toy_set(48, seed=1), **kw)
    on = finetune(net_with_dropout(), toy_set(48), toy_set(48, seed=1), head_dropout=True, **kw)
    assert off[-1]["val_acc"] >= 0.9  # as test_head_stage_with_cached_features_learns
    assert on[-1]["val_acc"] <= 0.6  # the zeroed features taught it nothing (0.5: chance)


def test_zoo_model_finetunes_on_hymenoptera_end_to_end(data_dir, tmp_path):
    from cnnkit.data.augment import NOTES_AUGMENT
    from cnnkit.data.imagefolder import load_image_folder
    from cnnkit.models import create_model
    from cnnkit.models.preprocess import preprocess_for
    from cnnkit.tasks.classify.finetune import evaluate

    pre = preprocess_for("resnet18", image_size=(32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = dict(image_size=pre.image_size, crop_fraction=pre.crop_fraction, cache=tmp_path)
        train = load_image_folder(data_dir / "hymenoptera", "train", **kw)
        val = load_image_folder(data_dir / "hymenoptera", "val", **kw)
    net = create_model("resnet18")
    fc_before = net.layer1[0].conv1.weight.clone()
    rows = []
    finetune(
        net,
        train.subset(torch.arange(0, 244, 8)),
        val.subset(torch.arange(0, 153, 8)),
        augment=NOTES_AUGMENT,
        epochs=1,
        batch_size=8,
        max_batches=2,
        mean=pre.mean,
        std=pre.std,
        log=rows.append,
    )
    assert [r["stage"] for r in rows] == ["head", "top", "all"]
    assert rows[0]["trainable"] == 512 * 2 + 2 and rows[2]["trainable"] == 11_177_538
    assert net.fc.out_features == 2 and not torch.equal(fc_before, net.layer1[0].conv1.weight)
    loss, acc = evaluate(net, val.subset(torch.arange(0, 153, 4)), pre.mean, pre.std)
    assert 0 <= acc <= 1 and loss == loss


def test_cli_finetune_writes_a_loadable_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    import cnnkit
    from cnnkit.cli import main

    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    args = [
        "classify",
        "finetune",
        "--model",
        "resnet18",
        "--data",
        str(data_dir / "hymenoptera"),
        "--image-size",
        "32",
        "--stages",
        "head",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "244 train / 153 val images" in out and err.count("skipped 1 file") == 1
    model = cnnkit.load(tmp_path / "run")
    assert model.classes == ["ants", "bees"] and tuple(model.input_size) == (3, 32, 32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    assert main(args[:-2] + ["--stages", "head,middle", "--out", str(tmp_path / "bad")]) == 2
    assert "--stages 'head,middle': give auto, or some of head,top,all" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(args[:-2] + ["--stages", "auto,top", "--out", str(tmp_path / "bad")]) == 2  # auto alone
    assert "--stages 'auto,top'" in capsys.readouterr().err


def test_augment_is_batched_seeded_and_keras_like():
    x = torch.rand(6, 3, 20, 30)
    aug = ImageAugment(
        rotation_range=30,
        width_shift_range=0.2,
        height_shift_range=0.1,
        shear_range=10,
        zoom_range=0.2,
        horizontal_flip=True,
        fill_mode="reflect",
    )
    a = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    assert torch.allclose(ImageAugment()(x, torch.Generator()), x, atol=1e-5)  # nothing asked: identity
    ones = torch.ones(4, 1, 16, 16)
    shifted = ImageAugment(width_shift_range=0.5, fill_mode="constant", cval=0.25)(
        ones, torch.Generator().manual_seed(0)
    )
    assert set(shifted.unique().round(decimals=4).tolist()) <= {0.25, 1.0} or shifted.min() >= 0.25 - 1e-5
    assert (shifted - 0.25).abs().min() < 1e-5  # the fill is cval, not 0
    assert (ImageAugment(width_shift_range=0.5)(ones, torch.Generator().manual_seed(0)) - 1).abs().max() < 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(stages=("head", "middle")), "unknown stages"),
        (dict(batch_size=1), "batch_size must be >= 2"),
        (dict(val_set=toy_set(classes=("x", "y"))), "same classes"),
        (dict(freeze_until="block9_conv1"), "block9_conv1"),
    ],
)
def test_bad_finetune_input(kwargs, match):
    kwargs = {"val_set": None, **kwargs}
    with pytest.raises(CnnkitError, match=match):
        finetune(small_vgg(), toy_set(), **kwargs)


def test_model_without_a_head_is_refused():
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    with pytest.raises(CnnkitError, match="no reset_classifier"):
        finetune(Opaque(), toy_set())
    with pytest.raises(CnnkitError, match="fill_mode must be"):
        ImageAugment(fill_mode="wrap")


def test_cli_finetune_from_reference_weights_url_then_from_its_checkpoint(data_dir, tmp_path, monkeypatch):
    """--weights as a checksummed file:// URL (the download code path), then a cnnkit checkpoint."""
    import hashlib

    import cnnkit
    from cnnkit.cli import main
    from cnnkit.models import create_model

    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    state = create_model("resnet18").state_dict()  # stands in for ImageNet weights
    torch.save(state, tmp_path / "w.pth")
    sha = hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    (tmp_path / "w.pth").rename(tmp_path / f"resnet18-{sha[:8]}.pth")  # torchvision's naming: checked
    common = ["--data", str(data_dir / "hymenoptera"), "--image-size", "32", "--stages", "head", "--epochs", "1"]
    url = (tmp_path / f"resnet18-{sha[:8]}.pth").as_uri()
    assert (
        main(["classify", "finetune", "--model", "resnet18", "--weights", url, *common, "--out", str(tmp_path / "a")])
        == 0
    )
    first = cnnkit.load(tmp_path / "a").net
    assert torch.equal(first.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])  # loaded, then frozen
    assert (tmp_path / "home" / "weights" / f"resnet18-{sha[:8]}.pth").is_file()  # downloaded once
    assert main(["classify", "finetune", "--weights", str(tmp_path / "a"), *common, "--out", str(tmp_path / "b")]) == 0
    second = cnnkit.load(tmp_path / "b")
    assert torch.equal(second.net.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    # a new head for the same classes, from zero, same seed and frozen base: the first run's head again
    assert torch.equal(second.net.fc.weight, first.fc.weight) and first.fc.weight.abs().sum() > 0
    assert main(["classify", "finetune", "--model", "resnet18", "--weights", str(tmp_path / "nope.pth"), *common]) == 2


def test_class_scores_head_reads_the_old_classifier_and_never_trains_it():
    from cnnkit.models.heads import ClassScoresHead, attach_class_scores, head_kind

    torch.manual_seed(0)
    net = small_vgg(num_classes=5)  # the "pretrained" classifier: 5 classes
    old = copy.deepcopy(net[-1])
    head = attach_class_scores(net, 2)
    assert isinstance(net[-1], ClassScoresHead) and head_kind(net) == {"kind": "class_scores", "source_classes": 5}
    x = torch.randn(4, 3, 16, 16)
    feats = net[:-1](x)
    assert torch.allclose(net(x), head.fc(old(feats).log_softmax(-1)), atol=1e-6)
    for stage in ("head", "all"):
        plan = plan_stage(net, stage, None, (3, 16, 16))
        assert not any(n.startswith("17.source") for n in plan.trainable)
        assert {"17.fc.weight", "17.fc.bias"} <= set(plan.trainable)
    with pytest.raises(CnnkitError, match="already a ClassScoresHead"):
        attach_class_scores(net, 2)


def test_auto_head_keeps_the_candidate_with_the_lower_val_loss(tmp_path):
    """head="auto" trains both candidates as head="features" and head="class_scores" would, keeps
    the lower validation loss, ends with that run's weights, and its checkpoint loads."""
    import cnnkit
    from cnnkit.models import create_model

    train, val = toy_set(48, size=32), toy_set(48, size=32, seed=1)
    runs = {}
    for head in ("features", "class_scores", "auto"):
        torch.manual_seed(0)
        net = create_model("resnet18")  # its 1,000-class fc: the old classifier
        rows = finetune(
            net,
            train,
            val,
            stages=("head",),
            epochs=2,
            batch_size=16,
            lr_head=1e-2,
            head=head,
            out=tmp_path / head,
            info={"model": "resnet18"},
        )
        runs[head] = (net, rows[-1]["val_loss"])
    chosen = cnnkit.load(tmp_path / "auto").info["finetune_head"]
    assert chosen["val_loss"] == pytest.approx({k: runs[k][1] for k in ("features", "class_scores")}, abs=1e-4)
    kind = min(chosen["val_loss"], key=chosen["val_loss"].get)
    assert chosen["kind"] == kind and runs["auto"][1] == pytest.approx(runs[kind][1], abs=1e-5)
    for head in ("features", "class_scores", "auto"):  # each checkpoint rebuilds its own head
        net = runs[head][0].eval()
        x = torch.rand(3, 3, 32, 32)
        assert torch.allclose(cnnkit.load(tmp_path / head).net((x - 0.5) / 0.5), net((x - 0.5) / 0.5), atol=1e-5)


def test_a_crafted_head_description_is_refused():
    from cnnkit.models.network import build

    for head in (
        {"kind": "exec"},
        {"kind": "class_scores", "source_classes": 10**9},
        "class_scores",
        {"kind": "class_scores", "source_classes": True},
    ):
        with pytest.raises(CnnkitError, match="head"):
            build({"kind": "zoo", "name": "resnet18", "head": head}, 2, 3, "ckpt.safetensors")
    net = build(
        {"kind": "zoo", "name": "resnet18", "head": {"kind": "class_scores", "source_classes": 1000}},
        2,
        3,
        "ckpt.safetensors",
    )
    assert net.fc.source.out_features == 1000 and net.fc.fc.out_features == 2


def test_finetune_size_is_nine_sevenths_for_pretrained_weights():
    from cnnkit.models.preprocess import finetune_preprocess

    assert finetune_preprocess("efficientnet_lite0", True).input_size == (3, 288, 288)
    assert finetune_preprocess("efficientnet_lite0", False).input_size == (3, 224, 224)
    assert finetune_preprocess("efficientnet_lite0", True, (64, 64)).input_size == (3, 64, 64)
    assert finetune_preprocess("efficientnet_lite0", True).mean == (0.5, 0.5, 0.5)

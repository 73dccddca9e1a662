"""The segmentation task's pieces: batches (crops keep image and mask aligned), the loss ignoring 255,
evaluation through the metrics, and the deployable Segmenter rebuilt from its metadata."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from cnnkit.data.segmentation import SegmentationSet
from cnnkit.engine.distributed import Dist
from cnnkit.engine.loop import step_loss
from cnnkit.errors import CnnkitError
from cnnkit.models.segmentation import create_segmenter
from cnnkit.tasks.segment.data import channel_stats, random_scale_crop
from cnnkit.tasks.segment.evaluate import evaluate
from cnnkit.tasks.segment.predict import Segmenter
from cnnkit.tasks.segment.task import SegmentTask

pytestmark = pytest.mark.usefixtures("one_thread")


def photos(n=5):
    """Photos of different sizes whose red channel says the class: 200 where the mask is 1, 10 elsewhere."""
    images, masks = [], []
    for i in range(n):
        h, w = 30 + 7 * i, 41 - 3 * i
        m = torch.zeros(h, w, dtype=torch.uint8)
        m[5 : h - 4, 3 + i : w // 2] = 1
        im = torch.full((3, h, w), 10, dtype=torch.uint8)
        im[0][m == 1] = 200
        images.append(im)
        masks.append(m)
    return SegmentationSet(images, masks, ["background", "thing"], [f"p{i}.png" for i in range(n)])


class Oracle(nn.Module):
    """Reads the class from the red channel: a perfect model for ``photos``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        fg = (x[:, :1] > 0.5).float() * self.w
        return torch.cat([1 - fg, fg], 1)


def test_random_scale_crop_keeps_image_and_mask_aligned():
    data = photos()
    g = torch.Generator().manual_seed(0)
    for im, m in zip(data.images, data.masks):
        for _ in range(5):
            x, y = random_scale_crop(im, m, 48, (0.5, 1.5), True, g)
            assert x.shape == (3, 48, 48) and y.shape == (48, 48)
            seen = y != 255
            assert seen.any()
            # bilinear edges blur the red channel; away from them the mask is what the image says
            clear = seen & ((x[0] > 190) | (x[0] < 20))
            assert torch.equal(y[clear] == 1, x[0][clear] > 190)
            assert (x[:, ~seen] == 0).all()  # padding: black image, ignored mask


def test_batches_for_photos_and_stacked_scenes():
    task = SegmentTask(batch_size=2, crop=32)
    g = torch.Generator().manual_seed(1)
    batches = task.batches(photos(), g, True)
    assert len(batches) == 2
    x, y = next(iter(batches))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (2, 32, 32) and y.dtype == torch.int64
    scenes = SegmentationSet(
        torch.randint(0, 255, (6, 1, 16, 16), dtype=torch.uint8),
        torch.randint(0, 11, (6, 16, 16), dtype=torch.uint8),
        [str(i) for i in range(11)],
        [f"s{i}" for i in range(6)],
    )
    xs = [b[0] for b in task.batches(scenes, torch.Generator().manual_seed(1), False)]
    assert torch.equal(torch.cat(xs), scenes.images.float() / 255)  # eval order, whole images


def test_loss_ignores_255_and_a_perfect_model_scores_one():
    task = SegmentTask()
    x = torch.zeros(1, 3, 4, 4)
    x[:, 0, :2] = 1.0  # rows 0-1 are "thing"
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[:, :2] = 1
    loss, stats = step_loss(task, Oracle(), (x, y), Dist())
    loss = loss.detach()
    y_noisy = y.clone()
    y_noisy[:, 3] = 255 * torch.ones(4, dtype=torch.long)  # ignored row: the loss is unchanged
    loss2 = step_loss(task, Oracle(), (x, y_noisy), Dist())[0].detach()
    assert float(loss2) == pytest.approx(float(loss)) and stats["pixel_acc"] == 1
    out = evaluate(Oracle(), photos())
    assert out["mIoU"] == 1 and out["pixel_accuracy"] == 1 and out["boundary_iou"] == 1 and out["images"] == 5
    assert task.evaluate(Oracle(), photos()) == {"mIoU": 1.0, "pixel_accuracy": 1.0, "boundary_iou": 1.0}


def test_segmenter_normalises_and_rebuilds_from_its_metadata():
    data = photos()
    mean, std = channel_stats(data)
    assert mean[1] == pytest.approx(10 / 255) and std[1] == pytest.approx(1e-3)  # a flat channel: clamped
    net = create_segmenter("unet", "unet", num_classes=2, in_channels=3, width=4)
    seg = Segmenter(net, mean, std, data.classes).eval()
    info = SegmentTask(info={"data": "photos"}).describe(seg)
    assert info["task"] == "segment" and info["classes"] == ["background", "thing"] and info["data"] == "photos"
    again = Segmenter.from_info(info)
    again.load_state_dict(seg.state_dict())
    x = torch.rand(1, 3, 21, 19)
    assert torch.equal(again.eval()(x), seg(x)) and seg.predict(x).shape == (1, 21, 19)


def test_prediction_pictures_grey_indices_and_overlay(tmp_path):
    import numpy as np
    from PIL import Image

    from cnnkit.tasks.segment.predict import image_logits, palette, predict_image, write_prediction

    assert palette(4).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]  # VOC's colours
    image = photos(1).images[0]  # (3, 30, 41)
    seg = Segmenter(Oracle(), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], ["background", "thing"])
    mask = predict_image(seg, image, max_side=20)  # seen at 20 px, answered at 41
    assert mask.shape == (30, 41)
    scores = image_logits(seg, image, max_side=20)  # what the label map is the argmax of
    assert scores.shape == (2, 30, 41) and torch.equal(scores.argmax(0), mask)
    assert (mask == photos(1).masks[0]).float().mean() > 0.9
    grey, colour = write_prediction(image, mask, 2, tmp_path, "p0")
    g = np.asarray(Image.open(grey))
    assert Image.open(grey).mode == "L" and np.array_equal(g, mask.numpy().astype(np.uint8))
    c = np.asarray(Image.open(colour))
    assert c.shape == (30, 41, 3)
    rgb = image.permute(1, 2, 0).numpy().astype(float)
    fg = mask.numpy() == 1
    expected = np.where(fg[..., None], np.round(0.5 * rgb + 0.5 * np.array([128, 0, 0])), rgb)  # VOC red, half
    assert fg.any() and np.array_equal(c, expected.astype(np.uint8))


def test_dice_loss_by_hand():
    from cnnkit.tasks.segment.task import dice_loss

    y = torch.tensor([[[0, 0, 1, 1]]])  # (1, 1, 4): two pixels each
    valid = torch.ones_like(y, dtype=torch.bool)
    sure = torch.tensor([[[[9.0, 9, -9, -9]], [[-9.0, -9, 9, 9]]]])  # (1, 2, 1, 4): right, almost surely
    assert float(dice_loss(sure, y, valid)) == pytest.approx(0, abs=1e-6)
    even = torch.zeros(1, 2, 1, 4)  # p = 1/2 everywhere: 2 * 1 / (2 + 2)
    assert float(dice_loss(even, y, valid)) == pytest.approx(0.5)
    valid[0, 0, 2:] = False  # class 1 ignored: only class 0 counts
    assert float(dice_loss(even, y, valid)) == pytest.approx(1 - 2 * 1 / (1 + 2))


def test_recipes_resolve_and_a_scratch_encoder_drops_the_pretrained_settings():
    from cnnkit.tasks.segment.config import SegmentConfig

    pf = SegmentConfig(data="pennfudan").resolved()
    assert (pf.arch, pf.model, pf.weights, pf.freeze_bn, pf.freeze_to) == (
        "unet",
        "efficientnet_lite1",
        "imagenet",
        True,
        4,
    )
    assert pf.test_scale == (1.75, 2.0) and SegmentConfig(data="some/folder").resolved().model == "efficientnet_lite0"
    assert (pf.epochs, pf.val_every, pf.threads) == (37, 4, None)  # threads: the free cores when it starts
    assert SegmentConfig(data="pennfudan", threads=0).resolved().threads == 0  # 0 = the free cores, kept
    for other in (
        SegmentConfig(data="pennfudan", model="unet"),
        SegmentConfig(data="pennfudan", weights="none"),
        SegmentConfig(data="pennfudan", model="resnet18"),
    ):
        r = other.resolved()
        assert (r.weights, r.freeze_bn, r.freeze_to, r.encoder_lr, r.keep_depthwise) == ("none", False, 0, 1.0, False)
        assert SegmentConfig.from_dict(r.to_dict()).resolved() == r  # a run's config.yaml trains the same again
    # the pretrained encoder's depthwise filters are kept on Penn-Fudan (where it was measured), trained elsewhere
    assert pf.keep_depthwise and not SegmentConfig(data="some/folder").resolved().keep_depthwise
    from dataclasses import asdict

    from cnnkit.tasks.segment.task import encoder_line

    assert encoder_line(asdict(pf)) == (
        "encoder efficientnet_lite1: imagenet weights, batch norms frozen, layers to stride 4 frozen, "
        "depthwise filters kept, learning rate x0.1 of --lr"
    )
    assert "from scratch" in encoder_line(
        asdict(SegmentConfig(data="pennfudan", model="efficientnet_lite0").resolved())
    )
    assert "from scratch" in encoder_line({"model": "resnet18", "weights": None})  # a run of an earlier version
    dg = SegmentConfig(data="digits", arch="fcn8s").resolved()
    assert (dg.model, dg.weights, dg.dice, dg.val_every, dg.threads) == ("resnet18", "none", 1.0, 1, None)


def test_frozen_stem_and_the_encoder_lr_fraction(tmp_path):
    """One real step through the engine: the stem's weights stay, the encoder's groups run at a tenth."""
    from cnnkit.engine import Data, Phase, Plan, Setup, fit
    from cnnkit.models.features import create_features

    fx = create_features("resnet18", out_strides=(4, 8, 16, 32))
    stem = fx.stem(4)
    assert [type(m).__name__ for m in stem][:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] and len(stem) == 5
    with pytest.raises(Exception, match="no returned map at stride 2"):
        fx.stem(2)
    net = create_segmenter("unet", "resnet18", num_classes=2, finest=4)
    seg = Segmenter(net, [0.5] * 3, [0.5] * 3, ["background", "thing"])
    stem = net.encoder.stem(4)
    before = stem[0].weight.detach().clone()
    enc = list(net.encoder.parameters())
    head = [p for p in net.parameters() if all(p is not q for q in enc)]
    opts = []

    def setup(m):
        for layer in stem:
            layer.requires_grad_(False)
        opts.append(
            torch.optim.SGD(
                [{"params": [p for p in enc if p.requires_grad], "lr_scale": 0.1}, {"params": head}], lr=1.0
            )
        )
        return Setup(opts[-1], schedule=lambda step, total: 0.5, frozen=stem)

    task = SegmentTask(batch_size=2, crop=32, max_batches=1)
    fit(task, seg, Data(photos(4), None), Plan([Phase(1, setup)]), None, quiet=True)
    assert [g["lr"] for g in opts[0].param_groups] == [pytest.approx(0.05), pytest.approx(0.5)]
    assert torch.equal(stem[0].weight, before) and not stem[0].weight.requires_grad


def test_digits_recipe_short_real_run(data_dir, capsys):
    """`--data digits`'s recipe (U-Net's own encoder at width 8, cross-entropy + Dice, channels-last),
    shortened to 400 scenes of 64 px, 4 epochs of batch 8 (200 steps, one thread), without validation
    while training (it changes no weight): measured test mIoU 0.157 over the 11 classes (all-background
    scores 0.083). The full recipe (6,000 scenes, 7,500 steps) reaches 0.937; its figure is in the README."""
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.train import train

    cfg = SegmentConfig(
        data="digits", data_dir=str(data_dir), scenes=400, canvas=64, epochs=4, batch_size=8, threads=1, val_every=0
    )
    result = train(cfg, None)
    assert result.test["mIoU"] > 0.12 and result.test["iou"][0] > 0.9, result.test["iou"]
    head = capsys.readouterr().out.splitlines()[:2]  # the summary is of the 64-px scenes it trains on
    assert head[0] == "encoder: U-Net's own (width 8), from scratch" and "input 1x64x64" in head[1], head


def test_lovasz_softmax_of_sure_predictions_is_one_minus_the_mean_iou():
    """At one-hot probabilities the Lovasz extension equals the set function: 1 - IoU per class."""
    from cnnkit.tasks.segment.task import lovasz_softmax

    g = torch.Generator().manual_seed(0)
    y, pred = torch.randint(0, 3, (2, 9, 7), generator=g), torch.randint(0, 3, (2, 9, 7), generator=g)
    valid = torch.ones_like(y, dtype=torch.bool)
    valid[0, 0] = False  # an ignored pixel counts for nothing
    sure = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 100
    p, t = pred[valid], y[valid]
    iou = torch.stack([((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in range(3)])
    assert float(lovasz_softmax(sure, y, valid)) == pytest.approx(float(1 - iou.mean()), abs=1e-5)
    perfect = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 100
    assert float(lovasz_softmax(perfect, y, valid)) == pytest.approx(0, abs=1e-6)
    logits = torch.randn(2, 3, 9, 7, requires_grad=True)
    lovasz_softmax(logits, y, valid).backward()
    assert logits.grad.abs().sum() > 0 and logits.grad[0, :, 0, 0].abs().sum() == 0
    # the loss of a float sort (the paper's) on random logits; under bf16 autocast still fp32
    q = logits.detach().softmax(1).permute(0, 2, 3, 1)[valid]
    ref = []
    for c in range(3):
        fg = (y[valid] == c).float()
        errors, order = (fg - q[:, c]).abs().sort(descending=True)
        fg = fg[order]
        jac = 1 - (fg.sum() - fg.cumsum(0)) / (fg.sum() + (1 - fg).cumsum(0))
        ref.append(errors @ torch.cat([jac[:1], jac[1:] - jac[:-1]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lovasz_softmax(logits.detach(), y, valid)
    assert got.dtype == torch.float32 and float(got) == pytest.approx(float(torch.stack(ref).mean()), abs=1e-6)


def test_segmenter_test_time_procedure_flip_and_scale():
    """Eval mode: mirrored answers averaged and mirrored back, the image seen at test_scale and the answer
    at the input's size; without_tta() answers from the image alone; the metadata keeps both."""
    torch.manual_seed(0)
    net = nn.Conv2d(3, 2, 3, padding=1)
    x = torch.rand(1, 3, 13, 10)
    Segmenter(net, [0.5] * 3, [0.5] * 3, ["background", "thing"]).eval()
    flip = Segmenter(net, [0.5] * 3, [0.5] * 3, ["background", "thing"], tta="flip").eval()
    z = (x - 0.5) / 0.5
    expect = ((net(z).softmax(1) + net(z.flip(-1)).softmax(1).flip(-1)) / 2).log()
    assert torch.allclose(flip(x), expect, atol=1e-5)
    assert torch.allclose(flip(x.flip(-1)).flip(-1), flip(x), atol=1e-5)  # mirror-symmetric answers
    scaled = Segmenter(nn.Conv2d(3, 2, 1), [0.5] * 3, [0.5] * 3, ["b", "t"], test_scale=1.5).eval()
    flat = torch.full((2, 3, 13, 10), 0.3)
    out = scaled(flat)
    assert out.shape == (2, 2, 13, 10) and torch.allclose(out, scaled.net((flat - 0.5) / 0.5).log_softmax(1), atol=1e-5)
    with flip.without_tta(), scaled.without_tta():
        assert torch.equal(flip(x), net(z)) and (flip.tta, scaled.test_scale) == ("", (1.0,))
    assert (flip.tta, scaled.test_scale) == ("flip", (1.5,))
    info = SegmentTask().describe(scaled)
    again = Segmenter.from_info({**info, "segmenter": {"arch": "unet", "backbone": "unet", "width": 4}})
    assert (again.tta, again.test_scale) == ("", (1.5,))
    old = Segmenter.from_info(
        {**info, "test_scale": 1.5, "segmenter": {"arch": "unet", "backbone": "unet", "width": 4}}
    )
    assert old.test_scale == (1.5,)  # a run saved before several scales: one number
    # several scales: each answer resized back to the input's size, the probabilities averaged
    both = Segmenter(net, [0.5] * 3, [0.5] * 3, ["b", "t"], test_scale=(1.0, 2.0)).eval()
    big = torch.nn.functional.interpolate(x, size=(26, 20), mode="bilinear", align_corners=False)
    from cnnkit.layers.upsample import resize

    expect = (net(z).softmax(1) + resize(net((big - 0.5) / 0.5).softmax(1), (13, 10), "bilinear")) / 2
    assert torch.allclose(both(x), expect.log(), atol=1e-5)
    with pytest.raises(Exception, match="'' or 'flip'"):
        Segmenter(net, [0.5] * 3, [0.5] * 3, ["b", "t"], tta="shift")
    with pytest.raises(CnnkitError, match="--test-scale takes positive numbers"):
        Segmenter(net, [0.5] * 3, [0.5] * 3, ["b", "t"], test_scale=(1.5, 0.0))


def test_segmenter_pads_each_view_to_its_networks_multiple():
    """A TF-padded encoder (EfficientNet-Lite's Conv2dSame) at an odd size puts its deep maps on another
    grid than on the training crops; the Segmenter answers, in training and at test, from the image padded
    with black to a multiple of the network's deepest stride, cropped back."""
    torch.manual_seed(0)
    net = create_segmenter("unet", "efficientnet_lite0", num_classes=2, finest=4).eval()
    assert net.size_multiple == 32 and create_segmenter("deeplabv3", "resnet18").size_multiple == 16
    assert create_segmenter("fcn8s", "resnet18").size_multiple == 32
    seg = Segmenter(net, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], ["background", "person"], tta="flip").eval()
    assert (
        seg.size_multiple == 32 and Segmenter(nn.Conv2d(3, 2, 1), [0.5] * 3, [0.5] * 3, ["b", "t"]).size_multiple == 1
    )
    x = torch.rand(1, 3, 45, 70)
    padded = torch.zeros(1, 3, 64, 96)  # black to 64 x 96, the image at the top left
    padded[..., :45, :70] = x
    expect = net((padded - seg.mean) / seg.std)[..., :45, :70]
    with seg.without_tta():
        assert torch.allclose(seg(x), expect, atol=1e-5)
    assert (seg(x) - net((x - seg.mean) / seg.std)).abs().max() > 0.01  # unpadded: another answer
    mirrored = torch.zeros(1, 3, 64, 96)
    mirrored[..., :45, :70] = x.flip(-1)
    back = net((mirrored - seg.mean) / seg.std)[..., :45, :70].flip(-1)
    assert torch.allclose(seg(x), ((expect.softmax(1) + back.softmax(1)) / 2).log(), atol=1e-5)
    with torch.no_grad():
        assert seg.train()(x).shape == (1, 2, 45, 70)


def test_input_stats_are_the_pretrained_weights_own():
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import input_stats

    data = photos()
    assert input_stats(SegmentConfig(data="pennfudan").resolved(), data) == ([0.5] * 3, [0.5] * 3)
    assert input_stats(SegmentConfig(data="pennfudan", weights="none").resolved(), data) == channel_stats(data)


def test_a_bad_train_scale_is_refused_before_any_data_is_read(tmp_path):
    from dataclasses import replace

    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.train import train

    cfg = SegmentConfig(data="pennfudan", data_dir=str(tmp_path / "nowhere"), train_scale=(2.0, 1.0))
    with pytest.raises(
        CnnkitError, match=r"--train-scale must be two factors 0 < LO <= HI <= 4. Received: \(2.0, 1.0\)"
    ):
        train(cfg, tmp_path / "run", quiet=True)
    with pytest.raises(CnnkitError, match=r"--train-scale must be two factors"):
        train(replace(cfg, train_scale=(0.5, 100.0)), tmp_path / "run", quiet=True)
    scratch = replace(cfg, train_scale=(0.5, 1.5), weights="none", keep_depthwise=True)
    with pytest.raises(CnnkitError, match="--keep-depthwise keeps a pretrained encoder's depthwise filters"):
        train(scratch, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_subset_trains_on_the_first_photos_and_keeps_the_split_whole(data_dir):
    # --subset N, as in every other training command: a quick check on N training photos
    from cnnkit.engine.config import config_from_args
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    full = load_splits(SegmentConfig(data="pennfudan", data_dir=str(data_dir)).resolved())
    part = load_splits(SegmentConfig(data="pennfudan", data_dir=str(data_dir), subset=5).resolved())
    assert part[0].names == full[0].names[:5] and len(part[0].images) == len(part[0].masks) == 5
    assert part[1].names == full[1].names and part[2].names == full[2].names and part[3] == full[3]
    scenes = load_splits(SegmentConfig(data="digits", data_dir=str(data_dir), scenes=40, subset=7).resolved())[0]
    assert scenes.images.shape[0] == scenes.masks.shape[0] == 7
    from cnnkit.cli import build_parser

    args = build_parser().parse_args(["segment", "train", "--subset", "3"])
    assert config_from_args(SegmentConfig, args)["subset"] == 3


def test_lovasz_softmax_gradient_is_the_sorted_gathers_to_the_bit():
    """The loss weights each pixel's error in place; its gradient is that of gathering the valid pixels'
    errors in sorted order (the textbook form), bit for bit, ignored pixels included."""
    from cnnkit.tasks.segment.task import lovasz_softmax

    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (2, 40, 30), generator=g)
    valid = torch.rand(2, 40, 30, generator=g) > 0.2
    logits = torch.randn(2, 3, 40, 30, generator=g)
    mine, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    lovasz_softmax(mine, y, valid).backward()
    p, labels, ref = ref_in.softmax(1).permute(0, 2, 3, 1)[valid], y[valid], []
    for c in range(3):
        fg = (labels == c).float()
        errors = (fg - p[:, c]).abs()
        order = (errors.detach() * -(1 << 24)).to(torch.int32).sort(stable=True).indices
        errors, fg = errors[order], fg[order]
        jac = 1 - (fg.sum() - fg.cumsum(0)) / (fg.sum() + (1 - fg).cumsum(0))
        ref.append(errors @ torch.cat([jac[:1], jac[1:] - jac[:-1]]))
    torch.stack(ref).mean().backward()
    assert torch.equal(mine.grad, ref_in.grad)
    assert mine.grad[~valid[:, None].expand_as(mine.grad)].abs().sum() == 0


def _without_the_drop(monkeypatch, build):
    """``build()`` with the feature extractor keeping its backbone whole (the modules it never runs too)."""
    import cnnkit.models.features as features

    with monkeypatch.context() as m:
        m.setattr(features, "_drop_unrun", lambda model, run: ())
        return build()


@pytest.mark.parametrize("meta", [True, False])
def test_a_run_saved_with_the_unused_backbone_modules_loads_and_predicts_the_same(tmp_path, monkeypatch, meta):
    """A checkpoint that holds the backbone's never-run modules (MobileNet v2's head conv and its batch
    norm) loads: exactly those keys are ignored, on the meta-device build and on the real one; the
    seeded initialisation is the same with and without them."""
    from safetensors.torch import load_file, save_file

    import cnnkit.engine.runfolder as runfolder
    from cnnkit.engine.runfolder import FORMAT, save_model
    from cnnkit.tasks.segment.load import load_segmenter

    def build():
        torch.manual_seed(0)
        net = create_segmenter("fcn8s", "mobilenet_v2", num_classes=2)
        return Segmenter(net, [0.5] * 3, [0.2] * 3, ["background", "thing"]).eval(), torch.get_rng_state()

    (new, rng_new), (whole, rng_whole) = build(), _without_the_drop(monkeypatch, build)
    assert torch.equal(rng_new, rng_whole)  # the same random numbers drawn: a seeded run trains the same
    extra = whole.state_dict().keys() - new.state_dict().keys()
    assert extra == {f"net.encoder.backbone.{k}" for k in new.net.encoder.dropped_keys} and len(extra) == 6
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in new.state_dict().items())
    if not meta:  # the builder needs real tensors: the network is built once, for real
        real = runfolder._build_from_metadata
        monkeypatch.setattr(
            runfolder,
            "_build_from_metadata",
            lambda *a, meta, limit: None if meta else real(*a, meta=meta, limit=limit),
        )
    file = tmp_path / "model.safetensors"
    save_model(file, whole, {"format": FORMAT, **SegmentTask(info={"data": "photos"}).describe(whole)})
    back = load_segmenter(tmp_path)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(back) == count(new) == count(whole) - 412_160
    x = torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        assert torch.equal(back(x), whole(x))
    tensors = load_file(file)  # a key of no dropped module is still refused
    save_file(
        {**tensors, "net.encoder.backbone.features.19.weight": torch.zeros(1)}, file, {"cnnkit": json.dumps(back.info)}
    )
    with pytest.raises(CnnkitError, match="do not fit"):
        load_segmenter(tmp_path)


def _fcn_mobilenet_on_digits(data_dir, epochs: int):
    """fcn8s on MobileNet v2 (whose never-run head conv the feature pyramid drops), 16 digit scenes,
    AdamW with weight decay and an EMA of the weights, one thread, seeded."""
    from cnnkit.tasks.segment.config import SegmentConfig

    return SegmentConfig(
        data="digits",
        data_dir=str(data_dir),
        arch="fcn8s",
        model="mobilenet_v2",
        scenes=16,
        canvas=64,
        epochs=epochs,
        batch_size=8,
        threads=1,
        seed=3,
        ema=0.9,
    )


@pytest.mark.slow
def test_a_seeded_run_trains_the_same_weights_without_the_unused_backbone_modules(data_dir, tmp_path, monkeypatch):
    """fcn8s on MobileNet v2, one epoch on 16 digit scenes (AdamW with weight decay, an EMA of the
    weights): the same weights, to the bit, as with the never-run head conv kept in the backbone."""
    from safetensors.torch import load_file

    from cnnkit.tasks.segment.train import train

    cfg = _fcn_mobilenet_on_digits(data_dir, epochs=1)
    train(cfg, tmp_path / "new", quiet=True)
    _without_the_drop(monkeypatch, lambda: train(cfg, tmp_path / "whole", quiet=True))
    new, whole = load_file(tmp_path / "new" / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert len(whole.keys() - new.keys()) == 6 and not new.keys() - whole.keys()
    assert all(torch.equal(v, whole[k]) for k, v in new.items())


@pytest.mark.slow
def test_a_run_cut_short_with_the_unused_backbone_modules_resumes_to_the_same_weights(data_dir, tmp_path, monkeypatch):
    """A run whose resume state holds the never-run head conv (in its weights, its EMA and its
    optimizer's parameter groups, with no optimizer state) continues: two epochs cut after the first
    and resumed end with the weights of two epochs run straight through."""
    from safetensors.torch import load_file

    from cnnkit.engine.runfolder import read_checkpoint
    from cnnkit.tasks.segment.train import train

    cfg = _fcn_mobilenet_on_digits(data_dir, epochs=2)
    train(cfg, tmp_path / "straight", quiet=True)
    cut = dataclasses.replace(cfg, minutes=1e-9)  # the time budget ends the run after its first epoch
    _without_the_drop(monkeypatch, lambda: train(cut, tmp_path / "cut", quiet=True))
    tensors, meta = read_checkpoint(tmp_path / "cut" / "resume.safetensors")
    assert meta["epoch"] == 1 and "model.net.encoder.backbone.features.18.0.weight" in tensors
    assert "ema.net.encoder.backbone.features.18.0.weight" in tensors
    train(cfg, tmp_path / "cut", resume=True, quiet=True)
    straight, resumed = (load_file(tmp_path / r / "model.safetensors") for r in ("straight", "cut"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(v, resumed[k]) for k, v in straight.items())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_an_optimizer_saved_with_never_run_parameters_loads_with_and_without_state(momentum):
    """An optimizer's groups saved with a never-run parameter (no state: it had no gradient) load into
    the optimizer without it: the state goes to the parameters that had it, and SGD without momentum
    (no state at all) loads too."""
    from cnnkit.engine.runfolder import _check_optimizer_state, _without_unrun

    a, unrun, b = (torch.nn.Parameter(torch.full((2,), float(i))) for i in range(3))
    old = torch.optim.SGD([{"params": [a, unrun, b]}, {"params": [b.new_ones(1).requires_grad_()]}], 0.1, momentum)
    for p in (a, b, old.param_groups[1]["params"][0]):
        p.grad = p.detach() + 1
    old.step()
    saved = old.state_dict()
    new = torch.optim.SGD([{"params": [a, b]}, {"params": [old.param_groups[1]["params"][0]]}], 0.1, momentum)
    new.load_state_dict(_without_unrun(saved, new))
    _check_optimizer_state(new)
    for p in (a, b) if momentum else ():
        assert torch.equal(new.state[p]["momentum_buffer"], old.state[p]["momentum_buffer"])
    assert not new.state if not momentum else len(new.state) == 3

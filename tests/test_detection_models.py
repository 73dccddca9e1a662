"""The detector's pieces (points, assignment, loss, decode) and the localiser, each on its own, and a
short fit: a few hundred steps on a handful of synthetic scenes (loss falls, AP rises)."""

import pytest
import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.metrics.detection import coco_evaluate, voc_evaluate
from cnnkit.models.detection import (
    Detector,
    assign_targets,
    centreness,
    create_detector,
    decode,
    detection_loss,
    detector_loss,
    distances_to_boxes,
    flip_merge,
    grid_points,
    level_ranges,
    varifocal_loss,
)
from cnnkit.models.localisation import (
    Localiser,
    localisation_loss,
    localisation_metrics,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyFeatures(nn.Module):
    """A stand-in with create_features' attributes: maps at strides 8 and 16."""

    def __init__(self, cin=3, width=32):
        super().__init__()
        conv = lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.ReLU())  # noqa: E731
        self.s8 = nn.Sequential(conv(cin, 16), conv(16, width), conv(width, width))
        self.s16 = conv(width, width)
        self.strides, self.channels = [8, 16], [width, width]

    def forward(self, x):
        a = self.s8(x)
        return [a, self.s16(a)]


def test_grid_points_and_ranges():
    pts, st = grid_points([(2, 3), (1, 2)], [8, 16])
    assert pts[:4].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12]] and pts[6:].tolist() == [[8, 8], [24, 8]]
    assert st.tolist() == [8] * 6 + [16] * 2
    r = level_ranges(st, [8, 16])
    assert r[0].tolist() == [0, 64] and r[-1].tolist() == [64, float("inf")]


def test_assign_targets_centre_sampling_smallest_box_and_padding():
    pts, st = grid_points([(8, 8)], [8])  # a 64 x 64 image at stride 8
    ranges = level_ranges(st, [8])
    boxes = torch.tensor([[[0.0, 0, 64, 64], [16, 16, 32, 32], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1, -1]])
    lab, matched = assign_targets(pts, st, ranges, boxes, labels, radius=1.5)
    lab = lab.reshape(8, 8)
    # the small box (centre 24, 24) owns the 2 x 2 locations inside it: centres 20 and 28
    assert (lab[2:4, 2:4] == 1).all() and matched.reshape(8, 8, 4)[2, 2].tolist() == [16, 16, 32, 32]
    # the big box (centre 32) takes locations within 1.5 strides = 12 px of its centre: 28 and 36 -> rows 3, 4
    big = (lab == 0).nonzero().tolist()
    assert sorted(big) == [[3, 4], [4, 3], [4, 4]]  # (3, 3) went to the smaller box
    assert (lab >= 0).sum() == 7  # padding row never assigned


def test_centreness_and_distances():
    pts = torch.tensor([[10.0, 10.0], [12.0, 10.0]])
    boxes = torch.tensor([[[0.0, 0, 20, 20], [0, 0, 20, 20]]])
    assert centreness(pts, boxes)[0].tolist() == pytest.approx([1.0, (8 / 12) ** 0.5])
    d = torch.tensor([[[1.0, 2, 3, 4], [0, 0, 0, 0]]])
    assert distances_to_boxes(pts, d)[0, 0].tolist() == [9, 8, 13, 14]


def test_decode_recovers_boxes_and_suppresses_duplicates():
    pts, _ = grid_points([(4, 4)], [16])
    a = len(pts)
    out = {
        "cls": torch.full((1, a, 2), -10.0),
        "ctr": torch.full((1, a), 10.0),
        "box": torch.ones(1, a, 4),
        "points": pts,
    }
    # two neighbouring locations predict the same box of class 1: NMS keeps the better one
    for loc, logit in ((5, 4.0), (6, 2.0)):
        px, py = pts[loc].tolist()
        out["cls"][0, loc, 1] = logit
        out["box"][0, loc] = torch.tensor([px - 10, py - 12, 40 - px, 44 - py])
    det = decode(out, (64, 64))[0]
    assert det["labels"].tolist() == [1] and det["boxes"][0].tolist() == pytest.approx([10, 12, 40, 44])
    assert det["scores"].item() == pytest.approx(
        float(torch.sigmoid(torch.tensor(4.0)) * torch.sigmoid(torch.tensor(10.0))) ** 0.5
    )
    assert decode(out, (64, 64), score_threshold=0.999)[0]["boxes"].shape == (0, 4)


def test_flip_merge_averages_mirror_locations_and_its_answer_mirrors_with_the_image():
    torch.manual_seed(0)
    model = create_detector("tiny", 3, in_channels=1, out_strides=(8,)).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out, mirror = model(x), model(x.flip(-1))
    merged = flip_merge(out, mirror, 64)
    # location (row 2, column 1) of the 8 x 8 grid pairs with column 6 of the mirror image's output
    i, j = 2 * 8 + 1, 2 * 8 + 6
    torch.testing.assert_close(merged["cls"][:, i], (out["cls"][:, i] + mirror["cls"][:, j]) / 2)
    lt_rb = mirror["box"][:, j][:, [2, 1, 0, 3]]
    torch.testing.assert_close(merged["box"][:, i], (out["box"][:, i] + lt_rb) / 2)
    # flip TTA is symmetric: the answer on the mirror image is the answer on the image, mirrored
    a = decode(merged, (64, 64), score_threshold=0.0)[0]
    b = decode(flip_merge(mirror, out, 64), (64, 64), score_threshold=0.0)[0]
    back = torch.stack([64 - b["boxes"][:, 2], b["boxes"][:, 1], 64 - b["boxes"][:, 0], b["boxes"][:, 3]], 1)
    torch.testing.assert_close(a["scores"], b["scores"])
    torch.testing.assert_close(a["boxes"], back, atol=1e-4, rtol=0)
    # a width the stride does not divide: no mirror grid, the two outputs' locations are pooled
    x = torch.rand(1, 1, 60, 60)
    with torch.no_grad():
        pooled = flip_merge(model(x), model(x.flip(-1)), 60)
    assert pooled["cls"].shape[1] == 2 * model(x)["cls"].shape[1] == 128
    assert pooled["points"][64:, 0].tolist() == (60 - model(x)["points"][:, 0]).tolist()


def test_loss_is_lower_for_the_right_answer_and_handles_no_boxes():
    pts, st = grid_points([(8, 8)], [8])
    boxes, labels = torch.tensor([[[8.0, 8, 40, 48]]]), torch.tensor([[0]])
    lab, matched = assign_targets(pts, st, level_ranges(st, [8]), boxes, labels)
    pos = lab[0] >= 0
    good = {
        "cls": torch.where(pos[None, :, None], 5.0, -5.0).expand(1, 64, 1).clone(),
        "box": torch.stack([pts[:, 0] - 8, pts[:, 1] - 8, 40 - pts[:, 0], 48 - pts[:, 1]], -1)[None].clamp(min=1),
        "ctr": torch.zeros(1, 64),
        "points": pts,
    }
    bad = {"cls": torch.zeros(1, 64, 1), "box": torch.ones(1, 64, 4) * 3, "ctr": torch.zeros(1, 64), "points": pts}
    lg, lb = detection_loss(good, lab, matched), detection_loss(bad, lab, matched)
    assert lg["box"] < 1e-4 and lg["cls"] < lb["cls"] and lg["loss"] < lb["loss"]
    none, _ = assign_targets(pts, st, level_ranges(st, [8]), torch.zeros(1, 1, 4), torch.tensor([[-1]]))
    ln = detection_loss(bad, none, matched)
    assert ln["box"] == 0 and ln["loss"] > 0


def test_varifocal_loss_by_hand_and_in_the_detector_loss():
    import math

    # a positive with IoU target 0.6 and logit 0 (p = 0.5): 0.6 * BCE(0.5 -> 0.6) = 0.6 * ln 2 (BCE to a soft
    # target is -q ln p - (1 - q) ln(1 - p)); a negative with logit ln 3 (p = 0.75): 0.75 * 0.75^2 * -ln(0.25)
    got = varifocal_loss(torch.tensor([0.0, math.log(3)]), torch.tensor([0.6, 0.0]))
    want = 0.6 * math.log(2) + 0.75 * 0.75**2 * -math.log(0.25)
    assert abs(got.item() - want) < 1e-5
    pts, st = grid_points([(8, 8)], [8])
    boxes, labels = torch.tensor([[[8.0, 8, 40, 48]]]), torch.tensor([[1]])
    lab, matched = assign_targets(pts, st, level_ranges(st, [8]), boxes, labels)
    pos = lab[0] >= 0
    right = torch.stack([pts[:, 0] - 8, pts[:, 1] - 8, 40 - pts[:, 0], 48 - pts[:, 1]], -1)[None].clamp(min=1)
    cls = torch.full((1, 64, 2), -5.0)
    cls[0, pos, 1] = 5.0
    good = {"cls": cls, "box": right, "ctr": torch.zeros(1, 64), "points": pts}
    wrong_class = {**good, "cls": cls.flip(-1)}
    loose = {**good, "box": right * 0.5}  # same classes, worse boxes: lower IoU targets, higher GIoU loss
    lg, lw, ll = (detection_loss(o, lab, matched, "varifocal") for o in (good, wrong_class, loose))
    assert lg["cls"] < lw["cls"] and lg["cls"] < 0.05 and lg["box"] < 1e-4 and ll["box"] > 0.1
    assert abs(lg["box"] - detection_loss(good, lab, matched)["box"]) < 1e-6  # only the class loss differs
    with pytest.raises(CnnkitError, match="cls_loss"):
        detection_loss(good, lab, matched, "softmax")


def rectangles(n=6, size=64, seed=0):
    """Scenes of 1-2 filled rectangles: class 0 in the red channel, class 1 in the green one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    boxes = torch.zeros(n, 2, 4)
    labels = torch.full((n, 2), -1)
    for i in range(n):
        for j in range(int(torch.randint(1, 3, (1,), generator=g))):
            w, h = torch.randint(12, 28, (2,), generator=g).tolist()
            x1 = 2 + j * 32 + int(torch.randint(0, 30 - w + 1 if w < 30 else 1, (1,), generator=g))
            y1 = int(torch.randint(0, size - h, (1,), generator=g))
            c = int(torch.randint(0, 2, (1,), generator=g))
            x[i, c, y1 : y1 + h, x1 : x1 + w] = 1
            boxes[i, j] = torch.tensor([x1, y1, x1 + w, y1 + h])
            labels[i, j] = c
    return x, boxes, labels


def as_targets(boxes, labels):
    return [{"boxes": b[l >= 0], "labels": l[l >= 0]} for b, l in zip(boxes, labels)]


def test_detector_fits_a_handful_of_scenes():
    torch.manual_seed(0)
    x, boxes, labels = rectangles()
    model = Detector(TinyFeatures(), num_classes=2, width=32, head_convs=1)
    targets = as_targets(boxes, labels)
    model.eval()
    before = coco_evaluate(model.predict(x), targets)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _step in range(250):  # a minimal step loop, not a trainer
        parts = model.loss(x, boxes, labels)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append((parts["cls"] + parts["box"]).item())  # centre-ness BCE has an entropy floor
    model.eval()
    pred = model.predict(x)
    after, voc = coco_evaluate(pred, targets), voc_evaluate(pred, targets, 2)
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    assert before["AP50"] < 0.2 and after["AP50"] > 0.9 and voc["mAP"] > 0.9, (before, after, voc)


def test_detector_on_a_zoo_pyramid():
    model = create_detector("resnet18", num_classes=3, out_strides=(8, 16, 32), width=32)
    x = torch.rand(1, 3, 64, 96)
    out = model(x)
    a = 8 * 12 + 4 * 6 + 2 * 3
    assert out["cls"].shape == (1, a, 3) and out["box"].shape == (1, a, 4) and out["ctr"].shape == (1, a)
    assert out["points"].shape == (a, 2) and out["strides"].tolist() == [8] * 96 + [16] * 24 + [32] * 6
    assert (out["box"] > 0).all()


def test_localiser_fits_one_object_per_image():
    torch.manual_seed(0)
    x, boxes, labels = rectangles(n=8, seed=1)
    boxes, labels = boxes[:, 0], labels[:, 0]
    x = x.clone()
    x[:, :, :, 34:] = 0  # keep the first rectangle only
    model = Localiser(TinyFeatures(), num_classes=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()
    before = localisation_metrics(*model(x), labels, boxes)
    model.train()
    for _step in range(200):
        loss = localisation_loss(*model(x), labels, boxes, (64, 64))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = localisation_metrics(*model(x), labels, boxes)
    assert after["accuracy"] == 1.0 and after["mean_iou"] > 0.7 and after["mean_iou"] > before["mean_iou"] + 0.3, (
        before,
        after,
    )


def test_tiny_pyramid_and_its_errors():
    from cnnkit.errors import CnnkitError
    from cnnkit.models.detection import TinyPyramid

    fx = TinyPyramid(1)
    maps = fx(torch.rand(2, 1, 64, 96))
    assert [m.shape for m in maps] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 96, 4, 6)] and fx.strides == [4, 8, 16]
    model = create_detector("tiny", num_classes=10, in_channels=1, out_strides=(8, 16), width=16)
    out = model(torch.rand(1, 1, 64, 64))
    assert model.features.channels == [64, 96] and out["cls"].shape == (1, 8 * 8 + 4 * 4, 10)
    with pytest.raises(CnnkitError, match="strides \\(4, 8, 16\\)"):
        create_detector("tiny", 10, in_channels=1, out_strides=(8, 16, 32))
    with pytest.raises(CnnkitError, match="no pretrained weights"):
        create_detector("tiny", 10, weights="imagenet", in_channels=1, out_strides=(8, 16))


def test_freeze_backbone_stops_early_stages_and_batchnorm():
    model = create_detector("resnet18", num_classes=1, out_strides=(8, 16, 32), width=16)
    bns = model.freeze_backbone(4)
    bb = model.features.backbone
    assert not any(p.requires_grad for p in bb.conv1.parameters()) and not any(
        p.requires_grad for p in bb.layer1.parameters()
    )
    assert bb.layer2[0].conv1.weight.requires_grad and not bb.layer2[0].bn1.weight.requires_grad
    assert len(bns) == sum(isinstance(m, nn.BatchNorm2d) for m in model.features.modules()) > 0
    assert all(p.requires_grad for p in model.head.parameters())
    tiny = create_detector("tiny", 10, in_channels=1, out_strides=(8, 16), width=16)
    tiny.freeze_backbone(4, batchnorm=False)
    assert not any(p.requires_grad for p in tiny.features.stem.parameters())
    assert all(p.requires_grad for p in tiny.features.stages.parameters())


def test_separate_towers_and_box_weight():
    torch.manual_seed(0)
    model = Detector(TinyFeatures(), num_classes=2, width=32, head_convs=2, separate_towers=True)
    shared = Detector(TinyFeatures(), num_classes=2, width=32, head_convs=2)
    head_params = lambda m: sum(p.numel() for p in m.head.parameters())  # noqa: E731
    assert head_params(model) - head_params(shared) == 2 * (9 * 32 * 32 + 2 * 32)  # a second tower of 2 conv+GN
    x, boxes, labels = rectangles(2)
    out = model(x)
    assert out["cls"].shape == (2, 64 + 16, 2) and out["box"].shape == (2, 80, 4)
    # the class logits read the first tower only, the boxes and centre-ness the second only
    grads = torch.autograd.grad(
        out["box"].sum() + out["ctr"].sum(),
        [model.head.tower[0][0].weight, model.head.box_tower[0][0].weight],
        allow_unused=True,
    )
    assert grads[0] is None and grads[1].abs().sum() > 0
    one, two = (detector_loss(out, boxes, labels, box_weight=w) for w in (1.0, 2.0))
    assert torch.allclose(two["loss"] - one["loss"], one["box"]) and one["box"] > 0


def test_under_bf16_autocast_the_head_answers_in_fp32_and_the_loss_and_decoding_run():
    """A CPU with native bf16 trains under bf16 autocast by default: box distances in pixels, the
    losses and the decoded boxes stay fp32 (8 bits of mantissa are a pixel or two at 300 px)."""
    torch.manual_seed(0)
    model = Detector(TinyFeatures(), num_classes=2, width=32, head_convs=1)
    x, boxes, labels = rectangles(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        parts = detector_loss(out, boxes, labels, cls_loss="varifocal")
        model.eval()
        dets = model.predict(x, score_threshold=0.0, max_detections=3)
    assert {k: v.dtype for k, v in out.items() if k != "points"} == dict.fromkeys(
        ("cls", "box", "ctr", "strides"), torch.float32
    )
    assert parts["loss"].dtype == torch.float32 and torch.isfinite(parts["loss"])
    assert dets[0]["boxes"].dtype == torch.float32 and len(dets[0]["boxes"]) == 3


def test_a_pretrained_backbone_gets_the_input_normalisation_of_its_weights():
    from cnnkit.models.weights import IMAGENET_MEAN, IMAGENET_STD, weights_stats

    # efficientnet_lite0's TF weights saw [-1, 1] pixels; with frozen batch norms nothing else will do
    assert weights_stats("efficientnet_lite0", "imagenet") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert weights_stats("resnet18", "imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert (
        weights_stats("efficientnet_lite0", None) is None and weights_stats("efficientnet_lite0", "imagenet", 1) is None
    )
    random = create_detector("efficientnet_lite0", 1, weights=None)  # no weights: ImageNet's statistics
    assert random.normalise.mean.flatten().tolist() == pytest.approx(list(IMAGENET_MEAN))

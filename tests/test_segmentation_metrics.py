"""Segmentation metrics against numbers worked out by hand on 6x6 masks."""

import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.metrics.segmentation import (
    SegmentationMeter,
    boundary_band,
    boundary_iou,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)


def squares():
    """Target: a 4x4 square of class 1 at rows 1-4, cols 1-4; prediction: the same square one column
    to the right (cols 2-5, touching the image's right border)."""
    target = torch.zeros(6, 6, dtype=torch.uint8)
    target[1:5, 1:5] = 1
    pred = torch.zeros(6, 6, dtype=torch.long)
    pred[1:5, 2:6] = 1
    return pred, target


def test_confusion_iou_miou_pixel_accuracy_by_hand():
    pred, target = squares()
    cm = confusion_matrix(pred, target, 2)
    # true bg: 20 px, 16 predicted bg, 4 predicted 1 (col 5); true 1: 16 px, 12 right, 4 (col 1) missed
    assert cm.tolist() == [[16, 4], [4, 12]]
    iou = iou_per_class(cm)
    assert iou.tolist() == pytest.approx([16 / 24, 12 / 20])
    assert mean_iou(cm) == pytest.approx((16 / 24 + 12 / 20) / 2)
    assert pixel_accuracy(cm) == pytest.approx(28 / 36)


def test_ignore_index_and_absent_classes():
    pred, target = squares()
    target[0, 0] = 255  # a background pixel predicted background: gone
    cm = confusion_matrix(pred, target, 3)
    assert cm.sum() == 35 and cm[0, 0] == 15
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(15 / 23) and torch.isnan(iou[2])  # class 2 is never seen
    assert mean_iou(cm) == pytest.approx((15 / 23 + 12 / 20) / 2)  # the mean skips it


def test_boundary_band_is_the_mask_minus_its_erosion():
    pred, target = squares()
    band = boundary_band(target == 1, 1)
    assert band.sum() == 12 and not band[2:4, 2:4].any()  # the 4x4 ring, not its 2x2 core
    pband = boundary_band(pred == 1, 1)  # the image border is a contour
    assert pband.sum() == 12 and pband[1:5, 5].all() and not pband[2:4, 3:5].any()
    assert boundary_band(target == 1, 2).sum() == 16  # erosion by 2 leaves nothing
    full = torch.ones(5, 5, dtype=torch.bool)
    assert boundary_band(full, 1).sum() == 16  # a full image: its outer ring
    with pytest.raises(CnnkitError, match="d=0"):
        boundary_band(full, 0)


def test_boundary_iou_by_hand():
    pred, target = squares()
    biou = boundary_iou(pred, target, 2, d=1)
    # class 1: the two rings share rows 1 and 4 at cols 2-4 (6 px) of 12 + 12 - 6 = 18
    # class 0: the image border is a contour of every mask (Cheng et al. pad with background), so both
    #   background masks (20 px each) are all band; they share rows 0 and 5 and col 0 (16 px) of 24
    assert biou.tolist() == pytest.approx([16 / 24, 6 / 18])
    # wide enough, the band is the whole mask and the boundary IoU is the mask IoU (the paper's limit)
    assert boundary_iou(pred, target, 2, d=3)[1] == pytest.approx(12 / 20)
    target[0, 0] = 255  # ignored: out of the union
    assert boundary_iou(pred, target, 2, d=1)[0] == pytest.approx(15 / 23)


def test_meter_accumulates_over_batches_as_one_set():
    pred, target = squares()
    other_pred = torch.zeros(6, 6, dtype=torch.long)  # a second image: all background
    meter = SegmentationMeter(2, boundary_d=1, class_names=["background", "square"])
    meter.update(pred[None], target[None])
    meter.update(other_pred[None], target[None])
    out = meter.compute()
    cm = confusion_matrix(torch.stack([pred, other_pred]), torch.stack([target, target]), 2)
    assert out["confusion"] == cm.tolist() == [[16 + 20, 4], [4 + 16, 12]]
    assert out["iou_by_class"]["square"] == pytest.approx(12 / 36)
    assert out["mIoU"] == pytest.approx((36 / 60 + 12 / 36) / 2)
    # boundary, class 1: 6 / 18 on image 1, 0 / 12 on image 2 -> 6 / 30 over the set
    assert out["boundary_iou_per_class"][1] == pytest.approx(6 / 30)
    empty = SegmentationMeter(3).compute()
    assert empty["mIoU"] is None and empty["iou"] == [None, None, None]


def test_bad_labels_and_shapes_are_one_line_errors():
    pred, target = squares()
    target[2, 2] = 7
    for fn in (lambda: confusion_matrix(pred, target, 2), lambda: boundary_iou(pred, target, 2)):
        with pytest.raises(CnnkitError, match=r"label 7, outside the 2 classes 0..1") as err:
            fn()
        assert "\n" not in str(err.value)
    with pytest.raises(CnnkitError, match="shape"):
        confusion_matrix(pred[:5], target, 2)


def test_boundary_iou_does_not_score_what_the_model_answers_on_ignored_pixels():
    """A VOC-style void band (255) over an object's contour: the boundary IoU of a prediction that
    agrees with the target on every scored pixel is 1, whatever it answers inside the void."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    inside = lambda a, b: (yy >= a) & (yy < b) & (xx >= a) & (xx < b)  # noqa: E731
    obj, void = inside(8, 24), inside(6, 26) & ~inside(10, 22)
    target = torch.where(void, 255, obj.long())
    for in_void in (obj.long(), torch.zeros_like(target), torch.ones_like(target)):
        pred = torch.where(void, in_void, obj.long())
        assert ((pred == target) | void).all()  # right on every scored pixel
        assert boundary_iou(pred, target, 2, d=3).tolist() == [1.0, 1.0]
        m = SegmentationMeter(2, boundary_d=3)
        m.update(pred, target)
        assert m.compute()["boundary_iou"] == 1.0 and m.compute()["mIoU"] == 1.0


def test_pixel_accuracy_is_the_float64_fraction():
    """As the IoUs are: 2 of 3 pixels is 2/3 to the last bit, not float32's 0.66666669 (shown as such by --format json)."""
    m = SegmentationMeter(2)
    m.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 255]]))
    assert m.compute()["pixel_accuracy"] == 2 / 3
    big = torch.zeros(2, 2, dtype=torch.long)
    big[0, 0], big[1, 0] = 123_456_789, 1  # beyond float32's 24 bits
    assert pixel_accuracy(big) == 123_456_789 / 123_456_790

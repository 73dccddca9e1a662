"""Detection metrics: pycocotools fed from memory, and cnnkit's VOC AP against hand computations."""

import math

import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.metrics.detection import coco_evaluate, voc_ap, voc_evaluate

pytest.importorskip("pycocotools")


def T(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def scene():
    """Three images: two classes, one image with no boxes at all."""
    targets = [
        {"boxes": T([10, 10, 50, 60], [60, 20, 90, 80]), "labels": torch.tensor([0, 1])},
        {"boxes": T([5, 5, 40, 40]), "labels": torch.tensor([1])},
        {"boxes": T(), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return targets


def perfect(targets):
    return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in targets]


def test_perfect_predictions_score_one():
    targets = scene()
    m = coco_evaluate(perfect(targets), targets, classes=["person", "dog"])
    assert (m["AP"], m["AP50"], m["AP75"], m["AR100"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["per_class_AP"] == pytest.approx({"person": 1.0, "dog": 1.0}) and m["images"] == 3
    assert voc_evaluate(perfect(targets), targets, 2) == {"mAP": 1.0, "per_class_AP": [1.0, 1.0]}


def test_shifted_predictions_lose_the_strict_thresholds():
    # a 40 x 40 box shifted right by 10 px: IoU = 30*40 / (2*1600 - 1200) = 0.6 exactly -> shift 9
    # gives IoU = 31/49 = 0.633: matched at thresholds .50, .55, .60 only -> AP 3/10
    targets = [{"boxes": T([0, 0, 40, 40]), "labels": torch.tensor([0])}]
    preds = [{"boxes": T([9, 0, 49, 40]), "labels": torch.tensor([0]), "scores": torch.tensor([0.9])}]
    m = coco_evaluate(preds, targets)
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(0.3) and m["AR100"] == pytest.approx(0.3)
    assert voc_evaluate(preds, targets, 1)["mAP"] == 1.0
    far = [{"boxes": T([25, 0, 65, 40]), "labels": torch.tensor([0]), "scores": torch.tensor([0.9])}]
    assert coco_evaluate(far, targets)["AP50"] == 0.0 and voc_evaluate(far, targets, 1)["mAP"] == 0.0


def test_false_positive_on_an_empty_image_and_wrong_class():
    targets = scene()
    preds = perfect(targets)
    # a confident false positive of class 0 on the empty image: class 0 precision drops to 1/2 at
    # recall 1 after it (ranked first), so COCO's 101-point AP for class 0 is 0.5 at every threshold
    preds[2] = {"boxes": T([0, 0, 30, 30]), "labels": torch.tensor([0]), "scores": torch.tensor([2.0])}
    m = coco_evaluate(preds, targets, classes=["a", "b"])
    assert m["per_class_AP"]["a"] == pytest.approx(0.5) and m["per_class_AP"]["b"] == pytest.approx(1.0)
    assert m["AP"] == pytest.approx(0.75)
    v = voc_evaluate(preds, targets, 2)
    assert v["per_class_AP"] == pytest.approx([0.5, 1.0])
    # predicting the right box with the wrong class is a miss for one class and a FP for the other
    wrong = perfect(targets)
    wrong[1] = {"boxes": T([5, 5, 40, 40]), "labels": torch.tensor([0]), "scores": torch.tensor([0.5])}
    assert voc_evaluate(wrong, targets, 2)["per_class_AP"][1] == pytest.approx(0.5)


def test_no_predictions_and_no_ground_truth():
    targets = scene()
    none = [{"boxes": T(), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}] * 3
    m = coco_evaluate(none, targets, classes=["a", "b"])
    assert m["AP"] == 0.0 and m["AR100"] == 0.0
    empty_targets = [{"boxes": T(), "labels": torch.zeros(0, dtype=torch.int64)}]
    m = coco_evaluate(none[:1], empty_targets, classes=["a"])
    assert m["AP"] == -1.0 and m["per_class_AP"] == {"a": -1.0}  # pycocotools: undefined
    assert math.isnan(voc_evaluate(none[:1], empty_targets, 1)["mAP"])
    with pytest.raises(CnnkitError, match="one entry per image"):
        coco_evaluate(none, targets[:1])


def test_voc_ap_hand_computed():
    # one class, two ground-truth boxes in two images; detections by score: TP, FP (duplicate), TP
    targets = [
        {"boxes": T([0, 0, 10, 10]), "labels": torch.tensor([0])},
        {"boxes": T([20, 20, 30, 30]), "labels": torch.tensor([0])},
    ]
    preds = [
        {
            "boxes": T([0, 0, 10, 10], [1, 0, 10, 10]),
            "labels": torch.tensor([0, 0]),
            "scores": torch.tensor([0.9, 0.8]),
        },
        {"boxes": T([20, 20, 30, 31]), "labels": torch.tensor([0]), "scores": torch.tensor([0.7])},
    ]
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1 on (0, 1/2], 2/3 on (1/2, 1]
    assert voc_evaluate(preds, targets, 1)["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    import numpy as np

    assert voc_ap(np.array([0.25, 0.5, 0.5, 0.75]), np.array([1.0, 0.5, 0.4, 0.6])) == pytest.approx(
        0.25 * 1.0 + 0.25 * 0.6 + 0.25 * 0.6
    )


def test_crowd_regions_of_a_coco_file_are_ignored_as_pycocotools_ignores_them(tmp_path):
    """Detections inside an ``iscrowd`` region are neither true nor false positives: the numbers
    ``detect eval`` reports on a COCO file equal pycocotools' COCOeval on that same file."""
    import contextlib
    import io
    import json

    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from cnnkit.data.detection import load_coco
    from cnnkit.tasks.detect.data import from_detections

    for i in (1, 2, 3):
        Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(tmp_path / f"im{i}.png")
    ann = {
        "images": [{"id": i, "file_name": f"im{i}.png", "width": 120, "height": 100} for i in (1, 2, 3)],
        "categories": [{"id": 7, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 30, 40], "iscrowd": 0, "area": 1200},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [60, 10, 50, 80], "iscrowd": 1, "area": 4000},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20], "iscrowd": 0, "area": 400},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    data = from_detections(load_coco(tmp_path / "ann.json"), 128)
    # three confident detections inside the crowd region, then the two people
    preds = [
        {
            "boxes": T([62, 12, 80, 40], [85, 40, 105, 85], [70, 50, 100, 80], [10, 10, 40, 50]),
            "scores": [0.95, 0.9, 0.85, 0.8],
        },
        {"boxes": T([5, 5, 25, 25]), "scores": [0.7]},
        {"boxes": T(), "scores": []},
    ]
    preds = [
        {
            "boxes": p["boxes"],
            "scores": torch.tensor(p["scores"]),
            "labels": torch.zeros(len(p["scores"]), dtype=torch.int64),
        }
        for p in preds
    ]
    m = coco_evaluate(preds, data.targets(), classes=data.classes)
    results = [
        {"image_id": i, "category_id": 7, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
        for i, p in zip((1, 2, 3), preds)
        for (x1, y1, x2, y2), s in zip(p["boxes"].tolist(), p["scores"])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "ann.json"))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert [m["AP"], m["AP50"], m["AP75"], m["AR100"]] == pytest.approx(ev.stats[[0, 1, 2, 8]].tolist(), abs=1e-12)
    assert m["AP"] == pytest.approx(1.0)  # counted as false positives, the three would make it 0.4
    assert voc_evaluate(preds, data.targets(), 1)["mAP"] == pytest.approx(1.0)

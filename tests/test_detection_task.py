"""The detection task's pieces without the engine: data sets, batches, loss sums, evaluation in original
pixels, and a saved detector that loads back and predicts in the original image's pixels."""

import pytest
import torch

from cnnkit.data.detection import Detections
from cnnkit.engine.distributed import Dist
from cnnkit.engine.loop import step_loss
from cnnkit.errors import CnnkitError
from cnnkit.models.detection import Detector
from cnnkit.tasks.detect.data import from_detections, from_scenes
from cnnkit.tasks.detect.load import build_detector, load_detector, new_detector
from cnnkit.tasks.detect.predict import predict_images, predict_set
from cnnkit.tasks.detect.task import DetectTask

pytestmark = pytest.mark.usefixtures("one_thread")


def detections():
    imgs = [torch.zeros(3, 40, 80, dtype=torch.uint8), torch.zeros(3, 60, 30, dtype=torch.uint8)]
    imgs[0][:, 10:30, 20:40] = 255
    imgs[1][:, 5:25, 5:15] = 255
    boxes = [torch.tensor([[20.0, 10, 40, 30]]), torch.tensor([[5.0, 5, 15, 25], [0, 30, 30, 60]])]
    labels = [torch.tensor([1]), torch.tensor([0, 1])]
    return Detections(imgs, boxes, labels, ["a", "b"], ["x.png", "y.png"])


def test_detection_set_letterboxes_and_maps_back():
    s = from_detections(detections(), 64)
    assert s.images.shape == (2, 3, 64, 64) and s.boxes.shape == (2, 2, 4)
    assert s.labels.tolist() == [[1, -1], [0, 1]] and s.scales.tolist() == pytest.approx([0.8, 64 / 60])
    assert s.boxes[0, 0].tolist() == pytest.approx([16, 8, 32, 24])
    t = s.targets()
    torch.testing.assert_close(t[1]["boxes"], detections().boxes[1], atol=1e-4, rtol=0)
    with pytest.raises(CnnkitError, match="empty dataset"):
        from_detections(Detections([], [], [], ["a"]), 64)


def test_batches_are_seeded_and_loss_returns_sums():
    s = from_detections(detections(), 64)
    task = DetectTask(classes=["a", "b"], batch_size=2)
    one = list(task.batches(s, torch.Generator().manual_seed(0), train=True))
    two = list(task.batches(s, torch.Generator().manual_seed(0), train=True))
    other = list(task.batches(s, torch.Generator().manual_seed(1), train=True))
    assert len(one) == 1 and all(torch.equal(a, b) for a, b in zip(one[0], two[0]))
    assert not torch.equal(one[0][0], other[0][0])
    val = list(task.batches(s, torch.Generator().manual_seed(0), train=False))
    assert torch.equal(val[0][0], s.images.float() / 255) and torch.equal(val[0][1], s.boxes)
    model, info = new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)
    loss, logged = step_loss(task, model, one[0], Dist())
    assert loss.requires_grad and logged["n"] == 2
    assert logged["loss"] == pytest.approx(2 * loss.item())
    assert list(logged) == ["loss", "cls", "box", "ctr", "n"]


def test_saved_detector_loads_and_predicts_in_original_pixels(tmp_path):
    from cnnkit.engine.runfolder import FORMAT, save_model

    model, info = new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)
    task = DetectTask(classes=["a", "b"], info=info, decode_args={"score_threshold": 0.0})
    save_model(tmp_path / "model.safetensors", task.deployable(model), {"format": FORMAT, **task.describe(model)})
    back = load_detector(tmp_path)
    import cnnkit

    assert isinstance(cnnkit.load(tmp_path), Detector)  # the one loader dispatches by task
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(back(x)["cls"], model(x)["cls"])
    assert back.info["backbone"] == "mobilenet_v3_small" and back.info["classes"] == ["a", "b"]
    d = detections()
    s = from_detections(d, 64)
    by_set = predict_set(back, s, score_threshold=0.0)
    by_image = predict_images(back, d.images, 64, ["a", "b"], score_threshold=0.0)
    assert len(by_image[1]["boxes"]) == len(by_set[1]["boxes"]) > 0
    h, w = d.images[1].shape[1:]
    ref = by_set[1]["boxes"].clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
    torch.testing.assert_close(torch.tensor(by_image[1]["boxes"]), ref)
    assert set(by_image[0]["labels"]) <= {"a", "b"}
    m = task.evaluate(back, s)
    assert set(m) == {"AP", "AP50", "AP75", "AR100", "VOC_AP50"} and 0 <= m["AP50"] <= 1
    flipped = predict_set(back, s, score_threshold=0.0, tta="flip")  # the run's test-time augmentation
    assert len(flipped) == len(s) and not torch.equal(flipped[1]["scores"], by_set[1]["scores"])
    with pytest.raises(CnnkitError, match="--tta is flip or none"):
        predict_set(back, s, tta="mirror")
    with pytest.raises(CnnkitError, match="lacks field 'backbone'"):
        build_detector({"classes": ["a"]})


def test_scenes_become_a_detection_set():
    from cnnkit.data.imageset import ImageSet
    from cnnkit.data.scenes import digit_scenes

    digits = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    digits[:, :, 6:22, 8:20] = 255
    src = ImageSet(digits, torch.arange(10), [str(i) for i in range(10)], "toy")
    sc = digit_scenes("train", n=3, canvas=64, source=src, scale=(0.6, 1.0))
    s = from_scenes(sc)
    assert s.images.shape == (3, 1, 64, 64) and s.scales.tolist() == [1, 1, 1]
    for i in range(3):
        torch.testing.assert_close(s.targets()[i]["boxes"], sc.boxes[i])


def test_build_detector_rebuilds_the_head_layout():
    model, info = new_detector(
        "tiny", ["a", "b"], 1, 64, out_strides=(8,), width=16, head_convs=3, separate_towers=True
    )
    rebuilt = build_detector({**info, "classes": ["a", "b"]})
    assert len(rebuilt.head.tower) == 3 and rebuilt.head.box_tower is not None
    rebuilt.load_state_dict(model.state_dict())  # strict: the same keys and shapes
    old = {k: v for k, v in info.items() if k not in ("head_convs", "separate_towers")}  # a checkpoint before them
    plain = build_detector({**old, "classes": ["a", "b"]})
    assert len(plain.head.tower) == 2 and plain.head.box_tower is None


def test_detected_photos_are_scored_with_flip_tta_and_digit_scenes_and_masks_without():
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.instance.config import InstanceConfig

    assert DetectConfig().resolved().tta == "flip" and InstanceConfig().resolved().tta == "none"
    assert InstanceConfig(tta="flip").resolved().tta == "flip"
    assert DetectConfig(data="digits").resolved().tta == "none"
    assert DetectConfig(tta="none").resolved().tta == "none"


def test_keep_depthwise_defaults_and_refusals():
    from cnnkit.tasks.detect.config import DetectConfig, config_from_dict, validate
    from cnnkit.tasks.instance.config import InstanceConfig

    assert DetectConfig(data="pennfudan").resolved().keep_depthwise  # the Penn-Fudan detector's recipe
    assert not DetectConfig(data="digits").resolved().keep_depthwise  # tiny backbone, no weights
    assert not DetectConfig(data="some/folder").resolved().keep_depthwise  # not measured there: trained
    assert not DetectConfig(data="pennfudan", weights=None).resolved().keep_depthwise
    assert not InstanceConfig(data="pennfudan").resolved().keep_depthwise  # the mask recipe trains them
    assert InstanceConfig(data="pennfudan", keep_depthwise=True).resolved().keep_depthwise
    stored = DetectConfig(data="pennfudan").resolved().to_dict()
    del stored["keep_depthwise"]  # a run from before the option trained every filter, and resumes so
    assert config_from_dict(stored).resolved().keep_depthwise is False
    with pytest.raises(CnnkitError, match="--keep-depthwise must be off without pretrained weights"):
        validate(DetectConfig(data="pennfudan", weights=None, keep_depthwise=True).resolved())


def test_boxes_map_back_to_each_images_own_pixels_exactly():
    """A 1000 x 100 photo letterboxed to 64 px is 64 x 6 (6.4 rounded): its boxes come back by each
    axis's own factor (6 / 100 down the side, not the scale 0.064), clipped to the photo, in the
    ground truth eval scores against and in the boxes eval and predict answer with alike."""
    from cnnkit.data.detection import unletterbox
    from cnnkit.models.detection import create_detector
    from cnnkit.tasks.instance.data import from_instances

    img = torch.zeros(3, 100, 1000, dtype=torch.uint8)
    box = torch.tensor([[100.0, 50, 900, 100]])
    s = from_detections(Detections([img], [box], [torch.tensor([0])], ["a"], ["wide.png"]), 64)
    torch.testing.assert_close(s.targets()[0]["boxes"], box, atol=1e-3, rtol=0)  # by the scale: y2 93.75
    back = unletterbox(torch.tensor([[0.0, 0, 64, 6], [-5, -5, 70, 9]]), 64, 100, 1000)
    torch.testing.assert_close(back, torch.tensor([[0.0, 0, 1000, 100]] * 2))
    inst = torch.zeros(100, 1000, dtype=torch.uint8)
    inst[50:100, 100:900] = 1
    torch.testing.assert_close(from_instances([img], [inst], None, ["a"], 64).targets()[0]["boxes"], box)
    torch.manual_seed(0)
    model = create_detector("tiny", 1, in_channels=3, out_strides=(8,), width=8).eval()
    by_set = predict_set(model, s, score_threshold=0.0)[0]["boxes"]  # what eval scores
    by_image = torch.tensor(predict_images(model, [img], 64, ["a"], score_threshold=0.0)[0]["boxes"])  # predict
    assert len(by_set) > 0 and torch.equal(by_set, by_image)
    assert (by_set >= 0).all() and (by_set[:, [0, 2]] <= 1000).all() and (by_set[:, [1, 3]] <= 100).all()


def test_a_detector_saved_with_the_unused_backbone_modules_loads(tmp_path, monkeypatch):
    """A checkpoint that holds the backbone's never-run modules (MobileNet v3's head conv) loads into
    the detector without them, which predicts the same."""
    import cnnkit.models.features as features
    from cnnkit.engine.runfolder import FORMAT, save_model

    def build():
        torch.manual_seed(0)
        return new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)

    new, info = build()
    with monkeypatch.context() as m:
        m.setattr(features, "_drop_unrun", lambda model, run: ())
        whole, _ = build()
    assert whole.state_dict().keys() - new.state_dict().keys() == {
        f"features.backbone.{k}" for k in new.features.dropped_keys
    }
    task = DetectTask(classes=["a", "b"], info=info)
    save_model(tmp_path / "model.safetensors", task.deployable(whole), {"format": FORMAT, **task.describe(whole)})
    back = load_detector(tmp_path)
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in new.parameters())
    # the 1x1 head conv 96->576 with its batch norm (56,448) and the Linear 576->1024 (590,848)
    assert sum(p.numel() for p in whole.parameters()) - sum(p.numel() for p in new.parameters()) == 647_296
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(back(x)["cls"], whole.eval()(x)["cls"], rtol=0, atol=0)

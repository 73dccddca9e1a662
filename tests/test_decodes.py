"""How often the segment, detect and instance tasks decode each file, counted at the one guarded reader
(:func:`cnnkit.data.images.open_image`): a run's data reads every photo and mask once (a mask folder's
classes counted from the masks as they are read), and ``eval`` of a run on Penn-Fudan, a mask folder, a
VOC or YOLO box folder or a COCO file reads only the part it scores, the same tensors as the whole read
gives; ``--resume`` of a run on such data decodes the photos of the run's split alone."""

import collections
import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit.data.images
import cnnkit.data.segmentation
from cnnkit.data.pennfudan import carve_validation, pennfudan_split

PARTS = ("train", "val", "test")
N = 122  # the fixed split takes 120 to train: 100 train, 20 val, 2 test


@pytest.fixture(scope="module")
def pennfudan(tmp_path_factory):
    """A tiny Penn-Fudan folder: N photos 12 px wide, one pedestrian each, with its mask and annotation."""
    root = tmp_path_factory.mktemp("data") / "pennfudan"
    for d in ("PNGImages", "PedMasks", "Annotation"):
        (root / d).mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(N):
        h = 10 + i % 3
        stem = f"FudanPed{i:05d}"
        Image.fromarray(g.integers(0, 255, (h, 12, 3), dtype=np.uint8)).save(root / "PNGImages" / f"{stem}.png")
        mask = np.zeros((h, 12), np.uint8)
        mask[2:8, 3:7] = 1
        Image.fromarray(mask).save(root / "PedMasks" / f"{stem}_mask.png")
        (root / "Annotation" / f"{stem}.txt").write_text(
            f"Image size (X x Y x C) : 12 x {h} x 3\nObjects with ground truth : 1\n"
            'Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (4, 3) - (7, 8)\n'
        )
    return root


@pytest.fixture
def opened(monkeypatch):
    """A Counter of the paths the guarded reader opens (every photo and mask the tasks decode)."""
    counts = collections.Counter()
    real = cnnkit.data.images.open_image

    @contextlib.contextmanager
    def counted(path, *args, **kwargs):
        counts[str(path)] += 1
        with real(path, *args, **kwargs) as im:
            yield im

    monkeypatch.setattr(cnnkit.data.images, "open_image", counted)
    monkeypatch.setattr(cnnkit.data.segmentation, "open_image", counted)
    return counts


def _files(root, names, masks=True):
    photos = [str(root / "PNGImages" / n) for n in names]
    return photos + ([str(root / "PedMasks" / n.replace(".png", "_mask.png")) for n in names] if masks else [])


def _loaders(root):
    """(task, load(parts) -> (train, val, test), reads masks) of segment, detect and instance on ``root``."""
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    data_dir = str(root.parent)
    seg = SegmentConfig(data="pennfudan", data_dir=data_dir).resolved()
    det = DetectConfig(data="pennfudan", data_dir=data_dir, image_size=32).resolved()
    inst = InstanceConfig(data="pennfudan", data_dir=data_dir, image_size=32).resolved()
    return [
        ("segment", lambda parts: load_splits(seg, own_size=True, parts=parts)[:3], True),
        ("detect", lambda parts: load_split_data(det, parts=parts)[:3], False),
        ("instance", lambda parts: load_instance_data(inst, parts=parts)[:3], True),
    ]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("task", ["segment", "detect", "instance"])
def test_each_file_is_decoded_once_and_eval_reads_only_its_part(pennfudan, opened, task):
    split = carve_validation(pennfudan_split(pennfudan))
    _, load, masks = next(t for t in _loaders(pennfudan) if t[0] == task)
    whole = load(("train", "val", "test"))
    assert sorted(opened) == sorted(_files(pennfudan, split["train"] + split["val"] + split["test"], masks))
    assert set(opened.values()) == {1}  # no photo or mask decoded twice
    for i, part in enumerate(("train", "val", "test")):
        opened.clear()
        sets = load((part,))
        assert sorted(opened) == sorted(_files(pennfudan, split[part], masks)) and set(opened.values()) == {1}
        assert [s is None for s in sets] == [j != i for j in range(3)]
        assert _same(vars(sets[i]), vars(whole[i])), part  # bit for bit what the whole read gives


def test_a_mask_folder_is_read_once_with_its_classes_counted_over_every_part(tmp_path, opened):
    """`segment train` on an images/ + masks/ folder decodes each photo and mask once: the classes are
    counted from every mask at its own size as the parts are read (class 2 only in a test photo still
    counts), training photos shrunk to max_side, test photos at their own size; `eval`, given the
    run's classes, decodes the photos and masks of the part it scores alone."""
    from cnnkit.data.segmentation import folder_split
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    g = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(g.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        mask = np.zeros((20, 30), np.uint8)
        mask[3:9, 4:12] = 1
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    split = folder_split(root)
    lone = split["test"][0]
    mask = np.array(Image.open(root / "masks" / lone))
    mask[12:14, 20:22] = 2  # class 2: one small object, in a test photo only
    Image.fromarray(mask).save(root / "masks" / lone)
    files = sorted(str(root / d / f"p{i}.png") for d in ("images", "masks") for i in range(10))
    cfg = SegmentConfig(data=str(root), max_side=15).resolved()
    train, val, test, parts = load_splits(cfg)
    assert sorted(opened) == files and set(opened.values()) == {1}
    assert train.num_classes == val.num_classes == test.num_classes == 3
    assert parts == carve_validation(split) and [train.names, val.names, test.names] == [parts[k] for k in PARTS]
    assert {tuple(m.shape) for m in train.masks + val.masks} == {(10, 15)}
    assert {tuple(m.shape) for m in test.masks} == {(20, 30)}
    assert 2 in test.masks[test.names.index(lone)].unique().tolist()
    opened.clear()
    *own, again = load_splits(cfg, own_size=True, split=parts)  # every part at its own size
    assert sorted(opened) == files and set(opened.values()) == {1} and again == parts
    assert _same(vars(own[2]), vars(test)) and {tuple(m.shape) for m in own[0].masks} == {(20, 30)}
    opened.clear()
    *scored, again = load_splits(cfg, own_size=True, split=parts, parts=("test",), classes=test.classes)  # eval's
    assert sorted(opened) == sorted(str(root / d / n) for d in ("images", "masks") for n in parts["test"])
    assert set(opened.values()) == {1} and again == parts and scored[:2] == [None, None]
    assert _same(vars(scored[2]), vars(test))


def test_a_segment_subset_decodes_only_the_training_photos_it_keeps(pennfudan, opened):
    # --subset K (a quick check) trains on the first K training photos: the others are not decoded
    from dataclasses import replace

    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    split = carve_validation(pennfudan_split(pennfudan))
    cfg = SegmentConfig(data="pennfudan", data_dir=str(pennfudan.parent)).resolved()
    whole = load_splits(cfg, parts=("train",))[0]
    opened.clear()
    train, val, test, parts = load_splits(replace(cfg, subset=5))
    assert parts == split  # the split kept whole
    assert sorted(opened) == sorted(_files(pennfudan, split["train"][:5] + split["val"] + split["test"]))
    assert train.names == split["train"][:5] and torch.equal(train.images[3], whole.images[3])


def _user_data(root, kind: str):
    """A VOC box folder, a YOLO folder or a COCO file (with masks) of 8 photos, and the photos' folder."""
    from test_detection_data import make_voc_boxes, make_yolo
    from test_instance_data import make_coco

    if kind == "voc":
        make_voc_boxes(root)
        return root, root / "JPEGImages"
    if kind == "yolo":
        return make_yolo(root), root / "images"
    return make_coco(root, n_images=8), root / "images"


@pytest.mark.parametrize(
    ("task", "kind"),
    [("detect", "voc"), ("detect", "yolo"), ("detect", "coco"), ("instance", "coco"), ("segment", "coco")],
)
def test_eval_of_a_users_data_decodes_only_the_part_it_scores(tmp_path, opened, task, kind):
    """A run's data reads every photo of a VOC or YOLO folder or a COCO file once; `eval`, given the run's
    split and classes, decodes the photos of the part it scores alone, once each, into the tensors the
    whole read gives that part."""
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    data, folder = _user_data(tmp_path / kind, kind)
    load = {
        "detect": lambda **kw: load_split_data(DetectConfig(data=str(data), image_size=32).resolved(), **kw),
        "instance": lambda **kw: load_instance_data(InstanceConfig(data=str(data), image_size=32).resolved(), **kw),
        "segment": lambda **kw: load_splits(
            SegmentConfig(data=str(data), model="unet").resolved(), own_size=True, **kw
        ),
    }[task]
    *whole, split = load()
    assert sorted(opened) == sorted(str(folder / n) for k in PARTS for n in split[k]) and set(opened.values()) == {1}
    for i, part in enumerate(PARTS):
        opened.clear()
        *sets, again = load(split={k: split[k] for k in PARTS}, parts=(part,), classes=whole[0].classes)
        assert sorted(opened) == sorted(str(folder / n) for n in split[part]) and set(opened.values()) == {1}
        assert [s is None for s in sets] == [j != i for j in range(3)] and again == split
        assert _same(_crowds(vars(sets[i])), _crowds(vars(whole[i]))), part


def _crowds(fields: dict) -> dict:
    """A set's fields with ``crowd`` per image: no crowd regions at all (``[]``, a VOC part without a
    difficult object) as each image's empty ones."""
    if fields.get("crowd") == [] and "boxes" in fields:
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        fields = {**fields, "crowd": [empty] * len(fields["boxes"])}
    return fields


def _add_a_damaged_photo_of_a_new_class(data, kind: str) -> None:
    """A photo added after the run trained, outside its split: its file is not an image, and its one
    object is of a class the run does not have (a new YOLO id, VOC name or COCO category)."""
    import json

    from test_detection_data import voc_xml

    if kind == "yolo":
        (data / "images" / "new.png").write_bytes(b"not an image")
        (data / "labels" / "new.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    elif kind == "voc":
        (data / "JPEGImages" / "new.jpg").write_bytes(b"not an image")
        (data / "Annotations" / "new.xml").write_text(voc_xml("new", [("bird", (5, 3, 14, 22), False)]))
    else:
        (data.parent / "images" / "new.png").write_bytes(b"not an image")
        doc = json.loads(data.read_text())
        doc["categories"].append({"id": 3, "name": "blue"})
        doc["images"].append({"id": 99, "file_name": "new.png", "width": 48, "height": 40})
        poly = [2, 2, 12, 2, 12, 12, 2, 12]
        doc["annotations"].append(
            {"id": 999, "image_id": 99, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0, "segmentation": [poly]}
        )
        data.write_text(json.dumps(doc))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "kind"),
    [("detect", "yolo"), ("detect", "voc"), ("detect", "coco"), ("instance", "coco"), ("segment", "coco")],
)
def test_resume_decodes_the_photos_of_the_runs_split_alone_with_its_classes(tmp_path, opened, task, kind):
    """`--resume` of a run on a YOLO or VOC folder or a COCO file reads the data with the run's classes,
    and decodes the photos of its split.json alone, once each (all three parts: the resumed run scores
    its test split at the end): a damaged photo of a new class, added to the data after the run
    trained, is neither decoded nor counted among the classes; split.json stays byte for byte."""
    import json

    from cnnkit.cli import main
    from cnnkit.engine.runfolder import read_info

    data, folder = _user_data(tmp_path / kind, kind)
    out = tmp_path / "run"
    argv = [task, "train", "--data", str(data), "--epochs", "1", "--batch-size", "2", "--threads", "1", "--quiet"]
    if task == "segment":
        argv += ["--model", "unet", "--width", "4", "--crop", "32"]
    else:
        argv += ["--model", "tiny", "--weights", "none", "--image-size", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    written = (out / "split.json").read_bytes()
    split, classes = json.loads(written), read_info(out / "model.safetensors")["classes"]
    _add_a_damaged_photo_of_a_new_class(data, kind)
    opened.clear()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert sorted(opened) == sorted(str(folder / n) for k in PARTS for n in split[k]) and set(opened.values()) == {1}
    assert (out / "split.json").read_bytes() == written
    assert read_info(out / "model.safetensors")["classes"] == classes

"""Detection data: Penn-Fudan / COCO / YOLO readers, their one-line errors, and box-moving augmentation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data.detection import (
    colour_jitter,
    hflip,
    letterbox,
    load_coco,
    load_pennfudan,
    load_yolo,
    pad_targets,
    read_pascal_annotation,
    scale_jitter,
)
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")

PASCAL = """# Compatible with PASCAL Annotation Version 1.00
Image filename : "PennFudanPed/PNGImages/{name}.png"
Image size (X x Y x C) : 40 x 30 x 3
Objects with ground truth : {n} {{ "PASpersonWalking" }}
# Top left pixel co-ordinates : (1, 1)
{boxes}
"""


def write_png(path: Path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, dtype=np.uint8)).save(path)


def pennfudan_folder(tmp_path, boxes=((1, 1, 10, 20),), n=None):
    root = tmp_path / "pf"
    write_png(root / "PNGImages" / "A.png")
    lines = "\n".join(
        f'Bounding box for object {j + 1} "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : ({a}, {b}) - ({c}, {d})'
        for j, (a, b, c, d) in enumerate(boxes)
    )
    (root / "Annotation").mkdir()
    (root / "Annotation" / "A.txt").write_text(PASCAL.format(name="A", n=len(boxes) if n is None else n, boxes=lines))
    return root


def test_pascal_boxes_are_one_based_inclusive(tmp_path):
    root = pennfudan_folder(tmp_path, boxes=((1, 1, 10, 20), (5, 6, 40, 30)))
    d = load_pennfudan(root)
    assert d.names == ["A.png"] and d.classes == ["person"] and d.images[0].shape == (3, 30, 40)
    assert d.boxes[0].tolist() == [[0, 0, 10, 20], [4, 5, 40, 30]] and d.labels[0].tolist() == [0, 0]


@pytest.mark.parametrize(
    "boxes, n, match",
    [
        (((1, 1, 41, 20),), None, r"A.txt 'Bounding box': box 0 .* outside its 40 x 30 image"),
        (((10, 1, 5, 20),), None, r"A.txt 'Bounding box': box 0 has x2 < x1"),
        (((1, 1, 10, 20),), 2, r"A.txt: 'Objects with ground truth' says 2 but 1"),
    ],
)
def test_pascal_errors_name_file_and_field(tmp_path, boxes, n, match):
    root = pennfudan_folder(tmp_path, boxes=boxes, n=n)
    with pytest.raises(CnnkitError, match=match):
        load_pennfudan(root)


def test_pascal_undecodable_names_file_and_fix(tmp_path):
    root = pennfudan_folder(tmp_path)
    (root / "Annotation" / "A.txt").write_bytes(b"\xff\xfe\x00bad\xc3\x28")
    with pytest.raises(CnnkitError) as info:
        load_pennfudan(root)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot read annotation {root / 'Annotation' / 'A.txt'}: 'utf-8' codec")
    assert message.endswith("or remove all three (PNGImages, PedMasks, Annotation)")
    assert "PennFudanPed.zip" in message


def test_pascal_unparsable_missing_image_and_empty(tmp_path):
    root = pennfudan_folder(tmp_path)
    (root / "Annotation" / "A.txt").write_text("garbage\n")
    with pytest.raises(CnnkitError, match=r"A.txt: no 'Image size"):
        load_pennfudan(root)
    root = pennfudan_folder(tmp_path / "2")
    with pytest.raises(CnnkitError, match=r"missing annotation .*B.txt for image B.png"):
        load_pennfudan(root, names=["B.png"])
    (root / "PNGImages" / "A.png").unlink()
    with pytest.raises(CnnkitError, match=r"missing image .*A.png"):
        load_pennfudan(root, names=["A.png"])
    (tmp_path / "3" / "PNGImages").mkdir(parents=True)
    with pytest.raises(CnnkitError, match="empty dataset"):
        load_pennfudan(tmp_path / "3")


def test_real_pennfudan_annotations(data_dir):
    from cnnkit.data.pennfudan import pennfudan_root, pennfudan_split

    root = pennfudan_root(data_dir)
    files = sorted((root / "Annotation").glob("*.txt"))
    counts = [len(read_pascal_annotation(f)[2]) for f in files]
    assert len(files) == 170 and sum(counts) == 423  # the data README's numbers
    split = pennfudan_split(root)
    assert (len(split["train"]), len(split["test"])) == (120, 50)
    d = load_pennfudan(root, names=split["test"][:2])
    assert d.names == ["FudanPed00002.png", "FudanPed00004.png"] and d.images[0].dtype == torch.uint8


def coco_folder(tmp_path, annotations, images=None):
    write_png(tmp_path / "a.png")
    data = {
        "images": images or [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json"


def test_coco_reader(tmp_path):
    path = coco_folder(
        tmp_path,
        [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 5]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30]},
        ],
    )
    d = load_coco(path)
    assert d.classes == ["dog", "cat"] and d.names == ["a.png"]
    assert d.boxes[0].tolist() == [[2, 3, 12, 8], [0, 0, 40, 30]] and d.labels[0].tolist() == [1, 0]


def test_a_coco_file_read_by_names_decodes_those_images_alone_with_a_runs_classes(tmp_path):
    """load_coco(names): those images alone (another may be gone), every record still checked;
    classes (a run's): each category taken by its name, and an object of a category the run lacks,
    in an image read, refused."""
    images = [{"id": i, "file_name": f"p{i}.png", "width": 40, "height": 30} for i in range(3)]
    boxes = [{"id": i + 1, "image_id": i, "category_id": 3 if i else 1, "bbox": [2, 3, 10, 5]} for i in range(3)]
    path = coco_folder(tmp_path, boxes, images)
    for i in range(3):
        write_png(tmp_path / "images" / f"p{i}.png")
    whole = load_coco(path)
    assert whole.classes == ["dog", "cat"] and [lab.tolist() for lab in whole.labels] == [[0], [1], [1]]
    (tmp_path / "images" / "p0.png").unlink()
    got = load_coco(path, names=["p2.png", "p1.png"], classes=["cat", "dog"])
    assert got.names == ["p2.png", "p1.png"] and got.classes == ["cat", "dog"]
    assert [lab.tolist() for lab in got.labels] == [[0], [0]] and torch.equal(got.images[1], whole.images[1])
    with pytest.raises(CnnkitError, match=r"images\[0\]: missing image .*p0.png"):
        load_coco(path)
    with pytest.raises(CnnkitError, match=r"ann.json has no image 'p9.png' in its 'images'; the run's split.json"):
        load_coco(path, names=["p1.png", "p9.png"])
    with pytest.raises(
        CnnkitError, match=r"annotations\[1\] is of category 'cat', none of the run's classes \['dog'\]"
    ):
        load_coco(path, names=["p1.png"], classes=["dog"])
    assert load_coco(path, names=["p1.png"], classes=["cat"]).labels[0].tolist() == [0]  # p0's dog is not read
    alone = load_coco(path, names=["p1.png"])  # without a run's classes: the file's, in category id order
    assert alone.classes == ["dog", "cat"] and alone.labels[0].tolist() == [1]


@pytest.mark.parametrize(
    "annotations, images, match",
    [
        (
            [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [35, 3, 10, 5]}],
            None,
            r"ann.json annotations 'bbox' of image 'a.png': box 0 .* outside",
        ),
        (
            [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [5, 3, -2, 5]}],
            None,
            r"annotations\[0\] field .bbox. has a negative width",
        ),
        ([{"id": 1, "image_id": 7, "category_id": 3, "bbox": "x"}], None, r"annotations\[0\] field 'bbox'"),
        ([{"id": 1, "image_id": 7, "bbox": [1, 1, 2, 2]}], None, r"annotations\[0\] field 'category_id'"),
        ([], [{"id": 7, "file_name": "nope.png", "width": 40, "height": 30}], r"missing image .*nope.png"),
        ([], [], "empty dataset"),
    ],
)
def test_coco_errors(tmp_path, annotations, images, match):
    path = coco_folder(tmp_path, annotations, images)
    if images == []:
        data = json.loads(path.read_text())
        data["images"] = []
        path.write_text(json.dumps(data))
    with pytest.raises(CnnkitError, match=match):
        load_coco(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CnnkitError, match="bad.json: not a readable COCO JSON"):
        load_coco(tmp_path / "bad.json")


def test_yolo_reader_and_errors(tmp_path):
    write_png(tmp_path / "images" / "a.png")
    write_png(tmp_path / "images" / "b.png")  # no label file: no objects
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.2\n\n0 0.25 0.5 0.5 1.0\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    d = load_yolo(tmp_path)
    assert d.classes == ["cat", "dog"] and d.names == ["a.png", "b.png"]
    assert d.boxes[0].tolist() == [[10, 12, 30, 18], [0, 0, 20, 30]] and d.labels[0].tolist() == [1, 0]
    assert d.boxes[1].shape == (0, 4)
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.5\n")
    with pytest.raises(CnnkitError, match=r"a.txt line 1: expected 'class cx cy w h'"):
        load_yolo(tmp_path)
    (tmp_path / "labels" / "a.txt").write_text("1 0.9 0.5 0.5 0.2\n")
    with pytest.raises(CnnkitError, match=r"a.txt 'cx cy w h': box 0 .* outside"):
        load_yolo(tmp_path)
    (tmp_path / "labels" / "a.txt").write_text("5 0.5 0.5 0.5 0.2\n")
    with pytest.raises(CnnkitError, match="uses class 5 but classes.txt/data.yaml names only 2"):
        load_yolo(tmp_path)
    (tmp_path / "labels" / "c.txt").write_text("0 0.5 0.5 0.5 0.2\n")
    with pytest.raises(CnnkitError, match=r"missing image for .*c.txt"):
        load_yolo(tmp_path)


def make_yolo(root, n=8):
    """A YOLO folder of n 40x30 photos with one box each, of class i % 2, and no classes.txt (the
    classes are counted from the label files)."""
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        write_png(root / "images" / f"y{i}.png")
        (root / "labels" / f"y{i}.txt").write_text(f"{i % 2} 0.4125 0.4 0.425 0.5\n")
    return root


def test_a_yolo_folder_read_by_names_keeps_the_classes_of_every_photo_or_the_runs(tmp_path):
    """load_yolo(names): those photos alone, in that order; without a classes.txt the classes are
    counted over the label files of every photo (class 2 only in y0 still counts), or are the given
    ones (a run's), whose ids bound the label rows; a stale label file of a photo not read is left be."""
    root = make_yolo(tmp_path)
    (root / "labels" / "y0.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    whole = load_yolo(root)
    assert whole.classes == ["0", "1", "2"]
    some = load_yolo(root, ["y3.png", "y1.png"])
    assert some.names == ["y3.png", "y1.png"] and some.classes == ["0", "1", "2"]
    assert [b.tolist() for b in some.boxes] == [whole.boxes[3].tolist(), whole.boxes[1].tolist()]
    (root / "images" / "y0.png").unlink()  # its label file stays
    run = load_yolo(root, ["y1.png"], classes=["a", "b", "c"])
    assert run.classes == ["a", "b", "c"] and run.labels[0].tolist() == [1]
    with pytest.raises(CnnkitError, match=r"missing image for .*y0.txt"):
        load_yolo(root)  # every photo read: the label file without its photo is refused
    with pytest.raises(CnnkitError, match=r"no image .*y0.png; the run's split.json names it"):
        load_yolo(root, ["y0.png"], classes=["a", "b", "c"])
    with pytest.raises(
        CnnkitError,
        match=r"y1.txt line 1: uses class 1 but the run has only 1 class \(ids 0..0\); give the run the folder",
    ):
        load_yolo(root, ["y1.png"], classes=["a"])


def test_a_folder_of_neither_layout_names_both(tmp_path):
    """A folder that is neither YOLO's images/ + labels/ nor VOC's JPEGImages/ + Annotations/."""
    write_png(tmp_path / "photos" / "a.png")
    with pytest.raises(CnnkitError, match=r"is not a YOLO folder \(expected .*labels\) nor a VOC folder"):
        load_yolo(tmp_path)


# ---------------------------------------------------------------- augmentation
def drawn(n=4, size=64):
    """Images with one filled rectangle each (value 1 on 0) and its box."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 3, size, size)
    boxes = []
    for i in range(n):
        x1, y1 = torch.randint(4, 30, (2,), generator=g).tolist()
        w, h = torch.randint(10, 28, (2,), generator=g).tolist()
        x[i, :, y1 : y1 + h, x1 : x1 + w] = 1
        boxes.append(torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float32))
    b, lab = pad_targets(boxes, [torch.zeros(1, dtype=torch.int64)] * n)
    return x, b, lab


def assert_box_on_pixels(x, boxes, labels, margin=1.5):
    for i in range(len(x)):
        if labels[i, 0] < 0:
            continue
        x1, y1, x2, y2 = boxes[i, 0].tolist()
        inner = x[i, 0, int(np.ceil(y1 + margin)) : int(y2 - margin), int(np.ceil(x1 + margin)) : int(x2 - margin)]
        assert inner.numel() > 0 and inner.min() > 0.95, (i, boxes[i, 0])
        outside = x[i, 0].clone()
        outside[
            max(0, int(y1 - margin)) : int(np.ceil(y2 + margin)), max(0, int(x1 - margin)) : int(np.ceil(x2 + margin))
        ] = 0
        assert outside.max() < 0.05, (i, boxes[i, 0])


def test_hflip_moves_boxes_with_pixels():
    x, b, lab = drawn()
    g = torch.Generator().manual_seed(1)
    fx, fb, fl = hflip(x, b, lab, g, p=0.5)
    assert not torch.equal(fx, x) and not torch.equal(fx, x.flip(-1))  # some flipped, some not
    assert_box_on_pixels(fx, fb, fl, margin=0)


def test_scale_jitter_moves_boxes_with_pixels():
    x, b, lab = drawn(n=8)
    g = torch.Generator().manual_seed(2)
    sx, sb, sl = scale_jitter(x, b, lab, g, scale=(0.5, 1.6))
    assert sx.shape == x.shape and (sl >= 0).sum() >= 4
    assert_box_on_pixels(sx, sb, sl)
    # boxes mostly pushed off the canvas become padding
    far = torch.tensor([[[0.0, 0.0, 64.0, 64.0]]]).expand(8, 1, 4)
    _, _, fl = scale_jitter(torch.ones(8, 3, 64, 64), far, lab, torch.Generator().manual_seed(3), scale=(3.0, 3.0))
    assert (fl == -1).all()


def test_colour_jitter_keeps_boxes_and_range():
    x, b, lab = drawn()
    x = x * 0.5 + 0.25
    cx, cb, cl = colour_jitter(x, b, lab, torch.Generator().manual_seed(4))
    assert torch.equal(cb, b) and cx.min() >= 0 and cx.max() <= 1 and not torch.equal(cx, x)


def test_letterbox_scales_boxes():
    img = torch.zeros(3, 30, 60, dtype=torch.uint8)
    img[:, 10:20, 30:50] = 255
    out, boxes, scale = letterbox(img, torch.tensor([[30.0, 10, 50, 20]]), 32)
    assert out.shape == (3, 32, 32) and scale == pytest.approx(32 / 60)
    assert boxes[0].tolist() == pytest.approx([16, 16 / 3, 80 / 3, 32 / 3], abs=1e-4)
    assert out[0, 16:32].sum() == 0  # padding below the image


def test_validation_and_test_images_are_letterboxed_to_image_size_times_test_scale(tmp_path):
    from cnnkit.tasks.detect.config import DetectConfig, config_from_dict, validate
    from cnnkit.tasks.detect.data import load_split_data
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.load import new_mask_detector

    images = [{"id": i, "file_name": f"p{i}.png", "width": 40, "height": 30} for i in range(6)]
    for i in range(6):
        write_png(tmp_path / f"p{i}.png")
    boxes = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 3, 20, 15]} for i in range(6)]
    (tmp_path / "ann.json").write_text(
        json.dumps({"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "dog"}]})
    )
    cfg = validate(DetectConfig(data=str(tmp_path / "ann.json"), image_size=64, test_scale=1.5).resolved())
    assert cfg.test_side() == 96
    tr, va, te, split = load_split_data(cfg)
    assert tr.images.shape[-2:] == (64, 64) and va.images.shape[-2:] == te.images.shape[-2:] == (96, 96)
    assert torch.allclose(va.scales, torch.tensor(96 / 40)) and torch.allclose(tr.scales, torch.tensor(64 / 40))
    assert torch.allclose(va.boxes[0][0], torch.tensor([4.0, 3.0, 24.0, 18.0]) * 2.4)
    for bad in (0.0, float("nan"), float("inf"), 5.0, 0.05):  # 0.05 x 320 px < 32
        with pytest.raises(CnnkitError, match="--test-scale must be a factor above 0 and at most 4"):
            validate(DetectConfig(data=str(tmp_path / "ann.json"), test_scale=bad).resolved())
    with pytest.raises(CnnkitError, match="--test-scale must be 1 on digit scenes"):
        validate(DetectConfig(data="digits", test_scale=1.5).resolved())
    assert DetectConfig(data="pennfudan").resolved().test_side() == 352  # the photos' default: 1.1 x 320
    # sides are multiples of 32: an odd-sized map moves EfficientNet-Lite's deeper grids
    assert [DetectConfig(data="pennfudan", test_scale=t).resolved().test_side() for t in (1.05, 1.15)] == [320, 384]
    with pytest.raises(
        CnnkitError, match=r"--image-size must be a multiple of 32, .* \(such as 288 or 320\); received 300"
    ):
        validate(DetectConfig(data="pennfudan", image_size=300).resolved())
    stored = {k: v for k, v in cfg.to_dict().items() if k != "test_scale"}  # a run from before the option
    assert config_from_dict(stored).test_side() == 64
    # what predict and export letterbox to: the test side
    inst = InstanceConfig(data=str(tmp_path / "ann.json"), model="tiny", weights=None, image_size=64, test_scale=1.5)
    _, info = new_mask_detector(inst.resolved(), ["dog"], 3)
    assert info["input_size"] == [3, 96, 96]


# ---------------------------------------------------------------- Pascal VOC XML
def voc_xml(stem, objects, size=(40, 30), extra=""):
    """VOC's annotation XML; ``objects`` as (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)."""
    rows = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
        # VOC's person layout: a part's own box inside the object, not the object's
        "<part><name>head</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></part>"
        "</object>"
        for n, b, d in objects
    )
    return (
        f"{extra}<annotation><folder>VOC2012</folder><filename>{stem}.jpg</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>{rows}</annotation>"
    )


def make_voc_boxes(root, n=8, lists=None):
    """n 40x30 photos with one dog (1-based box 5..14 x 3..22) each, a cat on the even ones, a
    difficult cat on photo 1; ``lists`` ``{"train": ids, ...}`` as ImageSets/Main."""
    ids = [f"2007_{i:06d}" for i in range(n)]
    (root / "Annotations").mkdir(parents=True)
    for i, stem in enumerate(ids):
        write_png(root / "JPEGImages" / f"{stem}.jpg")
        objects = [("dog", (5, 3, 14, 22), False)] + ([("cat", (20, 10, 40, 30), False)] if i % 2 == 0 else [])
        objects += [("cat", (1, 1, 8, 8), True)] if i == 1 else []
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem, objects))
    if lists:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for part, names in lists.items():
            (root / "ImageSets" / "Main" / f"{part}.txt").write_text("".join(f"{s}\n" for s in names))
    return ids


def test_a_voc_folder_reads_boxes_1_based_with_difficult_objects_ignored(tmp_path):
    from cnnkit.data.detection import load_voc

    ids = make_voc_boxes(tmp_path)
    d = load_voc(tmp_path)
    assert d.classes == ["cat", "dog"] and d.names == [f"{s}.jpg" for s in ids]
    assert d.boxes[0].tolist() == [[4, 2, 14, 22], [19, 9, 40, 30]]  # half-open pixels: xmin - 1 .. xmax
    assert d.labels[0].tolist() == [1, 0] and d.labels[1].tolist() == [1]  # the part's box is not an object
    assert d.crowd_boxes[1].tolist() == [[0, 0, 8, 8]] and d.crowd_labels[1].tolist() == [0]  # difficult
    assert [len(c) for c in d.crowd_boxes] == [0, 1, 0, 0, 0, 0, 0, 0]
    one = load_voc(tmp_path, [f"{ids[1]}.jpg"])  # a subset keeps the folder's classes
    assert one.classes == ["cat", "dog"] and one.labels[0].tolist() == [1]


def test_a_voc_folder_is_split_by_its_main_lists_and_says_so(tmp_path):
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data

    ids = make_voc_boxes(tmp_path / "a", lists={"train": [], "val": []})
    (tmp_path / "a" / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:6]))
    (tmp_path / "a" / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[6:]))
    cfg = DetectConfig(data=str(tmp_path / "a"), model="tiny", weights="none", image_size=64).resolved()
    tr, va, te, split = load_split_data(cfg)
    assert sorted(tr.names + va.names) == [f"{s}.jpg" for s in ids[:6]] and te.names == [f"{s}.jpg" for s in ids[6:]]
    assert split["source"].endswith("5 train, 1 val, 2 test")
    assert "val.txt (2) tests" in split["source"]
    tr2, _, te2, _ = load_split_data(cfg, {k: split[k] for k in ("train", "val", "test")})  # eval: the run's names
    assert tr2.names == tr.names and te2.names == te.names

    make_voc_boxes(tmp_path / "b")  # no lists: cnnkit's seeded split
    cfg = DetectConfig(data=str(tmp_path / "b"), model="tiny", weights="none", image_size=64).resolved()
    *_, split = load_split_data(cfg)
    assert "source" not in split and len(split["test"]) == 2


def test_a_voc_folder_read_with_a_runs_classes_reads_the_annotations_of_its_photos_alone(tmp_path):
    """load_voc(names, classes): only the named photos' annotations are read (another photo may be
    gone, its XML left), the labels index the given classes; an object of another class is refused."""
    from cnnkit.data.detection import load_voc

    ids = make_voc_boxes(tmp_path)
    whole = load_voc(tmp_path)
    (tmp_path / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    (tmp_path / "Annotations" / f"{ids[2]}.xml").write_text("<not xml")  # an annotation not read
    names = [f"{ids[3]}.jpg", f"{ids[1]}.jpg"]
    got = load_voc(tmp_path, names, classes=["bird", "cat", "dog"])
    assert got.names == names and got.classes == ["bird", "cat", "dog"]
    assert [lab.tolist() for lab in got.labels] == [[2], [2]] and got.crowd_labels[1].tolist() == [1]
    assert [b.tolist() for b in got.boxes] == [whole.boxes[3].tolist(), whole.boxes[1].tolist()]
    assert torch.equal(got.images[0], whole.images[3])
    with pytest.raises(CnnkitError, match=r"missing image for .*\.xml"):
        load_voc(tmp_path, names)  # the classes counted: every annotation read
    with pytest.raises(CnnkitError, match=rf"no image .*{ids[0]}.jpg; the run's split.json names it"):
        load_voc(tmp_path, [f"{ids[0]}.jpg"], classes=["cat", "dog"])
    with pytest.raises(
        CnnkitError, match=rf"{ids[1]}.xml: an object of class 'cat', none of the run's classes \['dog'\]"
    ):
        load_voc(tmp_path, names, classes=["dog"])


@pytest.mark.parametrize(
    "xml, message",
    [
        ('<!DOCTYPE a [<!ENTITY x "y">]>' + voc_xml("s", [("dog", (1, 1, 5, 5), False)]), "declares a DTD or entities"),
        ("<annotation><object>", "is not well-formed XML"),
        # the encoding the XML declaration names: unknown (a name of any length), or none expat reads
        (
            "<?xml version='1.0' encoding='" + "x" * 2000 + "'?><annotation/>",
            r"\(unknown encoding: xxx.* \.\.\.\); a VOC",
        ),
        ("<?xml version='1.0' encoding='utf-32'?><annotation/>", r"\(multi-byte encodings are not supported\); a VOC"),
        ("<?xml version='1.0' encoding='rot13'?><annotation/>", "'rot13' is not a text encoding"),
        ("<root/>", "not VOC's <annotation>"),
        (voc_xml("s", [("dog", (1, 1, "five", 5), False)]), r"<object> 0 <bndbox> <xmax> is 'five', not a number"),
        (voc_xml("s", [("dog", (9, 1, 5, 5), False)]), "xmax < xmin"),
        (voc_xml("s", [("", (1, 1, 5, 5), False)]), "has no <name>"),
        (voc_xml("s", [("dog", (1, 1, 5, 5), False)], size=(41, 30)), "<size> says 41 x 30 but s.jpg is 40 x 30"),
        (voc_xml("s", [("dog", (1, 1, 45, 5), False)]), "reaches outside its 40 x 30 image"),
    ],
)
def test_bad_voc_annotations_are_one_line_naming_the_file(tmp_path, xml, message):
    from cnnkit.data.detection import load_voc

    write_png(tmp_path / "JPEGImages" / "s.jpg")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "s.xml").write_text(xml)
    with pytest.raises(CnnkitError, match=message) as err:
        load_voc(tmp_path)
    assert "s.xml" in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 600


def test_a_voc_annotation_without_its_photo_is_named(tmp_path):
    from cnnkit.data.detection import load_voc

    make_voc_boxes(tmp_path, n=3)
    (tmp_path / "Annotations" / "lost.xml").write_text(voc_xml("lost", [("dog", (1, 1, 5, 5), False)]))
    with pytest.raises(CnnkitError, match=r"missing image for .*lost.xml"):
        load_voc(tmp_path)


def test_a_voc_folder_too_large_for_the_memory_is_refused_before_a_photo_is_read(tmp_path, monkeypatch):
    import cnnkit.errors as errors
    from cnnkit.data.detection import load_voc

    make_voc_boxes(tmp_path, n=3)
    monkeypatch.setattr(errors, "memory_available", lambda: 1000)  # three 40 x 30 photos need 10,800 bytes
    with pytest.raises(CnnkitError, match=r"reading the 3 photos of .* needs 10\.8 KB, more than"):
        load_voc(tmp_path)


def test_a_yolo_folder_read_with_a_runs_classes_must_declare_those_names_in_that_order(tmp_path):
    """load_yolo(classes=): a folder's classes.txt or data.yaml must name the run's classes, in their
    order (an id means the class at its place); a folder that declares none reads by the ids alone; a
    run that counted its ids (no names declared when it trained) refuses names declared since."""
    root = make_yolo(tmp_path)
    assert load_yolo(root, ["y1.png"], classes=["cat", "dog"]).labels[0].tolist() == [1]  # no names declared
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    d = load_yolo(root, ["y1.png", "y2.png"], classes=["cat", "dog"])
    assert d.classes == ["cat", "dog"] and [t.tolist() for t in d.labels] == [[1], [0]]
    (root / "data.yaml").write_text("names: [dog, cat]\n")
    with pytest.raises(
        CnnkitError,
        match=r"data.yaml: the classes \['dog', 'cat'\] are not the run's \['cat', 'dog'\] \(id 0 is 'dog' here, "
        r"'cat' in the run\), and label ids index the run's; put the run's names back in data.yaml in that order, "
        r"or train a new run",
    ):
        load_yolo(root, ["y1.png"], classes=["cat", "dog"])
    (root / "classes.txt").write_text("cat\ndog\n")  # classes.txt comes first
    assert load_yolo(root, ["y1.png"], classes=["cat", "dog"]).classes == ["cat", "dog"]
    with pytest.raises(CnnkitError, match=r"the run trained without a list of names: move classes.txt away, or"):
        load_yolo(root, ["y1.png"], classes=["0", "1"])

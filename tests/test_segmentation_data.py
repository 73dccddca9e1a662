"""Segmentation data: the one Penn-Fudan split, its person and instance masks, digit scenes with 11
classes, and a user's image + mask folder with its one-line errors naming the file."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data.imageset import ImageSet
from cnnkit.data.pennfudan import (
    pennfudan_images,
    pennfudan_root,
    pennfudan_split,
    split_names,
)
from cnnkit.data.segmentation import (
    digit_segmentation,
    mask_folder,
    pennfudan_segmentation,
)
from cnnkit.errors import CnnkitError
from cnnkit.tasks.segment.config import SegmentConfig
from cnnkit.tasks.segment.data import load_splits


def test_split_names_is_seeded_disjoint_and_complete():
    names = [f"img{i:03d}.png" for i in range(30)]
    a = split_names(names, 20, seed=0)
    assert len(a["train"]) == 20 and len(a["test"]) == 10
    assert set(a["train"]).isdisjoint(a["test"]) and set(a["train"]) | set(a["test"]) == set(names)
    assert split_names(list(reversed(names)), 20, seed=0) == a  # order of the listing does not matter
    assert split_names(names, 20, seed=1) != a
    with pytest.raises(CnnkitError, match="n_train=30"):
        split_names(names, 30)


def test_pennfudan_split_and_masks(data_dir):
    root = pennfudan_root(data_dir)
    split = pennfudan_split(root)
    assert len(split["train"]) == 120 and len(split["test"]) == 50
    assert sorted(split["train"] + split["test"]) == pennfudan_images(root)
    s = pennfudan_segmentation("test", data_dir, limit=3)
    assert s.names == split["test"][:3] and s.classes == ["background", "person"]
    for image, mask, inst in zip(s.images, s.masks, s.instances):
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and mask.shape == inst.shape == image.shape[1:]
        assert torch.equal(mask, (inst > 0).to(torch.uint8))
        ids = inst.unique().tolist()
        assert ids == list(range(len(ids)))  # 0, then pedestrians 1..n
    small = pennfudan_segmentation("test", data_dir, max_side=200, limit=1)
    assert max(small.images[0].shape[1:]) == 200 and small.masks[0].shape == small.images[0].shape[1:]
    assert set(small.instances[0].unique().tolist()) <= set(s.instances[0].unique().tolist())
    with pytest.raises(CnnkitError, match="no Penn-Fudan data"):
        pennfudan_root(data_dir / "mnist")


def test_a_pennfudan_folder_missing_photos_is_said_with_its_fix(tmp_path):
    """Fewer photos than the fixed split trains on: the folder and its fix, not "a split needs
    0 < n_train < 3" (which names neither)."""
    (tmp_path / "PNGImages").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "PNGImages" / f"p{i}.png")
    with pytest.raises(CnnkitError) as info:
        pennfudan_split(tmp_path)
    assert str(info.value).startswith(
        f"{tmp_path / 'PNGImages'} holds 3 photos; the Penn-Fudan split trains on 120 of its 170 and tests on the rest: replace"
    )


def test_digit_scenes_have_eleven_classes_from_the_ink():
    digits = ImageSet(torch.zeros(10, 1, 28, 28, dtype=torch.uint8), torch.arange(10), [str(d) for d in range(10)])
    digits.images[:, :, 8:20, 10:18] = 200  # a block of ink on every digit
    s = digit_segmentation("train", n=6, canvas=64, seed=3, source=digits, scale=(0.8, 1.2))
    assert s.images.shape == (6, 1, 64, 64) and s.masks.shape == (6, 64, 64) and s.num_classes == 11
    assert s.classes[0] == "background" and s.classes[1:] == [str(d) for d in range(10)]
    ink = s.images[:, 0] >= 64
    assert torch.equal(s.masks > 0, ink)  # labelled exactly where the ink is
    assert int(s.masks.max()) <= 10


def _write(root, name, image_size, mask, mode="L", image_dir="images", mask_dir="masks"):
    (root / image_dir).mkdir(exist_ok=True)
    (root / mask_dir).mkdir(exist_ok=True)
    Image.fromarray(np.full((*image_size[::-1], 3), 128, np.uint8)).save(root / image_dir / f"{name}.jpg")
    im = Image.fromarray(mask)
    if mode == "P":
        im = im.convert("P")
        im.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
        im.putdata(mask.flatten().tolist())
    elif mode == "RGB":
        im = im.convert("RGB")
    im.save(root / mask_dir / f"{name}.png")


def test_mask_folder_palette_grey_and_ignore(tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 2:5] = 2
    m[5, :] = 255
    _write(tmp_path, "a", (8, 6), m, "P")
    _write(tmp_path, "b", (8, 6), np.ones((6, 8), np.uint8), "L")
    s = mask_folder(tmp_path)
    assert s.names == ["a.jpg", "b.jpg"] and s.num_classes == 3 and s.classes == ["background", "1", "2"]
    assert torch.equal(s.masks[0], torch.from_numpy(m)) and s.images[0].shape == (3, 6, 8)
    tr, te = (mask_folder(tmp_path, num_classes=3, split=p, test_fraction=0.5) for p in ("train", "test"))
    assert len(tr) == len(te) == 1 and tr.names != te.names
    voc = tmp_path / "voc"
    voc.mkdir()
    _write(voc, "x", (8, 6), m, "P", "JPEGImages", "SegmentationClass")
    assert mask_folder(voc, classes=["bg", "cat", "dog"]).classes == ["bg", "cat", "dog"]


def test_a_voc_folder_reads_the_photos_that_have_a_mask(tmp_path):
    """VOC's JPEGImages/ holds every photo of the challenge, SegmentationClass/ the masks of some of them."""
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 2:5] = 1
    for name in ("2007_000032", "2007_000039", "2008_000001"):
        _write(tmp_path, name, (8, 6), m, "P", "JPEGImages", "SegmentationClass")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "JPEGImages" / "2007_000027.jpg")  # boxes only
    s = mask_folder(tmp_path)
    assert s.names == ["2007_000032.jpg", "2007_000039.jpg", "2008_000001.jpg"] and s.num_classes == 2
    with pytest.raises(CnnkitError, match="missing mask file .*2007_000027.png"):  # named by a split: refused
        mask_folder(tmp_path, names=["2007_000027.jpg"])
    (tmp_path / "JPEGImages").rename(tmp_path / "images")
    (tmp_path / "SegmentationClass").rename(tmp_path / "masks")
    with pytest.raises(CnnkitError, match="missing mask file .*2007_000027.png"):  # images/ + masks/: a mask each
        mask_folder(tmp_path)


@pytest.mark.parametrize("case", ["size", "range", "missing", "rgb"])
def test_mask_folder_errors_name_the_file(tmp_path, case):
    m = np.zeros((6, 8), np.uint8)
    _write(tmp_path, "ok", (8, 6), m)
    if case == "size":
        _write(tmp_path, "bad", (9, 6), m)
    elif case == "range":
        m[0, 0] = 7
        _write(tmp_path, "bad", (8, 6), m)
    elif case == "rgb":
        _write(tmp_path, "bad", (8, 6), m, "RGB")
    else:
        _write(tmp_path, "bad", (8, 6), m)
        (tmp_path / "masks" / "bad.png").unlink()
    with pytest.raises(CnnkitError) as err:
        mask_folder(tmp_path, num_classes=2)
    msg = str(err.value)
    assert "\n" not in msg and "bad" in msg and "damaged" not in msg  # the cause, not a guess at one
    assert {
        "size": "size of its image",
        "range": "label 7, outside the 2 classes",
        "missing": "missing mask file",
        "rgb": "palette (P) or grey (L)",
    }[case] in msg


def test_classes_are_read_from_the_masks_at_their_own_size(tmp_path):
    """A class seen only as a small object survives ``max_side``: the shrunk training photos and the
    test photos at their own size count the same classes (a gap would refuse the folder as damaged)."""
    for i in range(4):
        m = np.zeros((60, 60), np.uint8)
        m[5:35, 5:35], m[40:58, 40:58] = 1, 3
        if i == 0:
            m[50:52, 2:4] = 2  # class 2: a 2 x 2 object in one photo, gone at a twelfth of the size
        _write(tmp_path, f"p{i}", (60, 60), m)
    own, small = mask_folder(tmp_path), mask_folder(tmp_path, max_side=5)
    assert own.num_classes == small.num_classes == 4 and small.masks[0].shape == (5, 5)
    assert 2 not in small.masks[0].unique().tolist()  # the object itself is gone; its class is not


def test_black_and_white_masks_are_refused_not_trained_as_one_class(tmp_path):
    """0/255 masks draw the objects in the ignore index: read as they are, they hold one class and a
    run scores mIoU 1 on nothing; refused, saying 255 is ignored and to draw the objects as 1."""
    for i in range(3):
        m = np.zeros((6, 8), np.uint8)
        m[1:4, 2:6] = 255
        _write(tmp_path, f"p{i}", (8, 6), m, "L")
    with pytest.raises(CnnkitError, match=r"hold no class but the background 0; .*p0.png\) are 255") as err:
        mask_folder(tmp_path)
    assert "\n" not in str(err.value) and "255 -> 1" in str(err.value)
    for i in range(3):  # all background, no 255 either: refused too
        _write(tmp_path, f"p{i}", (8, 6), np.zeros((6, 8), np.uint8), "L")
    with pytest.raises(CnnkitError, match="hold no class but the background 0: a mask marks"):
        mask_folder(tmp_path)
    assert mask_folder(tmp_path, num_classes=2).num_classes == 2  # classes given: a folder of background is read


VOC_PALETTE = [v for c in [(0, 0, 0), (128, 0, 0), (0, 128, 0)] for v in c] + [0] * (3 * 252) + [224, 224, 192]


def make_voc(root, n=10, lists=None, test_masks=True):
    """A tiny VOC folder: n 16x16 photos ``2007_00000i.jpg``, palette masks (class 1 or 2 in a square with a
    255 "void" border, VOC's colours), one detection-only photo, and ``ImageSets/Segmentation`` lists
    (``{"train": ids, ...}``; default: 6 train, 4 val and their trainval). ``test_masks`` False: the
    photos of test.txt have no mask, as VOC withholds them."""
    ids = [f"2007_{i:06d}" for i in range(n)]
    lists = lists if lists is not None else {"train": ids[:6], "val": ids[6:], "trainval": ids}
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i, stem in enumerate(ids + ["2008_000001"]):
        Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        if stem == "2008_000001" or (not test_masks and stem in lists.get("test", [])):
            continue  # a detection-only photo, or a test photo whose mask VOC withholds
        m = np.zeros((16, 16), np.uint8)
        m[4:10, 3:9] = 1 + i % 2
        m[3, 3:9] = m[10, 3:9] = 255  # VOC's void border
        im = Image.fromarray(m, "P")
        im.putpalette(VOC_PALETTE)
        im.save(root / "SegmentationClass" / f"{stem}.png")
    for part, names in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{part}.txt").write_text("".join(f"{s}\n" for s in names))
    return ids


def test_a_voc_folder_is_split_by_its_official_lists(tmp_path):
    """train.txt trains (a validation part carved from it), val.txt tests; with a test.txt whose
    photos have masks (VOC2007's), val.txt validates and test.txt tests; without lists: no official split."""
    from cnnkit.data.pennfudan import carve_validation
    from cnnkit.data.segmentation import voc_split

    ids = make_voc(tmp_path / "a")
    split, note = voc_split(tmp_path / "a")
    assert split == {"train": [f"{s}.jpg" for s in ids[:6]], "test": [f"{s}.jpg" for s in ids[6:]]}
    assert "train.txt (6 photos)" in note and "val.txt (4) tests" in note
    parts = carve_validation(split)
    assert sorted(parts["train"] + parts["val"]) == split["train"] and parts["test"] == split["test"]
    s = mask_folder(tmp_path / "a", names=split["train"])
    assert s.num_classes == 3 and int((s.masks[0] == 255).sum()) == 12  # the void border kept as 255
    cfg = SegmentConfig(data=str(tmp_path / "a"), model="unet").resolved()
    train, val, test, parts = load_splits(cfg)  # what `segment train` splits by and writes to split.json
    assert sorted(train.names + val.names) == split["train"] and test.names == split["test"] == parts["test"]
    assert parts["source"].endswith("5 train, 1 val, 4 test")

    ids = make_voc(tmp_path / "b", lists={"train": ids[:5], "val": ids[5:8], "test": ids[8:]})
    split, note = voc_split(tmp_path / "b")
    assert [len(split[k]) for k in ("train", "val", "test")] == [5, 3, 2] and "test.txt (2) tests" in note

    make_voc(tmp_path / "c", lists={"train": ids[:5], "val": ids[5:8], "test": ids[8:]}, test_masks=False)
    split, note = voc_split(tmp_path / "c")  # VOC2012's test.txt: no masks, so val.txt tests
    assert set(split) == {"train", "test"} and len(split["test"]) == 3 and "without masks" in note

    make_voc(tmp_path / "d", lists={})
    assert voc_split(tmp_path / "d") is None  # no lists: cnnkit's own seeded split
    (tmp_path / "e").mkdir()
    _write(tmp_path / "e", "x", (8, 6), np.zeros((6, 8), np.uint8))
    assert voc_split(tmp_path / "e") is None  # images/ + masks/: not VOC


@pytest.mark.parametrize(
    "lists, message",
    [
        ({"train": ["2007_000000"]}, r"holds train.txt but no val.txt"),
        (
            {"train": ["2007_000000", "2007_000001", "2007_000000"], "val": ["2007_000009"]},
            r"train.txt line 3: 2007_000000 is listed twice \(line 1\)",
        ),
        (
            {"train": ["2007_000000", "2007_000099"], "val": ["2007_000009"]},
            r"train.txt line 2: no photo .*2007_000099.jpg",
        ),
        (
            {"train": ["2007_000000", "2008_000001"], "val": ["2007_000009"]},
            r"train.txt lists 2008_000001 but there is no mask",
        ),
        (
            {"train": ["2007_000000", "2007_000001"], "val": ["2007_000001"]},
            r"2007_000001 is in both train.txt and val.txt",
        ),
        (
            {"train": ["2007_000000"], "val": ["2007_000001"], "test": ["2007_000000"]},
            r"2007_000000 is in both train.txt and test.txt",
        ),
        (
            {"train": ["2007_000000"], "val": ["2007_000001"], "trainval": ["2007_000000"]},
            r"2007_000001 is in train.txt or val.txt but not in trainval",
        ),
        (
            {"train": ["2007_000000 1"], "val": ["2007_000001"]},
            r"train.txt line 1: '2007_000000 1' is not one image id",
        ),
        ({"train": [], "val": ["2007_000001"]}, r"train.txt lists no images"),
    ],
)
def test_bad_voc_lists_are_one_line_naming_the_list(tmp_path, lists, message):
    from cnnkit.data.segmentation import voc_split

    make_voc(tmp_path, lists=lists)
    with pytest.raises(CnnkitError, match=message) as err:
        voc_split(tmp_path)
    assert "\n" not in str(err.value)


def test_voc_names_name_a_voc_folders_classes_and_only_a_voc_folders(tmp_path):
    from dataclasses import replace

    from cnnkit.data.voc import VOC_CLASSES

    make_voc(tmp_path / "voc")
    cfg = SegmentConfig(data=str(tmp_path / "voc"), model="unet").resolved()
    assert load_splits(cfg)[0].classes == ["background", "1", "2"]  # 1..K, K the largest label
    train, val, test, _ = load_splits(replace(cfg, voc_names=True))
    assert train.classes == test.classes == ["background", *VOC_CLASSES] and train.num_classes == 21
    (tmp_path / "e").mkdir()
    _write(tmp_path / "e", "x", (8, 6), np.zeros((6, 8), np.uint8))
    with pytest.raises(CnnkitError, match="--voc-names names the classes of a VOC folder"):
        load_splits(replace(cfg, data=str(tmp_path / "e"), voc_names=True))


def _coco_file(root, background_name="bird"):
    """A small COCO file: photos with overlapping polygon and RLE objects of categories 7, 2 and 5
    (out of id order) and a crowd region in every other photo."""
    import json

    from pycocotools import mask as mask_utils

    (root / "images").mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(3)
    cats = [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": background_name}]
    images, anns = [], []

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        return {"size": r["size"], "counts": r["counts"].decode()}

    for i in range(4):
        h, w = 20 + 3 * i, 25 + 2 * i
        Image.fromarray(g.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        images.append({"id": i + 1, "file_name": f"images/p{i}.png", "height": h, "width": w})
        for k in range(3):
            x0, y0 = g.uniform(0, w - 8), g.uniform(0, h - 8)
            x1, y1 = g.uniform(x0 + 4, w), g.uniform(y0 + 4, h)
            if k % 2:
                m = np.zeros((h, w), bool)
                m[int(y0) : int(y1), int(x0) : int(x1)] = True
                seg = rle(m)
            else:
                seg = [[x0, y0, x1, y0, (x0 + x1) / 2, y1]]
            box = [x0, y0, x1 - x0, y1 - y0]
            cat = int(g.choice([7, 2, 5]))
            anns.append({"image_id": i + 1, "category_id": cat, "bbox": box, "iscrowd": 0, "segmentation": seg})
        if i % 2 == 0:
            m = np.zeros((h, w), bool)
            m[: h // 3, : w // 2] = True
            box = [0, 0, w // 2, h // 3]
            anns.append({"image_id": i + 1, "category_id": 2, "bbox": box, "iscrowd": 1, "segmentation": rle(m)})
    for j, a in enumerate(anns):
        a.update(id=j + 1, area=1.0)
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_a_coco_file_is_painted_as_pycocotools_masks_it(tmp_path):
    """Class maps against pycocotools' annToMask: crowd regions 255, then the objects by decreasing
    area (a smaller one on top), each its category's index in id order (2, 5, 7 -> 1, 2, 3)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from cnnkit.data.detection import load_coco
    from cnnkit.data.segmentation import coco_segmentation

    path = _coco_file(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = COCO(str(path))
    s = coco_segmentation(load_coco(path, masks=True))
    assert s.classes == ["background", "dog", "bird", "cat"]
    label = {cid: i + 1 for i, cid in enumerate(sorted(ref.getCatIds()))}
    for name, mask in zip(s.names, s.masks):
        im = next(im for im in ref.dataset["images"] if im["file_name"] == name)
        want = np.zeros((im["height"], im["width"]), np.uint8)
        anns = ref.loadAnns(ref.getAnnIds(imgIds=im["id"]))
        for a in anns:
            if a["iscrowd"]:
                want[ref.annToMask(a) > 0] = 255
        objects = [(ref.annToMask(a), label[a["category_id"]]) for a in anns if not a["iscrowd"]]
        for m, c in sorted(objects, key=lambda o: -int(o[0].sum())):
            want[m > 0] = c
        assert np.array_equal(mask.numpy(), want), name
    assert any((m == 255).any() for m in s.masks)


def test_a_coco_category_named_background_is_refused(tmp_path):
    """Its IoU and class 0's would be reported under one name, the one hiding the other."""
    from cnnkit.data.detection import load_coco
    from cnnkit.data.segmentation import coco_segmentation

    coco = load_coco(_coco_file(tmp_path, background_name="background"), masks=True)
    with pytest.raises(CnnkitError, match="category named 'background', the name of class 0") as err:
        coco_segmentation(coco)
    assert "\n" not in str(err.value)


def test_a_class_only_in_the_test_photos_is_one_of_the_folders_classes(tmp_path):
    """The classes are those of every mask of the folder: a class whose only photo the seeded draw puts in
    the test split is a class (there is no flag to give their number), on the same split as before."""
    for i in range(5):
        m = np.zeros((6, 8), np.uint8)
        m[1:3, 2:5] = 1 + i % 2
        _write(tmp_path, f"p{i}", (8, 6), m)
    cfg = SegmentConfig(data=str(tmp_path), model="unet").resolved()
    test_photo = load_splits(cfg)[2].names[0]
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 2:5], m[4, 0] = 1, 3
    _write(tmp_path, test_photo[:-4], (8, 6), m)  # class 3 in the test photo only
    train, val, test, parts = load_splits(cfg)
    assert train.classes == val.classes == test.classes == ["background", "1", "2", "3"]
    assert test.names == [test_photo] and int(test.masks[0].max()) == 3
    assert load_splits(cfg, own_size=True, split=parts)[0].num_classes == 4  # eval re-reads the same classes


def test_a_voc_folder_holding_vocs_class_ids_points_to_voc_names(tmp_path):
    """VOC's masks hold its class ids (cat 8, dog 12): a folder of some of its classes has gaps, refused
    saying --voc-names reads them."""
    make_voc(tmp_path)
    for p in (tmp_path / "SegmentationClass").glob("*.png"):
        m = np.array(Image.open(p))
        m[(m == 1) | (m == 2)] += 7  # 8 and 9
        im = Image.fromarray(m, "P")
        im.putpalette(VOC_PALETTE)
        im.save(p)
    cfg = SegmentConfig(data=str(tmp_path), model="unet").resolved()
    with pytest.raises(CnnkitError, match="no mask holds 1, 2, 3, 4, 5 ...: .*--voc-names") as err:
        load_splits(cfg)
    assert "\n" not in str(err.value)
    from dataclasses import replace

    assert load_splits(replace(cfg, voc_names=True))[0].num_classes == 21

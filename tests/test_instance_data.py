"""A user's instance data: COCO segmentations (polygons, uncompressed and compressed RLE) decoded without
pycocotools and compared pixel by pixel with pycocotools' own ``annToMask``, VOC's SegmentationObject +
SegmentationClass folders, the hostile cases as one line naming the file and the annotation, and
``cnnkit instance train|eval|predict`` end to end on tiny synthetic data of both kinds."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from cnnkit.cli import main
from cnnkit.data.cocomask import segmentation_mask
from cnnkit.data.detection import load_coco
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 40, 48
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (3 * 251) + [224, 224, 192]


def _rle_counts(m: np.ndarray) -> list[int]:
    """A mask's uncompressed COCO counts (column-major runs, zeros first), computed here by hand."""
    flat = m.T.flatten().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _shapes(rng, n_images: int = 6):
    """Photos of 1-3 quadrilaterals each: ``[(image (H, W, 3) uint8, [(polygon, class 1 or 2), ...]), ...]``."""
    out = []
    for _ in range(n_images):
        img = (rng.random((H, W, 3)) * 60).astype(np.uint8)
        objs = []
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, W - 16), rng.uniform(0, H - 14)
            sw, sh = rng.uniform(8, 16), rng.uniform(8, 14)
            poly = [
                x0,
                y0,
                x0 + sw,
                y0 + rng.uniform(0, 3),
                x0 + sw * 0.7,
                y0 + sh,
                x0 + rng.uniform(0, 2),
                y0 + sh * 0.8,
            ]
            objs.append(([round(v, 2) for v in poly], int(rng.integers(1, 3))))
        out.append((img, objs))
    return out


def make_coco(root: Path, n_images: int = 6, seed: int = 0) -> Path:
    """A COCO file over PNG photos whose objects are polygons, uncompressed RLE and compressed RLE in
    turn, plus one crowd region (compressed RLE) on the first photo."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (img, objs) in enumerate(_shapes(rng, n_images)):
        for j, (poly, cls) in enumerate(objs):
            m = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([poly], H, W))).astype(bool)
            img[m] = (200, 40, 40) if cls == 1 else (40, 200, 40)
            kind = (i + j) % 3
            if kind == 0:
                seg = [poly]
            elif kind == 1:
                seg = {"counts": _rle_counts(m), "size": [H, W]}
            else:
                seg = {
                    "counts": coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode(),
                    "size": [H, W],
                }
            x, y, bw, bh = coco_mask.toBbox(coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))).tolist()
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls, "bbox": [x, y, bw, bh],
                         "segmentation": seg, "iscrowd": 0, "area": float(m.sum())})  # fmt: skip
        Image.fromarray(img).save(root / "images" / f"p{i}.png")
        images.append({"id": i + 1, "file_name": f"p{i}.png", "width": W, "height": H})
    crowd = np.zeros((H, W), bool)
    crowd[30:38, 2:12] = True
    anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "bbox": [2, 30, 10, 8], "iscrowd": 1,
                 "segmentation": {"counts": coco_mask.encode(np.asfortranarray(crowd.astype(np.uint8)))["counts"].decode(),
                                  "size": [H, W]}})  # fmt: skip
    path = root / "annotations.json"
    cats = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def make_voc(root: Path, n_images: int = 6, lists: bool = False, seed: int = 1) -> Path:
    """A VOC folder: JPEG photos, palette SegmentationClass and SegmentationObject PNGs (objects with VOC's
    255 void outline), a detection-only photo without PNGs, and (``lists``) ImageSets/Segmentation."""
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
        (root / d).mkdir(parents=True, exist_ok=True)
    stems = []
    for i, (img, objs) in enumerate(_shapes(rng, n_images)):
        cls_map, obj_map = Image.new("P", (W, H), 0), Image.new("P", (W, H), 0)
        for j, (poly, cls) in enumerate(objs):
            pts = list(zip(poly[::2], poly[1::2]))
            ImageDraw.Draw(cls_map).polygon(pts, fill=cls, outline=255)
            ImageDraw.Draw(obj_map).polygon(pts, fill=j + 1, outline=255)
        for m in (cls_map, obj_map):
            m.putpalette(VOC_PALETTE)
        c = np.asarray(cls_map)
        img[c == 1], img[c == 2] = (200, 40, 40), (40, 200, 40)
        stem = f"2007_{i:06d}"
        Image.fromarray(img).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        cls_map.save(root / "SegmentationClass" / f"{stem}.png")
        obj_map.save(root / "SegmentationObject" / f"{stem}.png")
        stems.append(stem)
    Image.fromarray(img).save(root / "JPEGImages" / "2008_000099.jpg")  # a detection photo: no PNGs
    if lists:
        d = root / "ImageSets" / "Segmentation"
        d.mkdir(parents=True)
        (d / "train.txt").write_text("\n".join(stems[:4]) + "\n")
        (d / "val.txt").write_text("\n".join(stems[4:]) + "\n")
    return root


def _ann_to_mask(path: Path) -> tuple[COCO, dict]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    return coco, {a["id"]: coco.annToMask(a).astype(bool) for a in coco.dataset["annotations"]}


# ----------------------------------------------------------------------------- the decoders against pycocotools


def test_polygons_equal_pycocotools_pixel_for_pixel():
    """Random polygons on random image sizes, inside and reaching out of the image, with integer and
    half-pixel vertices and repeated vertices: every pixel equals pycocotools' rasterisation."""
    rng = np.random.default_rng(0)
    differing = total = 0
    for trial in range(400):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        polys = []
        for _ in range(int(rng.integers(1, 3))):
            n = int(rng.integers(3, 14))
            kind = trial % 4
            if kind == 0:  # reaching up to a third of the image past its edges
                pts = np.stack([rng.uniform(-0.3 * w, 1.3 * w, n), rng.uniform(-0.3 * h, 1.3 * h, n)], 1)
            elif kind == 1:  # on the pixel grid
                pts = np.stack([rng.integers(0, w + 1, n), rng.integers(0, h + 1, n)], 1).astype(float)
            elif kind == 2:  # half pixels
                pts = np.stack([np.round(rng.uniform(0, w, n) * 2) / 2, np.round(rng.uniform(0, h, n) * 2) / 2], 1)
            else:  # a repeated vertex
                pts = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1)
                pts[1] = pts[0]
            polys.append(pts.flatten().tolist())
        ref = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polys, h, w))).astype(bool)
        got = segmentation_mask(polys, h, w, "x")
        differing += int((ref != got).sum())
        total += ref.size
    assert total > 400_000 and differing == 0


def test_rle_equals_pycocotools_exactly():
    rng = np.random.default_rng(1)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        rle = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        compressed = {"counts": rle["counts"].decode(), "size": [h, w]}
        np.testing.assert_array_equal(segmentation_mask(compressed, h, w, "x"), coco_mask.decode(rle).astype(bool))
        plain = {"counts": _rle_counts(m), "size": [h, w]}
        ref = coco_mask.decode(coco_mask.frPyObjects(plain, h, w)).astype(bool)
        np.testing.assert_array_equal(ref, m)
        np.testing.assert_array_equal(segmentation_mask(plain, h, w, "x"), ref)


def test_load_coco_masks_equal_ann_to_mask(tmp_path):
    path = make_coco(tmp_path)
    coco, ref = _ann_to_mask(path)
    d = load_coco(path, masks=True)
    assert [len(m) for m in d.masks] == [len(b) for b in d.boxes] and len(d.crowd_masks) == len(d)
    kinds = set()
    for i, name in enumerate(d.names):
        iid = next(im["id"] for im in coco.dataset["images"] if im["file_name"] == name)
        anns = [a for a in coco.dataset["annotations"] if a["image_id"] == iid]
        plain = [a for a in anns if not a["iscrowd"]]
        crowd = [a for a in anns if a["iscrowd"]]
        for a, m in zip(plain, d.masks[i]):
            assert m.dtype == torch.bool and torch.equal(m, torch.from_numpy(ref[a["id"]]))
            kinds.add("polygon" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__)
        for a, m in zip(crowd, d.crowd_masks[i]):
            assert torch.equal(m, torch.from_numpy(ref[a["id"]]))
        assert len(d.crowd_masks[i]) == len(crowd)
    assert kinds == {"polygon", "list", "str"}  # all three encodings were compared
    assert load_coco(path).masks == []  # detection reads the same file without masks


# ----------------------------------------------------------------------------- hostile COCO segmentations


def _one(tmp_path, segmentation, **ann) -> Path:
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    a = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], **ann}
    if segmentation is not ...:
        a["segmentation"] = segmentation
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}], "annotations": [a],
           "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))  # NaN is written as NaN, which Python's json (and so cnnkit) reads
    return path


@pytest.mark.parametrize(
    ("segmentation", "phrase"),
    [
        ([[1, 1, 10, 1, 10, 10, 4]], "polygon 0 has 7 coordinates, an odd number"),
        ([[1, 1, 10, 10]], "polygon 0 has 2 point(s); a polygon has at least 3"),
        ([[1, 1, 10, 1, 10, 10], [1, 1]], "polygon 1 has 1 point(s)"),
        ([[1, 1, math.nan, 1, 10, 10]], "not a finite number: nan"),
        ([[1, 1, 1e300, 1, 10, 10]], "farther outside its 48 x 40 image"),
        ([[0, 0, 48, 0] * 2000 + [0, 40]], "outline is"),
        ([[1, "a", 10, 1, 10, 10]], "must be a list of numbers"),
        ([], "'segmentation' is an empty list"),
        ([1, 1, 10, 1, 10, 10], "polygon 0 must be a list of numbers"),
        ({"counts": [10, 5], "size": [H, W]}, "RLE counts sum to 15, not the 40 x 48 = 1,920 pixels"),
        ({"counts": [1920], "size": [40, 47]}, "RLE 'size' [40, 47] is not its image's [height, width] [40, 48]"),
        ({"counts": [0], "size": [10**6, 10**6]}, "RLE 'size' [1000000, 1000000] is not its image's"),
        ({"counts": [1920], "size": "40x48"}, "RLE 'size' must be [height, width]"),
        ({"counts": [-5, 1925], "size": [H, W]}, "RLE 'counts' must be whole numbers >= 0"),
        ({"counts": [1.5, 1918.5], "size": [H, W]}, "RLE 'counts' must be whole numbers >= 0"),
        ({"counts": "0\x7f", "size": [H, W]}, "the characters '0' to 'o'"),
        ({"counts": "PP", "size": [H, W]}, "ends inside a number"),
        ({"counts": "_" * 10**5 + "0", "size": [H, W]}, "a number of over 8 characters"),
        ({"counts": "050F", "size": [H, W]}, "negative run -5"),
        ({"counts": "0", "size": [H, W]}, "RLE counts sum to 0"),
        ({"size": [H, W]}, "'segmentation' must be a list of polygons"),
        (..., "has no 'segmentation'"),
    ],
)
def test_hostile_segmentations_are_one_line_naming_file_and_annotation(tmp_path, segmentation, phrase):
    path = _one(tmp_path, segmentation)
    with pytest.raises(CnnkitError) as err:
        load_coco(path, masks=True)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: annotations[0]") and phrase in text, text


def test_a_crowd_segmentation_is_checked_too_and_boxes_alone_are_unaffected(tmp_path):
    path = _one(tmp_path, {"counts": [5], "size": [H, W]}, iscrowd=1)
    with pytest.raises(CnnkitError, match=r"annotations\[0\]: RLE counts sum to 5"):
        load_coco(path, masks=True)
    assert len(load_coco(path).crowd_boxes[0]) == 1  # detection never reads the segmentation


def test_hostile_coco_through_the_cli_is_exit_2_with_one_line(tmp_path, capsys):
    path = _one(tmp_path, [[1, 1, 10, 1, 10, 10, 4]])
    out = tmp_path / "run"
    argv = ["instance", "train", "--data", path, "--model", "tiny", "--weights", "none", "--out", out, "--quiet"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "annotations[0]" in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------- VOC folders


def test_voc_objects_take_the_class_their_pixels_carry(tmp_path):
    from cnnkit.data.segmentation import mask_folder
    from cnnkit.tasks.instance.data import instance_classes

    root = make_voc(tmp_path / "voc")
    seg = mask_folder(root, instances=True)
    assert seg.names == sorted(p.name for p in (root / "JPEGImages").glob("2007_*.jpg"))  # not the detection photo
    assert seg.classes == ["background", "1", "2"]
    for name, inst, cls in zip(seg.names, seg.instances, seg.masks):
        stem = Path(name).stem
        raw_obj = np.asarray(Image.open(root / "SegmentationObject" / f"{stem}.png"))
        raw_cls = np.asarray(Image.open(root / "SegmentationClass" / f"{stem}.png"))
        assert (raw_obj == 255).any()
        np.testing.assert_array_equal(inst.numpy(), np.where(raw_obj == 255, 0, raw_obj))  # void is no object
        labels = instance_classes(inst, cls, stem)
        for v in range(1, int(raw_obj[raw_obj < 255].max()) + 1):
            if (raw_obj == v).any():  # a later object may cover an earlier one whole
                assert labels[v - 1] + 1 == np.bincount(raw_cls[raw_obj == v]).argmax()


def test_voc_object_with_two_classes_or_none_is_refused(tmp_path):
    from cnnkit.tasks.instance.data import instance_classes

    inst = torch.tensor([[1, 1, 2, 0]], dtype=torch.uint8)
    with pytest.raises(CnnkitError, match=r"x.png: object 1's pixels carry the classes \[1, 3\]"):
        instance_classes(inst, torch.tensor([[1, 3, 2, 0]], dtype=torch.uint8), "x.png")
    with pytest.raises(CnnkitError, match="object 2's pixels carry no class"):
        instance_classes(inst, torch.tensor([[1, 1, 255, 0]], dtype=torch.uint8), "x.png")
    assert instance_classes(inst, torch.tensor([[4, 255, 2, 0]], dtype=torch.uint8), "x.png").tolist() == [3, 1]


def test_voc_split_names_voc_classes_and_refuses_a_missing_object_png(tmp_path):
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data

    root = make_voc(tmp_path / "voc", lists=True)
    cfg = InstanceConfig(data=str(root), model="tiny", weights=None, image_size=64).resolved()
    tr, va, te, split = load_instance_data(cfg)
    assert split["test"] == ["2007_000004.jpg", "2007_000005.jpg"] and len(tr) + len(va) == 4
    assert "ImageSets/Segmentation" in split["source"] and tr.classes == ["1", "2"]
    from dataclasses import replace

    named = load_instance_data(replace(cfg, voc_names=True))[0]
    assert named.classes[:2] == ["aeroplane", "bicycle"] and len(named.classes) == 20
    (root / "SegmentationObject" / "2007_000005.png").unlink()
    with pytest.raises(CnnkitError, match=r"val.txt lists 2007_000005 but there is no mask .*SegmentationObject"):
        load_instance_data(cfg)
    coco = make_coco(tmp_path / "coco")
    with pytest.raises(CnnkitError, match="--voc-names names the classes of a VOC folder"):
        load_instance_data(replace(cfg, data=str(coco), voc_names=True))
    with pytest.raises(CnnkitError, match="is not pennfudan, digits, a COCO JSON file or a Pascal VOC folder"):
        load_instance_data(replace(cfg, data=str(tmp_path)))


def test_a_voc_folders_eval_reads_the_part_it_scores_with_the_runs_classes(tmp_path):
    """`instance eval` of a VOC-folder run builds the scored part from its photos alone, its masks checked
    against the run's classes: the training photos gone (class 2 in them only), the test part is the
    one the whole read gives."""
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data

    root = make_voc(tmp_path / "voc", n_images=8)
    cfg = InstanceConfig(data=str(root), model="tiny", weights=None, image_size=64).resolved()
    tr, va, te, split = load_instance_data(cfg)
    assert len(te) == 2 and tr.classes == ["1", "2"]
    masks = [root / "SegmentationClass" / name.replace(".jpg", ".png") for name in split["test"]]
    for path in masks:  # no class 2 in the test photos: only the run can say there are two classes
        Image.open(path).point(lambda v: 1 if v == 2 else v).save(path)
    te = load_instance_data(cfg, split)[2]
    for name in split["train"] + split["val"]:
        (root / "JPEGImages" / name).unlink()
    got = load_instance_data(cfg, split, parts=("test",), classes=["1", "2"])
    assert got[:2] == (None, None) and got[3] == split and got[2].classes == ["1", "2"]
    assert all(torch.equal(getattr(got[2], k), getattr(te, k)) for k in ("images", "boxes", "labels", "masks"))
    bad = np.array(Image.open(masks[0]))
    bad[0, 0] = 3
    Image.fromarray(bad).save(masks[0])
    with pytest.raises(CnnkitError, match="holds label 3, outside the 3 classes"):
        load_instance_data(cfg, split, parts=("test",), classes=["1", "2"])


# ----------------------------------------------------------------------------- crowd regions in mask AP


def test_mask_ap_ignores_a_detection_in_a_crowd_region():
    from cnnkit.metrics.instance import mask_evaluate

    gt, crowd, extra = (torch.zeros(1, 20, 20, dtype=torch.bool) for _ in range(3))
    gt[0, 2:8, 2:8] = True
    crowd[0, 10:20, 10:20] = True
    extra[0, 12:18, 12:18] = True  # a second detection, inside the crowd region
    pred = {"masks": torch.cat([gt, extra]), "scores": torch.tensor([0.5, 0.9]), "labels": torch.tensor([0, 0])}
    target = {"masks": gt, "labels": torch.tensor([0])}
    assert mask_evaluate([pred], [target])["AP"] < 0.6  # the unmatched detection ranks first: a false positive
    with_crowd = {**target, "crowd_masks": crowd, "crowd_labels": torch.tensor([0])}
    assert mask_evaluate([pred], [with_crowd])["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the commands end to end


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_instance_train_eval_predict_on_user_data(tmp_path, capsys, kind):
    data = make_coco(tmp_path / "coco") if kind == "coco" else make_voc(tmp_path / "voc", lists=True)
    out = tmp_path / "run"
    argv = ["instance", "train", "--data", data, "--model", "tiny", "--weights", "none", "--epochs", "1",
            "--batch-size", "2", "--image-size", "64", "--threads", "1", "--out", out]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    split = json.loads((out / "split.json").read_text())
    if kind == "voc":
        assert f"split: the official lists of {data / 'ImageSets' / 'Segmentation'}" in printed
        assert split["test"] == ["2007_000004.jpg", "2007_000005.jpg"] and "source" in split
    else:
        assert "split:" not in printed and "source" not in split
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(
        p.name
        for p in (data.parent / "images" if kind == "coco" else data / "JPEGImages").glob("*")
        if "2008" not in p.name
    )
    assert main(["instance", "eval", str(out), "--format", "json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["images"] == len(split["test"]) and m["split"] == "test" and 0 <= m["mask_AP"] <= 1
    # eval reads the photos it scores alone, with the run's classes: the training ones may go
    for name in split["train"]:
        (data.parent / "images" / name if kind == "coco" else data / "JPEGImages" / name).unlink()
    assert main(["instance", "eval", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == m
    assert main(["instance", "eval", str(out), "--split", "val", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == len(split["val"])
    photo = next((data.parent / "images" if kind == "coco" else data / "JPEGImages").iterdir())
    assert (
        main(["instance", "predict", str(out), str(photo), "--out-dir", str(tmp_path / "p"), "--format", "json"]) == 0
    )
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert Path(row["png"]).is_file() and set(row["labels"]) <= ({"red", "green"} if kind == "coco" else {"1", "2"})


def test_masks_that_would_not_fit_in_memory_are_refused_before_one_is_decoded(tmp_path, monkeypatch):
    import cnnkit.errors

    path = _one(tmp_path, [[1, 1, 10, 1, 10, 10]])
    monkeypatch.setattr(cnnkit.errors, "memory_available", lambda: 1000)  # 48 x 40 bytes do not fit in 1,000
    with pytest.raises(CnnkitError, match=r"bad.json: the masks of its 1 annotations needs 1.9 KB, more than the"):
        load_coco(path, masks=True)


def test_coco_sets_keep_the_files_boxes_and_crowd_masks_for_evaluation(tmp_path):
    from dataclasses import replace

    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data

    path = make_coco(tmp_path)
    cfg = InstanceConfig(data=str(path), model="tiny", weights=None, image_size=64).resolved()
    sets = load_instance_data(cfg)[:3]
    d = load_coco(path, masks=True)
    for s in sets:
        assert s.classes == ["red", "green"] and len(s.crowd) == len(s)
        for i, name in enumerate(s.names):
            k = d.names.index(name)
            t, mt = s.targets()[i], s.mask_targets()[i]
            torch.testing.assert_close(t["boxes"], d.boxes[k])  # the file's boxes, back in the photo's pixels
            assert torch.equal(mt["masks"], d.masks[k]) and torch.equal(mt["crowd_masks"], d.crowd_masks[k])
            assert len(t["crowd_boxes"]) == len(mt["crowd_labels"]) == (1 if name == "p0.png" else 0)
    tr = load_instance_data(replace(cfg, subset=2))[0]
    assert len(tr) == len(tr.crowd) == len(tr.originals) == 2


# ----------------------------------------------------------------------------- one folder, one split in every task


def _every_task_folder(root: Path, n: int) -> Path:
    """A VOC folder every task reads: n 16x16 photos, each with its class and object PNGs (one square of
    class 1 or 2) and its box annotation."""
    for d in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stem, m = f"p{i:03d}", np.zeros((16, 16), np.uint8)
        m[4:10, 3:9] = 1 + i % 2
        Image.fromarray(np.full((16, 16, 3), 40 * (i % 5), np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        Image.fromarray(m).save(root / "SegmentationClass" / f"{stem}.png")
        Image.fromarray((m > 0).astype(np.uint8)).save(root / "SegmentationObject" / f"{stem}.png")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>16</width><height>16</height></size><object><name>c{1 + i % 2}</name>"
            "<bndbox><xmin>4</xmin><ymin>5</ymin><xmax>9</xmax><ymax>10</ymax></bndbox></object></annotation>"
        )
    return root


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 9, 13, 16])
def test_segment_detect_and_instance_split_one_folder_alike(tmp_path, n):
    """A segmenter, a detector and an instance segmenter trained on one folder test on the same photos:
    one seeded draw (seeded_split: 20% held out, at least 1) at every size, and one refusal below 3 photos."""
    from cnnkit.data.pennfudan import carve_validation, split_names
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.data import load_instance_data
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    root = _every_task_folder(tmp_path / "voc", n)
    loads = {
        "segment": lambda: load_splits(SegmentConfig(data=str(root), model="unet", seed=3).resolved()),
        "detect": lambda: load_split_data(DetectConfig(data=str(root), model="tiny", seed=3).resolved()),
        "instance": lambda: load_instance_data(InstanceConfig(data=str(root), model="tiny", seed=3).resolved()),
    }
    if n < 3:
        for load in loads.values():
            with pytest.raises(CnnkitError, match=rf"holds {n} image\(s\): a train/val/test split needs at least 3"):
                load()
        return
    n_test = max(1, round(0.2 * n))
    want = carve_validation(split_names([f"p{i:03d}.jpg" for i in range(n)], n - n_test, seed=3))
    for task, load in loads.items():
        split = load()[3]
        assert {k: split[k] for k in ("train", "val", "test")} == want, task


# ----------------------------------------------------------------------------- segment: a COCO file as class maps


def test_segment_paints_a_coco_files_objects_as_classes_on_instances_split(tmp_path):
    """`segment --data annotations.json`: each object's annToMask painted with its category + 1,
    larger objects first, crowd regions 255 where no object is; the photos split as detect and
    instance split the same file, the test photos at their own size."""
    from cnnkit.tasks.detect.config import DetectConfig
    from cnnkit.tasks.detect.data import load_split_data
    from cnnkit.tasks.segment.config import SegmentConfig
    from cnnkit.tasks.segment.data import load_splits

    path = make_coco(tmp_path, n_images=8)
    coco, ref = _ann_to_mask(path)
    cfg = SegmentConfig(data=str(path), model="unet", width=4).resolved()
    train, val, test, split = load_splits(cfg)
    assert train.classes == ["background", "red", "green"]
    det_split = load_split_data(DetectConfig(data=str(path), model="tiny", weights="none").resolved())[3]
    assert {k: split[k] for k in ("train", "val", "test")} == {k: det_split[k] for k in ("train", "val", "test")}
    for s in (train, val, test):
        for name, mask in zip(s.names, s.masks):
            iid = next(im["id"] for im in coco.dataset["images"] if im["file_name"] == name)
            anns = [a for a in coco.dataset["annotations"] if a["image_id"] == iid]
            want = np.zeros((H, W), np.uint8)
            for a in anns:
                if a["iscrowd"]:
                    want[ref[a["id"]]] = 255
            for a in sorted((a for a in anns if not a["iscrowd"]), key=lambda a: -int(ref[a["id"]].sum())):
                want[ref[a["id"]]] = a["category_id"]
            np.testing.assert_array_equal(mask.numpy(), want)
    assert (255 == test.masks[0]).any() or any((255 == m).any() for m in train.masks + val.masks)  # the crowd


@pytest.mark.slow
def test_segment_trains_and_scores_a_coco_file(tmp_path, capsys):
    """`segment` trains on a COCO file, and `eval` decodes the photos of the part it scores alone: with
    every training and validation photo gone, the test split scores as before."""
    path, out = make_coco(tmp_path, n_images=8), tmp_path / "run"
    argv = ["segment", "train", "--data", path, "--model", "unet", "--width", "4", "--epochs", "1", "--batch-size", "2"]
    assert main([str(a) for a in [*argv, "--crop", "32", "--threads", "1", "--out", out, "--quiet"]]) == 0
    split = json.loads((out / "split.json").read_text())
    assert main(["segment", "eval", str(out), "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["images"] == len(split["test"]) and list(before["iou"]) == ["background", "red", "green"]
    for name in split["train"] + split["val"]:
        (tmp_path / "images" / name).unlink()
    assert main(["segment", "eval", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == before
    assert main(["segment", "eval", str(out), "--split", "val"]) == 2  # the photos it scores must be there
    err = capsys.readouterr().err.strip()
    assert f"missing image {tmp_path / 'images' / split['val'][0]}" in err and "\n" not in err

"""The readers of a user's data against the Penn-Fudan reader, on real photos: the same photos written
as a COCO instances file (uncompressed RLE masks) and as a Pascal VOC folder (XML boxes,
SegmentationObject and SegmentationClass PNGs) read back to the same boxes, instance masks and class
maps as ``--data pennfudan`` gives."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data.detection import load_coco, load_pennfudan, load_voc
from cnnkit.data.pennfudan import pennfudan_root
from cnnkit.data.segmentation import coco_segmentation, mask_folder, pennfudan_segmentation

NAMES = ["FudanPed00001.png", "FudanPed00010.png", "PennPed00011.png", "PennPed00058.png"]


def _rle(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a bool mask: run lengths down the columns, zeros first."""
    flat = m.T.reshape(-1).astype(np.uint8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))  # where a run ends (2: the end)
    runs = np.diff(np.concatenate([[0], edges]))
    return ([0] if flat[0] else []) + runs.tolist()


def _palette_png(values: np.ndarray, path) -> None:
    im = Image.fromarray(values.astype(np.uint8), "P")
    im.putpalette([0, 0, 0] + [v for k in range(1, 256) for v in (k * 37 % 256, k * 91 % 256, k * 53 % 256)])
    im.save(path)


@pytest.fixture(scope="module")
def formats(data_dir, tmp_path_factory):
    root = pennfudan_root(data_dir)
    pf = load_pennfudan(root, NAMES)
    seg = pennfudan_segmentation("all", data_dir, names=NAMES)
    out = tmp_path_factory.mktemp("formats")
    coco, voc = out / "coco", out / "voc"
    (coco / "images").mkdir(parents=True)
    for d in ("JPEGImages", "Annotations", "SegmentationObject", "SegmentationClass"):
        (voc / d).mkdir(parents=True)
    images, anns = [], []
    for i, (name, boxes, inst) in enumerate(zip(NAMES, pf.boxes, seg.instances)):
        shutil.copy(root / "PNGImages" / name, coco / "images" / name)
        shutil.copy(root / "PNGImages" / name, voc / "JPEGImages" / name)
        ids = inst.numpy()
        h, w = ids.shape
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        objects = ""
        for k, (x1, y1, x2, y2) in enumerate(boxes.tolist(), 1):
            m = ids == k
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": {"counts": _rle(m), "size": [h, w]}})  # fmt: skip
            objects += (
                f"<object><name>person</name><difficult>0</difficult><bndbox><xmin>{int(x1) + 1}</xmin>"
                f"<ymin>{int(y1) + 1}</ymin><xmax>{int(x2)}</xmax><ymax>{int(y2)}</ymax></bndbox></object>"
            )
        stem = name.rsplit(".", 1)[0]
        (voc / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
        _palette_png(ids, voc / "SegmentationObject" / f"{stem}.png")
        _palette_png(ids > 0, voc / "SegmentationClass" / f"{stem}.png")
    cats = [{"id": 1, "name": "person"}]
    (coco / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return pf, seg, coco / "annotations.json", voc


def test_a_coco_file_reads_back_penn_fudans_boxes_masks_and_class_maps(formats):
    pf, seg, coco, _ = formats
    d = load_coco(coco, masks=True)
    assert d.names == NAMES and d.classes == ["person"]
    for i in range(len(NAMES)):
        assert torch.equal(d.images[i], pf.images[i]) and torch.equal(d.boxes[i], pf.boxes[i])
        want = torch.stack([seg.instances[i] == k for k in range(1, len(pf.boxes[i]) + 1)])
        assert torch.equal(d.masks[i], want)
    maps = coco_segmentation(d)
    assert maps.classes == ["background", "person"]
    assert all(torch.equal(a, b) for a, b in zip(maps.masks, seg.masks))


def test_a_voc_folder_reads_back_penn_fudans_boxes_instances_and_class_maps(formats):
    pf, seg, _, voc = formats
    d = load_voc(voc)
    assert d.names == sorted(NAMES) and d.classes == ["person"]
    order = [NAMES.index(n) for n in d.names]
    for i, j in enumerate(order):
        assert torch.equal(d.images[i], pf.images[j]) and torch.equal(d.boxes[i], pf.boxes[j])
    s = mask_folder(voc, names=NAMES, instances=True)
    assert s.classes == ["background", "1"]  # VOC's classes are named 1..K unless --voc-names
    for i in range(len(NAMES)):
        assert torch.equal(s.masks[i], seg.masks[i]) and torch.equal(s.instances[i], seg.instances[i])

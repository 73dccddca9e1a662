"""Annotation files are data: every COCO, YOLO and mask record is checked, failures are one line naming
the file and the record, and a fuzz of the three readers finds no traceback."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnkit.data.detection import load_coco, load_yolo
from cnnkit.data.segmentation import mask_folder
from cnnkit.errors import CnnkitError

W, H = 8, 6


def _photo(path, w=W, h=H):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _coco() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 3, 2]},
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 8, 6], "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("coco")
    for n in ("a.png", "b.png"):
        _photo(d / n)
    _photo(d.parent / "outside.png")
    return d


def _load(coco_dir, data, text: str | None = None):
    path = coco_dir / "ann.json"
    path.write_text(text if text is not None else json.dumps(data))
    return load_coco(path)


def test_a_good_coco_file_reads(coco_dir):
    d = _load(coco_dir, _coco())
    assert d.classes == ["dog", "cat"] and d.names == ["a.png", "b.png"]
    assert d.boxes[0].tolist() == [[1.0, 1.0, 4.0, 3.0]] and d.labels[0].tolist() == [0]
    assert d.labels[1].tolist() == [1]


def _set(path: str, value):
    """An edit of the good COCO file: ``path`` like 'images.0.width' set to ``value``."""

    def edit(data):
        *keys, last = path.split(".")
        node = data
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value
        return data

    return edit


COCO_CASES = {
    "width 1e999": (_set("images.0.width", 1e999), "images[0] field 'width' must be a whole number"),
    "width NaN": (_set("images.0.width", float("nan")), "images[0] field 'width'"),
    "width past the float range": (_set("images.0.width", 10**400), "images[0] field 'width' must be a whole number"),
    "bbox past the float range": (_set("annotations.0.bbox", [1, 1, 10**400, 2]), "field 'bbox' must be 4 finite"),
    "negative height": (_set("images.1.height", -6), "images[1] field 'height' must be a whole number"),
    "huge size": (_set("images.0.width", 10**7), "images[0] field 'width'"),
    "size past the decode bound": (
        lambda d: _set("images.0.height", 100_000)(_set("images.0.width", 100_000)(d)),
        "says 100000 x 100000 pixels, more than",
    ),
    "image not an object": (_set("images.0", 7), "images[0] is 7, not an object"),
    "annotation a list": (_set("annotations.1", [1, 2]), "annotations[1] is [1, 2], not an object"),
    "category a string": (_set("categories.0", "cat"), "categories[0] is 'cat', not an object"),
    "bbox a string": (_set("annotations.0.bbox", "1234"), "annotations[0] field 'bbox' must be 4 finite numbers"),
    "bbox of 3": (_set("annotations.0.bbox", [1, 2, 3]), "annotations[0] field 'bbox' must be 4"),
    "bbox NaN": (_set("annotations.0.bbox", [1, float("nan"), 3, 2]), "annotations[0] field 'bbox'"),
    "bbox bool": (_set("annotations.0.bbox", [True, 1, 3, 2]), "annotations[0] field 'bbox'"),
    "bbox negative width": (_set("annotations.0.bbox", [4, 1, -3, 2]), "negative width or height"),
    "bbox outside": (_set("annotations.0.bbox", [4, 1, 30, 2]), "reaches outside its 8 x 6 image"),
    "duplicate image id": (_set("images.1.id", 1), "images[1] repeats image id 1"),
    "duplicate file name": (_set("images.1.file_name", "a.png"), "images[1] repeats file_name 'a.png'"),
    "duplicate category": (_set("categories.1.id", 5), "categories[1] repeats category id 5"),
    "string image id": (_set("images.0.id", "1"), "images[0] field 'id' must be an integer id; received '1' (str)"),
    "string annotation image_id": (
        _set("annotations.0.image_id", "1"),
        "annotations[0] field 'image_id' must be an integer id; received '1'",
    ),
    "image_id of no image": (_set("annotations.0.image_id", 9), "annotations[0] 'image_id' 9 names no entry"),
    "category_id of no category": (_set("annotations.0.category_id", 4), "'category_id' 4 names no entry"),
    "missing category_id": (lambda d: (d["annotations"][0].pop("category_id"), d)[1], "field 'category_id' is missing"),
    "iscrowd a string": (_set("annotations.0.iscrowd", "no"), "'iscrowd' must be 0 or 1"),
    "absolute file_name": (_set("images.0.file_name", "/etc/passwd"), "'/etc/passwd' is an absolute path"),
    "windows file_name": (_set("images.0.file_name", "C:\\x.png"), "is an absolute path"),
    "climbing file_name": (_set("images.0.file_name", "../outside.png"), "climbs out of the data folder"),
    "file_name a number": (_set("images.0.file_name", 3), "field 'file_name' must be a file name"),
    "images missing": (lambda d: (d.pop("images"), d)[1], "field 'images' is missing or not a list"),
    "missing image file": (_set("images.0.file_name", "gone.png"), "missing image"),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_coco_records_are_checked_one_line_naming_file_and_record(coco_dir, case):
    edit, message = COCO_CASES[case]
    with pytest.raises(CnnkitError) as err:
        _load(coco_dir, edit(copy.deepcopy(_coco())))
    text = str(err.value)
    assert message in text and "\n" not in text and "ann.json" in text, text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"images": [', "not a readable COCO JSON file"),
        ("\xff\xfe", "not a readable COCO JSON file"),
    ],
)
def test_coco_text_that_is_not_json(coco_dir, text, message):
    path = coco_dir / "ann.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CnnkitError, match=message) as err:
        load_coco(path)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def yolo_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("yolo")
    _photo(d / "images" / "a.png")
    _photo(d / "images" / "b.png")
    (d / "labels").mkdir()
    return d


def _yolo(tmp_path, yolo_template, labels: dict[str, bytes], extra: dict[str, bytes] | None = None):
    import shutil

    root = tmp_path / "y"
    shutil.copytree(yolo_template, root)
    for name, data in labels.items():
        (root / "labels" / name).write_bytes(data)
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return load_yolo(root)


def test_a_good_yolo_folder_reads(tmp_path, yolo_template):
    d = _yolo(tmp_path, yolo_template, {"a.txt": b"1 0.5 0.5 0.5 0.5\n"}, {"data.yaml": b"names: {0: cat, 1: dog}\n"})
    assert d.classes == ["cat", "dog"] and d.labels[0].tolist() == [1] and d.boxes[1].shape == (0, 4)
    assert d.boxes[0].tolist() == [[2.0, 1.5, 6.0, 4.5]]


YOLO_CASES = {
    "not UTF-8": ({"a.txt": b"0 0.5 0.5 \xff\xfe 0.1\n"}, None, "a.txt: not UTF-8 text"),
    "class 200000 undeclared": ({"a.txt": b"200000 0.5 0.5 0.1 0.1\n"}, None, "a.txt line 1: uses class 200000 but no"),
    "class beyond classes.txt": (
        {"b.txt": b"0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n"},
        {"classes.txt": b"cat\ndog\n"},
        "b.txt line 2: uses class 2 but classes.txt/data.yaml names only 2",
    ),
    "NaN coordinate": ({"a.txt": b"0 nan 0.5 0.1 0.1\n"}, None, "a.txt line 1: expected 'class cx cy w h'"),
    "inf size": ({"a.txt": b"0 0.5 0.5 inf 0.1\n"}, None, "line 1: expected"),
    "negative size": ({"a.txt": b"0 0.5 0.5 -0.2 0.1\n"}, None, "line 1: expected"),
    "six columns": ({"a.txt": b"0 0.5 0.5 0.1 0.1 0.3\n"}, None, "line 1: expected"),
    "negative class": ({"a.txt": b"-1 0.5 0.5 0.1 0.1\n"}, None, "line 1: expected"),
    "box outside": ({"a.txt": b"0 0.9 0.5 0.5 0.1\n"}, None, "reaches outside"),
    "mixed yaml keys": ({}, {"data.yaml": b"names: {0: cat, one: dog}\n"}, "needs the integer keys 0..1"),
    "yaml keys with a gap": ({}, {"data.yaml": b"names: {0: cat, 5: dog}\n"}, "needs the integer keys"),
    "yaml names nested": ({}, {"data.yaml": b"names: [[a, b], c]\n"}, "must be a list of class names"),
    "yaml not a mapping": ({}, {"data.yaml": b"- a\n- b\n"}, "needs a field 'names'"),
    "yaml broken": ({}, {"data.yaml": b"names: [a, b\n"}, "not valid YAML"),
    "yaml deep": ({}, {"data.yaml": b"names: " + b"[" * 1_100 + b"]" * 1_100}, "data.yaml"),
    "classes.txt not UTF-8": ({}, {"classes.txt": b"cat\n\xff\n"}, "classes.txt: not UTF-8"),
    "classes.txt empty": ({}, {"classes.txt": b"\n\n"}, "names 0 classes"),
    "label without image": ({"c.txt": b"0 0.5 0.5 0.1 0.1\n"}, None, "missing image for"),
}


@pytest.mark.parametrize("case", list(YOLO_CASES))
def test_yolo_rows_and_class_names_are_checked(tmp_path, yolo_template, case):
    labels, extra, message = YOLO_CASES[case]
    with pytest.raises(CnnkitError) as err:
        _yolo(tmp_path, yolo_template, labels, extra)
    text = str(err.value)
    assert message in text and "\n" not in text, text


def _mask_folder(root, masks: list[np.ndarray]):
    for i, m in enumerate(masks):
        _photo(root / "images" / f"p{i}.png", m.shape[1], m.shape[0])
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(m.astype(np.uint8), "L").save(root / "masks" / f"p{i}.png")
    return root


def test_a_stray_mask_value_is_refused_naming_file_and_value(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[2:4, 2:5] = 1
    stray = m.copy()
    stray[0, 0] = 7
    root = _mask_folder(tmp_path, [m, stray, m])
    with pytest.raises(CnnkitError, match=r"p1\.png holds label 7 but no mask holds 2, 3, 4, 5, 6") as err:
        mask_folder(root)
    assert "\n" not in str(err.value)
    ignore = m.copy()
    ignore[0, :] = 255  # 255 is "ignore", never a class
    ok = mask_folder(_mask_folder(tmp_path / "ok", [m, ignore, m]))
    assert ok.num_classes == 2
    three = m.copy()
    three[5, 5] = 2
    assert mask_folder(_mask_folder(tmp_path / "three", [m, three])).num_classes == 3


def test_a_coco_file_with_string_ids_is_refused_by_detect_train(coco_dir, tmp_path, capsys):
    from cnnkit.cli import main

    data = _coco()
    for a in data["annotations"]:
        a["image_id"] = str(a["image_id"])
    (coco_dir / "strings.json").write_text(json.dumps(data))
    code = main(["detect", "train", "--data", str(coco_dir / "strings.json"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "annotations[0] field 'image_id' must be an integer id" in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- fuzz
def fuzz(n: int):
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


ODD = st.one_of(
    st.integers(-3, 12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["1", "a.png", "../b.png", "/a.png", "b.png", "", "1234"]),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(-2, 9), st.floats(allow_nan=True)), max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)
PATHS = [
    f"{part}.{i}.{k}"
    for part, n, keys in (
        ("images", 2, ("id", "file_name", "width", "height")),
        ("annotations", 2, ("image_id", "category_id", "bbox", "iscrowd")),
        ("categories", 2, ("id", "name")),
    )
    for i in range(n)
    for k in keys
] + ["images.0", "annotations.1", "categories.0"]


@fuzz(450)
@given(st.lists(st.tuples(st.sampled_from(PATHS), ODD), min_size=1, max_size=3))
def test_fuzzed_coco_records_read_or_fail_cleanly(coco_dir, edits):
    data = copy.deepcopy(_coco())
    for path, value in edits:
        try:
            _set(path, value)(data)
        except (TypeError, KeyError, IndexError, ValueError):  # an earlier edit replaced the parent
            pass
    try:
        d = _load(coco_dir, data)
    except CnnkitError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        return
    assert all(b.isfinite().all() for b in d.boxes) and all(n in ("a.png", "b.png") for n in d.names)


LINES = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.one_of(st.integers(-5, 300_000).map(str), st.floats(allow_nan=True).map(str), st.sampled_from(["x", "1e9"])),
        min_size=0,
        max_size=7,
    ).map(" ".join),
)
NAMES = st.one_of(
    st.none(),
    st.text(max_size=40).map(lambda t: ("classes.txt", t.encode("utf-8", "surrogatepass"))),
    st.binary(max_size=20).map(lambda b: ("classes.txt", b)),
    st.text(max_size=60).map(lambda t: ("data.yaml", ("names: " + t).encode("utf-8", "surrogatepass"))),
    st.dictionaries(st.one_of(st.integers(-1, 3), st.text(max_size=2)), st.text(max_size=3), max_size=3).map(
        lambda d: ("data.yaml", json.dumps({"names": {str(k): v for k, v in d.items()}}).encode())
    ),
)


@fuzz(400)
@given(st.lists(LINES, max_size=4), st.binary(max_size=12), NAMES)
def test_fuzzed_yolo_folders_read_or_fail_cleanly(tmp_path_factory, yolo_template, lines, raw, names):
    import shutil

    root = tmp_path_factory.mktemp("fy")
    shutil.copytree(yolo_template, root, dirs_exist_ok=True)
    (root / "labels" / "a.txt").write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    (root / "labels" / "b.txt").write_bytes(raw)
    if names is not None:
        (root / names[0]).write_bytes(names[1])
    try:
        d = load_yolo(root)
    except CnnkitError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        return
    assert len(d.classes) <= 1000 and all(b.isfinite().all() for b in d.boxes)


@fuzz(200)
@given(
    st.lists(st.lists(st.sampled_from([0, 0, 1, 2, 7, 254, 255]), min_size=4, max_size=4), min_size=2, max_size=3),
    st.sampled_from(["L", "P", "RGB", "1", "I;16"]),
)
def test_fuzzed_mask_folders_read_or_fail_cleanly(tmp_path_factory, values, mode):
    root = tmp_path_factory.mktemp("fm")
    for i, v in enumerate(values):
        _photo(root / "images" / f"p{i}.png", 2, 2)
        (root / "masks").mkdir(exist_ok=True)
        arr = np.array(v, np.uint8).reshape(2, 2)
        Image.fromarray(arr, "L").convert(mode).save(root / "masks" / f"p{i}.png")
    try:
        s = mask_folder(root)
    except CnnkitError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        return
    present = {int(x) for m in s.masks for x in m.flatten() if x != 255}
    assert present <= set(range(s.num_classes)) and s.num_classes - 1 in present | {0}

"""Image folders: the hymenoptera layout (own train/val split, a .gif placeholder, a space in a name),
a stratified split of a folder without split folders, the decode cache, bad input."""

import itertools
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import imagefolder
from cnnkit.data.imagefolder import ImageFolderWarning, load_image_folder
from cnnkit.errors import CnnkitError

SIZE = (32, 32)


@pytest.fixture(scope="module")
def hymenoptera(data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load_image_folder(data_dir / "hymenoptera", "train", SIZE, cache=cache)
    found = [w for w in caught if issubclass(w.category, ImageFolderWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = load_image_folder(data_dir / "hymenoptera", "val", SIZE, cache=cache)  # a cache hit
    return train, val, found, cache


def test_hymenoptera_counts_skip_the_gif_with_one_warning(hymenoptera):
    train, val, caught, _ = hymenoptera
    assert (len(train), len(val)) == (244, 153)
    assert train.classes == val.classes == ["ants", "bees"]
    assert train.class_counts().tolist() == [123, 121] and val.class_counts().tolist() == [70, 83]
    assert train.images.shape == (244, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(caught) == 1  # one warning, counting the skipped file; no small-class warning
    assert "skipped 1 file" in str(caught[0].message) and "imageNotFound.gif" in str(caught[0].message)
    assert train.meta["skipped"] == ["train/ants/imageNotFound.gif"]


def test_file_name_with_a_space_is_loaded(hymenoptera, data_dir):
    train = hymenoptera[0]
    row = train.meta["files"].index("train/ants/ant photos.jpg")
    assert train.labels[row] == 0
    with Image.open(data_dir / "hymenoptera" / "train" / "ants" / "ant photos.jpg") as im:
        w, h = im.size
        s = max(32 / w, 32 / h)
        im = im.convert("RGB").resize((round(w * s), round(h * s)), Image.BILINEAR)
        left, top = (im.width - 32) // 2, (im.height - 32) // 2
        ref = np.asarray(im.crop((left, top, left + 32, top + 32)), dtype=np.float32)
    got = train.images[row].permute(1, 2, 0).float().numpy()
    assert np.abs(got - ref).mean() < 6  # same crop (Pillow's draft mode decodes JPEG slightly differently)


def test_second_load_reads_the_cache(hymenoptera, data_dir, monkeypatch):
    train, _, _, cache = hymenoptera
    assert len(list(cache.glob("hymenoptera-*.safetensors"))) == 1  # one file for all splits
    monkeypatch.setattr(imagefolder, "_decode", lambda *a: pytest.fail("decoded again"))
    with pytest.warns(ImageFolderWarning, match="skipped 1 file"):  # the warning survives the cache
        again = load_image_folder(data_dir / "hymenoptera", "train", SIZE, cache=cache)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def _make_folder(root, counts, junk=True):
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / cls / f"img {i}.png")
    if junk:
        (root / "a" / "notes.txt").write_text("not an image")
        (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
        (root / "b" / ".DS_Store").write_bytes(b"ignored silently")


def test_stratified_seeded_split_without_split_folders(tmp_path):
    _make_folder(tmp_path / "data", {"a": 10, "b": 20})
    kw = dict(image_size=(8, 12), val_fraction=0.2, test_fraction=0.1, seed=3, cache=tmp_path / "c")
    with pytest.warns(ImageFolderWarning) as record:
        parts = {s: load_image_folder(tmp_path / "data", s, **kw) for s in ("train", "val", "test")}
    messages = [str(w.message) for w in record]
    assert sum("skipped 2 files" in m for m in messages) == 3  # notes.txt + broken.jpg, per load
    assert any("'a' (10), 'b' (20)" in m and "fewer than 100" in m for m in messages)
    assert {s: p.class_counts().tolist() for s, p in parts.items()} == {"train": [7, 14], "val": [2, 4], "test": [1, 2]}
    files = [set(p.meta["files"]) for p in parts.values()]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert len(files[0] | files[1] | files[2]) == 30
    assert parts["train"].images.shape == (21, 3, 8, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = load_image_folder(tmp_path / "data", "val", **kw)
        other = load_image_folder(tmp_path / "data", "val", **{**kw, "seed": 4})
    assert same.meta["files"] == parts["val"].meta["files"]
    assert other.meta["files"] != parts["val"].meta["files"]


def test_changed_file_invalidates_the_cache(tmp_path):
    _make_folder(tmp_path / "data", {"a": 3, "b": 3}, junk=False)
    kw = dict(image_size=(8, 8), val_fraction=0.0, cache=tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = load_image_folder(tmp_path / "data", **kw)
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "data" / "a" / "img 0.png")
        second = load_image_folder(tmp_path / "data", **kw)
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 1  # the stale cache replaced, not kept
    assert first.images[0].float().mean() > 50 and second.images[0].max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_image_folder(tmp_path / "data", **{**kw, "image_size": (6, 6)})  # another decoding: its own cache
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2


def test_a_cache_that_cannot_be_written_is_one_warning(tmp_path, monkeypatch):
    """A full disk where the cache goes: the decoded images are returned and one warning says so."""
    import errno

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    _make_folder(tmp_path / "data", {"a": 3, "b": 3}, junk=False)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_image_folder(tmp_path / "data", image_size=(8, 8), val_fraction=0.0, cache=tmp_path / "c")
    said = [str(w.message) for w in caught if "image cache" in str(w.message)]
    assert len(got) == 6 and len(said) == 1 and "No space left on device" in said[0]
    assert list((tmp_path / "c").iterdir()) == []


@pytest.mark.parametrize(
    "edit",
    [
        lambda t, m: m.update(files='{"skipped": []}'),
        lambda t, m: m.update(files="5"),
        lambda t, m: t.update(images=t["images"][:3]),
        lambda t, m: t.update(images=t["images"].float()),
        lambda t, m: t.update(images=t["images"][:, :, :4, :4].contiguous()),
        lambda t, m: t["images"][0].zero_(),
        lambda t, m: m.update(
            files=json.dumps({**json.loads(m["files"]), "decoded": json.loads(m["files"])["decoded"][::-1]})
        ),
    ],
    ids=[
        "no decoded list",
        "not a mapping",
        "rows cut",
        "float pixels",
        "other size",
        "pixels edited",
        "files reordered",
    ],
)
def test_an_edited_cache_is_rebuilt_not_trusted(tmp_path, edit):
    from safetensors import safe_open
    from safetensors.torch import save_file

    _make_folder(tmp_path / "data", {"a": 3, "b": 3}, junk=False)
    kw = dict(image_size=(8, 8), val_fraction=0.0, cache=tmp_path / "c")
    first = load_image_folder(tmp_path / "data", **kw)
    (path,) = (tmp_path / "c").glob("*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {"images": f.get_tensor("images")}, dict(f.metadata())
    edit(tensors, meta)
    save_file(tensors, path, metadata=meta)
    again = load_image_folder(tmp_path / "data", **kw)
    assert torch.equal(again.images, first.images) and again.meta["files"] == first.meta["files"]


def test_a_file_rewritten_with_its_size_and_mtime_kept_invalidates_the_cache(tmp_path):
    """A file of a fixed-size format rewritten with its mtime restored (touch -r, cp -p, rsync -t, an
    archive unpacked over the folder), or two such files swapped between classes: the cache must not
    answer the old pixels, nor the old labels."""
    data, g = tmp_path / "data", np.random.default_rng(0)
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(data / c / f"{i}.ppm")
    kw = dict(image_size=(8, 8), val_fraction=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_image_folder(data, cache=tmp_path / "c", **kw)
        p = data / "a" / "0.ppm"
        st = p.stat()
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
        got, want = load_image_folder(data, cache=tmp_path / "c", **kw), load_image_folder(data, cache=False, **kw)
        assert torch.equal(got.images, want.images) and got.images[0].max() == 0
        a, b = data / "a" / "1.ppm", data / "b" / "1.ppm"
        for f in (a, b):
            os.utime(f, ns=(0, 10**18))
        load_image_folder(data, cache=tmp_path / "c", **kw)
        a.rename(tmp_path / "swap.ppm")
        b.rename(a)
        (tmp_path / "swap.ppm").rename(b)
        got, want = load_image_folder(data, cache=tmp_path / "c", **kw), load_image_folder(data, cache=False, **kw)
    assert got.meta["files"] == want.meta["files"] and torch.equal(got.images, want.images)


def test_a_sliver_of_an_image_is_read_without_resizing_it_to_gigabytes(tmp_path):
    # 2,000,000 x 1 pixels passes the decompression-bomb check, but its shorter side brought to 32 px
    # would be a 64 G-pixel copy: only the region its centre crop covers is resized
    _make_folder(tmp_path / "data", {"a": 2, "b": 2}, junk=False)
    Image.new("RGB", (2_000_000, 1), (120, 30, 40)).save(tmp_path / "data" / "a" / "sliver.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_image_folder(tmp_path / "data", image_size=(32, 32), val_fraction=0.0, cache=False)
    assert not [w for w in caught if "skipped" in str(w.message)]
    assert len(got.meta["files"]) == 5
    sliver = got.images[got.meta["files"].index("a/sliver.png")]
    assert sliver.shape == (3, 32, 32) and sliver.flatten(1).unique(dim=1).tolist() == [[120], [30], [40]]


def _whole_resize_cropped(path, size, share, method=Image.BILINEAR) -> np.ndarray:
    """The centre crop of the photo's whole resized copy, made however large (the reference)."""
    h, w = size
    with Image.open(path) as im:
        scale = max(h / im.height, w / im.width) / share
        target = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
        left, top = (target[0] - w) // 2, (target[1] - h) // 2
        return np.asarray(im.resize(target, method, reducing_gap=3.0).crop((left, top, left + w, top + h)))


def test_every_photo_reads_at_the_floors_share(tmp_path):
    # at the floor a square photo's resized copy just fits the decoder's limit; a 4:3 one's copy
    # (12549 x 9412 at 16 x 16) is past it: it is read all the same, as the whole resize would give it
    floor = imagefolder.smallest_crop_fraction((16, 16))
    assert floor == 0.0017
    g = np.random.default_rng(0)
    for c, sizes in (("a", [(40, 30), (30, 40)]), ("b", [(41, 40), (64, 36), (30, 30)])):
        (tmp_path / "data" / c).mkdir(parents=True)
        for w, h in sizes:
            Image.fromarray(g.integers(0, 256, (h, w), dtype=np.uint8)).save(tmp_path / "data" / c / f"{w}x{h}.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_image_folder(
            tmp_path / "data", image_size=(16, 16), channels=1, crop_fraction=floor, val_fraction=0.0, cache=False
        )
    assert not [w for w in caught if "skipped" in str(w.message)]
    assert len(got) == 5 and got.images.shape == (5, 1, 16, 16)
    photo = tmp_path / "data" / "a" / "40x30.png"
    one = imagefolder.decode_image(photo, (16, 16), 1, "shorter", floor)
    assert torch.equal(one, got.images[got.meta["files"].index("a/40x30.png")])
    diff = np.abs(one[0].numpy().astype(int) - _whole_resize_cropped(photo, (16, 16), floor).astype(int))
    assert diff.max() <= 1


def test_the_crop_regions_resize_is_the_whole_resize_cropped(tmp_path, monkeypatch):
    # with the limit at the photo's own size, every enlargement takes the crop-region resize: it gives
    # the whole resize's pixels up to one level where the exact value is a tie (x.5) that Pillow's
    # fixed-point weights, from centres computed in another order, round the other way
    g = np.random.default_rng(1)
    photos = []
    for w, h in ((40, 30), (30, 40)):
        photos.append(tmp_path / f"{w}x{h}.png")
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos[-1])
    monkeypatch.setattr(imagefolder, "MAX_DECODE_PIXELS", 40 * 30)
    diffs = []
    for photo, size, share, method in itertools.product(
        photos, [(16, 16), (12, 20)], [0.5, 0.2, 0.05], ["bilinear", "bicubic"]
    ):
        got = imagefolder.decode_image(photo, size, 3, "shorter", share, method)
        ref = _whole_resize_cropped(photo, size, share, Image.BICUBIC if method == "bicubic" else Image.BILINEAR)
        diffs.append(np.abs(got.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)))
    diffs = np.concatenate([d.ravel() for d in diffs])
    assert diffs.max() == 1 and (diffs > 0).mean() < 0.05


@pytest.mark.parametrize("side", [16, 32, 64, 96, 100, 224, 299, 331, 512, 1000])
def test_the_floor_a_message_shows_is_the_floor_checked(side):
    # two significant digits, so a message's {floor:.2g} is the value checked; a square photo's copy
    # at the floor fits the decoder's limit, one at the next smaller two-digit share does not
    floor = imagefolder.smallest_crop_fraction((side, side))
    step = 10.0 ** (np.floor(np.log10(floor)) - 1)  # one unit of the second digit
    assert float(f"{floor:.2g}") == floor
    assert (side / floor) ** 2 <= imagefolder.MAX_DECODE_PIXELS < (side / (floor - step)) ** 2


def test_a_crop_share_too_small_to_resize_by_is_a_one_line_error(tmp_path):
    # a crop share the size of a denormal (a damaged run's or exported file's metadata) makes the
    # resize infinite: an image that cannot be read at that share, not an OverflowError
    Image.new("RGB", (12, 10), (120, 30, 40)).save(tmp_path / "photo.png")
    with pytest.raises(CnnkitError, match="cannot read"):
        imagefolder.decode_image(tmp_path / "photo.png", (8, 8), 3, "shorter", 5e-324)


def test_exact_resize_and_grey(tmp_path):
    _make_folder(tmp_path / "data", {"a": 2, "b": 2}, junk=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grey = load_image_folder(
            tmp_path / "data", image_size=(10, 10), channels=1, resize="exact", val_fraction=0, cache=False
        )
    assert grey.images.shape == (4, 1, 10, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(root="missing"), "image folder not found"),
        (dict(split="holdout"), "unknown split 'holdout'"),
        (dict(image_size=(0, 5)), "image_size must be"),
        (dict(channels=2), "channels must be 1"),
        (dict(val_fraction=0.7, test_fraction=0.4), "sum below 1"),
        (dict(resize="crop"), "resize must be"),
        (dict(image_size=(64, 64), crop_fraction=0.005), r"crop_fraction must be at least 0.0068 at image_size"),
        # sqrt(96 * 96 / 89,478,485) = 0.01015: the floor shown (0.011) is the floor checked
        (dict(image_size=(96, 96), crop_fraction=0.01), r"at least 0.011 at image_size .* got crop_fraction=0.01;"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    _make_folder(tmp_path / "data", {"a": 2}, junk=False)
    kwargs = {"root": tmp_path / "data", **kwargs}
    if kwargs["root"] == "missing":
        kwargs["root"] = tmp_path / "missing"
    with pytest.raises(CnnkitError, match=match):
        load_image_folder(cache=False, **kwargs)


def test_missing_split_and_empty_folder(data_dir, tmp_path):
    with pytest.raises(CnnkitError, match="no 'test' split .*test_fraction"):
        load_image_folder(data_dir / "hymenoptera", "test", SIZE, cache=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnkitError, match="no class folders"):
        load_image_folder(tmp_path / "empty", cache=False)


def test_trainval_of_a_folder_is_its_train_and_val(hymenoptera, data_dir):
    from cnnkit.data.datasets import load_dataset

    train, val, _, _ = hymenoptera
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = load_dataset(str(data_dir / "hymenoptera"), "trainval", image_size=SIZE)
    assert len(both) == len(train) + len(val) and both.name == "hymenoptera/trainval"
    assert torch.equal(both.images, torch.cat([train.images, val.images]))
    assert torch.equal(both.labels, torch.cat([train.labels, val.labels]))


def test_images_that_would_not_fit_in_memory_are_refused_before_any_is_decoded(tmp_path, monkeypatch):
    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "photos" / c / f"{i}.png")
    monkeypatch.setattr("cnnkit.errors.memory_available", lambda: 10**9)  # 6 images at 8192 px: 2.4 GB
    decoded = []
    monkeypatch.setattr(imagefolder, "_decode", lambda *a: decoded.append(a))
    with pytest.raises(CnnkitError) as info:
        load_image_folder(tmp_path / "photos", image_size=(8192, 8192), val_fraction=0, cache=False)
    assert str(info.value).endswith(
        "at 8192x8192 needs 2.4 GB, more than the 1.0 GB of memory available; read them at a smaller size "
        "(--image-size; image_size= in Python)"
    )
    assert not decoded


def test_a_folder_with_train_and_test_but_no_val_carves_validation_out_of_train(tmp_path):
    """``train/`` and ``test/`` without ``val/``: the validation images are carved from train/ and left
    out of the training split (no image in both), as a folder without split folders carves them."""
    for part, n in (("train", 10), ("test", 3)):
        _make_folder(tmp_path / "data" / part, {"a": n, "b": n}, junk=False)
    kw = dict(image_size=(8, 8), val_fraction=0.2, seed=1, cache=tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = {s: load_image_folder(tmp_path / "data", s, **kw) for s in ("train", "val", "test")}
    files = {s: set(p.meta["files"]) for s, p in parts.items()}
    assert {s: p.class_counts().tolist() for s, p in parts.items()} == {"train": [8, 8], "val": [2, 2], "test": [3, 3]}
    assert not files["train"] & files["val"] and all(f.startswith("train/") for f in files["train"] | files["val"])
    assert len(files["train"] | files["val"]) == 20 and all(f.startswith("test/") for f in files["test"])

"""Digit scenes: deterministic, boxes tight around the ink, masks agreeing with boxes and labels."""

import pytest
import torch

from cnnkit.data.imageset import ImageSet
from cnnkit.data.scenes import INK, digit_scenes
from cnnkit.errors import CnnkitError


def _pool(n=20):
    """Digits drawn as filled squares of known size: the ink is exactly known."""
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):
        images[i, 0, 4 : 4 + 10 + i % 8, 6 : 6 + 8 + i % 5] = 255
    return ImageSet(images, torch.arange(n) % 10, [str(d) for d in range(10)], "squares")


def test_boxes_are_tight_around_each_instance_and_masks_agree():
    s = digit_scenes("train", n=40, canvas=96, seed=3, source=_pool())
    assert s.images.shape == (40, 1, 96, 96) and s.semantic.shape == s.instances.shape == (40, 96, 96)
    for i in range(len(s)):
        boxes, labels = s.boxes[i], s.labels[i]
        assert 1 <= len(boxes) <= 4 and labels.shape == (len(boxes),)
        assert int(s.instances[i].max()) == len(boxes)
        for j, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
            mask = s.instances[i] == j + 1
            ys, xs = mask.nonzero(as_tuple=True)
            assert [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1] == box
            assert (s.semantic[i][mask] == 1 + label).all()
            assert (s.images[i, 0][mask] >= INK).all()
        assert ((s.semantic[i] > 0) == (s.instances[i] > 0)).all()
        # no two boxes overlap
        b = boxes
        for p in range(len(b)):
            for q in range(p + 1, len(b)):
                assert b[p, 0] >= b[q, 2] or b[q, 0] >= b[p, 2] or b[p, 1] >= b[q, 3] or b[q, 1] >= b[p, 3]


def test_same_seed_same_scenes_other_seed_or_split_other_scenes():
    a = digit_scenes("train", n=10, canvas=64, seed=1, source=_pool())
    b = digit_scenes("train", n=10, canvas=64, seed=1, source=_pool())
    c = digit_scenes("train", n=10, canvas=64, seed=2, source=_pool())
    d = digit_scenes("test", n=10, canvas=64, seed=1, source=_pool())
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert not torch.equal(a.images, c.images) and not torch.equal(a.images, d.images)


def test_real_mnist_scenes_use_the_split_digits(data_dir):
    train = digit_scenes("train", n=30, canvas=128, data_dir=data_dir, seed=0)
    test = digit_scenes("test", n=30, canvas=128, data_dir=data_dir, seed=0)
    assert train.meta["source"] == "mnist/train" and test.meta["source"] == "mnist/test"
    counts = torch.cat(train.labels).bincount(minlength=10)
    assert counts.sum() >= 30 and (counts > 0).sum() >= 8
    sizes = torch.cat([b[:, 3] - b[:, 1] for b in train.boxes])  # box heights: ink of 0.6x-2x digits
    assert sizes.min() >= 8 and sizes.max() <= 56


@pytest.mark.parametrize(
    "kwargs", [dict(split="dev"), dict(n=0), dict(digits=(3, 2)), dict(canvas=40), dict(scale=(0.1, 1.0))]
)
def test_bad_arguments_are_one_line_errors(kwargs):
    with pytest.raises(CnnkitError):
        digit_scenes(**{"source": _pool(), **kwargs})

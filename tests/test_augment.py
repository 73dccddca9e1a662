"""Batched augmentation: shapes, value ranges, determinism, exactness, and cost."""

import time

import pytest
import torch
import torch.nn.functional as F

from cnnkit.data import augment as A
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(64, 1, 28, 28, generator=g)


STEPS = {
    "crop": lambda x, g: A.random_crop(x, g, 2),
    "affine": lambda x, g: A.random_affine(x, g, 15, (0.9, 1.1), 10, 0.1),
    "elastic": lambda x, g: A.elastic(x, g, 34, 4),
    "flip": A.random_flip,
    "cutout": lambda x, g: A.cutout(x, g, 8),
    "all": A.build_augment(
        A.AugmentConfig(shift=2, degrees=10, scale=0.1, shear=5, translate=0.1, elastic=30, flip=True, cutout=6)
    ),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_shape_range_determinism(batch, name):
    f = STEPS[name]
    a = f(batch, torch.Generator().manual_seed(0))
    b = f(batch, torch.Generator().manual_seed(0))
    c = f(batch, torch.Generator().manual_seed(1))
    assert a.shape == batch.shape and a.dtype == batch.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 + 1e-6
    assert torch.equal(a, b)  # same seed, same batch
    assert not torch.equal(a, c)  # another seed, another batch
    assert not torch.equal(a, batch)


def test_crop_is_an_exact_shift(batch):
    out = A.random_crop(batch, torch.Generator().manual_seed(0), 1)
    padded = F.pad(batch, (1, 1, 1, 1))
    for i in range(8):
        shifts = [torch.equal(out[i], padded[i, :, dy : dy + 28, dx : dx + 28]) for dy in range(3) for dx in range(3)]
        assert any(shifts)


def test_crop_takes_a_smaller_window_at_a_random_offset(batch):
    """AugmentConfig(crop=24), the fast preset's: 24x24 windows of the unpadded 28x28 digits."""
    out = A.build_augment(A.AugmentConfig(crop=24))(batch, torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 24, 24)
    assert torch.equal(out, A.random_crop(batch, torch.Generator().manual_seed(0), 0, size=24))
    offsets = set()
    for i in range(64):
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], batch[i, :, dy : dy + 24, dx : dx + 24])
        ]
        assert len(hits) == 1
        offsets |= set(hits)
    assert len(offsets) >= 15  # of the 25 offsets, drawn per image
    whole = A.random_crop(batch, torch.Generator().manual_seed(0), 2, size=32)  # the padded image
    assert torch.equal(whole, F.pad(batch, (2, 2, 2, 2)))
    with pytest.raises(CnnkitError, match="a random crop of 33x33 does not fit a 28x28 image padded by 2"):
        A.random_crop(batch, torch.Generator(), 2, size=33)


def test_identity_affine_and_full_flip(batch):
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(A.random_affine(batch, g, 0, (1, 1), 0, 0), batch, atol=1e-5, rtol=0)
    assert torch.equal(A.random_flip(batch, g, p=1.0), batch.flip(-1))


def test_elastic_field_matches_simard_full_resolution():
    """The coarse-grid field has Simard's displacement statistics (alpha 34, sigma 4: ~1 px std),
    not 16x more (a field 16x too strong turns a third of a batch into noise)."""
    g = torch.Generator().manual_seed(0)
    coarse = A.elastic_field(2000, 28, 28, g, alpha=34.0, sigma=4.0)
    noise = torch.rand(2000, 2, 28, 28, generator=g) * 2 - 1  # Simard: full resolution
    simard = A._gaussian_blur(noise, 4.0) * 34.0
    inner = (slice(None), slice(None), slice(8, 20), slice(8, 20))  # away from the zero padding
    ratio = float(coarse[inner].std() / simard[inner].std())
    assert 0.8 < ratio < 1.25, ratio
    assert 0.8 < float(simard[inner].std()) < 1.8  # ~1 px, as in the paper


def test_cutout_zeroes_one_square(batch):
    out = A.cutout(batch + 0.5, torch.Generator().manual_seed(0), 8)
    zeros = (out == 0).flatten(1).sum(1)
    # an 8x8 square (rows c-4..c+3), clipped at the border: 64 zeros inside, at least 4x4 at a corner
    assert zeros.max() == 64 and zeros.min() >= 16
    odd = (A.cutout(batch + 0.5, torch.Generator().manual_seed(0), 5) == 0).flatten(1).sum(1)
    assert odd.max() == 25 and odd.min() >= 9  # 5x5, rows c-2..c+2


def test_normalize():
    x = torch.rand(4, 3, 8, 8)
    y = A.normalize(x, [0.5, 0.4, 0.3], [0.2, 0.2, 0.1])
    torch.testing.assert_close(y[:, 2], (x[:, 2] - 0.3) / 0.1)


def test_augmenting_costs_far_less_than_a_training_step():
    from cnnkit.models import create_model

    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    net = create_model("mnist_fast").to(memory_format=torch.channels_last)
    aug = A.build_augment(A.AugmentConfig(shift=2, degrees=10, scale=0.1, translate=0.1))

    def step():
        F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y).backward()

    def timed(f, n=5):
        f()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return sorted(times)[n // 2]

    g = torch.Generator().manual_seed(0)
    assert timed(lambda: aug(x, g)) < 0.25 * timed(step)

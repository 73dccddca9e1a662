"""Data augmentation as batched, seeded tensor -> tensor functions on the training device.

Every function takes a float batch ``x`` of shape (N, C, H, W) with values in [0, 1] and a
``torch.Generator`` living on ``x.device``; it draws one set of random parameters per image and
returns a batch of the same shape. There is no per-image Python: a batch costs a handful of kernels
(one ``affine_grid`` + ``grid_sample`` for all of rotation, scaling, shear and translation).

Compose them with :class:`Compose`, or build the standard pipeline from a config with
:func:`build_augment`. Same generator state in -> same batch out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnkit.data.augment_config import AugmentConfig
from cnnkit.errors import CnnkitError

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def random_crop(
    x: torch.Tensor, g: torch.Generator, padding: int = 2, mode: str = "constant", size: int | None = None
) -> torch.Tensor:
    """Pad by ``padding`` pixels, then take a ``size`` x ``size`` window (default: the input's own
    H x W, a shift of up to +-padding px) at a random offset per image: (N, C, size, size)."""
    n, c, h, w = x.shape
    sh, sw = (h, w) if size is None else (size, size)
    if padding <= 0 and (sh, sw) == (h, w):
        return x
    if sh > h + 2 * padding or sw > w + 2 * padding:
        raise CnnkitError(
            f"a random crop of {sh}x{sw} does not fit a {h}x{w} image padded by "
            f"{padding}; use a crop of at most {min(h, w) + 2 * padding}"
        )
    xp = F.pad(x, (padding,) * 4, mode=mode) if padding > 0 else x  # (N, C, H+2p, W+2p)
    hp, wp = h + 2 * padding, w + 2 * padding
    dy = torch.randint(0, hp - sh + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, wp - sw + 1, (n,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(sh, device=x.device))[:, None, :, None]  # (N, 1, sh, 1)
    cols = (dx[:, None] + torch.arange(sw, device=x.device))[:, None, None, :]  # (N, 1, 1, sw)
    xp = xp.gather(2, rows.expand(n, c, sh, wp))  # (N, C, sh, W+2p)
    return xp.gather(3, cols.expand(n, c, sh, sw))  # (N, C, sh, sw)


def affine_matrices(
    n: int,
    g: torch.Generator,
    device,
    degrees: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    shear: float = 0.0,
    translate: float = 0.0,
) -> torch.Tensor:
    """(N, 2, 3) matrices for ``affine_grid``: rotation, scale, shear (degrees), translation
    (fraction of the image size), each drawn uniformly per image."""
    angle = _uniform(n, -degrees, degrees, g, device) * (math.pi / 180)
    s = _uniform(n, scale[0], scale[1], g, device)
    sh = torch.tan(_uniform(n, -shear, shear, g, device) * (math.pi / 180))
    t = _uniform(2 * n, -translate, translate, g, device).view(n, 2) * 2  # grid units span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output->input map: inverse of (scale * rotation * shear); sampling at A @ p gives the warp
    a = torch.stack([torch.stack([cos, -sin + cos * sh], -1), torch.stack([sin, cos + sin * sh], -1)], 1)
    a = a / s[:, None, None]
    return torch.cat([a, t[:, :, None]], 2)  # (N, 2, 3)


def random_affine(
    x: torch.Tensor,
    g: torch.Generator,
    degrees: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    shear: float = 0.0,
    translate: float = 0.1,
) -> torch.Tensor:
    """Random rotation/scale/shear/translation of each image, in one ``grid_sample``."""
    theta = affine_matrices(x.shape[0], g, x.device, degrees, scale, shear, translate)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gaussian_blur(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with zero padding."""
    radius = max(1, int(3 * sigma))
    k = torch.exp(-(torch.arange(-radius, radius + 1, device=field.device, dtype=field.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    c = field.shape[1]
    field = F.conv2d(field, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(field, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def elastic_field(
    n: int,
    h: int,
    w: int,
    g: torch.Generator,
    alpha: float = 34.0,
    sigma: float = 4.0,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Simard et al.'s random displacement field, (N, 2, H, W) in pixels (x then y).

    Simard draws uniform(-1, 1) noise per pixel, blurs it with a Gaussian of ``sigma`` px and
    multiplies by ``alpha``. Here the noise is drawn at 1/4 resolution, blurred with ``sigma / 4``
    coarse px (the same physical smoothness) and upsampled bilinearly: a smooth field loses nothing
    at a sixteenth of the cost. Blurring white noise with a Gaussian of width s leaves a standard
    deviation proportional to 1/s, so the coarse field comes out 4x larger than the full-resolution
    one and is scaled by ``alpha / 4``: the same displacement statistics as Simard's field
    (checked against a full-resolution field in tests/test_augment.py).
    """
    f = 4  # coarse-grid factor
    field = torch.rand(n, 2, -(-h // f), -(-w // f), generator=g, device=device, dtype=dtype) * 2 - 1
    field = _gaussian_blur(field, sigma / f) * (alpha / f)  # (N, 2, H/4, W/4) px
    return F.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)  # (N, 2, H, W) px


def elastic(x: torch.Tensor, g: torch.Generator, alpha: float = 34.0, sigma: float = 4.0) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003): displace every pixel by :func:`elastic_field`
    (``alpha`` 34, ``sigma`` 4 px: about 1 px of typical displacement on 28x28 digits), applied
    with ``grid_sample``."""
    n, _, h, w = x.shape
    field = elastic_field(n, h, w, g, alpha, sigma, x.device, x.dtype)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=x.device, dtype=x.dtype)  # px -> grid units
    base = F.affine_grid(
        torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(n, 2, 3), list(x.shape), align_corners=False
    )  # (N, H, W, 2)
    grid = (base + field.permute(0, 2, 3, 1) * scale).contiguous()
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each image with probability ``p`` (natural images only, not digits)."""
    mask = torch.rand(x.shape[0], generator=g, device=x.device) < p
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, g: torch.Generator, size: int = 8) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image at a random centre (DeVries & Taylor 2017)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=g, device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=g, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    dy, dx = ys - (cy - size // 2), xs - (cx - size // 2)  # offsets from the square's top-left
    inside = (dy >= 0) & (dy < size) & (dx >= 0) & (dx < size)  # (N, H, W)
    return x.masked_fill(inside[:, None], 0.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel (deterministic; kept here so a pipeline can end with it)."""
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


class Compose:
    """Apply augmentations in order, all drawing from the same generator."""

    def __init__(self, steps: Sequence[Augment]):
        self.steps = list(steps)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, g)
        return x

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Compose({[getattr(s, '__name__', repr(s)) for s in self.steps]})"


def build_augment(cfg: AugmentConfig) -> Compose:
    """The standard pipeline: elastic -> affine -> crop -> flip -> cutout (absent steps skipped)."""
    steps: list[Augment] = []
    if cfg.elastic > 0:

        def _elastic(x, g, a=cfg.elastic, p=cfg.elastic_p):
            k = int(round(x.shape[0] * p))  # distort the first k images (the batch is shuffled)
            return torch.cat([elastic(x[:k], g, alpha=a), x[k:]]) if k else x

        steps.append(_elastic)
    if cfg.degrees or cfg.scale or cfg.shear or cfg.translate:

        def _affine(x, g, c=cfg):
            return random_affine(x, g, c.degrees, (1 - c.scale, 1 + c.scale), c.shear, c.translate)

        steps.append(_affine)
    if cfg.shift or cfg.crop:
        steps.append(lambda x, g, p=cfg.shift, s=cfg.crop or None: random_crop(x, g, p, size=s))
    if cfg.flip:
        steps.append(random_flip)
    if cfg.cutout:
        steps.append(lambda x, g, s=cfg.cutout: cutout(x, g, s))
    return Compose(steps)


# fill_mode -> grid_sample padding_mode ("constant" pads with cval, see __call__)
_FILL = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}


@dataclass(frozen=True)
class ImageAugment:
    """Random affine warps and flips of a float batch (N, C, H, W), Keras' argument names."""

    rotation_range: float = 0.0  # degrees: each image is rotated by U(-r, r)
    width_shift_range: float = 0.0  # fraction of the width: shift by U(-s, s) * W pixels
    height_shift_range: float = 0.0  # fraction of the height
    shear_range: float = 0.0  # degrees: shear angle U(-s, s)
    zoom_range: float = 0.0  # zoom factor U(1 - z, 1 + z), both axes together
    horizontal_flip: bool = False  # mirror half of the images left-right
    fill_mode: str = "nearest"  # outside the image: "nearest" (edge pixel), "reflect", "constant"
    cval: float = 0.0  # the value of "constant" fill, in the units of x

    def __post_init__(self):
        if self.fill_mode not in _FILL:
            raise CnnkitError(f"fill_mode must be one of {', '.join(_FILL)}, got fill_mode={self.fill_mode!r}")
        ranges = {
            "rotation_range": self.rotation_range,
            "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range,
            "shear_range": self.shear_range,
            "zoom_range": self.zoom_range,
        }
        bad = {k: v for k, v in ranges.items() if not v >= 0}
        if bad or not self.zoom_range < 1:
            raise CnnkitError(
                f"augmentation ranges must be >= 0 (zoom_range < 1), got {bad or ranges}; "
                "e.g. rotation_range=40, zoom_range=0.2"
            )

    @property
    def warps(self) -> bool:
        return any(
            (self.rotation_range, self.width_shift_range, self.height_shift_range, self.shear_range, self.zoom_range)
        )

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A randomly warped copy of ``x`` (float, any value range); ``g`` lives on ``x.device``."""
        n = x.shape[0]
        if self.warps:
            theta = affine_matrices(
                n,
                g,
                x.device,
                degrees=self.rotation_range,
                scale=(1 - self.zoom_range, 1 + self.zoom_range),
                shear=self.shear_range,
                translate=0.0,
            )  # (N, 2, 3)
            shift = torch.rand(n, 2, generator=g, device=x.device) * 2 - 1  # U(-1, 1)
            span = torch.tensor([self.width_shift_range, self.height_shift_range], device=x.device)
            theta[:, :, 2] = shift * span * 2  # a fraction f of the size is 2f grid units
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
            shifted = x - self.cval if self.fill_mode == "constant" else x  # zeros padding -> cval
            x = F.grid_sample(shifted, grid, mode="bilinear", padding_mode=_FILL[self.fill_mode], align_corners=False)
            if self.fill_mode == "constant":
                x = x + self.cval
        if self.horizontal_flip:
            flip = torch.rand(n, generator=g, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x


# the notes' example (seed 004): ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
# height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode='nearest')
NOTES_AUGMENT = ImageAugment(40, 0.2, 0.2, 0.2, 0.2, True, "nearest")

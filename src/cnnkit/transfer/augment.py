"""Keras ``ImageDataGenerator``-style augmentation as one batched tensor function.

The random affine matrices come from :func:`cnnkit.data.augment.affine_matrices` (rotation, zoom,
shear); this module adds what Keras has and the trainer's pipeline does not: separate width and
height shifts, the fill modes (``nearest``, ``reflect``, ``constant`` with ``cval``), and the
Keras argument names, so the notes' ``ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
...)`` reads the same here. One ``affine_grid`` + ``grid_sample`` per batch, no per-image Python.

Differences from Keras, on purpose: one zoom factor for both axes (Keras draws x and y zoom
independently); ``shear_range`` is in degrees (as in Keras 2); the transform is drawn in the
normalised [-1, 1] frame, so on a non-square image a rotation also stretches slightly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnkit.data.augment import affine_matrices
from cnnkit.errors import CnnkitError

# fill_mode -> grid_sample padding_mode ("constant" pads with cval, see __call__)
_FILL = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}


@dataclass(frozen=True)
class ImageAugment:
    """Random affine warps and flips of a float batch (N, C, H, W), Keras' argument names."""

    rotation_range: float = 0.0      # degrees: each image is rotated by U(-r, r)
    width_shift_range: float = 0.0   # fraction of the width: shift by U(-s, s) * W pixels
    height_shift_range: float = 0.0  # fraction of the height
    shear_range: float = 0.0         # degrees: shear angle U(-s, s)
    zoom_range: float = 0.0          # zoom factor U(1 - z, 1 + z), both axes together
    horizontal_flip: bool = False    # mirror half of the images left-right
    fill_mode: str = "nearest"       # outside the image: "nearest" (edge pixel), "reflect", "constant"
    cval: float = 0.0                # the value of "constant" fill, in the units of x

    def __post_init__(self):
        if self.fill_mode not in _FILL:
            raise CnnkitError(f"fill_mode must be one of {', '.join(_FILL)}, got fill_mode={self.fill_mode!r}")
        ranges = {"rotation_range": self.rotation_range, "width_shift_range": self.width_shift_range,
                  "height_shift_range": self.height_shift_range, "shear_range": self.shear_range,
                  "zoom_range": self.zoom_range}
        bad = {k: v for k, v in ranges.items() if not v >= 0}
        if bad or not self.zoom_range < 1:
            raise CnnkitError(f"augmentation ranges must be >= 0 (zoom_range < 1), got {bad or ranges}; "
                              "e.g. rotation_range=40, zoom_range=0.2")

    @property
    def warps(self) -> bool:
        return any((self.rotation_range, self.width_shift_range, self.height_shift_range,
                    self.shear_range, self.zoom_range))

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A randomly warped copy of ``x`` (float, any value range); ``g`` lives on ``x.device``."""
        n = x.shape[0]
        if self.warps:
            theta = affine_matrices(n, g, x.device, degrees=self.rotation_range,
                                    scale=(1 - self.zoom_range, 1 + self.zoom_range),
                                    shear=self.shear_range, translate=0.0)          # (N, 2, 3)
            shift = torch.rand(n, 2, generator=g, device=x.device) * 2 - 1          # U(-1, 1)
            span = torch.tensor([self.width_shift_range, self.height_shift_range], device=x.device)
            theta[:, :, 2] = shift * span * 2                # a fraction f of the size is 2f grid units
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
            shifted = x - self.cval if self.fill_mode == "constant" else x  # zeros padding -> cval
            x = F.grid_sample(shifted, grid, mode="bilinear", padding_mode=_FILL[self.fill_mode],
                              align_corners=False)
            if self.fill_mode == "constant":
                x = x + self.cval
        if self.horizontal_flip:
            flip = torch.rand(n, generator=g, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x


# the notes' example (seed 004): ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
# height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode='nearest')
NOTES_AUGMENT = ImageAugment(40, 0.2, 0.2, 0.2, 0.2, True, "nearest")

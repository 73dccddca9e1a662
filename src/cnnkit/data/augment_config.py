"""The settings of the standard augmentation pipeline (:func:`cnnkit.data.augment.build_augment`).

Apart from the tensor code so that a training config, and the ``cnnkit`` parsers built from it, load
without torch; :mod:`cnnkit.data.augment` re-exports :class:`AugmentConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    """The steps of :func:`~cnnkit.data.augment.build_augment` and their strengths (0 or False: the step is off)."""

    shift: int = 0  # random crop after padding: max shift in pixels (0 = off)
    crop: int = 0  # side of the random training window, taken after the shift's
    # padding (0 = the whole image); evaluation sees whole images
    degrees: float = 0.0  # max rotation, degrees
    scale: float = 0.0  # max relative zoom, e.g. 0.1 -> scale in [0.9, 1.1]
    shear: float = 0.0  # max shear, degrees
    translate: float = 0.0  # max affine translation, fraction of the image size
    elastic: float = 0.0  # elastic alpha in pixels (0 = off); sigma 4 px
    elastic_p: float = 0.5  # fraction of each batch that gets the elastic distortion
    flip: bool = False  # horizontal flips (natural images only)
    cutout: int = 0  # cutout square side in pixels (0 = off)

    def __post_init__(self) -> None:
        from cnnkit.errors import CnnkitError

        for name, value in vars(self).items():
            if name == "flip":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise CnnkitError(f"augment.{name} must be a number >= 0; received {str(value)[:60]!r}")
        if self.elastic_p > 1:
            raise CnnkitError(f"augment.elastic_p is a fraction of each batch, at most 1; received {self.elastic_p}")

"""The in-memory form every cnnkit dataset takes: one uint8 tensor of images and one of labels.

Small image datasets (MNIST, CIFAR-10, a folder of a few thousand photos resized once) fit in memory
as uint8, so they live on the training device as two tensors and batches are slices of them: no
DataLoader workers, no per-image Python. Augmentation then runs on whole batches (cnnkit.data.augment).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnnkit.data.digest import values_digest


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8, pixel values 0..255
    labels: torch.Tensor  # (N,) int64 class indices
    classes: list[str]  # class names, index -> name
    name: str = ""  # e.g. "mnist/train"
    meta: dict = field(default_factory=dict)  # free-form provenance (paths, split seed, ...)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, index: torch.Tensor, name: str | None = None) -> ImageSet:
        """The images at ``index`` (a LongTensor or bool mask), sharing class names."""
        return ImageSet(
            self.images[index],
            self.labels[index],
            self.classes,
            name if name is not None else self.name,
            dict(self.meta),
        )

    def cat(self, other: ImageSet, name: str) -> ImageSet:
        """These images followed by ``other``'s (same classes), e.g. train + val for the final refit."""
        if other.classes != self.classes:
            raise ValueError(f"cannot join {self.name} and {other.name}: their classes differ")
        return ImageSet(
            torch.cat([self.images, other.images]),
            torch.cat([self.labels, other.labels]),
            self.classes,
            name,
            dict(self.meta),
        )

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=len(self.classes))

    def digest(self) -> str:
        """The sha256 of the set as read: its class names, labels and pixels
        (:func:`~cnnkit.data.digest.values_digest`), what a run records of each part of its data
        (``data_files``): pixels changed under the same file names change it, a copy of the files does not."""
        return values_digest(self.classes, self.labels, self.images)


@dataclass
class Features:
    """Inputs already computed (a frozen base's output), with their labels: batched as they are."""

    x: torch.Tensor  # (N, ...) float
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return self.x.shape[0]

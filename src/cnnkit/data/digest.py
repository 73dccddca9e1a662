"""The sha256 of data as a run reads it: what a run records of each part of its data (``data_files``),
so that ``--resume`` refuses data whose values changed and ``eval`` says so
(:func:`~cnnkit.engine.runfolder.check_training_data`, :func:`~cnnkit.engine.runfolder.warn_if_changed`).

A digest is of the values read, not of the files' bytes nor of their sizes and times: the same values
written otherwise (a series file with CRLF line ends, a folder of photos copied to another disk, which
gives every file a new inode and change time) digest the same, and a pixel changed under the same
file name, size and time does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import torch


def values_digest(classes: Iterable[str], *tensors: torch.Tensor) -> str:
    """The sha256 of ``classes`` (as a JSON list) followed by each tensor's values in C order.

    Each tensor's bytes alone are hashed (not its shape): a caller whose tensors could split one
    sequence of values in two ways (photos of different sizes) hashes their shapes as a tensor too
    (:func:`photos_digest`).

    Args:
        classes: the class names the labels index.
        *tensors: the data's tensors (labels, lengths, values, pixels), on any device.

    Returns:
        The hex digest.

    Example:
        >>> values_digest(["a", "b"], torch.tensor([0, 1]))[:12]
        'f64b5454cd50'
    """
    h = hashlib.sha256(json.dumps(list(classes)).encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy())
    return h.hexdigest()


def photos_digest(classes: Iterable[str], images: list[torch.Tensor], *annotations: list[torch.Tensor] | None) -> str:
    """The sha256 of photos of any sizes with what each is annotated with (boxes, labels, masks), in
    order: :func:`values_digest` of the classes, every photo's shape and its annotations' shapes, then
    the photos' pixels and each annotation's values.

    Args:
        classes: the class names the labels index.
        images: one (C, H, W) tensor per photo.
        *annotations: per photo, lists as long as ``images`` (a (k, 4) box tensor, (k,) labels,
            (H, W) or (k, H, W) masks); None, an empty list or a list of empty tensors for what the
            photos have none of (a reader that reads some photos of a file gives one or the other).

    Returns:
        The hex digest.
    """
    kept = [a for a in annotations if a and any(t.numel() for t in a)]  # none at all: as no list
    shapes = [list(x.shape) for x in images] + [list(t.shape) for a in kept for t in a]
    header = torch.tensor([len(images), len(kept)] + [len(s) for s in shapes] + [n for s in shapes for n in s])
    return values_digest(classes, header, *images, *(t for a in kept for t in a))

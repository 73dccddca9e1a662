"""Stylise photos with a trained transformation network."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.data.images import MAX_NATIVE_PIXELS, open_image
from cnnkit.engine.runfolder import output_stems
from cnnkit.errors import CnnkitError, check_folder
from cnnkit.tasks.style.data import check_side, read_photo, write_image
from cnnkit.tasks.style.load import load_stylizer


@torch.inference_mode()
def stylize(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """One forward pass: (B, 3, H, W) on [0, 1] -> the stylised images, same shape, on [0, 1].

    Args:
        model: a transformation network (:func:`~cnnkit.tasks.style.load.load_stylizer`).
        image: the photos.

    Returns:
        The stylised photos.
    """
    device = next(model.parameters()).device
    return model(image.to(device)).float().cpu()


def predict_files(run, images: list, out_dir, max_side: int | None = None) -> list[Path]:
    """``cnnkit style predict RUN photos... --out DIR``: each photo stylised to ``DIR/<stem>.png``.

    Output names are checked before any work: none replaces an input.

    Args:
        run: a run folder of ``cnnkit style train``, or its ``model.safetensors``.
        images: the photos (PNG or JPEG).
        out_dir: the folder for the outputs (created).
        max_side: photos are first shrunk so their longer side is at most this (px); None: their own size.

    Returns:
        The files written, in the order of ``images``.

    Raises:
        CnnkitError: not a style run, a missing or unreadable photo, or an output that would replace an input.
    """
    paths = [Path(p) for p in images]
    stems = output_stems(paths, out_dir, (".png",))
    for path in paths:  # every photo found, readable and of a usable size before any output is written
        _check_photo_size(path, max_side)
    check_folder(out_dir, "--out")  # writable: known now, not after the first photo is stylised
    model = load_stylizer(run)
    written = []
    for path, stem in zip(paths, stems):
        x = read_photo(path)
        if max_side and max(x.shape[-2:]) > max_side:
            x = read_photo(path, max_side)
        target = Path(out_dir) / f"{stem}.png"
        write_image(stylize(model, x), target)
        written.append(target)
    return written


def _check_photo_size(path: Path, max_side: int | None) -> None:
    """The photo's sides, as the network will see them, at least :data:`MIN_SIDE` px, read from its
    header by the guarded reader (:func:`~cnnkit.data.images.open_image`: a missing file, a folder,
    a pipe or a file that is not an image is its one-line error)."""
    with open_image(path) as im:
        w, h = im.size
    note, fix = "", "use a larger photo"
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
        note = f" at --max-side {max_side} (from {w}x{h})"
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        fix = "use a less elongated photo or a larger --max-side"
    check_side(torch.empty(1, 3, h, w, device="meta"), "photo", path, note, fix)
    if w * h > MAX_NATIVE_PIXELS:  # the network's activations take about 0.5 kB per pixel
        raise CnnkitError(
            f"the photo {path} is {w}x{h} = {w * h:,} pixels{note}; at most {MAX_NATIVE_PIXELS:,} are run "
            "through the network at once: pass --max-side (e.g. 2048) or shrink the photo"
        )

"""Style transfer's images: photos read through the one guarded reader, random crops, outputs written atomically."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnkit.data.images import read_pixels
from cnnkit.engine.runfolder import atomic_write_bytes
from cnnkit.errors import CnnkitError, check_folder, check_not_input

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg")


def resize_longer(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, H, W) float resized (bicubic, antialiased when shrinking) so its longer side is ``side``."""
    h, w = x.shape[-2:]
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=scale < 1).clamp_(0, 1)


def read_photo(path: str | Path, side: int | None = None) -> torch.Tensor:
    """An image file -> float (1, 3, H, W) on [0, 1], its longer side resized to ``side`` when given.

    Raises:
        CnnkitError: a missing, unreadable or oversized file (:func:`cnnkit.data.images.read_pixels`).
    """
    x = read_pixels(path)[None].float().div_(255)  # (1, 3, H, W)
    return resize_longer(x, side) if side else x


MIN_SIDE = 16  # the loss network pools four times and the transformation network pads by 4 px


def check_side(x: torch.Tensor, what: str, path, note: str = "", fix: str = "use a larger image") -> torch.Tensor:
    """``x`` (B, 3, H, W) as it is, if both sides are at least :data:`MIN_SIDE` px.

    Raises:
        CnnkitError: a side is shorter: one line naming the image, its size (``note``: how it got it)
            and ``fix``.
    """
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise CnnkitError(f"the {what} {path} is {w}x{h} px{note}; it needs at least {MIN_SIDE} px per side: {fix}")
    return x


def check_output(out: str | Path, inputs: list[str | Path], extra: tuple[str, ...] = ()) -> Path:
    """``out`` as a Path, checked before any work: a PNG or JPEG name that replaces none of ``inputs``
    (nor do the files named ``out``'s stem + each of ``extra``, e.g. ``.csv``).

    Raises:
        CnnkitError: another suffix, a folder that could not be made or written, or an output that is one
            of the inputs: nothing is written.
    """
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise CnnkitError(f"--out must name a .png or .jpg file. Received: --out {out}")
    if out.is_dir():
        raise CnnkitError(f"--out {out} is a folder; give the image file to write, e.g. {out / 'styled.png'}")
    check_folder(out.parent, "--out")  # its folder can be made and written: known now, not after the optimisation
    check_not_input([out, *(out.with_suffix(s) for s in extra)], inputs)
    return out


def write_image(x: torch.Tensor, path: str | Path) -> None:
    """(1, 3, H, W) or (3, H, W) on [0, 1] -> a PNG or JPEG file (by suffix), written atomically."""
    from PIL import Image

    x = x[0] if x.dim() == 4 else x
    arr = x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    kind = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(arr).save(buf, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    atomic_write_bytes(path, buf.getvalue())


def photo_paths(folder: str | Path, limit: int = 0) -> list[Path]:
    """The photos in ``folder`` and its sub-folders (.jpg, .jpeg, .png), sorted; the first ``limit`` (0: all).

    Raises:
        CnnkitError: not a folder, or no photo in it.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CnnkitError(f"--data must be a folder of photos. Received: --data {folder}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not paths:
        raise CnnkitError(f"--data {folder} holds no .jpg, .jpeg or .png file")
    return paths[:limit] if limit else paths


@dataclass
class PhotoSet:
    """Training photos held as uint8 tensors, each shrunk so its shorter side is a little over the crop.

    Attributes:
        images: (3, H, W) uint8 tensors.
        names: the files they were read from.
        name: how the set is named in messages.
    """

    images: list[torch.Tensor]
    names: list[str]
    name: str = "photos"

    def __len__(self) -> int:
        return len(self.images)


def load_photos(folder: str | Path, crop: int, limit: int = 0) -> PhotoSet:
    """The photos of ``folder`` (:func:`photo_paths`), each resized so its shorter side is ``crop * 1.15``.

    Raises:
        CnnkitError: no photos, or a file that cannot be read.
    """
    images, names = [], []
    side = round(crop * 1.15)
    for path in photo_paths(folder, limit):
        x = read_pixels(path)[None].float()  # (1, 3, H, W)
        scale = side / min(x.shape[-2:])
        size = (max(crop, round(x.shape[-2] * scale)), max(crop, round(x.shape[-1] * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        images.append(x[0].round().clamp(0, 255).byte())
        names.append(str(path))
    return PhotoSet(images, names, str(folder))

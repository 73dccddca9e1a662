"""Reading one image file the user hands over: size checked before decoding, every failure a CnnkitError."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from cnnkit.errors import CnnkitError, is_out_of_memory, not_a_file, out_of_memory, short_error

# Pillow's own decompression-bomb threshold (89.5 M pixels, ~ 0.25 GB as RGB): a header claiming
# more is refused before a single pixel is decoded
MAX_DECODE_PIXELS = 89_478_485
# an image explained at its own size (no --resize) runs the network at that size: beyond 4096 x 4096
# a ResNet's activations alone pass several GB
MAX_NATIVE_PIXELS = 4096 * 4096


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_DECODE_PIXELS):
    """``with open_image(p) as im:`` a lazily decoded PIL image whose header has been checked."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(path, (str, os.PathLike)):
        not_a_file(path)
    try:
        with warnings.catch_warnings():  # the size is checked below, with the number in the error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise CnnkitError(f"image not found: {path}; give the path of a PNG or JPEG file") from None
    except IsADirectoryError:
        raise CnnkitError(f"{path} is a folder, not an image file; give a PNG or JPEG file") from None
    except Image.DecompressionBombError as exc:  # Pillow's own limit (twice ours) struck first
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise CnnkitError(
            _too_large(path, f"{int(pixels[1]):,} pixels" if pixels else "an image", max_pixels)
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CnnkitError(f"cannot read {path} as an image ({short_error(exc)}); give a PNG or JPEG file") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise CnnkitError(_too_large(path, f"{w}x{h} = {w * h:,} pixels", max_pixels))
        if w < 1 or h < 1:
            raise CnnkitError(f"{path} is {w}x{h}: an image without pixels")
        try:
            yield im
        except CnnkitError:
            raise  # the caller's own refusal of what it read (a mask's mode, say), already one line
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise CnnkitError(
                f"cannot decode {path} ({short_error(exc)}): the file is truncated or damaged; give a PNG or JPEG file"
            ) from None
        except (MemoryError, RuntimeError) as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(f"decoding {path}", w * h * 4) from None
            raise


def eight_bit(im):
    """A 16-bit grey image (Pillow's ``I;16`` modes: 16-bit PNG and TIFF) scaled to 8-bit grey
    (``round(v * 255 / 65535)``); any other image as it is.

    Pillow's own ``convert("L")`` of such an image clips every value above 255 to white, which turns
    a 16-bit photo into black and white.
    """
    from PIL import Image

    if not im.mode.startswith("I;16"):
        return im
    wide = np.asarray(im).astype(np.uint32)  # (H, W) 0..65535
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")


def read_image(
    path: str | Path,
    channels: int,
    size: tuple[int, int] | None = None,
    dark_background: bool = False,
    max_native_pixels: int = MAX_NATIVE_PIXELS,
) -> torch.Tensor:
    """An image file -> float (C, H, W) in [0, 1] with the model's channels (grey or RGB).

    Resized to ``size`` (H, W) with bilinear filtering when given, else kept at its own size (at most
    ``max_native_pixels``). With ``dark_background`` (MNIST-like models), an image whose border is
    light is inverted, as ``cnnkit predict`` does.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise CnnkitError(
            f"the model takes {channels}-channel images; only 1 (grey) and 3 (RGB) can be read from files"
        )
    with open_image(path) as im:
        if size is None and im.width * im.height > max_native_pixels:
            raise CnnkitError(
                f"{path} is {im.width}x{im.height} = {im.width * im.height:,} pixels; at its own "
                f"size at most {max_native_pixels:,} are run through a network: pass --resize "
                "(the model's input size) or shrink the image"
            )
        im = eight_bit(im).convert("L" if channels == 1 else "RGB")
        if size is not None:
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr)
    x = x[None] if channels == 1 else x.permute(2, 0, 1)  # (H, W[, 3]) -> (C, H, W)
    if dark_background:
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
        if border.mean() > 0.5:
            x = 1.0 - x
    return x.contiguous()


def _too_large(path, size: str, max_pixels: int) -> str:
    return (
        f"{path} is {size}, more than the {max_pixels:,} cnnkit decodes (a decompression bomb, or a "
        "photo far larger than any network input); shrink it first"
    )


def read_pixels(path: str | Path, channels: int = 3, max_pixels: int = MAX_DECODE_PIXELS) -> torch.Tensor:
    """An image file -> (C, H, W) uint8 at its own size: RGB (``channels=3``) or grey (1).

    The one reader of the data sets' photos (detection, segmentation, instance masks' images): the
    size in the header is checked before decoding (:func:`open_image`), odd modes (palette, CMYK,
    16-bit, alpha) are converted, and a missing, truncated or non-image file is a one-line
    :class:`CnnkitError` naming it.

    Args:
        path: the image file.
        channels: 3 for RGB, 1 for grey.
        max_pixels: the most pixels (width x height) decoded.

    Returns:
        A (C, H, W) uint8 tensor.
    """
    if channels not in (1, 3):
        raise CnnkitError(f"images are read as 1 (grey) or 3 (RGB) channels; received channels={channels}")
    with open_image(path, max_pixels) as im:
        arr = np.asarray(eight_bit(im).convert("L" if channels == 1 else "RGB"))
    t = torch.from_numpy(arr.copy())
    return (t.permute(2, 0, 1) if t.dim() == 3 else t[None]).contiguous()

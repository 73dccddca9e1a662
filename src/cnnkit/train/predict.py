"""Classify image files: each is converted and resized the way the training images were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import CnnkitError


def load_image(path: str | Path, input_size: tuple[int, int, int], dark_background: bool) -> torch.Tensor:
    """An image file -> float (C, H, W) in [0, 1] at the model's input size.

    Grey (C = 1) or RGB (C = 3), resized to H x W with bilinear filtering. For digit-like data
    (white strokes on black) an image with a light background is inverted first.
    """
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_size
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    except FileNotFoundError:
        raise CnnkitError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CnnkitError(f"cannot read {path} as an image ({exc}); give a PNG or JPEG file") from None
    x = x.unsqueeze(0) if c == 1 else x.permute(2, 0, 1)       # (H, W[, C]) -> (C, H, W)
    if dark_background:
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
        if border.mean() > 0.5:
            x = 1.0 - x
    return x


@torch.no_grad()
def predict_files(model: nn.Module, paths: list[str], top: int = 3, loader=None) -> list[dict]:
    """Top ``top`` (class, probability) pairs for each image file; ``loader(path) -> (C, H, W)`` reads
    one (default: :func:`load_image` at the model's input size)."""
    dark = bool(getattr(model, "info", {}).get("dataset", {}).get("dark_background", False))
    loader = loader or (lambda p: load_image(p, model.input_size, dark))
    x = torch.stack([loader(p) for p in paths])  # (N, C, H, W)
    device = next(model.parameters()).device
    probs = model(x.to(device)).float().softmax(1).cpu()
    p, i = probs.topk(min(top, probs.shape[1]), dim=1)
    return [{"image": str(path), "top": [(model.classes[k], float(v)) for v, k in zip(pv, ik)]}
            for path, pv, ik in zip(paths, p.tolist(), i.tolist())]

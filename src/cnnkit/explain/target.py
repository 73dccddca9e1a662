"""What the CLI explains: a cnnkit checkpoint or a zoo model, and an image file read for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import CnnkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalised(nn.Module):
    """``net((x - mean) / std)``: a zoo network with ImageNet weights, fed images in [0, 1]."""

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


@dataclass
class Explainable:
    model: nn.Module                 # eval mode; takes float (N, C, H, W) in [0, 1]
    prefix: str                      # layer names users give are relative to this sub-module ("net.")
    classes: list[str]               # class names, index -> name
    input_size: tuple[int, int, int]  # (C, H, W) the model was built for
    dark_background: bool = False    # digit-like data: light-background images are inverted

    @property
    def net(self) -> nn.Module:
        return self.model.get_submodule(self.prefix[:-1]) if self.prefix else self.model

    def layer(self, name: str) -> str:
        """A user's layer name (relative to ``net``) as a name in ``model``; CnnkitError if unknown."""
        from .hooks import resolve_layer

        resolve_layer(self.net, name)
        return self.prefix + name

    def check_accepts(self, x: torch.Tensor, source: str = "") -> None:
        """One dry forward of the (C, H, W) image; a CnnkitError naming the size the model was built for."""
        try:
            with torch.no_grad():
                self.model(x[None])
        except RuntimeError:
            c, h, w = self.input_size
            raise CnnkitError(f"the model does not accept a {x.shape[-2]}x{x.shape[-1]} image{source}; it was "
                              f"built for {h}x{w}: pass --resize (or resize the image)") from None

    def user_name(self, name: str) -> str:
        return name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name


def load_explainable(source: str, weights: str | None = None, imagenet_norm: bool = False) -> Explainable:
    """A run folder / ``.safetensors`` checkpoint (via :func:`cnnkit.load`) or a zoo model name.

    Checkpoints are explained without test-time augmentation (one forward per image), through their
    own input normalisation; layer names are those of the bare network (``model.net``).
    """
    path = Path(source)
    if path.exists():
        if weights:
            raise CnnkitError(f"--weights is for zoo models; {source} is a checkpoint that has its own")
        from ..train.checkpoint import load

        model = load(path)
        if hasattr(model, "tta"):
            model.tta = ""
        info = getattr(model, "info", {}) or {}
        dark = bool(info.get("dataset", {}).get("dark_background", False))
        return Explainable(model, "net.", list(model.classes), tuple(model.input_size), dark)
    from ..models import create_model, list_models, model_info

    if source not in list_models():
        model_info(source)  # raises "unknown model name ..., did you mean ..."
    from ..models.weights import PRETRAINED, imagenet_classes

    info = model_info(source)
    net = create_model(source, weights=weights).eval()
    published = PRETRAINED.get(source)
    imagenet_norm = imagenet_norm or (weights == "imagenet" and published is not None)
    norm = (published.mean, published.std) if published is not None else (IMAGENET_MEAN, IMAGENET_STD)
    model, prefix = (Normalised(net, *norm).eval(), "net.") if imagenet_norm else (net, "")
    num_classes = getattr(net, "num_classes", None)
    if num_classes is None:
        last = [m for m in net.modules() if isinstance(m, nn.Linear)]
        num_classes = last[-1].out_features if last else 0
    classes = imagenet_classes() if weights == "imagenet" and num_classes == 1000 else [str(k) for k in range(num_classes)]
    return Explainable(model, prefix, classes, tuple(info.input_size))


def read_image(path: str | Path, channels: int, size: tuple[int, int] | None = None,
               dark_background: bool = False) -> torch.Tensor:
    """An image file -> float (C, H, W) in [0, 1] with the model's channels (grey or RGB).

    Kept at its own size unless ``size`` (H, W) is given. With ``dark_background`` (MNIST-like
    models), an image whose border is light is inverted, as ``cnnkit predict`` does.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise CnnkitError(f"image not found: {path}; give the path of a PNG or JPEG file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CnnkitError(f"cannot read {path} as an image ({exc}); give a PNG or JPEG file") from None
    if channels not in (1, 3):
        raise CnnkitError(f"the model takes {channels}-channel images; only 1 (grey) and 3 (RGB) can be "
                          f"read from files")
    x = torch.from_numpy(arr)
    x = x[None] if channels == 1 else x.permute(2, 0, 1)  # (H, W[, 3]) -> (C, H, W)
    if dark_background:
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
        if border.mean() > 0.5:
            x = 1.0 - x
    return x.contiguous()

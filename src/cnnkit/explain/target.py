"""What the CLI explains: a cnnkit checkpoint or a zoo model, and an image file read for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnkit.data.constants import IMAGENET_MEAN, IMAGENET_STD
from cnnkit.data.images import read_image  # noqa: F401 -- re-exported: explain reads images with it
from cnnkit.errors import CnnkitError, is_out_of_memory, out_of_memory


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
    model: nn.Module  # eval mode; takes float (N, C, H, W) in [0, 1]
    prefix: str  # layer names users give are relative to this sub-module ("net.")
    classes: list[str]  # class names, index -> name
    input_size: tuple[int, int, int]  # (C, H, W) the model was built for
    dark_background: bool = False  # digit-like data: light-background images are inverted
    random_weights: bool = False  # a zoo network built without weights: it shows an untrained network

    @property
    def net(self) -> nn.Module:
        return self.model.get_submodule(self.prefix[:-1]) if self.prefix else self.model

    def layer(self, name: str) -> str:
        """A user's layer name (relative to ``net``) as a name in ``model``; CnnkitError if unknown."""
        from cnnkit.explain.hooks import resolve_layer

        resolve_layer(self.net, name)
        return self.prefix + name

    def check_accepts(self, x: torch.Tensor, source: str = "") -> None:
        """One dry forward of the (C, H, W) image; a CnnkitError naming the size the model was built for."""
        try:
            with torch.no_grad():
                self.model(x[None])
        except (RuntimeError, MemoryError) as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(f"running the model on the {x.shape[-2]}x{x.shape[-1]} image{source}") from None
            c, h, w = self.input_size
            raise CnnkitError(
                f"the model does not accept a {x.shape[-2]}x{x.shape[-1]} image{source}; it was "
                f"built for {h}x{w}: pass --resize (or resize the image)"
            ) from None

    def user_name(self, name: str) -> str:
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

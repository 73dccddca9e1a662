"""Preprocessing matched to a backbone: input size, centre-crop share, per-channel mean and std.

Pretrained weights only work on inputs prepared the way they were trained: torchvision's ImageNet
models take 224x224 centre crops of images resized to 256 (crop share 0.875), scaled to [0, 1] and
normalised by the ImageNet mean/std; Xception (Keras/timm) maps pixels to [-1, 1] at 299x299.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnkit.data.constants import IMAGENET_MEAN, IMAGENET_STD

INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # x / 127.5 - 1
GREY_MEAN, GREY_STD = (0.5,), (0.5,)  # one channel: [0,1] -> [-1,1]
# families whose reference weights expect [-1, 1] inputs; every other 3-channel family: ImageNet
_INCEPTION_FAMILIES = ("xception",)


@dataclass(frozen=True)
class Preprocess:
    input_size: tuple[int, int, int]  # (C, H, W) the network sees
    mean: tuple[float, ...]  # per channel, on [0, 1] pixels
    std: tuple[float, ...]
    crop_fraction: float = 0.875  # share of the resized image the centre crop keeps (256 -> 224)
    interpolation: str = "bilinear"  # resampling of the resize: "bilinear" | "bicubic"

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) 0..255 or float [0, 1] -> normalised float32."""
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return normalize(x, self.mean, self.std)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel of a (N, C, H, W) batch."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def preprocess_for(
    model_name: str, in_channels: int | None = None, image_size: tuple[int, int] | None = None
) -> Preprocess:
    """The preprocessing a zoo model's reference weights expect.

    Args:
        model_name: a zoo name (``cnnkit zoo``); its registered input size, and the mean/std listed
            with its published weights (:data:`cnnkit.models.weights.PRETRAINED`), decide.
        in_channels: override the channel count (1 gives grey mean/std 0.5).
        image_size: override ``(H, W)`` (e.g. smaller images for a quick run); the crop share stays.
    """
    from cnnkit.models import model_info
    from cnnkit.models.weights import PRETRAINED

    info = model_info(model_name)
    c = in_channels if in_channels is not None else info.input_size[0]
    h, w = image_size if image_size is not None else info.input_size[1:]
    if c == 1:
        mean, std = GREY_MEAN, GREY_STD
    elif c == 3 and model_name in PRETRAINED:  # what the published weights were trained with
        mean, std = PRETRAINED[model_name].mean, PRETRAINED[model_name].std
    elif info.family in _INCEPTION_FAMILIES:
        mean, std = INCEPTION_MEAN, INCEPTION_STD
    elif c == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.5,) * c, (0.5,) * c
    crop = 0.875 if min(h, w) >= 64 else 1.0  # small inputs (MNIST-sized) are not centre-cropped
    interpolation = "bilinear"
    if c == 3 and model_name in PRETRAINED:
        crop, interpolation = PRETRAINED[model_name].crop_fraction, PRETRAINED[model_name].interpolation
    return Preprocess((c, h, w), mean, std, crop, interpolation)


# Fine-tuning a pretrained network: its input side times 9/7 (224 -> 288). ImageNet training's random
# resized crops show objects larger than a centre crop of the same size does, so a network tested at
# its training size sees objects too small (Touvron et al. 2019, "Fixing the train-test resolution
# discrepancy", https://arxiv.org/abs/1906.06423). The sizes compared are in
# docs/experiments/2026-12-01-finetune-defaults.md.
FINETUNE_SCALE = 9 / 7


def finetune_preprocess(
    model_name: str, pretrained: bool, image_size: tuple[int, int] | None = None, in_channels: int | None = None
) -> Preprocess:
    """:func:`preprocess_for` at the size fine-tuning uses: ``image_size`` when given, else the
    model's own size -- times :data:`FINETUNE_SCALE` (to a multiple of 32) for pretrained weights."""
    if image_size is None and pretrained:
        from cnnkit.models import model_info

        h, w = model_info(model_name).input_size[1:]
        image_size = tuple(max(32, round(d * FINETUNE_SCALE / 32) * 32) for d in (h, w))
    return preprocess_for(model_name, in_channels, image_size)


def load_photo(path, pre: Preprocess) -> torch.Tensor:
    """An image file prepared as ``pre`` says (shorter side resized, centre crop): float (C, H, W) in [0, 1]."""
    from cnnkit.data.imagefolder import decode_image

    image = decode_image(path, pre.image_size, pre.input_size[0], "shorter", pre.crop_fraction, pre.interpolation)
    return image.float() / 255


def pretrained_classifier(model_name: str):
    """Zoo model ``model_name`` with its published ImageNet weights, normalisation inside, and the
    1,000 class names: float (N, 3, H, W) in [0, 1] -> logits, as ``cnnkit.load`` returns a run."""
    from cnnkit.models import create_model
    from cnnkit.models.deploy import Classifier
    from cnnkit.models.weights import imagenet_classes

    pre = preprocess_for(model_name)
    net = create_model(model_name, weights="imagenet")
    # channels-last weights: efficientnet_lite0 at 224, batch 1 runs 27.2 ms/image against 32.6 ms
    # in NCHW (benchmarks/inference.py; torch.compile's 18.2 ms costs a 32 s compile first)
    net = net.to(memory_format=torch.channels_last)
    model = Classifier(net, pre.mean, pre.std, imagenet_classes(), pre.input_size).eval()
    model.preprocess = pre
    return model

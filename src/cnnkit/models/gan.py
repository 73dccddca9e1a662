"""DCGAN (Radford, Metz & Chintala 2016, "Unsupervised representation learning with deep convolutional
generative adversarial networks", https://arxiv.org/abs/1511.06434) for 28x28 digits.

The generator projects a latent vector to a 7x7 map (the paper's first layer: a matrix multiplication,
reshaped), then doubles the side twice with strided transposed convolutions (batch norm and ReLU between,
tanh out): an image in [-1, 1]. The discriminator halves the side twice with strided convolutions
(LeakyReLU 0.2, batch norm on the second), then one linear unit: the real-vs-generated logit. No
pooling, no fully connected hidden layers, weights drawn from N(0, 0.02) -- the paper's guidelines.

Class-conditional variants (Mirza & Osindero 2014, "Conditional generative adversarial nets") read
the class too: the generator's input is the latent vector followed by the class's one-hot code
(B, latent_dim + classes), the discriminator's the image followed by one constant plane per class
(B, channels + classes, 28, 28). The pair that trains and samples them is
:mod:`cnnkit.tasks.generate`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: conv, transposed-conv and linear weights from N(0, 0.02), batch-norm
    scales from N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """Latent vector (+ one-hot class) -> image in [-1, 1].

    Input shape: (B, latent_dim + classes). Output shape: (B, out_channels, 28, 28).

    Attributes:
        latent_dim: length of the noise vector.
        classes: classes it is conditioned on (0: unconditional).
        out_channels: channels of the image it makes.
    """

    def __init__(self, latent_dim: int = 100, out_channels: int = 1, classes: int = 0, width: int = 32):
        super().__init__()
        self.latent_dim, self.classes, self.out_channels, self.width = latent_dim, classes, out_channels, width
        self.project = nn.Sequential(
            nn.Linear(latent_dim + classes, 4 * width * 7 * 7, bias=False),  # (B, Z) -> (B, 4w*49)
            nn.BatchNorm1d(4 * width * 7 * 7),
            nn.ReLU(inplace=True),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False),  # (B, 4w, 7, 7) -> (B, 2w, 14, 14)
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, out_channels, 4, 2, 1),  # -> (B, C, 28, 28)
            nn.Tanh(),
        )
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], 4 * self.width, 7, 7)
        return self.up(x)


class DCGANDiscriminator(Classifier):
    """Image (+ class planes) -> real-vs-generated logit: a binary classifier of the zoo's interface.

    Input shape: (B, in_channels, 28, 28). Output shape: (B, num_classes) (1: the logit).

    Attributes:
        num_classes: outputs of the head (1 for a GAN).
        num_features: the head's input width (2 * width * 7 * 7).
        projection: classes of the projection term (:meth:`judge`; 0: none).
    """

    def __init__(self, num_classes: int = 1, in_channels: int = 1, width: int = 32, projection: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, 2, 1),  # (B, C, 28, 28) -> (B, w, 14, 14)
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),  # -> (B, 2w, 7, 7)
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.num_features = 2 * width * 7 * 7
        self.num_classes = num_classes
        self.classifier: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        # the projection discriminator (Miyato & Koyama 2018): a class's embedding dotted with the
        # features is added to the logit, at the same cost for any number of classes
        self.projection = projection
        if projection:
            self.embed = nn.Embedding(projection, self.num_features)
        dcgan_init(self)
        if projection:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def judge(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images and (B,) classes -> (B, num_classes) logits, the class's projection
        added to the first (a discriminator built with ``projection``)."""
        h = self.forward_head(self.forward_features(x), pre_logits=True)  # (B, 2w*49)
        out = self.classifier(h)
        if not self.projection:
            return out
        proj = (self.embed(labels) * h).sum(1, keepdim=True)  # (B, 1)
        return torch.cat([out[:, :1] + proj, out[:, 1:]], 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (B, 2w, 7, 7) -> (B, 2w*49)
        return x if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear head with ``num_classes`` outputs (0: none)."""
        check_args(num_classes, 1)
        w = next(self.parameters())
        head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.classifier = head.to(w.device, w.dtype)
        self.num_classes = num_classes


def _positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CnnkitError(f"{name} must be an integer >= 1; received: {name}={value!r}")


def _generator(latent_dim, out_channels, classes, width, num_classes, in_channels) -> DCGANGenerator:
    if num_classes is not None or in_channels is not None:
        raise CnnkitError(
            "a DCGAN generator takes a latent vector and has no classifier; received: "
            f"num_classes={num_classes}, in_channels={in_channels}; use latent_dim=, out_channels= and classes="
        )
    _positive(latent_dim=latent_dim, out_channels=out_channels, width=width)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise CnnkitError(f"classes must be an integer >= 0 (0: unconditional); received: classes={classes!r}")
    return DCGANGenerator(latent_dim, out_channels, classes, width)


@register_model(input_size=(100,), paper="Radford et al. 2016", family="gan", task="generate")
def dcgan_generator(
    latent_dim: int = 100, out_channels: int = 1, classes: int = 0, width: int = 32, num_classes=None, in_channels=None
) -> DCGANGenerator:
    """The DCGAN generator for 28x28 images: (B, latent_dim + classes) -> (B, out_channels, 28, 28)."""
    return _generator(latent_dim, out_channels, classes, width, num_classes, in_channels)


@register_model(input_size=(110,), paper="Radford et al. 2016; Mirza & Osindero 2014", family="gan", task="generate")
def dcgan_generator_cond(
    latent_dim: int = 100, out_channels: int = 1, classes: int = 10, width: int = 32, num_classes=None, in_channels=None
) -> DCGANGenerator:
    """The class-conditional DCGAN generator: noise and a one-hot class (B, 110) -> (B, 1, 28, 28)."""
    return _generator(latent_dim, out_channels, classes, width, num_classes, in_channels)


@register_model(input_size=(1, 28, 28), paper="Radford et al. 2016", family="gan_discriminator", task="generate")
def dcgan_discriminator(num_classes: int = 1, in_channels: int = 1, width: int = 32) -> DCGANDiscriminator:
    """The DCGAN discriminator for 28x28 images: (B, in_channels, 28, 28) -> (B, 1) logit."""
    check_args(num_classes, in_channels)
    _positive(width=width)
    return DCGANDiscriminator(num_classes, in_channels, width)


@register_model(
    input_size=(11, 28, 28),
    paper="Radford et al. 2016; Mirza & Osindero 2014",
    family="gan_discriminator",
    task="generate",
)
def dcgan_discriminator_cond(num_classes: int = 1, in_channels: int = 11, width: int = 32) -> DCGANDiscriminator:
    """The class-conditional DCGAN discriminator: a digit and 10 class planes (B, 11, 28, 28) -> (B, 1) logit."""
    check_args(num_classes, in_channels)
    _positive(width=width)
    return DCGANDiscriminator(num_classes, in_channels, width)

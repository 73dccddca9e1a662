"""A GAN as an engine task: two networks, two optimisers, one step that alternates between them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.imageset import ImageSet
from cnnkit.errors import CnnkitError
from cnnkit.models.gan import DCGANDiscriminator, DCGANGenerator
from cnnkit.tasks.classify.task import (
    _Batches,  # an epoch's batches made one at a time: the same for every task
)
from cnnkit.tasks.generate.predict import Sampler


class GAN(nn.Module):
    """The pair that trains: a generator (as its deployable :class:`Sampler`) and a discriminator.

    Args:
        generator: the sampler wrapping the generator network.
        discriminator: image (+ class planes when conditional) -> real-vs-generated logit.
    """

    def __init__(self, generator: Sampler, discriminator: DCGANDiscriminator):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator

    def judge(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] and their (B,) classes -> (B, 1 + codes) logits: real vs
        generated first, then (InfoGAN) the code read from the image. Classes are ignored when
        unconditional; a conditional discriminator reads one constant plane per class after the
        image, a cluster-conditioned one adds the cluster's projection to its logit."""
        if self.discriminator.projection:
            return self.discriminator.judge(x, labels)
        k = len(self.generator.classes)
        if k:
            planes = F.one_hot(labels, k).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, planes], 1)  # (B, C + K, H, W)
        return self.discriminator(x)


def build_gan(
    latent_dim: int,
    width: int,
    classes: list[str],
    channels: int = 1,
    codes: int = 0,
    prior: list[float] | None = None,
) -> GAN:
    """A DCGAN pair (the paper's N(0, 0.02) initialisation) for 28x28 images.

    Args:
        latent_dim: the length of the generator's noise vector.
        width: the networks' base channel count.
        classes: the class names of a conditional pair; empty: unconditional.
        channels: image channels.
        codes: an unconditional pair's categorical code (InfoGAN): the generator reads its one-hot,
            the discriminator has ``codes`` more outputs that read it back.
        prior: a cluster-conditioned pair (``--clusters``): the clusters' shares of the training
            digits. The generator reads the cluster's one-hot as an unnamed code drawn by these
            shares; the discriminator adds the cluster's projection to its logit.

    Returns:
        The :class:`GAN`: a :class:`Sampler` around the generator, and the discriminator.
    """
    if prior is not None:
        k = len(prior)
        generator = Sampler(DCGANGenerator(latent_dim, channels, k, width), [], k, prior)
        return GAN(generator, DCGANDiscriminator(1, channels, width, projection=k))
    k = len(classes)
    generator = Sampler(DCGANGenerator(latent_dim, channels, k + codes, width), classes, codes)
    return GAN(generator, DCGANDiscriminator(1 + codes, channels + k, width))


@dataclass
class GenerateTask:
    """GAN training as an engine :class:`~cnnkit.engine.Task` with its own ``step``.

    Each step draws a real batch, noise and (conditional) the classes to draw; updates the
    discriminator on the real batch (target 1) and the generated one (target 0), then the generator
    so that the discriminator calls its images real (the non-saturating loss of Goodfellow et al.
    2014). Optimisers: ``[generator's, discriminator's]``. With a code (InfoGAN, Chen et al. 2016),
    both updates also minimise the cross-entropy of the discriminator's reading of the generated
    images' code (weight ``info_weight``: the paper's 1 for a categorical code), which ties each
    code to a kind of image the discriminator can tell apart: for digits, mostly one digit a code.

    Attributes:
        batch_size: real digits per step.
        latent_dim: length of the noise vector.
        codes: values of the unconditional generator's categorical code (0: none).
        prior: cluster-conditioned training (``--clusters``): the clusters' shares, by which the
            clusters of the generated batch are drawn (the real digits' classes are their clusters).
        info_weight: weight of the code's cross-entropy in both losses.
        max_batches: batches per epoch at most (a smoke test's couple); None: all.
        info: checkpoint metadata: data, config, ...
        name: ``"generate"``, stored as the checkpoint's task.
        metric: ``"score"``: the MNIST score, when a run is evaluated.
    """

    batch_size: int = 64
    latent_dim: int = 100
    codes: int = 0
    prior: list[float] | None = None
    info_weight: float = 1.0
    max_batches: int | None = None
    info: dict = field(default_factory=dict)
    name: str = "generate"
    metric: str = "score"

    def batches(self, data: ImageSet, generator: torch.Generator, train: bool = True):
        """Shuffled ``(x, y, z, fake_y)``: real images (B, C, H, W) in [-1, 1] with their classes, the
        noise (B, latent_dim) and the classes to draw (B,), all drawn from ``generator``."""
        n, b = len(data), self.batch_size
        if n < b:
            raise CnnkitError(f"{data.name} has {n} image(s), fewer than one batch of {b}; lower --batch-size")
        dev = generator.device
        order = torch.randperm(n, generator=generator, device=dev)
        chunks = [order[i * b : (i + 1) * b] for i in range(n // b)]
        chunks = chunks[: self.max_batches] if self.max_batches else chunks
        k = self.codes or len(data.classes)
        weights = None if self.prior is None else torch.tensor(self.prior, dtype=torch.float32, device=dev)

        def make(idx: torch.Tensor):
            idx = idx.to(data.images.device)
            x = data.images[idx].to(dev).float().div_(127.5).sub_(1)  # uint8 -> [-1, 1]
            z = torch.randn(len(idx), self.latent_dim, generator=generator, device=dev)
            if weights is None:
                fake_y = torch.randint(k, (len(idx),), generator=generator, device=dev)
            else:  # clusters: drawn as often as they hold training digits
                fake_y = torch.multinomial(weights, len(idx), replacement=True, generator=generator)
            return x, data.labels[idx].to(dev), z, fake_y

        return _Batches(chunks, make)

    def step(self, model: GAN, batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        """One discriminator update, then one generator update; the batch's sums of both losses and
        of the discriminator's mean belief that real and generated images are real."""
        opt_g, opt_d = optimizers
        x, y, z, fake_y = batch
        n = x.shape[0]
        fake = model.generator.net(model.generator.condition(z, fake_y))  # (B, C, H, W) in [-1, 1]
        real_logit = model.judge(x, y)[:, 0]
        fake_out = model.judge(fake.detach(), fake_y)  # (B, 1 + codes)
        fake_logit = fake_out[:, 0]
        d_loss = F.binary_cross_entropy_with_logits(
            real_logit, torch.ones_like(real_logit)
        ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        if self.codes:  # the discriminator learns to read the code back
            d_loss = d_loss + self.info_weight * F.cross_entropy(fake_out[:, 1:], fake_y)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_out = model.judge(fake, fake_y)  # the updated discriminator
        g_logit = g_out[:, 0]
        g_loss = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))
        if self.codes:  # ... and the generator to draw it legibly
            g_loss = g_loss + self.info_weight * F.cross_entropy(g_out[:, 1:], fake_y)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return {
            "d_loss": d_loss.detach() * n,
            "g_loss": g_loss.detach() * n,
            # in float32: a bf16 sum of a batch's beliefs keeps 8 bits (about 0.2% off at 64 digits)
            "d_real": torch.sigmoid(real_logit.detach().float()).sum(),
            "d_fake": torch.sigmoid(fake_logit.detach().float()).sum(),
            "n": torch.tensor(float(n), device=x.device),
        }

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Not used: a GAN's step is :meth:`step` (two losses, two optimisers)."""
        raise CnnkitError("a GAN trains by GenerateTask.step, not by one loss")

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """No validation while training (the MNIST score needs a classifier: ``cnnkit generate eval``)."""
        return {}

    def deployable(self, model: GAN) -> nn.Module:
        """The generator: what ``model.safetensors`` holds and ``cnnkit.load`` rebuilds."""
        return model.generator

    def describe(self, model: GAN) -> dict:
        """The checkpoint's metadata: ``info`` plus the generator's own description."""
        return {**self.info, **model.generator.describe()}

    def summary(self, model: GAN) -> str:
        """Both networks' :func:`cnnkit.summary` with their Adam optimisers, printed before training."""
        from cnnkit.analysis import summary

        g, d = model.generator.net, model.discriminator
        k = len(model.generator.classes)
        return "\n".join(
            [
                "generator",
                str(summary(g, input_size=(g.latent_dim + g.classes,), batch_size=self.batch_size, optimizer="adam")),
                "discriminator",
                str(summary(d, input_size=(g.out_channels + k, 28, 28), batch_size=self.batch_size, optimizer="adam")),
            ]
        )

"""The deployable generator (:class:`Sampler`) and the PNG grids of digits it draws."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.data.images import MAX_DECODE_PIXELS
from cnnkit.engine.runfolder import atomic_write_bytes
from cnnkit.errors import CnnkitError, check_folder
from cnnkit.models.gan import DCGANGenerator


class Sampler(nn.Module):
    """A trained generator with its conditioning inside: noise (+ class) -> images in [0, 1].

    Args:
        net: the generator network, (B, latent_dim + classes) -> (B, C, H, W) in [-1, 1].
        classes: names of the classes it is conditioned on ([]: unconditional).
        codes: an unconditional generator's categorical code (InfoGAN, Chen et al. 2016, or the
            clusters of ``--clusters``): its one-hot follows the noise like a class's, but no class
            is named; drawn at random when none is given (0: no code).
        prior: the probability of each code value when one is drawn (the clusters' shares of the
            training digits); None: uniform.

    Example:
        >>> sampler = Sampler(DCGANGenerator(classes=10), [str(d) for d in range(10)]).eval()
        >>> sampler.sample(4, labels=torch.tensor([7, 7, 1, 1])).shape
        torch.Size([4, 1, 28, 28])
    """

    def __init__(self, net: DCGANGenerator, classes: list[str], codes: int = 0, prior: list[float] | None = None):
        super().__init__()
        if classes and codes:
            raise CnnkitError("a generator is conditioned on named classes or on an unnamed code, not both")
        if len(classes) + codes != net.classes:
            raise CnnkitError(
                f"the generator reads a {net.classes}-way one-hot; received {len(classes)} class names and {codes} codes"
            )
        if prior is not None:
            prior = [float(v) for v in prior]
            if len(prior) != codes or not all(math.isfinite(v) and v >= 0 for v in prior) or not sum(prior) > 0:
                raise CnnkitError(
                    f"a code's prior is {codes} non-negative numbers with a positive sum; received {prior[:20]}"
                )
        self.net = net
        self.classes = list(classes)
        self.codes = int(codes)
        self.prior = prior
        self.latent_dim = net.latent_dim

    def draw_codes(self, count: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(count,) code values drawn by the prior (uniform without one)."""
        if self.prior is None:
            codes = torch.randint(self.codes, (count,), generator=generator)
        else:
            weights = torch.tensor(self.prior, dtype=torch.float64)
            codes = torch.multinomial(weights, count, replacement=True, generator=generator)
        return codes if device is None else codes.to(device)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent_dim) noise and (B,) class or code indices -> (B, C, 28, 28) in [0, 1]."""
        return self.net(self.condition(z, labels)).add(1).div(2)

    def condition(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The generator's input: the noise, followed by the one-hot class (or code) when it reads one;
        a code not given is drawn at random."""
        k = self.net.classes  # the width of the one-hot it reads: its classes or its code's values
        if not k:
            return z
        if labels is None and self.codes:
            labels = self.draw_codes(z.shape[0], device=z.device)
        if labels is None:
            raise CnnkitError(f"this generator draws a chosen digit: give one of {len(self.classes)} classes (--digit)")
        return torch.cat([z, F.one_hot(labels.long(), k).to(z.dtype)], 1)

    @torch.no_grad()
    def sample(
        self, count: int, labels: torch.Tensor | None = None, seed: int = 0, batch_size: int = 500
    ) -> torch.Tensor:
        """``count`` new images from noise seeded by ``seed``, made in batches.

        Args:
            count: how many images.
            labels: (count,) class of each image (conditional generators), or code (None: codes
                drawn at random; unconditional generators without a code take none).
            seed: seeds the noise (the same seed draws the same images).
            batch_size: images per forward pass.

        Returns:
            (count, C, 28, 28) float images in [0, 1], on the module's device.
        """
        device = next(self.parameters()).device
        rng = torch.Generator().manual_seed(seed)
        z = torch.randn(count, self.latent_dim, generator=rng).to(device)
        if labels is None and self.codes:  # an unconditional generator's code: drawn from the same seed
            labels = self.draw_codes(count, rng)
        labels = None if labels is None else labels.to(device)
        parts = [
            self(z[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
            for i in range(0, count, batch_size)
        ]
        return torch.cat(parts) if parts else z.new_zeros(0, self.net.out_channels, 28, 28)

    def describe(self) -> dict:
        """The checkpoint's metadata that :meth:`from_info` rebuilds the module from."""
        net = self.net
        return {
            "task": "generate",
            "generator": {
                "latent_dim": net.latent_dim,
                "out_channels": net.out_channels,
                "classes": net.classes,
                "width": net.width,
            },
            "classes": self.classes,
            "codes": self.codes,
            **({"prior": self.prior} if self.prior is not None else {}),
        }

    @classmethod
    def from_info(cls, info: dict) -> Sampler:
        """The (untrained) module a checkpoint's metadata describes; load its state dict after."""
        if info.get("task") != "generate" or "generator" not in info:
            raise CnnkitError("this checkpoint is not a generator (no 'generator' in its metadata)")
        g = info["generator"]
        net = DCGANGenerator(int(g["latent_dim"]), int(g["out_channels"]), int(g["classes"]), int(g["width"]))
        prior = info.get("prior")
        if prior is not None and not isinstance(prior, list):
            raise CnnkitError(f"the checkpoint's prior is not a list of numbers; received {type(prior).__name__}")
        return cls(net, [str(c) for c in info["classes"]], int(info.get("codes", 0)), prior)


def grid_size(count: int, cols: int | None = None, side: int = 28, pad: int = 2, scale: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of the grid :func:`write_grid` draws of ``count`` images."""
    cols = cols or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    return (cols * (side + pad) + pad) * scale, (rows * (side + pad) + pad) * scale


def write_grid(images: torch.Tensor, path, cols: int | None = None, pad: int = 2, scale: int = 2) -> Path:
    """Images as one PNG grid, row by row, on a grey background; written atomically.

    Args:
        images: (N, C, H, W) floats in [0, 1] (C = 1 or 3).
        path: the PNG to write.
        cols: images per row (default: the square root of N, rounded up).
        pad: pixels between images.
        scale: each pixel drawn as ``scale`` x ``scale`` (28 px digits are small on a screen).

    Returns:
        The path written.

    Raises:
        CnnkitError: no images, or a file that cannot be written.
    """
    import io

    from PIL import Image

    n, c, h, w = images.shape
    if n == 0:
        raise CnnkitError("no images to draw: ask for --count of at least 1")
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, top : top + h, left : left + w] = image
    canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    pixels = canvas.mul(255).round().to(torch.uint8)
    array = pixels[0].numpy() if c == 1 else pixels.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def predict(
    sampler: Sampler, out, count: int = 64, digit: int | None = None, seed: int = 0, cols: int | None = None
) -> Path:
    """Draw ``count`` new digits (all of class ``digit`` for a conditional generator) into the PNG ``out``.

    Args:
        sampler: a trained generator (:func:`~cnnkit.tasks.generate.load_generator`).
        out: the PNG to write.
        count: how many digits.
        digit: the class to draw (a conditional generator needs one; an unconditional takes none).
        seed: seeds the noise.
        cols: digits per row (default: a square).

    Returns:
        The path written.

    Raises:
        CnnkitError: a count below 1 or whose grid would pass :data:`~cnnkit.data.images.MAX_DECODE_PIXELS`,
            a digit for an unconditional generator, a missing or unknown digit.

    Example:
        >>> predict(load_generator("runs/cgan"), "sevens.png", count=16, digit=7)   # doctest: +SKIP
        PosixPath('sevens.png')
    """
    if Path(out).suffix.lower() != ".png":  # the grid is PNG bytes: a .jpg or .txt name would lie about them
        raise CnnkitError(f"--out must name a .png file (the grid is a PNG). Received: --out {out}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CnnkitError(f"--count must be a positive integer. Received: --count {count}")
    width, height = grid_size(count, cols)
    if width * height > MAX_DECODE_PIXELS:  # checked before a digit is drawn: the grid would fill the memory
        raise CnnkitError(
            f"--count {count:,} draws a grid of {width:,} x {height:,} pixels, more than the "
            f"{MAX_DECODE_PIXELS:,} an image may hold here (about 24,000 digits); lower --count"
        )
    if Path(out).is_dir():
        raise CnnkitError(f"--out {out} is a folder; give the PNG file to write, e.g. {Path(out) / 'digits.png'}")
    check_folder(Path(out).parent, "--out")  # writable: known now, not after the digits are drawn
    labels = None
    if sampler.classes:
        if digit is None or not 0 <= digit < len(sampler.classes):
            given = "no --digit" if digit is None else f"--digit {digit}"
            raise CnnkitError(
                f"this generator is conditional: pass --digit 0..{len(sampler.classes) - 1}. Received: {given}"
            )
        labels = torch.full((count,), int(digit), dtype=torch.long)
    elif digit is not None:
        raise CnnkitError(f"this generator is unconditional: it cannot draw a chosen digit. Received: --digit {digit}")
    return write_grid(sampler.eval().sample(count, labels, seed), out, cols)

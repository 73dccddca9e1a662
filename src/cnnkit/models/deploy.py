"""Deployable classifiers: a network with its input normalisation and test-time augmentation inside."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    """A network with its input normalisation inside: float (N, C, H, W) in [0, 1] -> logits.

    Attributes: ``net`` (the bare network), ``classes``, ``input_size`` (C, H, W) of the images it
    takes, ``tta`` ("" | "shift" | "flip": test-time augmentation applied in eval mode), ``pad``
    (pixels of black added on every side before the network: LeNet-5 takes MNIST's 28x28 digits
    padded to its 32x32, as LeCun et al. did).
    """

    def __init__(self, net: nn.Module, mean, std, classes: list[str], input_size, tta: str = "", pad: int = 0):
        super().__init__()
        self.net = net
        c = len(mean)
        # the buffers are float32 (what a checkpoint stores); the values as given are kept for a
        # float64 Classifier, whose buffers take them rather than their float32 rounding (_apply)
        self._given = {"mean": tuple(map(float, mean)), "std": tuple(map(float, std))}
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.classes = list(classes)
        self.input_size = tuple(input_size)
        self.tta = tta
        self.pad = int(pad)

    @property
    def net_input_size(self) -> tuple[int, ...]:
        """(C, H, W) that ``net`` itself sees: ``input_size`` grown by ``pad`` on every side."""
        c, h, w = self.input_size
        return (c, h + 2 * self.pad, w + 2 * self.pad)

    def _given_values(self, name: str, like: torch.Tensor) -> torch.Tensor | None:
        """The ``name`` buffer's values as given, in float64 shaped as ``like``, where ``like`` (the
        buffer, float32) still holds their float32 rounding; None where another state dict was loaded
        into it, or for a Classifier without them (unpickled from an older cnnkit)."""
        given = getattr(self, "_given", {}).get(name)
        if given is None or like.dtype != torch.float32 or like.is_meta:
            return None
        exact = torch.tensor(given, dtype=torch.float64, device=like.device).view_as(like)
        return exact if torch.equal(exact.float(), like) else None

    def normalisation(self) -> tuple[list[float], list[float]]:
        """(mean, std) per channel as given, not rounded to the buffers' float32 (1/255 stays 1/255),
        where the buffers still hold them; else the buffers' values. What a checkpoint's metadata
        stores and a derived Classifier (:func:`cnnkit.models.fcn.to_fcn`) is built from."""
        out = []
        for name in ("mean", "std"):
            buffer = getattr(self, name)
            exact = self._given_values(name, buffer)
            out.append((buffer if exact is None else exact).flatten().tolist())
        return out[0], out[1]

    def _apply(self, fn, recurse=True):
        """``nn.Module._apply`` (``.to``, ``.double()``, ...), where a float32 buffer cast to float64
        takes its given values in float64: a float64 network divides by 1/255 itself, as Keras in
        float64 does, not by its float32 rounding (a relative 6e-8 off)."""
        before = {name: self._given_values(name, getattr(self, name)) for name in ("mean", "std")}
        super()._apply(fn, recurse)
        for name, exact in before.items():
            new = getattr(self, name)
            if exact is not None and new.dtype == torch.float64:
                setattr(self, name, exact.to(new.device))
        return self

    @contextlib.contextmanager
    def without_tta(self):
        """Within the block the model answers from the image alone (cheap per-epoch validation)."""
        tta, self.tta = self.tta, ""
        try:
            yield self
        finally:
            self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        x = (x - self.mean) / self.std
        if self.tta and not self.training:
            return tta_logits(self.net, x, self.tta)
        return self.net(x)


class Ensemble(nn.Module):
    """Members' probabilities averaged; returns their log (valid logits)."""

    def __init__(self, members: list[Classifier]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.net = nn.ModuleList(m.net for m in members)
        self.classes = members[0].classes
        self.input_size = members[0].input_size

    @contextlib.contextmanager
    def without_tta(self):
        """Within the block every member answers from the image alone (as :meth:`Classifier.without_tta`)."""
        with contextlib.ExitStack() as stack:
            for m in self.members:
                if hasattr(m, "without_tta"):
                    stack.enter_context(m.without_tta())
            yield self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def flip_tta(tta: str | None) -> str:
    """``--tta`` of the detection and segmentation tasks (flip | none) as their models keep it:
    ``"flip"`` | ``""`` (``None`` and ``""`` are none too).

    Raises:
        CnnkitError: any other value.
    """
    from cnnkit.errors import CnnkitError

    if tta in (None, "", "none"):
        return ""
    if tta != "flip":
        raise CnnkitError(f"--tta is flip or none. Received: --tta {tta}")
    return tta


def tta_logits(net: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Average the probabilities of the image and shifted (by 1 px) or flipped copies."""
    views = [x]
    if kind == "shift":
        p = F.pad(x, (1, 1, 1, 1))  # (N, C, H+2, W+2)
        h, w = x.shape[-2:]
        views += [p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    elif kind == "flip":
        views.append(x.flip(-1))
    probs = torch.stack([net(v).float().softmax(1) for v in views]).mean(0)
    return probs.clamp_min(1e-12).log()

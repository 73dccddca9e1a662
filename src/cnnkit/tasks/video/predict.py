"""The deployable :class:`VideoClassifier`, its answers on clips, and clips drawn as strips of frames."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError

DIGITS = [str(d) for d in range(10)]


class VideoClassifier(nn.Module):
    """A clip classifier with its input handling inside: float clips (B, T, C, H, W) in [0, 1] -> logits (B, K).

    It keeps every ``stride``-th frame (at most ``frames`` of them), resizes the frames to ``size``,
    normalises with ``mean`` / ``std`` and hands the network (B, C, T', size, size).

    Args:
        net: the network, (B, C, T', H', W') -> (B, K); ``model`` names it in the zoo.
        model: the zoo name that rebuilds ``net`` (data, never code).
        classes: the class names (the digits).
        frames: frames the network sees.
        stride: step between the frames it sees.
        size: side the frames are resized to.
        mean: the input mean (one channel value or one per channel).
        std: the input standard deviation.
        channels: channels of a frame.

    Attributes:
        net, model, classes, frames, stride, size: as above.
    """

    def __init__(
        self,
        net: nn.Module,
        model: str,
        classes: list[str],
        frames: int,
        stride: int,
        size: int,
        mean: float = 0.0,
        std: float = 1.0,
        channels: int = 1,
    ):
        super().__init__()
        self.net, self.model, self.classes = net, model, list(classes)
        self.frames, self.stride, self.size, self.channels = int(frames), int(stride), int(size), int(channels)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) in [0, 1] -> the network's (B, C, T', size, size), normalised."""
        if x.dim() != 5 or x.shape[2] != self.channels:
            raise CnnkitError(
                f"a clip classifier takes clips (B, T, C={self.channels}, H, W); received shape {tuple(x.shape)}"
            )
        need = (self.frames - 1) * self.stride + 1
        if x.shape[1] < need:
            raise CnnkitError(
                f"this network sees {self.frames} frames {self.stride} apart: clips need at least {need} "
                f"frames; received {x.shape[1]}"
            )
        x = x[:, : need : self.stride]  # (B, T', C, H, W)
        b, t, c, h, w = x.shape
        # an export resizes always (the identity at size x size): its graph then resizes any frame size
        # instead of keeping or dropping the resize by the example's size (torch.export: the dynamo ONNX
        # exporter; torch.onnx.is_in_onnx_export: the TorchScript one, cnnkit.export's antialiased Resize)
        if (h, w) != (self.size, self.size) or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            x = F.interpolate(x.reshape(b * t, c, h, w), size=(self.size, self.size), mode="bilinear", antialias=True)
            x = x.view(b, t, c, self.size, self.size)
        x = (x - self.mean) / self.std
        return x.transpose(1, 2)  # (B, C, T', size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        w = next(self.net.parameters())
        # NDHWC weights: NDHWC clips. A 1-channel weight is both layouts at once: its clips are too, no copy.
        # An ONNX graph has no memory layout (the TorchScript exporter refuses the call): not while exporting
        ndhwc = w.dim() == 5 and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last_3d)
        if ndhwc and not (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, K) bool: the classes whose probability is above ``threshold``."""
        return self(x).float().sigmoid() > threshold

    def describe(self) -> dict:
        """The checkpoint's metadata that :meth:`from_info` rebuilds the module from."""
        return {
            "task": "video",
            "model": self.model,
            "classes": self.classes,
            "frames": self.frames,
            "stride": self.stride,
            "size": self.size,
            "channels": self.channels,
            "mean": float(self.mean),
            "std": float(self.std),
        }

    @classmethod
    def from_info(cls, info: dict) -> VideoClassifier:
        """The (untrained) module a checkpoint's metadata describes; load its state dict after."""
        name = str(info["model"])
        net = clip_network(name, len(info["classes"]), int(info["channels"]), int(info["frames"]))
        return cls(
            net,
            name,
            info["classes"],
            info["frames"],
            info["stride"],
            info["size"],
            info["mean"],
            info["std"],
            info["channels"],
        )


def clip_network(name: str, num_classes: int, channels: int, frames: int) -> nn.Module:
    """The zoo clip classifier ``name`` for clips of ``frames`` frames of ``channels`` channels.

    Raises:
        CnnkitError: ``name`` is not a clip classifier of the zoo (task video).
    """
    import inspect

    from cnnkit.models import create_model, model_info

    info = model_info(name)
    if info.task != "video":
        raise CnnkitError(
            f"{name!r} is not a clip classifier; use one of the zoo's task video "
            "(c3d_small, r2plus1d_small, frames2d_small)"
        )
    extra = {"frames": frames} if "frames" in inspect.signature(info.builder).parameters else {}
    return create_model(name, num_classes=num_classes, in_channels=channels, **extra)


@torch.no_grad()
def predict_clips(model: VideoClassifier, clips: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Class probabilities (sigmoid) of clips; the model runs in eval mode, its own mode restored after.

    Args:
        model: a :class:`VideoClassifier`.
        clips: float (N, T, C, H, W) in [0, 1].
        batch_size: clips per forward pass.

    Returns:
        (N, K) probabilities, on CPU.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat(
            [
                model(clips[i : i + batch_size].to(device)).float().sigmoid().cpu()
                for i in range(0, len(clips), batch_size)
            ]
        )
    finally:
        model.train(was)


def frame_strip(rows: list[torch.Tensor], gap: int = 2, scale: int = 1) -> torch.Tensor:
    """Rows of frames side by side, as one RGB picture.

    Rows may have different numbers of frames (the missing ones are left mid grey); a grey clip is
    drawn grey, and ``gap`` pixels of mid grey separate the frames.

    Args:
        rows: clips (T, C, H, W) in [0, 1], one per row, all of one H, W.
        gap: pixels between frames and rows.
        scale: every frame enlarged this many times (nearest).

    Returns:
        (3, rows * (H' + gap) - gap, T * (W' + gap) - gap) uint8, H' = scale H.

    Raises:
        CnnkitError: no rows.
    """
    if not rows:
        raise CnnkitError("a strip needs at least one row of frames")
    h, w = rows[0].shape[-2:]
    h, w = h * scale, w * scale
    t = max(r.shape[0] for r in rows)
    out = torch.full((3, len(rows) * (h + gap) - gap, t * (w + gap) - gap), 128, dtype=torch.uint8)
    for i, row in enumerate(rows):
        frames = row.float().clamp(0, 1)
        if frames.shape[1] == 1:
            frames = frames.expand(-1, 3, -1, -1)
        if scale > 1:
            frames = F.interpolate(frames, scale_factor=scale, mode="nearest")
        frames = (frames * 255).round().to(torch.uint8)  # (T, 3, h, w)
        for j, f in enumerate(frames):
            out[:, i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = f
    return out


def heat_overlay(clip: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """A heat map laid over a clip in red.

    Args:
        clip: (T, C, H, W) in [0, 1] (drawn grey).
        cam: (T, H, W) in [0, 1], e.g. from :func:`~cnnkit.explain.clip_cam.clip_grad_cam`.
        alpha: the heat map's weight where it is 1.

    Returns:
        (T, 3, H, W) in [0, 1].
    """
    grey = clip.float().mean(1, keepdim=True).expand(-1, 3, -1, -1)  # (T, 3, H, W)
    red = torch.stack([cam, torch.zeros_like(cam), torch.zeros_like(cam)], 1)  # (T, 3, H, W)
    return ((1 - alpha * cam[:, None]) * grey + alpha * red).clamp(0, 1)

"""The deployable :class:`FramePredictor`, its predictions, and a clip drawn as a PNG strip and a GIF."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn as nn

from cnnkit.engine.runfolder import atomic_write_bytes, save_png
from cnnkit.errors import CnnkitError
from cnnkit.tasks.video.predict import frame_strip


class FramePredictor(nn.Module):
    """A frame predictor: float frames (B, T, C, H, W) in [0, 1] -> the next T frames (B, T, C, H, W).

    The network's raw output while training; clamped to [0, 1] in eval mode (what is shown and scored).

    Args:
        net: the zoo predictor (``simvp``, ``simvp_tiny``).
        model: its zoo name (rebuilds it: data, never code).
        frames: frames in, and out.
        channels: channels of a frame.
        size: (H, W) of the frames it was trained on.

    Attributes:
        net, model, frames, channels, size: as above.
    """

    def __init__(self, net: nn.Module, model: str, frames: int, channels: int, size: tuple[int, int]):
        super().__init__()
        self.net, self.model = net, model
        self.frames, self.channels, self.size = int(frames), int(channels), (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)  # (B, T, C, H, W)
        return y if self.training else y.clamp(0, 1)

    def describe(self) -> dict:
        """The checkpoint's metadata that :meth:`from_info` rebuilds the module from."""
        return {
            "task": "video_predict",
            "model": self.model,
            "frames": self.frames,
            "channels": self.channels,
            "size": list(self.size),
        }

    @classmethod
    def from_info(cls, info: dict) -> FramePredictor:
        """The (untrained) module a checkpoint's metadata describes; load its state dict after."""
        from cnnkit.models import create_model, model_info

        name = str(info["model"])
        if model_info(name).task != "video_predict":
            raise CnnkitError(f"{name!r} is not a frame predictor of the zoo (task video_predict)")
        net = create_model(name, in_channels=int(info["channels"]), frames=int(info["frames"]))
        return cls(net, name, info["frames"], info["channels"], info["size"])


@torch.no_grad()
def predict_frames(model: FramePredictor, inputs: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The next frames of clips; the model runs in eval mode, its own mode restored after.

    Args:
        model: a :class:`FramePredictor`.
        inputs: float (N, T, C, H, W) in [0, 1], T the model's frames.
        batch_size: clips per forward pass.

    Returns:
        (N, T, C, H, W) in [0, 1], on CPU.

    Raises:
        CnnkitError: inputs of another number of frames, channels or size than the model's.
    """
    if inputs.dim() != 5 or inputs.shape[1:3] != (model.frames, model.channels) or inputs.shape[3:] != model.size:
        raise CnnkitError(
            f"this predictor takes {model.frames} frames of {model.channels} channel(s) and "
            f"{model.size[0]}x{model.size[1]} pixels, (N, T, C, H, W); received shape {tuple(inputs.shape)}"
        )
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat(
            [model(inputs[i : i + batch_size].to(device)).cpu() for i in range(0, len(inputs), batch_size)]
        )
    finally:
        model.train(was)


def write_prediction(
    inputs: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor | None, out_dir, stem: str, scale: int = 2
) -> tuple[Path, Path]:
    """Write a clip's input, truth and prediction as a PNG strip of frames and an animated GIF.

    The strip has a row each (input, truth when given, prediction); the GIF plays the input, then
    the prediction beside the truth (the input frames shown on both sides), one frame per 200 ms.

    Args:
        inputs: (T, C, H, W) in [0, 1], the frames the model saw.
        prediction: (T', C, H, W) in [0, 1].
        truth: (T', C, H, W) in [0, 1], or None.
        out_dir: the folder (created if missing).
        stem: the files' name without extension.
        scale: every frame enlarged this many times (nearest), so small frames can be seen.

    Returns:
        (``out_dir/<stem>.png``, ``out_dir/<stem>.gif``); the GIF has T + T' frames.

    Raises:
        CnnkitError: a file that cannot be written (a full disk, a folder of that name): each file
            is written whole or not at all.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, gif = out_dir / f"{stem}.png", out_dir / f"{stem}.gif"
    rows = [inputs] + ([truth] if truth is not None else []) + [prediction]
    save_png(frame_strip(rows, scale=scale), png)
    pictures = []
    for t in range(len(inputs) + len(prediction)):  # one GIF frame: [truth | prediction] (or the input twice)
        if t < len(inputs):
            pair = [inputs[t : t + 1]] * (2 if truth is not None else 1)
        else:
            k = t - len(inputs)
            pair = ([truth[k : k + 1]] if truth is not None else []) + [prediction[k : k + 1]]
        strip = frame_strip([torch.cat(pair)], scale=scale)  # (3, H, n W)
        pictures.append(Image.fromarray(strip.permute(1, 2, 0).numpy()))
    buf = io.BytesIO()  # encoded whole, then written atomically: never half a GIF under its name
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=200, loop=0)
    atomic_write_bytes(gif, buf.getvalue())
    return png, gif

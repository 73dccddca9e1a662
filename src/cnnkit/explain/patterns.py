"""Filter patterns: inputs optimised by gradient ascent to excite one filter (the notes' ``generate_pattern``).

Start from faint noise around mid-grey, then repeat: the gradient of the filter's mean activation with
respect to the input, normalised by its root mean square (``g / (sqrt(mean(g**2)) + 1e-5)``), times a
step, added to the input. A fixed seed and step count make the result reproducible. One guard the
notes do not have: a step that would lower the activation is not taken and that image's step is
halved (it grows back, up to the full step, after steps that help), so a large step cannot throw a
filter into its dead zone (zero activation, zero gradient).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.explain.base import model_device
from cnnkit.explain.hooks import frozen, is_conv, resolve_layer, run_until


def default_input_size(model: nn.Module, size=None) -> tuple[int, int, int]:
    """(C, H, W) for a synthetic input: ``size`` (int or (H, W)), else ``model.input_size``, else 64x64."""
    declared = getattr(model, "input_size", None)
    if declared is not None and len(declared) == 3:
        channels = int(declared[0])
    else:
        first = next((m for m in model.modules() if is_conv(m)), None)
        channels = first.in_channels if first is not None else 3
        declared = None
    if size is None:
        if declared is not None:
            return tuple(int(v) for v in declared)
        return channels, 64, 64
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return channels, int(h), int(w)


def filter_patterns(
    model: nn.Module,
    layer: str,
    channels: list[int] | None = None,
    size=None,
    steps: int = 40,
    step_size: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Inputs that maximise the mean activation of each chosen channel of ``layer``.

    Args:
        layer: a layer whose output is (N, C, h, w) (a convolution, or the ReLU after it).
        channels: the channels (filters) to optimise for; default the first 16 (all if fewer).
        size: an int or (H, W); default the model's ``input_size`` or 64x64.
        steps: gradient-ascent steps (the notes use 40).
        step_size: each step adds ``step_size * g / (sqrt(mean(g**2)) + 1e-5)`` to the input (the
            notes' ``step = 1.``), in the model's input units; the pattern may leave [0, 1]: it
            is a direction to look at, standardised for display by :func:`cnnkit.plots.pattern_grid`.
            Halved for an image whenever its step would lower the activation, doubled back after
            one that raised it.
        seed: seeds the starting noise ``(128 + 20 * U[0, 1)) / 255``, the notes' grey noise on the
            [0, 1] scale. ``steps=0`` returns that starting noise.
    Returns:
        (len(channels), C, H, W) float tensor on CPU, one optimised input per channel.
    """
    resolve_layer(model, layer)
    c, h, w = default_input_size(model, size)
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    with frozen(model):
        with torch.no_grad():
            probe = run_until(model, torch.zeros(1, c, h, w, device=device), layer)
        if not isinstance(probe, torch.Tensor) or probe.dim() != 4:
            shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
            raise CnnkitError(
                f"layer {layer!r} gives {shape}; filter patterns need a layer with (N, C, h, w) outputs: "
                f"a convolution, or the ReLU after it"
            )
        n_out = probe.shape[1]
        chans = list(range(min(16, n_out))) if channels is None else [int(k) for k in channels]
        bad = [k for k in chans if not 0 <= k < n_out]
        if bad:
            raise CnnkitError(f"channel(s) {bad} out of range: layer {layer!r} has {n_out} channels (0..{n_out - 1})")
        index = torch.tensor(chans, device=device)
        rows = torch.arange(len(chans), device=device)

        def objective(x):  # (N,) mean activation of channel chans[i] for image i, and its input gradient
            x = x.detach().requires_grad_(True)
            out = run_until(model, x, layer)  # (N, C_out, h', w')
            score = out[rows, index].flatten(1).mean(dim=1)
            # images are independent in eval mode: one backward of the sum gives every image's gradient
            (grad,) = torch.autograd.grad(score.sum(), x)
            return score.detach(), grad

        x = ((128.0 + 20.0 * torch.rand(len(chans), c, h, w, generator=gen)) / 255.0).to(device)
        step = torch.full((len(chans), 1, 1, 1), float(step_size), device=device)
        score, grad = objective(x) if steps else (None, None)
        for _t in range(steps):
            grad = grad / (grad.pow(2).flatten(1).mean(dim=1).sqrt()[:, None, None, None] + 1e-5)
            trial = x + step * grad
            trial_score, trial_grad = objective(trial)
            # a step that lowers the activation overshot (into a ReLU's dead zone, say): stay and halve
            # it; a step that helped lets the next one grow back, up to step_size
            worse = (trial_score < score)[:, None, None, None]
            step = torch.where(worse, step / 2, (step * 2).clamp(max=float(step_size)))
            x = torch.where(worse, x, trial)
            score = torch.where(worse[:, 0, 0, 0], score, trial_score)
            grad = torch.where(worse, grad, trial_grad)
    return x.cpu()


def mean_activation(model: nn.Module, layer: str, x: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """(N,) mean activation of channel ``channels[i]`` of ``layer`` for input ``x[i]``."""
    with frozen(model), torch.no_grad():
        out = run_until(model, x.to(model_device(model)), layer)
    return out[torch.arange(len(channels)), torch.tensor(channels)].flatten(1).mean(dim=1).cpu()

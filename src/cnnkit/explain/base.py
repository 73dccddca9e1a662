"""What every explanation method shares: a batch from an image, the model's scores, a target class."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError, short_error


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def as_batch(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A float (N, C, H, W) copy of ``image`` on the model's device, and whether it was a single image.

    ``image`` is (C, H, W) or (N, C, H, W), float in the range the model expects, or uint8 0..255
    (scaled to [0, 1]).
    """
    if not isinstance(image, torch.Tensor):
        raise CnnkitError(f"image must be a torch.Tensor (C, H, W) or (N, C, H, W), got {type(image).__name__}")
    single = image.dim() == 3
    if image.dim() not in (3, 4):
        raise CnnkitError(f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    x = image.unsqueeze(0) if single else image
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.detach().to(model_device(model)).clone(), single


def run_model(model: nn.Module, x: torch.Tensor):
    """``model(x)``, with a CnnkitError (not a traceback) when the model does not accept ``x``'s shape."""
    try:
        return model(x)
    except RuntimeError as exc:
        raise CnnkitError(
            f"the model does not accept an input of shape {tuple(x.shape)} ({short_error(exc)}); "
            f"resize the image to the size the model was built for"
        ) from None


def forward_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's class scores (N, K); a CnnkitError when the model does not accept ``x``."""
    out = run_model(model, x)
    if isinstance(out, (tuple, list)):  # e.g. (logits, aux_logits): explain the main head
        out = out[0]
    if out.dim() != 2:
        raise CnnkitError(f"the model's output has shape {tuple(out.shape)}; explanations need class scores (N, K)")
    return out


def target_classes(scores: torch.Tensor, target_class) -> torch.Tensor:
    """(N,) classes to explain: each image's top score (``None``), one int for every image, or (N,) ints."""
    n, k = scores.shape
    if target_class is None:
        return scores.argmax(dim=1)

    def out_of_range(index) -> CnnkitError:
        return CnnkitError(
            f"class index {str(index)[:60]} is out of range: the model has {k} classes "
            f"(0..{k - 1}); pass a class between 0 and {k - 1}"
        )

    try:
        wanted = torch.as_tensor(target_class, dtype=torch.long).reshape(-1).to(scores.device)
    except (OverflowError, RuntimeError, ValueError):  # an integer beyond int64: no model's class
        raise out_of_range(target_class) from None
    if wanted.numel() not in (1, n):
        raise CnnkitError(f"target_class must be one int or {n} ints (one per image), got {wanted.numel()}")
    bad = wanted[(wanted < 0) | (wanted >= k)]
    if bad.numel():
        raise out_of_range(int(bad[0]))
    return wanted.expand(n).clone()


def selected_score(scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's score for its class: its gradient is per-image (eval mode)."""
    return scores.gather(1, classes[:, None]).sum()


def normalise_max(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-negative maps divided by their own maximum; all-zero maps stay zero.

    However small the maximum: an untrained deep network's input gradients can be 1e-14 (googlenet's
    at random weights) and its map still peaks at 1.
    """
    peak = maps.flatten(1).amax(dim=1)  # (N,)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return maps / peak[:, None, None]

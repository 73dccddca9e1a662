"""Every channel of chosen intermediate activations for one image (the notes' activation model)."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.explain.base import as_batch, run_model
from cnnkit.explain.hooks import conv_layers, frozen, recording


def feature_maps(model: nn.Module, image: torch.Tensor, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` (default: every convolution) for one image.

    Args:
        model: any ``nn.Module``; layer names are those of ``model.named_modules()``.
        image: (C, H, W) or (1, C, H, W), float in the model's input range (uint8 is scaled to [0,1]).
        layers: names of layers whose output is a (1, C, h, w) tensor.
    Returns:
        ``{name: (C, h, w) tensor}`` in the order given (model order by default), detached, on CPU.

    Raises:
        CnnkitError: by default, a model without a convolution outside TorchScript (naming TorchScript);
            a layer that is unknown, inside TorchScript, not run, or whose output is not (1, C, h, w).
    """
    if layers is None:
        layers = conv_layers(model)  # outside TorchScript, whose layers run without hooks: none is an error
    x, _ = as_batch(model, image)
    with frozen(model), recording(model, list(layers)) as rec, torch.no_grad():
        run_model(model, x[:1])
    acts = rec["activations"]
    missing = [name for name in layers if name not in acts]
    if missing:
        raise CnnkitError(f"layer(s) {', '.join(missing)} did not run in the forward pass; pick layers the model uses")
    bad = [f"{n} {tuple(acts[n].shape)}" for n in layers if acts[n].dim() != 4]
    if bad:
        raise CnnkitError(
            f"feature maps need layers with (1, C, h, w) outputs, got {', '.join(bad)}; "
            f"pick convolution or pooling layers"
        )
    return {name: acts[name][0].detach().cpu() for name in layers}

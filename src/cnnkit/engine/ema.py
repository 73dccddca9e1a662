"""Exponential moving average of a model's weights (Polyak averaging; cf. timm's ModelEmaV2)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


class EMA:
    """``ema = d * ema + (1 - d) * w`` after every optimizer step, with ``d`` warmed up as
    ``min(decay, (1 + updates) / (10 + updates))`` so that early epochs are not dominated by the random
    init. ``updates`` counts the optimizer steps of the whole run: one warm-up, not one per phase of a
    plan, and as many steps as were taken in epochs of different lengths (InfoBatch's pruned epochs).
    Buffers (BatchNorm statistics) are copied, not averaged.

    Attributes:
        decay: the decay per step once warmed up.
        module: the averaged copy of the model (eval mode, no gradients).
        updates: optimizer steps averaged in so far (saved with the resume state).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        with torch.no_grad():  # a TorchScript part's deepcopy clones its parameters: recorded, they are no leaves
            self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in ``model``'s weights after one optimizer step, and count the step."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p: list[torch.Tensor] = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
        self.updates += 1

    def skip_warmup(self) -> None:
        """Count as many steps as the warm-up takes to reach ``decay``: for an average whose count is
        unknown (a resume state that lacks it), which is kept, not forgotten by a warm-up's first steps."""
        self.updates = max(self.updates, math.ceil((10 * self.decay - 1) / (1 - self.decay)))

    def state_dict(self) -> dict:
        """The averaged module's tensors (the step count is ``updates``)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the averaged module's tensors from :meth:`state_dict`."""
        self.module.load_state_dict(state)

"""Exponential moving average of a model's weights (Polyak averaging; cf. timm's ModelEmaV2)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """``ema = d * ema + (1 - d) * w`` after every step, with ``d`` warmed up as
    ``min(decay, (1 + step) / (10 + step))`` so that early epochs are not dominated by the random
    init. Buffers (BatchNorm statistics) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_p: list[torch.Tensor] = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)

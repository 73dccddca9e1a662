"""Classifier heads for new classes that keep what a pretrained classifier knows.

``ClassScoresHead``: the new classes are read from the pretrained classifier's log-probabilities
over its own classes (ImageNet's 1,000), not from the pooled features. Where the new classes are
close to old ones -- "ant" and "bee" are ImageNet classes -- a linear map from those 1,000 scores
carries the old classifier's knowledge into the new task (the idea of Co-Tuning, You et al. 2020,
https://arxiv.org/abs/2007.02869, taken as a fixed feature). The old classifier stays frozen.
Where the new classes are not ImageNet's (daisy, tulips) the pooled features do better, which is why
fine-tuning chooses between the two by validation loss (:mod:`cnnkit.tasks.classify.finetune`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError

HEAD_KINDS = ("features", "class_scores")


class ClassScoresHead(nn.Module):
    """``num_classes`` logits from a frozen ``source`` Linear's log-softmax: (B, F) -> (B, classes)."""

    def __init__(self, source: nn.Linear, num_classes: int):
        super().__init__()
        self.source = source
        for p in self.source.parameters():
            p.requires_grad_(False)
        self.fc = nn.Linear(source.out_features, num_classes, device=source.weight.device, dtype=source.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.source(x).log_softmax(-1))  # (B, F) -> (B, source classes) -> (B, classes)

    def extra_repr(self) -> str:
        return f"source classes={self.source.out_features}, classes={self.fc.out_features}"


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, module) of the model's classifier: its last ``nn.Linear`` or ClassScoresHead."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, ClassScoresHead):
            found = (name, m)
        elif isinstance(m, nn.Linear) and not (found and name.startswith(found[0] + ".")):
            found = (name, m)
    if found is None:
        raise CnnkitError(
            f"{type(model).__name__} has no reset_classifier() and no nn.Linear classifier "
            "to replace; give a zoo model or an nn.Sequential ending in a Linear"
        )
    name, module = found
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return parent, name.rpartition(".")[2], module


def attach_class_scores(model: nn.Module, num_classes: int) -> ClassScoresHead:
    """Replace the model's classifier Linear by a :class:`ClassScoresHead` on it (in place)."""
    parent, attr, old = last_linear(model)
    if not isinstance(old, nn.Linear):
        raise CnnkitError("the model's classifier is already a ClassScoresHead")
    head = ClassScoresHead(old, num_classes)
    setattr(parent, attr, head)
    return head


def head_kind(model: nn.Module) -> dict | None:
    """``{"kind": "class_scores", "source_classes": N}`` when the model's head is a
    ClassScoresHead (what a checkpoint records to rebuild it), else None."""
    heads = [m for m in model.modules() if isinstance(m, ClassScoresHead)]
    return {"kind": "class_scores", "source_classes": heads[-1].source.out_features} if heads else None


def frozen_head_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters no stage trains: the source classifiers of ClassScoresHeads."""
    return {id(p) for m in model.modules() if isinstance(m, ClassScoresHead) for p in m.source.parameters()}

"""Where a classifier goes wrong: confusion counts and its most confident mistakes."""

from __future__ import annotations

import torch


def confusion_counts(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    labels, predictions = labels.long().reshape(-1), predictions.long().reshape(-1)
    flat = labels * num_classes + predictions  # (N,) -> index into the flattened (K, K) matrix
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def most_confident_errors(labels: torch.Tensor, probs: torch.Tensor, n: int = 16) -> torch.Tensor:
    """Indices of up to ``n`` misclassified samples, highest predicted-class probability first.

    Args:
        labels: (N,) true classes; probs: (N, K) class probabilities.
    """
    confidence, predicted = probs.max(dim=1)  # (N, K) -> (N,), (N,)
    wrong = (predicted != labels.long()).nonzero().squeeze(1)
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order[:n]]

"""Validation metrics over whole splits: accuracy (single-label), mAP (multi-label)."""

from __future__ import annotations

import torch


class NothingToScore(ValueError):
    """A split scored over zero samples: empty, or every sample of it failed."""


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else 0.0


def mean_average_precision(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes with at least one positive of the average precision (area under the
    precision-recall steps, as in AudioSet evaluations)."""
    precisions = []
    for scores, positive in zip(logits.T, targets.T.bool()):
        if not positive.any():
            continue
        ranked = positive[scores.argsort(descending=True)].float()
        hits = ranked.cumsum(0)
        precision_at = hits / torch.arange(1, len(ranked) + 1)
        precisions.append(float((precision_at * ranked).sum() / ranked.sum()))
    return sum(precisions) / len(precisions) if precisions else 0.0


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """`metric` is what picks the best checkpoint: accuracy, or mAP for multi-hot labels. Zero
    samples is an error: a score of 0.0 over nothing would read as a result."""
    if len(labels) == 0:
        raise NothingToScore("no samples to score (the split is empty, or every sample of it failed)")
    if labels.dtype.is_floating_point:
        value = mean_average_precision(logits, labels)
        return {"metric": value, "mAP": value}
    value = accuracy(logits, labels)
    return {"metric": value, "accuracy": value}

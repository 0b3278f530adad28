"""Logits over whole streams of `PackedBatch`es: validation during training, evaluation sweeps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from loaders.batch import PackedBatch
from loaders.device_features import DeviceFeaturizer, to_device


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[PackedBatch], device: torch.device, featurizer: DeviceFeaturizer | None = None
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Keys, fp32 logits and labels of every sample in `batches`, in delivery order (`featurizer`:
    the stream's, for batches that come as waveforms)."""
    model.eval()
    keys, (logits,), labels = predict_many([model], batches, device, featurizer)
    return keys, logits, labels


@torch.no_grad()
def predict_many(
    forwards: Sequence[Callable[[PackedBatch], torch.Tensor]],
    batches: Iterable[PackedBatch],
    device: torch.device = torch.device("cpu"),
    featurizer: DeviceFeaturizer | None = None,
) -> tuple[list[str], list[torch.Tensor], torch.Tensor]:
    """Keys, each forward's fp32 logits and the labels, with every batch featurized once and
    fed to all forwards (models in eval mode, or callables around them); `featurizer`: as `predict`."""
    keys, logits, labels = [], [[] for _ in forwards], []
    for batch in batches:
        batch = to_device(batch, device, featurizer)
        for out, forward in zip(logits, forwards):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(forward(batch).float().cpu())
        keys.extend(batch.keys)
        labels.append(batch.labels.cpu())
    if not labels:
        raise ValueError("predict: the stream delivered no batches (is the split empty?)")
    return keys, [torch.cat(out) for out in logits], torch.cat(labels)

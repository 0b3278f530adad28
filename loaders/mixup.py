"""Mixup as the paper trains AudioSet (AST's recipe), keyed so that a plan stays a function of
(index, config, epoch):

- planned sample u (keyed by its key, or by its draw under balanced sampling) is mixed when a
  uniform keyed by (seed, epoch, u) falls below `mixup`; its partner is the index position a
  second keyed uniform picks, uniformly over the split (`mixup_partners`, in the plan). The
  sample's token count is its own, so packing does not change.
- the featurizer reads the partner's bytes with the batch and mixes the waveforms before the
  fbank (`mix_waves`), with lambda ~ Beta(alpha, alpha) keyed the same way (`mix_lambda`):
  x = lambda (x1 - mean x1) + (1 - lambda) (x2 - mean x2), x2 cut or zero-padded to x1's length,
  then the mean removed again (AST's `_wav2fbank`).
- the target becomes lambda y1 + (1 - lambda) y2 (`soft_targets`): soft cross-entropy for
  single-label data, BCE for multi-label (`elasticast.model.loss`).
Training only: validation and evaluation streams set mixup to 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from loaders.config import StreamConfig
from loaders.keyed import keyed_uniform

_SALT_MIXED, _SALT_PARTNER, _SALT_LAMBDA = 0x313F, 0x9A27, 0x1A3B


def mixup_partners(unit_hash: np.ndarray, pool: int, config: StreamConfig, epoch: int) -> np.ndarray:
    """The partner (index position in 0..pool-1) of each planned unit, -1 where it is not mixed (int32)."""
    mixed = keyed_uniform(unit_hash, config.seed, epoch, _SALT_MIXED) < config.mixup
    pick = (keyed_uniform(unit_hash, config.seed, epoch, _SALT_PARTNER) * pool).astype(np.int64)
    return np.where(mixed, np.minimum(pick, pool - 1), -1).astype(np.int32)


def mix_lambda(seed: int, epoch: int, ident: bytes, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha), fixed by (seed, epoch, the unit's identity)."""
    return float(np.random.default_rng([seed, epoch, _SALT_LAMBDA, *ident]).beta(alpha, alpha))


def mix_waves(wave: np.ndarray, partner: np.ndarray, lam: float) -> np.ndarray:
    """AST's mixed waveform (module docstring), as long as `wave` (float32)."""
    first = np.asarray(wave, np.float64)
    second = np.asarray(partner, np.float64)
    first, second = first - first.mean(), second - second.mean()
    fitted = np.zeros_like(first)
    fitted[: min(len(first), len(second))] = second[: len(first)]
    mixed = lam * first + (1.0 - lam) * fitted
    return (mixed - mixed.mean()).astype(np.float32)


def soft_targets(
    labels: Sequence[Sequence[int]], partner_labels: Sequence[Sequence[int]], lams: Sequence[float], classes: int
) -> torch.Tensor:
    """`[samples, classes]` float32: lambda times the sample's (multi-)hot labels plus (1 - lambda)
    times its partner's (lambda = 1: unmixed, no partner labels)."""
    targets = torch.zeros(len(labels), classes)
    for i, (own, other, lam) in enumerate(zip(labels, partner_labels, lams)):
        targets[i, list(own)] += lam
        targets[i, list(other)] += 1.0 - lam
    return targets

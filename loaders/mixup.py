"""Mixup as the paper trains AudioSet (AST's recipe), keyed so that a plan stays a function of
(index, config, epoch):

- planned sample u (keyed by its key, or by its draw under balanced sampling) is mixed when a
  uniform keyed by (seed, epoch, u) falls below `mixup`; its partner is the index position a
  second keyed uniform picks, uniformly over the split (`mixup_partners`, in the plan). The
  sample's token count is its own, so packing does not change.
- the featurizer reads the partner's bytes with the batch and mixes the waveforms before the
  fbank (`mix_waves`), with lambda ~ Beta(alpha, alpha) keyed the same way (`mix_lambda`):
  x = lambda (x1 - mean x1) + (1 - lambda) (x2 - mean x2), x2 cut or zero-padded to x1's length,
  then the mean removed again (AST's `_wav2fbank`); with `featurize="device"` the featurizer does
  the same on the trainer's device, by the same function (`mix_segments`).
- the target becomes lambda y1 + (1 - lambda) y2 (`soft_targets`): soft cross-entropy for
  single-label data, BCE for multi-label (`elasticast.model.loss`).
Training only: validation and evaluation streams set mixup to 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from loaders.config import StreamConfig
from loaders.keyed import keyed_rng, keyed_uniform

_SALT_MIXED, _SALT_PARTNER, _SALT_LAMBDA = 0x313F, 0x9A27, 0x1A3B


def mixup_partners(unit_hash: np.ndarray, pool: int, config: StreamConfig, epoch: int) -> np.ndarray:
    """The partner (index position in 0..pool-1) of each planned unit, -1 where it is not mixed (int32)."""
    mixed = keyed_uniform(unit_hash, config.seed, epoch, _SALT_MIXED) < config.mixup
    pick = (keyed_uniform(unit_hash, config.seed, epoch, _SALT_PARTNER) * pool).astype(np.int64)
    return np.where(mixed, np.minimum(pick, pool - 1), -1).astype(np.int32)


def mix_lambda(seed: int, epoch: int, ident: str, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha), fixed by (seed, epoch, the unit's identity), as a float32 (the
    device featurizer's weights are float32: both featurize modes mix with the same number)."""
    return float(np.float32(keyed_rng(seed, epoch, _SALT_LAMBDA, ident).beta(alpha, alpha)))


def mix_waves(wave: np.ndarray, partner: np.ndarray, lam: float) -> np.ndarray:
    """AST's mixed waveform (module docstring), as long as `wave` (float32; computed in float64)."""
    both = torch.from_numpy(np.concatenate([wave, partner]).astype(np.float64))
    owner, at = torch.zeros(len(wave), dtype=torch.int64), torch.arange(len(wave))
    sizes = torch.tensor([len(wave)]), torch.tensor([len(partner)])
    return mix_segments(both, owner, at, *sizes, torch.tensor([lam], dtype=torch.float64)).float().numpy()


def mix_segments(
    wave: torch.Tensor,
    owner: torch.Tensor,
    at: torch.Tensor,
    lengths: torch.Tensor,
    partner_lengths: torch.Tensor,
    lams: torch.Tensor,
) -> torch.Tensor:
    """AST's mixed waveforms (module docstring) of samples end to end at the front of `wave` (float;
    `lengths` long each; `owner`, `at`: each of their values' sample and index in it), then their
    partners end to end (`partner_lengths` long, 0: none), sample i mixed with weight `lams[i]`: the
    samples' mixed waveforms end to end (one with no partner as it is, unmixed), in `wave`'s dtype
    and on its device, in one batched pass (the device featurizer's; `mix_waves`'s for one sample)."""
    first, second = wave[: owner.numel()], wave[owner.numel() :]
    first = first - _means(first, lengths)[owner]
    inside = at < partner_lengths[owner]
    if second.numel():
        starts = torch.cumsum(partner_lengths, 0) - partner_lengths
        fitted = second[starts[owner] + torch.minimum(at, (partner_lengths[owner] - 1).clamp_min(0))]
        fitted = torch.where(inside, fitted - _means(second, partner_lengths)[owner], 0.0)
    else:
        fitted = torch.zeros_like(first)
    lam = lams.to(wave.dtype)[owner]
    mixed = lam * first + (1.0 - lam) * fitted
    return torch.where(partner_lengths[owner] > 0, mixed - _means(mixed, lengths)[owner], wave[: owner.numel()])


def _means(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The mean of each of the segments `lengths` long that `values` holds end to end (0 where empty)."""
    if not values.numel():
        return torch.zeros(lengths.shape, dtype=values.dtype, device=values.device)
    sums = torch.segment_reduce(values, "sum", lengths=lengths, unsafe=True)
    return sums / lengths.clamp_min(1)


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

"""Noise augmentation of the paper's code (AST's `noise=True`): on the normalised fbank, uniform
noise U(0, 1) x a, with a ~ U(0, 0.1) drawn once per sample, then a roll along time by s frames,
s uniform in -10..9 (numpy's `randint(-10, 10)`), frames rolled out at one end coming back at the
other. Drawn from (seed, epoch, key) alone, so it is the same whatever the batch or worker."""

from __future__ import annotations

import numpy as np
import torch

from loaders.keyed import keyed_rng

_SALT_NOISE = 0x2015E
MAX_AMPLITUDE = 0.1
ROLL = (-10, 10)  # shifts drawn from [low, high)


def add_noise(spec: torch.Tensor, seed: int, epoch: int, key: str) -> torch.Tensor:
    """`spec` `[frames, bins]` with the sample's noise added, then rolled in time."""
    noise, shift = noise_draw(tuple(spec.shape), seed, epoch, key)
    return torch.roll(spec + noise, shift, dims=0)


def noise_draw(shape: tuple[int, int], seed: int, epoch: int, key: str) -> tuple[torch.Tensor, int]:
    """The sample's draw for a `[frames, bins]` fbank: its noise `[frames, bins]` (float32, already
    scaled by its amplitude) and its roll in frames; what `add_noise` and the device featurizer
    apply alike."""
    rng = keyed_rng(seed, epoch, _SALT_NOISE, key)
    amplitude = rng.random() * MAX_AMPLITUDE
    noise = torch.from_numpy(rng.random(shape, dtype=np.float32))
    return noise * amplitude, int(rng.integers(*ROLL))

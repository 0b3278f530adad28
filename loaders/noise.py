"""Noise augmentation of the paper's code (AST's `noise=True`): on the normalised fbank, uniform
noise U(0, 1) x a, with a ~ U(0, 0.1) drawn once per sample, then a roll along time by s frames,
s uniform in -10..9 (numpy's `randint(-10, 10)`), frames rolled out at one end coming back at the
other. Drawn from (seed, epoch, key) alone, so it is the same whatever the batch or worker."""

from __future__ import annotations

import numpy as np
import torch

_SALT_NOISE = 0x2015E
MAX_AMPLITUDE = 0.1
ROLL = (-10, 10)  # shifts drawn from [low, high)


def add_noise(spec: torch.Tensor, seed: int, epoch: int, key: str) -> torch.Tensor:
    """`spec` `[frames, bins]` with the sample's noise added, then rolled in time."""
    rng = np.random.default_rng([seed, epoch, _SALT_NOISE, *key.encode()])
    amplitude = rng.random() * MAX_AMPLITUDE
    noise = torch.from_numpy(rng.random(tuple(spec.shape), dtype=np.float32))
    shift = int(rng.integers(*ROLL))
    return torch.roll(spec + noise * amplitude, shift, dims=0)

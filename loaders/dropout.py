"""Token dropout (NaViT-style): a share of each training sample's patch tokens is left out.

The plan decides how many (`dropped_tokens`, from the metadata: the rows pack only the kept
tokens, so a step carries more samples); the featurizer decides which (`keep_mask`) and keeps
those patches with their own frequency and time positions. Both are pure functions of (seed,
epoch, key): a resumed or re-dealt epoch drops the very same patches.
"""

from __future__ import annotations

import numpy as np
import torch

from loaders.config import StreamConfig
from loaders.keyed import keyed_rng, keyed_uniform

_SALT_RATE, _SALT_KEEP = 0xD809, 0xD80C


def dropped_tokens(tokens: np.ndarray, key_hash: np.ndarray, config: StreamConfig, epoch: int) -> np.ndarray:
    """Tokens dropped from each sample: floor(tokens x rate), the rate `token_dropout`, or drawn
    per sample from U(0, token_dropout_max) keyed by (seed, epoch, key). At least one token stays
    (rate < 1)."""
    rate = config.token_dropout
    if config.token_dropout_max:
        rate = keyed_uniform(key_hash, config.seed, epoch, _SALT_RATE) * config.token_dropout_max
    return np.floor(np.asarray(tokens, np.float64) * rate).astype(np.int32)


def keep_mask(tokens: int, kept: int, seed: int, epoch: int, key: str) -> torch.Tensor:
    """Which of a sample's `tokens` patches (in `patchify` order) stay: `kept` of them, chosen
    uniformly without replacement by (seed, epoch, key)."""
    mask = torch.ones(tokens, dtype=torch.bool)
    if kept < tokens:
        rng = keyed_rng(seed, epoch, _SALT_KEEP, key)
        mask[torch.from_numpy(rng.permutation(tokens)[: tokens - kept])] = False
    return mask

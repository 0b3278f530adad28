"""Class-balanced sampling: an epoch of draws with replacement, each sample in proportion to its
index weight (`shards.weights`: AST's and the paper's rule, or a manifest's `weight` column).

Draw d of epoch e takes the sample where a uniform number keyed by (seed, e, d) falls in the
cumulative weights: a pure function of (weights, seed, epoch, d), whatever the ranks, workers or
order. An epoch makes as many draws as the split has samples, so it keeps its length. A sample
may come several times in one epoch, so the draw index, not the key, names what the plan
delivers: its own hash (`draw_keys`) keys the draw's scale C, SpecAugment and mixup, and
`draw#key` names it in the delivery check (`PackedStream.planned_ids`).
"""

from __future__ import annotations

import numpy as np

from loaders.keyed import keyed_bits, keyed_uniform

_SALT_DRAW, _SALT_DRAW_KEY = 0xBA1A, 0xD4A3


def balanced_draws(weight: np.ndarray | None, seed: int, epoch: int) -> np.ndarray:
    """The index position each of the epoch's len(weight) draws takes (int64)."""
    if weight is None:
        raise ValueError(
            "sampling='balanced' needs per-sample weights, but this index has none (a shard set made "
            "before weights): rebuild it with make_shards, or use sampling='uniform'"
        )
    weight = np.asarray(weight, np.float64)
    if len(weight) and not (np.all(np.isfinite(weight)) and weight.min() > 0):
        raise ValueError(f"sampling weights must be finite and > 0; the smallest is {weight.min()}")
    cumulative = np.cumsum(weight)
    at = keyed_uniform(np.arange(len(weight), dtype=np.uint64), seed, epoch, _SALT_DRAW) * cumulative[-1:]
    return np.minimum(np.searchsorted(cumulative, at, side="right"), len(weight) - 1)


def draw_keys(draws: int, seed: int, epoch: int) -> np.ndarray:
    """A 64-bit hash of each draw index, standing in for the key wherever the plan keys a choice."""
    return keyed_bits(np.arange(draws, dtype=np.uint64), seed, epoch, _SALT_DRAW_KEY)

"""Keyed random numbers: draws fixed by (key hash, salts) alone, so a sample's random choices are
the same on every rank and worker, in any order, and after any resume."""

from __future__ import annotations

import numpy as np


def keyed_rng(seed: int, epoch: int, salt: int, ident: str) -> np.random.Generator:
    """A generator for one sample's draws in the featurizer, fixed by (seed, epoch, salt, the
    sample's identity: its key, or its draw under balanced sampling)."""
    return np.random.default_rng([seed, epoch, salt, *ident.encode()])


def keyed_uniform(key_hash: np.ndarray, *salts: int) -> np.ndarray:
    """A uniform [0, 1) number per key, fixed by (key, salts) alone."""
    return (keyed_bits(key_hash, *salts) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def keyed_bits(key_hash: np.ndarray, *salts: int) -> np.ndarray:
    """64 random-looking bits per key, fixed by (key, salts) alone (splitmix64 finaliser)."""
    x = key_hash.astype(np.uint64)
    with np.errstate(over="ignore"):
        for salt in salts:
            x = _splitmix(x ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
    return x


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))

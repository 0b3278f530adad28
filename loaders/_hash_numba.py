"""Numba kernel for `loaders.plan.fnv1a64`: one pass over Arrow's string bytes, no temporaries
(the numpy form walks every key once per byte position, with arrays as long as the index)."""

import numpy as np
from numba import njit


@njit(cache=True)
def fnv1a64_spans(data, offsets):
    """64-bit FNV-1a of data[offsets[i]:offsets[i + 1]] for each i."""
    digest = np.empty(offsets.shape[0] - 1, np.uint64)
    for i in range(digest.shape[0]):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        digest[i] = h
    return digest

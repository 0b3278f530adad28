"""`collate_packed`: items with ready fbanks → a fixed-shape `PackedBatch`.

An item is a mapping with `fbank` (`[frames, 128]`, normalised as you train), `label` (a class
id, or a multi-hot vector) and optionally `key` and `scale` (C, for the record). Each fbank is
cut to the frames `loaders.tokens.frame_tokens` counts (a multiple of 16, at most `max_frames`
and a row; shorter than 16 frames: zero-padded to one patch) and patchified like the stream's.

Rows are filled first-fit in the order the items come. `PackingSampler` lists a batch's items
row by row, and then first-fit never needs more rows than the plan has: a row's items only ever
move to an earlier row's gap, never to a later row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from loaders.batch import PackedBatch, from_features
from loaders.features import patchify
from loaders.tokens import FREQ_TOKENS, N_MELS, PATCH, frame_tokens


def collate_packed(
    items: Sequence[Mapping], capacity: int, rows_per_batch: int, max_frames: int | None = None
) -> PackedBatch:
    """One `PackedBatch` of `rows_per_batch` rows of `capacity` tokens, fbanks cut to `max_frames`
    (as `frame_tokens` counts them); no items: an all-padding batch."""
    keys = [str(item.get("key", position)) for position, item in enumerate(items)]
    features = [patchify(_kept_frames(item["fbank"], key, capacity, max_frames)) for item, key in zip(items, keys)]
    fill = np.zeros(rows_per_batch, np.int64)
    row, offset = np.zeros(len(items), np.int64), np.zeros(len(items), np.int64)
    for i, (patches, _, _) in enumerate(features):
        free = np.flatnonzero(fill + patches.shape[0] <= capacity)
        if not len(free):
            raise ValueError(
                f"item {keys[i]!r} ({patches.shape[0]} tokens) does not fit the {rows_per_batch} rows of {capacity} tokens "
                "left by the items before it: collate the batches of a PackingSampler with the same capacity and rows"
            )
        row[i], offset[i] = free[0], fill[free[0]]
        fill[free[0]] += patches.shape[0]
    labels = torch.stack([torch.as_tensor(item["label"]) for item in items]) if items else None
    scale = np.array([float(item.get("scale", 1.0)) for item in items])
    return from_features(features, row, offset, scale, keys, labels, length=capacity, rows=rows_per_batch)


def _kept_frames(fbank, key: str, capacity: int, max_frames: int | None) -> torch.Tensor:
    spec = torch.as_tensor(fbank, dtype=torch.float32)
    if spec.ndim != 2 or spec.shape[1] != N_MELS:
        raise ValueError(f"item {key!r}: fbank of shape {tuple(spec.shape)} is not [frames, {N_MELS}]")
    kept = int(frame_tokens(spec.shape[0], max_frames=max_frames, capacity=capacity).tokens) // FREQ_TOKENS * PATCH
    return torch.nn.functional.pad(spec[:kept], (0, 0, 0, kept - min(kept, spec.shape[0])))

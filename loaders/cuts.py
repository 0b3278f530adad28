"""Random length cuts (the paper's Epic-Sounds recipe): per sample and epoch, a window of T
frames at the sample's resolution, T uniform in [random_cut, min(clip, cap)] floored to a
multiple of 16, starting at a uniform frame of the clip; a clip shorter than `random_cut` is
taken whole (as far as the cap allows). Planned from the index's sample counts (`random_windows`),
so a window's tokens are known before any audio is read; the loader decodes only the window's
samples (`window_samples`). The cap (max_frames, row capacity) alone counts as cut: the frames
outside a random window are not cut, another epoch's window takes them.
"""

from __future__ import annotations

import numpy as np

from loaders.config import StreamConfig
from loaders.keyed import keyed_uniform
from loaders.tokens import FRAME_LENGTH_MS, FREQ_TOKENS, PATCH, TokenCounts, frame_samples

_SALT_LENGTH, _SALT_START = 0xC07, 0xC075


def random_windows(
    counts: TokenCounts, key_hash: np.ndarray, config: StreamConfig, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, first frame) of each sample's window this epoch, from its counts at its C
    (`counts.frames`: the clip's frames; `counts.tokens`: what the cap keeps of them)."""
    frames = np.asarray(counts.frames, np.int64)
    longest = np.asarray(counts.tokens, np.int64) // FREQ_TOKENS * PATCH
    whole = frames < config.random_cut
    shortest = np.minimum(config.random_cut, longest)
    length = shortest + (keyed_uniform(key_hash, config.seed, epoch, _SALT_LENGTH) * (longest - shortest + 1))
    length = np.where(whole, longest, np.maximum(length.astype(np.int64) // PATCH * PATCH, PATCH))
    room = np.where(whole, 0, frames - length)
    start = (keyed_uniform(key_hash, config.seed, epoch, _SALT_START) * (room + 1)).astype(np.int64)
    return (length // PATCH * FREQ_TOKENS).astype(np.int32), start.astype(np.int32)


def window_samples(start: int, frames: int, sample_rate: int, shift_ms: float, pool: int = 1) -> tuple[int, int]:
    """(first sample, samples) that `frames` frames from frame `start` read, each frame `pool`
    Kaldi frames of `shift_ms` apart (`loaders.tokens.resolution`)."""
    shift = int(frame_samples(sample_rate, shift_ms))
    window = int(frame_samples(sample_rate, FRAME_LENGTH_MS))
    return start * pool * shift, window + (frames * pool - 1) * shift

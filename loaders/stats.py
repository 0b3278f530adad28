"""Dataset fbank statistics for normalisation, `(x - mean) / (2 * std)` as in the paper's code."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from loaders.features import FBANK_SETTINGS, fbank
from loaders.tokens import FRAME_LENGTH_MS, frame_samples


def fbank_stats(waveforms: Iterable[tuple[np.ndarray, int]], max_samples: int = 1000) -> dict:
    """Mean and std over every (frame, mel bin) value of the first `max_samples` usable clips.

    Clips shorter than one analysis window have no frames and are passed over (counted).
    Accumulates in float64 so long datasets do not lose precision.
    """
    total = total_sq = 0.0
    count = used = too_short = 0
    for waveform, sample_rate in waveforms:
        if used >= max_samples:
            break
        if len(waveform) < frame_samples(sample_rate, FRAME_LENGTH_MS):
            too_short += 1
            continue
        values = fbank(waveform, sample_rate).double()
        total += float(values.sum())
        total_sq += float((values * values).sum())
        count += values.numel()
        used += 1
    if count == 0:
        raise ValueError("no clip long enough for fbank statistics")
    mean = total / count
    return {
        "mean": mean,
        "std": float(np.sqrt(max(total_sq / count - mean * mean, 0.0))),
        "samples": used,
        "too_short": too_short,
        "settings": FBANK_SETTINGS,
    }

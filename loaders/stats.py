"""Dataset fbank statistics for normalisation, `(x - mean) / (2 * std)` as in the paper's code.

Outliers must not decide the statistics: each source file adds at most `frames_per_source`
frames (a few times the median clip; see `source_frame_cap`), and digitally silent clips,
whose fbank is the log floor everywhere, are left out. Both are counted in the result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from loaders.features import FBANK_SETTINGS, fbank
from loaders.tokens import BASE_SHIFT_MS, FRAME_LENGTH_MS, PATCH, frame_samples, kaldi_frames

CAP_MEDIANS = 2  # a source adds at most this many median clips' worth of frames


def source_frame_cap(num_samples: np.ndarray, sample_rate: int) -> int:
    """Frames one source may add to the statistics: CAP_MEDIANS x the median clip's, >= one patch."""
    frames = kaldi_frames(np.asarray(num_samples, np.int64), sample_rate)
    return max(int(CAP_MEDIANS * np.median(frames)) if len(frames) else PATCH, PATCH)


def fbank_stats(
    clips: Iterable[tuple[np.ndarray, int, str]], max_samples: int = 1000, frames_per_source: int | None = None
) -> dict:
    """Mean and std over every (frame, mel bin) value of the first `max_samples` usable clips
    (waveform, sample rate, source file), each source cropped to `frames_per_source` frames in all.

    Clips shorter than one analysis window have no frames and are passed over (counted), as are
    silent ones and those of a source that has used up its frames. Accumulates in float64.
    """
    total = total_sq = 0.0
    count = used = 0
    passed = Counter()
    taken: Counter[str] = Counter()
    for waveform, sample_rate, source in clips:
        if used >= max_samples:
            break
        window, shift = (int(frame_samples(sample_rate, ms)) for ms in (FRAME_LENGTH_MS, BASE_SHIFT_MS))
        room = frames_per_source - taken[source] if frames_per_source is not None else None
        reason = (
            "too_short"
            if len(waveform) < window
            else "silent"
            if not np.any(waveform)
            else "over_cap"
            if room is not None and room < 1
            else None
        )
        if reason:
            passed[reason] += 1
            continue
        if room is not None:
            waveform = waveform[: window + (room - 1) * shift]
        values = fbank(waveform, sample_rate).double()
        taken[source] += values.shape[0]
        total += float(values.sum())
        total_sq += float((values * values).sum())
        count += values.numel()
        used += 1
    if count == 0:
        raise ValueError("no clip long enough (and not silent) for fbank statistics")
    mean = total / count
    return {
        "mean": mean,
        "std": float(np.sqrt(max(total_sq / count - mean * mean, 0.0))),
        "samples": used,
        "too_short": passed["too_short"],
        "silent": passed["silent"],
        "over_source_cap": passed["over_cap"],
        "frames_per_source": frames_per_source,
        "settings": FBANK_SETTINGS,
    }

"""Token arithmetic: how many patch tokens a clip becomes, computed from its length alone.

One vectorised implementation (`token_counts`) serves a million-sample index at once;
`tokens_for` is its scalar wrapper. Framing follows `torchaudio.compliance.kaldi.fbank`
with ``snip_edges=True`` using the very same float expressions, so frame counts match
the real spectrogram exactly.

Policies (the packer relies on them: it only accepts counts in ``1..capacity``):

- Time frames are floored to a multiple of ``patch`` (the remainder, < one patch, is
  dropped by the patch embedding and not counted as cut).
- A clip shorter than one patch of frames (including one shorter than a single
  analysis window, which has 0 frames) is padded up to one patch: it costs
  ``n_mels // patch`` tokens and is never dropped. The loader pads the waveform or
  spectrogram accordingly (``kaldi.fbank`` itself rejects clips shorter than a window).
- Frames are cropped to ``max_frames`` (floored to a multiple of ``patch``) and to what
  fits ``capacity`` tokens; the tokens removed are returned as ``cut`` so callers can
  log them.

Resolution scale C: the frame shift is ``10 * C`` ms with C rounded to one decimal
(`shift_for_scale`), the grid {1.0, 1.2, ..., 4.0} used for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

PATCH = 16
N_MELS = 128
FREQ_TOKENS = N_MELS // PATCH  # patch tokens per 16-frame time step
FRAME_LENGTH_MS = 25.0
BASE_SHIFT_MS = 10.0
MILLISECONDS_TO_SECONDS = 0.001  # the constant kaldi.fbank multiplies by
COMPRESSIONS = ("shift", "avgpool")  # how a resolution C > 1 is made: frame shift 10*C ms, or C frames average-pooled
RECIPES = ("elasticast", "paper")  # feature recipes: ours, and the paper's code (`loaders.feature_spec`)
SCALE_GRID = tuple(round(1.0 + 0.2 * k, 1) for k in range(16))  # the training grid of C: 1.0, 1.2, ..., 4.0
SCALE_RANGE = (1.0, 8.0)  # the values of C a plan or a prediction accepts


@dataclass(frozen=True, eq=False)
class TokenCounts:
    """Per-clip counts (int64 arrays of the broadcast input shape).

    frames: Kaldi frames before any flooring, padding or cropping.
    tokens: tokens the clip occupies in a row (>= one patch, <= capacity).
    cut: tokens removed by ``max_frames`` / ``capacity`` cropping.
    """

    frames: np.ndarray
    tokens: np.ndarray
    cut: np.ndarray


def shift_for_scale(scale: ArrayLike) -> np.ndarray:
    """Frame shift in ms for resolution scale C: ``10 * C`` with C rounded to 1 decimal.

    Rounding pins each C to one float so the shift (and thus the frame count) is
    reproducible however C was produced (``1.0 + 0.2 * k`` accumulates error).
    """
    return BASE_SHIFT_MS * np.round(np.asarray(scale, dtype=np.float64), 1)


def resolution(
    scale: ArrayLike, compression: str = "shift", base_shift_ms: float = BASE_SHIFT_MS
) -> tuple[np.ndarray, np.ndarray]:
    """(frame shift in ms, average-pooling factor) that make resolution C under `compression`:
    "shift" moves the frame shift to 10*C ms; "avgpool" keeps 10 ms frames and pools whole C of them.
    `base_shift_ms`: the shift at C = 1 (10 ms; the paper's Epic-Sounds recipe: 5)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    scale = np.asarray(scale, dtype=np.float64)
    if compression == "shift":
        return shift_for_scale(scale) * (base_shift_ms / BASE_SHIFT_MS), np.ones(scale.shape, np.int64)
    if np.any(scale != np.round(scale)):
        raise ValueError(f"avgpool compression needs whole scales (e.g. 1, 2, 3, 4), got {scale}")
    return np.full(scale.shape, float(base_shift_ms)), scale.astype(np.int64)


def frame_samples(sample_rate: ArrayLike, milliseconds: ArrayLike) -> np.ndarray:
    """Samples in a frame length or shift, as Kaldi truncates them: int(rate * ms * 0.001)."""
    rate = np.asarray(sample_rate, dtype=np.float64)
    return (rate * np.asarray(milliseconds, dtype=np.float64) * MILLISECONDS_TO_SECONDS).astype(np.int64)


def kaldi_frames(
    num_samples: ArrayLike,
    sample_rate: ArrayLike,
    frame_shift_ms: ArrayLike = BASE_SHIFT_MS,
    frame_length_ms: float = FRAME_LENGTH_MS,
) -> np.ndarray:
    """Frame count of ``kaldi.fbank`` with ``snip_edges=True`` (0 if shorter than a window)."""
    num_samples = np.asarray(num_samples, dtype=np.int64)
    if np.any(num_samples < 0):
        raise ValueError(f"num_samples must be >= 0, got {num_samples.min()}")
    window_shift = frame_samples(sample_rate, frame_shift_ms)
    window_size = frame_samples(sample_rate, frame_length_ms)
    if np.any(window_shift < 1) or np.any(window_size < 2):
        raise ValueError(
            f"frame shift/length too short for the sample rate: shift={window_shift.min()} "
            f"and window={window_size.min()} samples (need >= 1 and >= 2)"
        )
    fits = num_samples >= window_size
    frames = 1 + (num_samples - window_size) // window_shift
    return np.where(fits, frames, 0)


def token_counts(
    num_samples: ArrayLike,
    sample_rate: ArrayLike,
    frame_shift_ms: ArrayLike = BASE_SHIFT_MS,
    *,
    frame_length_ms: float = FRAME_LENGTH_MS,
    patch: int = PATCH,
    n_mels: int = N_MELS,
    max_frames: int | None = None,
    capacity: int | None = None,
    pool: ArrayLike = 1,
) -> TokenCounts:
    """Tokens per clip for arrays of lengths, rates and shifts (broadcast together).

    ``pool`` (>= 1, per clip) divides the frame count, flooring, as average pooling of the
    time axis with kernel and stride ``pool`` does (the paper's `avgpool` compression).

    ``max_frames`` and ``capacity`` (tokens per packed row) bound the kept frames; what
    they remove is reported in ``cut`` (see the module docstring for all policies).
    """
    pool = np.asarray(pool, dtype=np.int64)
    if np.any(pool < 1):
        raise ValueError(f"pool must be >= 1, got {pool.min()}")
    frames = kaldi_frames(num_samples, sample_rate, frame_shift_ms, frame_length_ms) // pool
    return frame_tokens(frames, patch=patch, n_mels=n_mels, max_frames=max_frames, capacity=capacity)


def frame_tokens(
    frames: ArrayLike,
    *,
    patch: int = PATCH,
    n_mels: int = N_MELS,
    max_frames: int | None = None,
    capacity: int | None = None,
) -> TokenCounts:
    """Tokens of spectrograms `frames` long, by the policies of the module docstring: what
    `token_counts` does once it knows the frames, and what callers with ready fbanks count with."""
    if patch < 1 or n_mels < patch or n_mels % patch:
        raise ValueError(f"n_mels ({n_mels}) must be a positive multiple of patch ({patch})")
    freq_tokens = n_mels // patch
    limit = np.iinfo(np.int64).max
    if max_frames is not None:
        if max_frames < patch:
            raise ValueError(f"max_frames ({max_frames}) is shorter than one patch ({patch} frames)")
        limit = max_frames // patch * patch
    if capacity is not None:
        if capacity < freq_tokens:
            raise ValueError(f"capacity ({capacity}) is below one patch of tokens ({freq_tokens})")
        limit = min(limit, capacity // freq_tokens * patch)
    frames = np.asarray(frames, dtype=np.int64)
    whole = frames // patch * patch
    kept = np.clip(whole, patch, limit)
    cut_frames = np.maximum(whole - limit, 0)
    return TokenCounts(
        frames=frames,
        tokens=kept // patch * freq_tokens,
        cut=cut_frames // patch * freq_tokens,
    )


def tokens_for(
    num_samples: int,
    sample_rate: int,
    frame_shift_ms: float = BASE_SHIFT_MS,
    *,
    frame_length_ms: float = FRAME_LENGTH_MS,
    patch: int = PATCH,
    n_mels: int = N_MELS,
    max_frames: int | None = None,
    capacity: int | None = None,
    pool: int = 1,
) -> int:
    """Tokens one clip occupies; see `token_counts` for the array form and the cut count."""
    counts = token_counts(
        num_samples,
        sample_rate,
        frame_shift_ms,
        frame_length_ms=frame_length_ms,
        patch=patch,
        n_mels=n_mels,
        max_frames=max_frames,
        capacity=capacity,
        pool=pool,
    )
    return int(counts.tokens)


def fixed_frames_at(fixed_frames: int, scale: ArrayLike) -> np.ndarray:
    """The paper's fixed-length resolution mode: `int(fixed_frames / C)` frames, floored to a
    multiple of `PATCH` (e.g. 1024 frames at C = 1, 512 at C = 2, 384 at C = 2.6)."""
    frames = (fixed_frames / np.round(np.asarray(scale, dtype=np.float64), 1)).astype(np.int64)
    return frames - frames % PATCH


def clip_counts(
    num_samples: ArrayLike,
    sample_rate: ArrayLike,
    scale: ArrayLike = 1.0,
    *,
    compression: str = "shift",
    max_frames: int | None = None,
    capacity: int | None = None,
    fixed_frames: int | None = None,
    base_shift_ms: float = BASE_SHIFT_MS,
) -> TokenCounts:
    """Tokens per clip at resolution `scale`: the clip's own frames (`token_counts`), or with
    `fixed_frames` every clip cropped or padded to `fixed_frames_at(fixed_frames, C)` frames (then
    `cut` counts the tokens of the clip beyond them). `max_frames` and `capacity` crop either.
    `base_shift_ms`: the frame shift at C = 1 (`resolution`)."""
    shift, pool = resolution(scale, compression, base_shift_ms)
    natural = token_counts(num_samples, sample_rate, shift, max_frames=max_frames, capacity=capacity, pool=pool)
    if fixed_frames is None:
        return natural
    fixed = frame_tokens(
        np.broadcast_to(fixed_frames_at(fixed_frames, scale), np.shape(natural.tokens)),
        max_frames=max_frames,
        capacity=capacity,
    )
    whole = natural.tokens + natural.cut
    return TokenCounts(natural.frames, fixed.tokens, np.maximum(whole - fixed.tokens, 0))

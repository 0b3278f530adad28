"""Kaldi-compatible log-mel filterbanks, the one definition used for stats, training and inference.

Settings follow the ElasticAST/AST reference code: 128 mel bins, 25 ms Hanning window,
10 ms x C frame shift, HTK mel scale, no dither, no energy term, waveform mean removed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

from loaders.tokens import (
    BASE_SHIFT_MS,
    FRAME_LENGTH_MS,
    FREQ_TOKENS,
    N_MELS,
    PATCH,
    clip_counts,
    frame_samples,
    resolution,
)

FBANK_SETTINGS = {
    "num_mel_bins": N_MELS,
    "frame_length_ms": FRAME_LENGTH_MS,
    "frame_shift_ms": BASE_SHIFT_MS,
    "window_type": "hanning",
    "htk_compat": True,
    "use_energy": False,
    "dither": 0.0,
    "waveform_mean_removed": True,
}


def kaldi_fbank(
    waveform: np.ndarray | torch.Tensor, sample_rate: int, frame_shift_ms: float = BASE_SHIFT_MS
) -> torch.Tensor:
    """The reference: `torchaudio.compliance.kaldi.fbank` with the settings above."""
    wave = _checked_wave(waveform, sample_rate)
    return kaldi.fbank(
        (wave - wave.mean()).unsqueeze(0),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=N_MELS,
        dither=0.0,
        frame_shift=frame_shift_ms,
        frame_length=FRAME_LENGTH_MS,
    )


def fbank(waveform: np.ndarray | torch.Tensor, sample_rate: int, frame_shift_ms: float = BASE_SHIFT_MS) -> torch.Tensor:
    """Log-mel fbank `[frames, 128]` of a mono waveform; the same numbers as `kaldi_fbank`.

    Kaldi's steps (snip-edges framing, per-frame DC removal, 0.97 pre-emphasis, Hanning window,
    512-point power spectrum, Kaldi mel banks, log with an epsilon floor) done with the window and
    mel matrix cached per rate, and the power spectrum as re^2 + im^2: torchaudio takes the
    complex magnitude and squares it, which costs more than the FFT itself on CPU.
    tests/test_features.py holds it to the reference; bench/loader.py measures the gain.
    """
    wave = _checked_wave(waveform, sample_rate)
    size, shift = int(frame_samples(sample_rate, FRAME_LENGTH_MS)), int(frame_samples(sample_rate, frame_shift_ms))
    frames = (wave - wave.mean()).unfold(0, size, shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = torch.cat([frames[:, :1] * (1 - PREEMPHASIS), frames[:, 1:] - PREEMPHASIS * frames[:, :-1]], dim=1)
    window, banks, fft_size = analysis(sample_rate, size)
    spectrum = torch.fft.rfft(frames * window, n=fft_size)
    power = spectrum.real.square() + spectrum.imag.square()
    return (power @ banks).clamp_min(LOG_FLOOR).log()


PREEMPHASIS = 0.97
LOG_FLOOR = torch.finfo(torch.float32).eps


@lru_cache(maxsize=32)
def analysis(sample_rate: int, size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Hanning window, mel matrix `[fft_size // 2 + 1, mels]` and FFT size, as Kaldi builds them."""
    fft_size = 1 << (size - 1).bit_length()
    window = torch.hann_window(size, periodic=False)
    banks, _ = kaldi.get_mel_banks(N_MELS, fft_size, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks, (0, 1)).T.contiguous().float()
    return window, banks, fft_size


def _checked_wave(waveform: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    window = int(frame_samples(sample_rate, FRAME_LENGTH_MS))
    if wave.numel() < window:
        raise ValueError(
            f"waveform of {wave.numel()} samples is shorter than one {FRAME_LENGTH_MS} ms window ({window})"
        )
    return wave


def samples_needed(
    num_samples: int,
    sample_rate: int,
    scale: float = 1.0,
    *,
    compression: str = "shift",
    max_frames: int | None = None,
    capacity: int | None = None,
    fixed_frames: int | None = None,
    base_shift_ms: float = BASE_SHIFT_MS,
) -> int:
    """Samples of a clip that its kept frames read: all of them unless `max_frames`/`capacity`
    (or `fixed_frames`) crop it, else the window and shifts of the kept frames. What the loader
    reads and the fbank sees, so memory and time per sample stay bounded however long the file is."""
    counts = clip_counts(
        num_samples,
        sample_rate,
        scale,
        compression=compression,
        max_frames=max_frames,
        capacity=capacity,
        fixed_frames=fixed_frames,
        base_shift_ms=base_shift_ms,
    )
    if not counts.cut:
        return num_samples
    shifts, pools = resolution(scale, compression, base_shift_ms)
    kept = int(counts.tokens) // FREQ_TOKENS * PATCH * int(pools)
    return int(frame_samples(sample_rate, FRAME_LENGTH_MS)) + (kept - 1) * int(
        frame_samples(sample_rate, float(shifts))
    )


def spectrogram(
    waveform: np.ndarray | torch.Tensor,
    sample_rate: int,
    scale: float = 1.0,
    *,
    compression: str = "shift",
    mean: float = 0.0,
    std: float = 0.5,
    max_frames: int | None = None,
    capacity: int | None = None,
    fixed_frames: int | None = None,
    pad_before_normalising: bool = False,
    base_shift_ms: float = BASE_SHIFT_MS,
) -> torch.Tensor:
    """Normalised fbank `[frames, 128]` at resolution `scale`, cut to exactly the frames that
    `loaders.tokens.clip_counts` promises (so the plan and the features always agree).

    compression="shift": frame shift 10*C ms; "avgpool": 10 ms frames average-pooled by C.
    Normalised as `(x - mean) / (2 * std)`. Policies (see `loaders.tokens`): frames floored to a
    multiple of 16, the first frames kept when cropping (the waveform is cut to `samples_needed`
    before the fbank, so a cropped clip's features are those of its kept audio alone), clips
    shorter than one window or one patch padded at the end with zeros: zeros of the normalised
    values (the dataset mean), or with `pad_before_normalising` (the paper's recipe) zeros of the
    fbank, normalised with the rest. `fixed_frames`: the paper's fixed-length mode, every clip
    cropped or padded to `int(fixed_frames / C)` frames (floored to 16). `base_shift_ms`: the
    frame shift at C = 1.
    """
    shifts, pools = resolution(scale, compression, base_shift_ms)
    shift, pool = float(shifts), int(pools)
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    limits = dict(compression=compression, max_frames=max_frames, capacity=capacity, fixed_frames=fixed_frames)
    limits["base_shift_ms"] = base_shift_ms
    counts = clip_counts(wave.numel(), sample_rate, scale, **limits)
    wave = wave[: samples_needed(wave.numel(), sample_rate, scale, **limits)]
    window = int(frame_samples(sample_rate, FRAME_LENGTH_MS))
    spec = fbank(torch.nn.functional.pad(wave, (0, max(window - wave.numel(), 0))), sample_rate, shift)
    if pool > 1:
        spec = spec[: spec.shape[0] // pool * pool].reshape(-1, pool, spec.shape[1]).mean(dim=1)
    kept = int(counts.tokens) // FREQ_TOKENS * PATCH
    spec = spec[:kept]
    padding = (0, 0, 0, kept - spec.shape[0])
    if pad_before_normalising:
        return (torch.nn.functional.pad(spec, padding) - mean) / (2 * std)
    return torch.nn.functional.pad((spec - mean) / (2 * std), padding)


def patchify(spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[frames, 128]` → patches `[tokens, 256]`, frequency and time positions `[tokens]`.

    Tokens are time-major (all 8 frequency patches of a time step, then the next step), so a
    crop in time is a prefix. Each patch flattens as (16 mel bins, 16 frames), the layout of a
    ViT patch conv on a (frequency x time) image, which keeps imported weights meaningful.
    """
    frames, bins = spec.shape
    if frames % PATCH or bins % PATCH:
        raise ValueError(f"spectrogram {tuple(spec.shape)} is not a whole number of {PATCH}x{PATCH} patches")
    times, freqs = frames // PATCH, bins // PATCH
    patches = spec.T.reshape(freqs, PATCH, times, PATCH).permute(2, 0, 1, 3).reshape(times * freqs, PATCH * PATCH)
    return patches, *token_positions(times, freqs)


def token_positions(times: int, freqs: int = FREQ_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency and time positions of a spectrogram's tokens, `times` 16-frame steps long."""
    return torch.arange(freqs).repeat(times), torch.arange(times).repeat_interleave(freqs)


def spec_augment(spec: torch.Tensor, rng: np.random.Generator, freq_mask: int, time_mask: int) -> torch.Tensor:
    """One frequency band (< freq_mask bins) and one time span (< time_mask frames) set to 0
    (the dataset mean), drawn from `rng` so the same seed, epoch and key mask the same way."""
    return masked(spec, augment_spans(rng, spec.shape, freq_mask, time_mask))


def masked(spec: torch.Tensor, spans: tuple[int, int, int, int]) -> torch.Tensor:
    """`spec` with SpecAugment's band and span (`augment_spans`) set to 0."""
    freq_start, freq_width, time_start, time_width = spans
    spec = spec.clone()
    spec[:, freq_start : freq_start + freq_width] = 0
    spec[time_start : time_start + time_width] = 0
    return spec


def augment_spans(
    rng: np.random.Generator, shape: tuple[int, int], freq_mask: int, time_mask: int
) -> tuple[int, int, int, int]:
    """SpecAugment's draw for a `[frames, bins]` spectrogram: (band start, band width, span start,
    span width); the one keyed decision `spec_augment` and the device featurizer apply alike."""
    spans = []
    for size, width in ((shape[1], freq_mask), (shape[0], time_mask)):
        span = start = 0
        if width > 0 and size > 0:
            span = int(rng.integers(0, min(width, size) + 1))
            start = int(rng.integers(0, size - span + 1))
        spans += [start, span]
    return tuple(spans)

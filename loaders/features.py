"""Kaldi-compatible log-mel filterbanks, the one definition used for stats, training and inference.

Settings follow the ElasticAST/AST reference code: 128 mel bins, 25 ms Hanning window,
10 ms x C frame shift, HTK mel scale, no dither, no energy term, waveform mean removed.
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

NUM_MEL_BINS = 128
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0

FBANK_SETTINGS = {
    "num_mel_bins": NUM_MEL_BINS,
    "frame_length_ms": FRAME_LENGTH_MS,
    "frame_shift_ms": FRAME_SHIFT_MS,
    "window_type": "hanning",
    "htk_compat": True,
    "use_energy": False,
    "dither": 0.0,
    "waveform_mean_removed": True,
}


def fbank(waveform: np.ndarray | torch.Tensor, sample_rate: int, frame_shift_ms: float = FRAME_SHIFT_MS) -> torch.Tensor:
    """Log-mel fbank `[frames, 128]` of a mono waveform (Kaldi framing, snip_edges)."""
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    window = int(sample_rate * FRAME_LENGTH_MS * 0.001)
    if wave.numel() < window:
        raise ValueError(f"waveform of {wave.numel()} samples is shorter than one {FRAME_LENGTH_MS} ms window ({window})")
    return kaldi.fbank(
        (wave - wave.mean()).unsqueeze(0),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_shift=frame_shift_ms,
        frame_length=FRAME_LENGTH_MS,
    )

"""Features agree with the token arithmetic the plan uses; patch layout; keyed SpecAugment."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.features import fbank, kaldi_fbank, patchify, spec_augment, spectrogram
from loaders.tokens import SCALE_GRID, shift_for_scale, token_counts


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(0, 16000 * 40),
    rate=st.sampled_from([8000, 16000]),
    scale=st.sampled_from([1.0, 1.2, 2.2, 2.6, 3.8, 4.0]),
    max_frames=st.sampled_from([None, 128, 3072]),
    capacity=st.sampled_from([None, 256, 2048]),
)
def test_spectrogram_has_exactly_the_planned_tokens(n, rate, scale, max_frames, capacity):
    wave = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    for compression, pool, shift in (("shift", 1, shift_for_scale(scale)), ("avgpool", int(scale), 10.0)):
        spec = spectrogram(
            wave,
            rate,
            scale if compression == "shift" else int(scale),
            compression=compression,
            max_frames=max_frames,
            capacity=capacity,
        )
        planned = token_counts(n, rate, shift, max_frames=max_frames, capacity=capacity, pool=pool)
        assert patchify(spec)[0].shape[0] == int(planned.tokens)
        assert torch.isfinite(spec).all()


@settings(deadline=None, max_examples=40)
@given(
    n=st.integers(400, 16000 * 12),
    rate=st.sampled_from([8000, 16000, 22050, 44100]),
    scale=st.sampled_from(SCALE_GRID),
    loudness=st.sampled_from([0.0, 1e-4, 0.1, 1.0]),
)
def test_fast_fbank_matches_torchaudio_kaldi(n, rate, scale, loudness):
    if n < int(rate * 0.025):
        return
    wave = np.random.default_rng(n).standard_normal(n).astype(np.float32) * loudness
    shift = float(shift_for_scale(scale))
    ours, reference = fbank(wave, rate, shift), kaldi_fbank(wave, rate, shift)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() <= 1e-3


def test_normalisation_and_zero_padding_of_short_clips():
    spec = spectrogram(np.zeros(100, np.float32) + 0.01, 16000, mean=-5.0, std=2.0)
    assert spec.shape == (16, 128)
    assert torch.all(spec[1:] == 0)  # frames past the clip: zeros, i.e. the dataset mean


def test_patches_are_time_major_16x16_blocks():
    spec = torch.arange(48 * 128, dtype=torch.float32).reshape(48, 128)
    patches, freq, time = patchify(spec)
    assert patches.shape == (24, 256)
    assert torch.equal(patches[9], spec[16:32, 16:32].T.reshape(-1))  # time step 1, frequency band 1
    assert freq.tolist()[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 0] and time.tolist()[7:9] == [0, 1]


def test_spec_augment_is_keyed_and_masks_bounded_spans():
    spec = torch.ones(64, 128)
    a = spec_augment(spec, np.random.default_rng([1, 2, 3]), freq_mask=48, time_mask=32)
    b = spec_augment(spec, np.random.default_rng([1, 2, 3]), freq_mask=48, time_mask=32)
    assert torch.equal(a, b) and torch.equal(spec, torch.ones(64, 128))
    zero_cols = (a == 0).all(dim=0).sum()
    zero_rows = (a == 0).all(dim=1).sum()
    assert zero_cols <= 48 and zero_rows <= 32 and (a == 0).any()
    assert torch.equal(spec_augment(spec, np.random.default_rng(0), 0, 0), spec)

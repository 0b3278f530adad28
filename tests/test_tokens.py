"""Token arithmetic: Kaldi frame counts match real fbank output; crop/pad policies hold."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.tokens import kaldi_frames, shift_for_scale, token_counts, tokens_for

from conftest import kaldi_reference_fbank

RATES = (8000, 16000, 44100)
SCALES = [1.0 + 0.2 * k for k in range(16)]  # accumulated floats on purpose: 2.4000000000000004


def fbank_frames(num_samples: int, sample_rate: int, shift_ms: float) -> int:
    """Frames of the paper's fbank call on a silent clip of that length."""
    return kaldi_reference_fbank(np.zeros(num_samples, np.float32), sample_rate, shift_ms).shape[0]


@settings(deadline=None, max_examples=150)
@given(
    seconds=st.floats(0.026, 2.0),
    rate=st.sampled_from(RATES),
    scale=st.sampled_from(SCALES),
    nudge=st.integers(-2, 2),
)
def test_frames_match_kaldi_fbank(seconds, rate, scale, nudge):
    shift = float(shift_for_scale(scale))
    num_samples = max(int(seconds * rate) + nudge, int(rate * 0.025))
    assert int(kaldi_frames(num_samples, rate, shift)) == fbank_frames(num_samples, rate, shift)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("scale", SCALES)
def test_frames_match_fbank_at_frame_boundaries(rate, scale):
    shift = float(shift_for_scale(scale))
    window = int(rate * 25 * 0.001)
    step = int(rate * shift * 0.001)
    for num_samples in (window, window + step - 1, window + step, window + 17 * step - 1, window + 17 * step):
        assert int(kaldi_frames(num_samples, rate, shift)) == fbank_frames(num_samples, rate, shift)


def test_shorter_than_a_window_has_no_frames_but_one_patch_of_tokens():
    assert int(kaldi_frames(399, 16000)) == 0
    counts = token_counts([0, 399, 400, 16000 * 0.16], 16000)
    assert counts.frames.tolist() == [0, 0, 1, 14]
    assert counts.tokens.tolist() == [8, 8, 8, 8]
    assert counts.cut.tolist() == [0, 0, 0, 0]


def test_scale_is_rounded_to_one_decimal():
    assert float(shift_for_scale(1.0 + 0.2 * 7)) == 24.0
    assert shift_for_scale([1.04, 3.96]).tolist() == [10.0, 40.0]


def test_ten_seconds_at_16k():
    # 998 frames -> 992 (62 patches) -> 62 * 8 tokens
    assert tokens_for(160_000, 16000) == 496
    assert tokens_for(160_000, 16000, float(shift_for_scale(4.0))) == 8 * (250 // 16)


def test_crops_to_max_frames_and_capacity_and_reports_cut():
    thirty_seconds = 30 * 16000  # 2998 frames -> 2992 -> 187 patches
    assert tokens_for(thirty_seconds, 16000) == 1496
    by_frames = token_counts(thirty_seconds, 16000, max_frames=1030)  # floored to 1024
    assert (int(by_frames.tokens), int(by_frames.cut)) == (512, 1496 - 512)
    by_capacity = token_counts(thirty_seconds, 16000, capacity=1000)  # 125 patches
    assert (int(by_capacity.tokens), int(by_capacity.cut)) == (1000, 496)
    both = token_counts(thirty_seconds, 16000, max_frames=3072, capacity=2048)
    assert (int(both.tokens), int(both.cut)) == (1496, 0)


@settings(deadline=None)
@given(
    num_samples=st.lists(st.integers(0, 2_000_000), min_size=1, max_size=50),
    rate=st.sampled_from(RATES),
    scale=st.sampled_from(SCALES),
    capacity=st.integers(8, 4096),
    max_frames=st.none() | st.integers(16, 8192),
)
def test_array_form_obeys_policies_and_matches_scalar_form(num_samples, rate, scale, capacity, max_frames):
    shift = float(shift_for_scale(scale))
    counts = token_counts(num_samples, rate, shift, capacity=capacity, max_frames=max_frames)
    tokens, cut = counts.tokens, counts.cut
    assert np.all(tokens % 8 == 0) and np.all(tokens >= 8) and np.all(tokens <= capacity)
    assert np.all(tokens + cut == 8 * np.maximum(counts.frames // 16, 1))
    if max_frames is not None:
        assert np.all(tokens <= max_frames // 16 * 8)
    scalar = [tokens_for(n, rate, shift, capacity=capacity, max_frames=max_frames) for n in num_samples]
    assert scalar == tokens.tolist()


def test_broadcasts_per_sample_rates_and_shifts():
    counts = token_counts([160_000, 441_000], [16000, 44100], [10.0, 40.0])
    assert counts.tokens.tolist() == [496, 8 * (250 // 16)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 7}, "capacity \\(7\\)"),
        ({"max_frames": 15}, "max_frames \\(15\\)"),
        ({"n_mels": 100}, "n_mels \\(100\\)"),
        ({"frame_shift_ms": 0.01}, "shift=0"),
    ],
)
def test_bad_config_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        token_counts(16000, 16000, **kwargs)


def test_negative_length_is_rejected():
    with pytest.raises(ValueError, match="-5"):
        token_counts([100, -5], 16000)

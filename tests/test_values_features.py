"""Feature and statistics values against independent references: torchaudio's own
`kaldi.fbank` called here with the paper's settings, numpy for normalisation, pooling and
statistics, and values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loaders import PackedStream
from loaders.features import patchify, spectrogram
from loaders.stats import fbank_stats
from shards import ShardDataset, ShardSample

from conftest import kaldi_reference_fbank

MEAN, STD = -3.0, 2.5  # far apart, so a swapped mean/std or a missing 2 shows
EPSILON_LOG = math.log(torch.finfo(torch.float32).eps)  # Kaldi's log floor for a zero power spectrum


def reference_spectrogram(
    wave: np.ndarray, rate: int, scale: float, compression: str, mean: float, std: float, max_frames: int | None = None
) -> np.ndarray:
    """README policy by hand: pad to one window, fbank at 10*C ms (or 10 ms average-pooled by C),
    (x - mean) / (2 * std), frames floored to 16, at least 16 (zero-padded), at most max_frames."""
    window = int(rate * 0.025)
    wave = np.pad(np.asarray(wave, np.float32), (0, max(window - len(wave), 0)))
    values = kaldi_reference_fbank(wave, rate, 10.0 * round(scale, 1) if compression == "shift" else 10.0)
    if compression == "avgpool":
        pool = int(scale)
        values = values[: len(values) // pool * pool].reshape(-1, pool, 128).mean(axis=1)
    frames = max(len(values) // 16 * 16, 16)
    if max_frames is not None:
        frames = min(frames, max_frames // 16 * 16)
    out = np.zeros((frames, 128))
    kept = min(frames, len(values))
    out[:kept] = (values[:kept] - mean) / (2 * std)
    return out


def reference_patches(spec: np.ndarray) -> np.ndarray:
    """Time-major 16x16 patches, each flattened (mel, frame) as a ViT patch conv sees it."""
    times = spec.shape[0] // 16
    return spec.reshape(times, 16, 8, 16).transpose(0, 2, 3, 1).reshape(times * 8, 256)


def test_a_constant_clip_is_the_log_floor_everywhere_normalised_by_hand():
    """A constant wave is all zero once its mean is removed: every fbank value is log(eps)."""
    wave = np.full(16000, 0.3, np.float32)  # 1 + (16000 - 400) // 160 = 98 frames
    expected = (EPSILON_LOG - MEAN) / (2 * STD)
    for scale, compression, frames in (
        (1.0, "shift", 96),
        (2.0, "shift", 48),
        (2.0, "avgpool", 48),
        (3.0, "avgpool", 32),
    ):
        spec = spectrogram(wave, 16000, scale, compression=compression, mean=MEAN, std=STD)
        assert spec.shape == (frames, 128), (scale, compression)
        assert torch.allclose(spec, torch.full_like(spec, expected), atol=1e-5), (scale, compression)


@pytest.mark.parametrize(
    "scale, compression",
    [(1.0, "shift"), (1.4, "shift"), (2.6, "shift"), (4.0, "shift"), (2.0, "avgpool"), (3.0, "avgpool")],
)
@pytest.mark.parametrize("seconds, rate, max_frames", [(2.37, 16000, None), (0.61, 8000, None), (3.3, 16000, 96)])
def test_spectrogram_equals_kaldi_fbank_normalised_floored_and_cropped(scale, compression, seconds, rate, max_frames):
    rng = np.random.default_rng(int(seconds * 100))
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.4 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.1 * rng.standard_normal(len(t))).astype(np.float32)
    ours = spectrogram(wave, rate, scale, compression=compression, mean=MEAN, std=STD, max_frames=max_frames)
    expected = reference_spectrogram(wave, rate, scale, compression, MEAN, STD, max_frames)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-4, rtol=0)
    np.testing.assert_array_equal(patchify(ours)[0].numpy(), reference_patches(ours.numpy()))


@pytest.mark.parametrize("samples", [100, 399, 400, 2800])  # shorter than a window, one frame, 16 frames
def test_clips_shorter_than_a_patch_are_padded_with_the_dataset_mean(samples):
    wave = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    ours = spectrogram(wave, 16000, mean=MEAN, std=STD)
    np.testing.assert_allclose(
        ours.numpy(), reference_spectrogram(wave, 16000, 1.0, "shift", MEAN, STD), atol=2e-4, rtol=0
    )
    real_frames = max(1 + (samples - 400) // 160, 1)
    assert ours.shape == (16, 128) and torch.all(ours[real_frames:] == 0) and torch.all(ours[:real_frames] != 0)


def test_fbank_stats_are_numpys_mean_and_std_over_the_first_usable_clips():
    rng = np.random.default_rng(7)
    clips = [
        (rng.standard_normal(5000).astype(np.float32) * 0.2, 16000),
        (rng.standard_normal(300).astype(np.float32), 16000),  # shorter than a window: passed over, counted
        (np.sin(np.arange(9000) * 0.3).astype(np.float32), 8000),
        (rng.standard_normal(12000).astype(np.float32) * 0.01, 16000),
        (rng.standard_normal(7000).astype(np.float32), 16000),  # beyond max_samples usable clips
    ]
    stats = fbank_stats(((wave, rate, f"source-{i}") for i, (wave, rate) in enumerate(clips)), max_samples=3)
    values = np.concatenate([kaldi_reference_fbank(w, r).ravel() for w, r in (clips[0], clips[2], clips[3])])
    assert (stats["samples"], stats["too_short"]) == (3, 1)
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(values.std(), rel=1e-6)


def test_make_shards_records_the_statistics_of_its_train_clips(synthetic_shards):
    dataset = ShardDataset(synthetic_shards)
    waves = [item.audio for item in dataset.samples("train") if isinstance(item, ShardSample)]
    assert len(waves) == len(dataset.index("train"))
    values = np.concatenate([kaldi_reference_fbank(w, dataset.sample_rate).ravel() for w in waves])
    stats = dataset.fbank_stats
    assert (stats["split"], stats["samples"]) == ("train", len(dataset.index("train")))
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-5)
    assert stats["std"] == pytest.approx(values.std(), rel=1e-5)


@pytest.mark.parametrize("scales, compression", [((1.0, 1.6, 2.2, 3.0), "shift"), ((1.0, 2.0, 3.0), "avgpool")])
def test_stream_patches_are_the_reference_features_of_the_stored_audio(synthetic_shards, scales, compression):
    """What a worker computes, at each sample's drawn C and with the shard set's statistics."""
    dataset = ShardDataset(synthetic_shards)
    stats = dataset.fbank_stats
    stream = PackedStream(
        synthetic_shards / "train",
        rows_per_batch=2,
        max_tokens=80,
        scales=scales,
        compression=compression,
        max_frames=96,
        backend="local",
    )
    seen_scales = set()
    for batch in stream.epoch(1):
        for i, key in enumerate(batch.keys):
            audio, rate = dataset.read_sample("train", key)
            expected = reference_spectrogram(
                audio, rate, float(batch.scale[i]), compression, stats["mean"], stats["std"], 96
            )
            where = batch.segment_ids[batch.row[i]] == batch.slot[i]
            np.testing.assert_allclose(
                batch.patches[batch.row[i]][where].numpy(), reference_patches(expected), atol=2e-4, rtol=0
            )
            seen_scales.add(round(float(batch.scale[i]), 1))
    assert seen_scales == set(scales)

"""make_shards on the real FSDD recordings: counts, lengths and audio survive the round trip."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import webdataset as wds

from shards import ShardDataset, ShardSample

from conftest import kaldi_reference_fbank

PCM16_STEP = 1 / 32768


def test_counts_per_split_and_label(fsdd_shards):
    dataset = ShardDataset(fsdd_shards)
    assert dataset.labels == [str(d) for d in range(10)]
    assert dataset.sample_rate == 16000
    for split, per_label in (("train", 270), ("test", 30)):
        info = dataset.meta["splits"][split]
        assert info["samples"] == 10 * per_label
        assert info["label_counts"] == {str(d): per_label for d in range(10)}
        index = dataset.index(split)
        assert Counter(labels[0] for labels in index.column("labels").to_pylist()) == {
            str(d): per_label for d in range(10)
        }
    assert dataset.meta["skipped"] == []
    assert len(dataset.meta["splits"]["train"]["shards"]) > 1


def test_split_follows_the_take_number(fsdd_shards):
    dataset = ShardDataset(fsdd_shards)
    for split in dataset.splits:
        takes = {int(key.rsplit("_", 1)[1]) for key in dataset.index(split).column("key").to_pylist()}
        assert takes == (set(range(5)) if split == "test" else set(range(5, 50)))


def test_every_index_length_equals_the_decoded_length(fsdd_shards):
    dataset = ShardDataset(fsdd_shards)
    for split in dataset.splits:
        index = {row["key"]: row for row in dataset.index(split).to_pylist()}
        seen = Counter()
        for item in dataset.samples(split):
            assert isinstance(item, ShardSample), item
            seen[item.key] += 1
            assert len(item.audio) == index[item.key]["num_samples"] == item.meta["num_samples"]
            assert item.sample_rate == index[item.key]["sample_rate"] == 16000
            assert index[item.key]["duration_s"] == len(item.audio) / 16000
        assert seen == Counter(index.keys())  # every key exactly once


def test_decoded_audio_is_the_resampled_source_within_pcm16_quantisation(fsdd_shards):
    dataset = ShardDataset(fsdd_shards)
    rows = dataset.index("test").to_pylist()[::15]
    for row in rows:
        source, rate = sf.read(row["source"], dtype="float32")
        assert rate == 8000
        expected = AF.resample(torch.from_numpy(source), 8000, 16000).numpy().clip(-1, 1)
        audio, stored_rate = dataset.read_sample("test", row["key"])
        assert stored_rate == 16000 and audio.shape == expected.shape
        assert np.abs(audio - expected).max() <= PCM16_STEP


def test_shards_are_plain_webdataset(fsdd_shards):
    dataset = ShardDataset(fsdd_shards)
    urls = [p.url for p in dataset.shard_locations("test")]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 300
    assert all({"wav", "json"} <= set(s) for s in samples)
    assert {s["__key__"] for s in samples} == set(dataset.index("test").column("key").to_pylist())


def test_fbank_stats_are_recorded(fsdd_shards):
    stats = ShardDataset(fsdd_shards).fbank_stats
    assert stats["split"] == "train" and stats["samples"] == 1000
    dataset = ShardDataset(fsdd_shards)
    first = islice((s.audio for s in dataset.samples("train") if isinstance(s, ShardSample)), 1000)
    # no source adds more than twice the median clip's frames (Kaldi at 16 kHz: 1 + (n - 400) // 160)
    cap = int(2 * np.median(1 + (dataset.index("train").column("num_samples").to_numpy() - 400) // 160))
    values = np.concatenate([kaldi_reference_fbank(audio, 16000)[:cap].ravel() for audio in first])
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-5) and stats["std"] == pytest.approx(
        values.std(), rel=1e-5
    )
    assert stats["settings"]["num_mel_bins"] == 128

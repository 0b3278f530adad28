"""The built-in demo corpus: deterministic, varied in length, and built end to end by the job."""

from __future__ import annotations

import csv

import numpy as np
import soundfile as sf

from shards import ShardDataset
from shards.demo import DEMO_CLASSES, write_demo_corpus


def read_rows(manifest):
    with manifest.open() as handle:
        return list(csv.DictReader(handle))


def test_demo_corpus_is_deterministic_by_seed(tmp_path):
    a = write_demo_corpus(tmp_path / "a", clips=16, seed=3)
    b = write_demo_corpus(tmp_path / "b", clips=16, seed=3)
    c = write_demo_corpus(tmp_path / "c", clips=16, seed=4)
    rows = read_rows(a)
    assert rows == read_rows(b)
    assert all((a.parent / r["path"]).read_bytes() == (b.parent / r["path"]).read_bytes() for r in rows)
    assert any((a.parent / r["path"]).read_bytes() != (c.parent / r["path"]).read_bytes() for r in rows)


def test_demo_corpus_spans_classes_and_lengths(tmp_path):
    manifest = write_demo_corpus(tmp_path, clips=80, seed=0)
    rows = read_rows(manifest)
    assert {r["label"] for r in rows} == set(DEMO_CLASSES)
    seconds = [sf.info(tmp_path / r["path"]).duration for r in rows]
    assert 0.5 <= min(seconds) < 1 and 2 < max(seconds) <= 2.5
    assert {r["split"] for r in rows if r["label"] == "tone"} == {"train", "test"}
    for r in rows[:8]:
        audio, rate = sf.read(tmp_path / r["path"])
        assert rate == 16000 and np.isfinite(audio).all() and 0.3 < np.abs(audio).max() <= 0.51


def test_job_without_input_builds_the_demo_shard_set(tmp_path, make_shards, ray_local):
    out = tmp_path / "demo"
    assert make_shards.main(["--out", str(out), "--demo-clips", "40", "--quiet"]) == 0
    dataset = ShardDataset(out)
    assert dataset.labels == sorted(DEMO_CLASSES)
    assert dataset.meta["splits"]["test"]["label_counts"] == {c: 1 for c in sorted(DEMO_CLASSES)}
    assert dataset.meta["splits"]["train"]["samples"] == 32
    assert dataset.meta["parameters"]["input_kind"] == "demo"
    assert dataset.fbank_stats["samples"] == 32  # every train clip

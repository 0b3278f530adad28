"""PackedStream on real shards with a real local Ray: exactly once, no leakage, determinism,
backend equality, resume, bad data."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader

from loaders import PackedStream, StreamConfig
from loaders.assemble import BatchSpec
from loaders.device_features import to_device
from loaders.features import patchify, spectrogram
from shards import ShardDataset

from conftest import RECIPE_OPTIONS, same_content

SCALES = (1.0, 1.4, 2.0, 3.2, 4.0)


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory, make_shards):
    out = tmp_path_factory.mktemp("demo") / "shards"
    assert (
        make_shards.main(
            ["--out", str(out), "--demo-clips", "64", "--backend", "local", "--quiet", "--shard-size", "1MiB"]
        )
        == 0
    )
    return out


def collect(stream: PackedStream, epoch: int = 0, start_step: int = 0) -> list:
    return list(stream.epoch(epoch, start_step))


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys == y.keys and x.step == y.step and x.is_padding == y.is_padding and same_content(x, y)
        for x, y in zip(a, b)
    )


def test_exactly_once_across_two_ranks_with_two_ray_workers(fsdd_shards, ray_local):
    split_dir = fsdd_shards / "test"
    expected = set(ShardDataset(fsdd_shards).index("test").column("key").to_pylist())
    ranks = [
        collect(
            PackedStream(
                split_dir, rows_per_batch=2, max_tokens=256, buffer=64, scales=SCALES, rank=r, world=2, workers=2
            )
        )
        for r in (0, 1)
    ]
    plan = PackedStream(split_dir, rows_per_batch=2, max_tokens=256, buffer=64, scales=SCALES, backend="local").plan(0)
    assert plan.n_batches % 2 == 1, "this test needs a batch count that 2 ranks cannot share evenly"
    assert len(ranks[0]) == len(ranks[1]) == plan.steps(2)
    assert [b.is_padding for b in ranks[1]] == [False] * (plan.steps(2) - 1) + [True]
    assert not any(b.is_padding for b in ranks[0])
    filler = ranks[1][-1]
    assert filler.num_samples == 0 and filler.real_tokens == 0 and filler.patches.shape == (2, 256, 256)
    seen = Counter(k for rank in ranks for b in rank for k in b.keys)
    assert set(seen) == expected and set(seen.values()) == {1}


def test_rows_hold_whole_samples_with_correct_positions_and_features(demo_shards):
    stream = PackedStream(
        demo_shards / "train", rows_per_batch=2, max_tokens=2048, buffer=32, scales=SCALES, backend="local"
    )
    dataset = ShardDataset(demo_shards)
    stats = dataset.fbank_stats
    checked = 0
    for batch in collect(stream):
        for i, key in enumerate(batch.keys):
            ids = batch.segment_ids[batch.row[i]]
            where = torch.nonzero(ids == batch.slot[i]).flatten()
            assert len(where) == batch.n_tokens[i] and torch.all(where.diff() == 1)  # one contiguous run
            frames = int(batch.n_tokens[i]) // 8
            assert torch.equal(batch.freq_pos[batch.row[i], where], torch.arange(8).repeat(frames))
            assert torch.equal(batch.time_pos[batch.row[i], where], torch.arange(frames).repeat_interleave(8))
            if checked < 6:
                audio, rate = dataset.read_sample("train", key)
                spec = spectrogram(
                    audio,
                    rate,
                    float(batch.scale[i]),
                    mean=stats["mean"],
                    std=stats["std"],
                    max_frames=3072,
                    capacity=2048,
                )
                assert torch.allclose(batch.patches[batch.row[i], where], patchify(spec)[0])
                checked += 1
        assert torch.all(batch.patches[batch.segment_ids == 0] == 0)
        mask = batch.attention_mask()
        assert torch.equal(
            mask[0], (batch.segment_ids[0][:, None] == batch.segment_ids[0][None]) & (batch.segment_ids[0] > 0)[:, None]
        )
    assert checked == 6


def test_same_batches_with_one_or_two_ray_workers_and_locally(demo_shards, ray_local):
    args = dict(shards=demo_shards / "train", rows_per_batch=2, buffer=32, scales=SCALES, rank=1, world=2)
    local = collect(PackedStream(**args, backend="local"))
    assert same_batches(local, collect(PackedStream(**args, workers=1)))
    on_device = PackedStream(**args, workers=2, worker_cpus=0.5, featurize="device")  # waveforms through Ray
    shipped = collect(on_device)
    assert not any(b.featurized for b in shipped)
    featurized = [to_device(b, "cpu", on_device.featurizer) for b in shipped]
    assert same_batches(local, [replace(b, patches=a.patches) for a, b in zip(local, featurized)])
    assert max((a.patches - b.patches).abs().max() for a, b in zip(local, featurized)) <= 1e-4
    assert same_batches(
        local, list(DataLoader(PackedStream(**args, workers=2), batch_size=None))
    )  # Ray under a DataLoader


@pytest.mark.parametrize("options", RECIPE_OPTIONS)
def test_seed_and_epoch_fix_the_batches(demo_shards, options):
    make = lambda seed: PackedStream(
        demo_shards / "train", rows_per_batch=2, buffer=32, scales=SCALES, seed=seed, backend="local", **options
    )
    first = collect(make(0), epoch=3)
    assert same_batches(first, collect(make(0), epoch=3))
    assert [b.keys for b in first] != [b.keys for b in collect(make(0), epoch=4)]
    assert [b.keys for b in first] != [b.keys for b in collect(make(1), epoch=3)]


@pytest.mark.parametrize("featurize", ["loader", "device"])
@pytest.mark.parametrize("options", RECIPE_OPTIONS)
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(demo_shards, options, featurize):
    settings = dict(rows_per_batch=1, max_tokens=256, buffer=32, scales=SCALES, backend="local", featurize=featurize)
    stream = PackedStream(demo_shards / "train", **(settings | options))
    full = collect(stream, epoch=2)
    assert len(full) > 2
    half = len(full) // 2
    assert same_batches(full[half:], collect(stream, epoch=2, start_step=half))
    assert [b.step for b in full] == list(range(len(full)))


def test_avgpool_compression_uses_whole_scales(demo_shards):
    with pytest.raises(ValueError, match="avgpool"):
        PackedStream(demo_shards / "train", rows_per_batch=2, scales=(1.0, 1.5), compression="avgpool", backend="local")
    stream = PackedStream(
        demo_shards / "train", rows_per_batch=2, scales=(1, 2, 3, 4), compression="avgpool", backend="local"
    )
    batches = collect(stream)
    assert {float(s) for b in batches for s in b.scale} == {1.0, 2.0, 3.0, 4.0}
    assert sum(b.num_samples for b in batches) == stream.num_samples


def test_stream_stats_add_up(demo_shards):
    stream = PackedStream(
        demo_shards / "train",
        rows_per_batch=2,
        max_tokens=256,
        buffer=32,
        scales=SCALES,
        max_frames=128,
        backend="local",
    )
    batches = collect(stream)
    stats = stream.stats[0]
    assert stats["samples"] == stream.num_samples and stats["batches"] == len(batches)
    assert stats["tokens"] == sum(int(b.n_tokens.sum()) for b in batches)
    assert stats["slots"] == len(batches) * 2 * 256 and stats["pad_ratio"] == pytest.approx(
        1 - stats["tokens"] / stats["slots"]
    )
    assert stats["cut_tokens"] == int(stream.plan(0).cut.sum()) > 0 and stats["failed"] == 0
    assert stats["pad_ratio"] == pytest.approx(stream.plan(0).pad_ratio)


def broken_copy(source, target):
    shutil.copytree(source, target)
    return target


def test_a_corrupt_member_leaves_a_hole_and_costs_nothing_else(demo_shards, tmp_path, capsys):
    root = broken_copy(demo_shards, tmp_path / "broken")
    index = ShardDataset(root).index("train").to_pylist()
    victim = index[5]
    with open(root / "train" / victim["shard"], "r+b") as handle:
        handle.seek(victim["offset"])
        handle.write(b"garbage!" * 8)
    stream = PackedStream(root / "train", rows_per_batch=2, buffer=32, scales=SCALES, backend="local")
    reference = collect(
        PackedStream(demo_shards / "train", rows_per_batch=2, buffer=32, scales=SCALES, backend="local")
    )
    batches = collect(stream)
    assert len(batches) == len(reference)
    failed = [f for b in batches for f in b.failed]
    assert [f["key"] for f in failed] == [victim["key"]] and failed[0]["shard"] == victim["shard"]
    assert Counter(k for b in batches for k in b.keys) == Counter(r["key"] for r in index if r["key"] != victim["key"])
    assert stream.stats[0]["failed"] == 1
    assert f"{victim['shard']} {victim['key']}" in capsys.readouterr().err


def test_a_truncated_shard_loses_only_the_samples_past_the_break(demo_shards, tmp_path):
    root = broken_copy(demo_shards, tmp_path / "broken")
    index = ShardDataset(root).index("train").to_pylist()
    shard = index[0]["shard"]
    members = sorted((r for r in index if r["shard"] == shard), key=lambda r: r["offset"])
    path = root / "train" / shard
    cut_at = members[len(members) // 2]["offset"] + 100
    path.write_bytes(path.read_bytes()[:cut_at])
    batches = collect(PackedStream(root / "train", rows_per_batch=2, buffer=32, scales=SCALES, backend="local"))
    lost = {f["key"] for b in batches for f in b.failed}
    assert lost == {r["key"] for r in members if r["offset"] + r["nbytes"] > cut_at}
    reasons = [f["reason"] for b in batches for f in b.failed]  # the member cut, then those wholly past the end
    assert all("truncated" in r or "past the end of the shard" in r for r in reasons), reasons
    assert {k for b in batches for k in b.keys} == {r["key"] for r in index} - lost


def test_configuration_errors_name_the_problem(demo_shards, tmp_path):
    root = broken_copy(demo_shards, tmp_path / "broken")
    shard = ShardDataset(root).meta["splits"]["train"]["shards"][0]
    (root / "train" / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        PackedStream(root / "train", rows_per_batch=2, backend="local")
    with pytest.raises(FileNotFoundError, match="neither a shard set"):
        PackedStream(tmp_path, rows_per_batch=2, backend="local")
    with pytest.raises(ValueError, match="rank 2 and world 2"):
        PackedStream(demo_shards / "train", rows_per_batch=2, rank=2, world=2, backend="local")
    with pytest.raises(TypeError, match="rows_per_batch"):
        PackedStream(demo_shards / "train", 2, backend="local")
    with pytest.raises(ValueError, match="backend"):
        PackedStream(demo_shards / "train", rows_per_batch=2, backend="spark")
    meta = json.loads((root / "dataset.json").read_text())
    meta["fbank"] = None
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "train" / shard).write_bytes(b"")
    with pytest.raises(ValueError, match="fbank statistics"):
        PackedStream(root / "train", rows_per_batch=2, backend="local")


def test_one_stream_config_whether_given_whole_by_name_or_from_a_train_config(demo_shards):
    """A `StreamConfig`, the same settings by name, and `TrainConfig.stream()` plan identically;
    `split=` names the data split of a shard-set folder, and a (rank, world) pair there is refused."""
    from elasticast.training.config import TrainConfig

    settings = dict(
        rows_per_batch=2,
        max_tokens=1024,
        buffer=32,
        scales=SCALES,
        seed=3,
        freq_mask=8,
        backend="local",
        workers=1,
        max_failed=TrainConfig.max_failed,
    )
    config = StreamConfig(**settings)
    by_name = PackedStream(demo_shards / "train", **settings, rank=1, world=2)
    trained = TrainConfig(
        rows_per_batch=2, max_tokens=1024, buffer=32, scales=SCALES, seed=3, freq_mask=8, loader="local"
    ).stream()
    assert trained == config == by_name.config
    named = PackedStream(demo_shards, config, split="train", rank=1, world=2)
    assert named.split == "train" and named.specs(1) == by_name.specs(1)
    assert PackedStream(demo_shards, config, split="test").num_samples == len(ShardDataset(demo_shards).index("test"))
    with pytest.raises(TypeError, match="ranks are rank=, world="):
        PackedStream(demo_shards / "train", config, split=(1, 2))
    assert PackedStream(demo_shards / "train", config, seed=4).config == dataclasses.replace(config, seed=4)
    with pytest.raises(ValueError, match="packing 'best_fit'"):
        StreamConfig(rows_per_batch=2, packing="best_fit")


@pytest.mark.parametrize("options", RECIPE_OPTIONS)
def test_batch_specs_cross_to_workers_unchanged(demo_shards, options):
    stream = PackedStream(demo_shards / "train", rows_per_batch=2, buffer=32, scales=SCALES, backend="local", **options)
    specs = stream.specs(0)
    assert specs[0].samples and all(BatchSpec.from_json(s.to_json()) == s for s in specs)
    assert all(isinstance(s.samples[0].label_ids, tuple) for s in specs)

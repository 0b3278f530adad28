"""The shard format itself: atomic, deterministic tars; robust reading; exact shard planning."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards import ShardDataset, ShardError, ShardSample, read_shard
from shards.audio import encode_pcm16
from shards.build import SAMPLE_OVERHEAD_BYTES, BuildConfig, plan_shards
from shards.dataset import write_dataset_json
from shards.inputs import (
    Source,
    dedupe_keys,
    make_key,
    read_manifest,
    split_for,
    write_manifest,
)
from shards.tar import ShardWriter


def write_tar(path: Path, n: int, corrupt: int | None = None) -> Path:
    writer = ShardWriter(path)
    for i in range(n):
        wav = encode_pcm16(np.full(1000 + i, 0.1, np.float32), 16000)
        writer.add(f"k{i}", b"not a wav file" if i == corrupt else wav, {"key": f"k{i}"})
    writer.close()
    return path


def test_writer_renames_only_when_complete(tmp_path):
    writer = ShardWriter(tmp_path / "shard-000000.tar")
    writer.add("a", encode_pcm16(np.zeros(10, np.float32), 16000), {})
    assert not (tmp_path / "shard-000000.tar").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".shard-000000.tar.partial"]
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar"]


def test_same_input_gives_byte_identical_shards(tmp_path):
    assert write_tar(tmp_path / "a.tar", 5).read_bytes() == write_tar(tmp_path / "b.tar", 5).read_bytes()


def test_a_corrupt_member_costs_only_its_own_sample(tmp_path):
    items = list(read_shard(write_tar(tmp_path / "s.tar", 4, corrupt=2)))
    assert [type(i).__name__ for i in items] == ["ShardSample", "ShardSample", "ShardError", "ShardSample"]
    assert items[2].key == "k2" and "undecodable" in items[2].reason and items[2].shard.endswith("s.tar")
    assert [len(i.audio) for i in items if isinstance(i, ShardSample)] == [1000, 1001, 1003]


def test_a_truncated_shard_yields_its_whole_samples_then_names_the_break(tmp_path):
    path = write_tar(tmp_path / "s.tar", 6)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    items = list(read_shard(path))
    good = [i for i in items if isinstance(i, ShardSample)]
    assert 2 <= len(good) < 6 and [i.key for i in good] == [f"k{n}" for n in range(len(good))]
    assert isinstance(items[-1], ShardError) and items[-1].key is None and "s.tar" in items[-1].shard
    assert "unreadable after key" in items[-1].reason


def test_an_interrupted_build_is_not_mistaken_for_a_shard_set(tmp_path):
    (tmp_path / "train").mkdir()
    write_tar(tmp_path / "train" / "shard-000000.tar", 2)
    with pytest.raises(FileNotFoundError, match="not a complete shard set"):
        ShardDataset(tmp_path)


def test_a_missing_shard_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    write_dataset_json(tmp_path, {"splits": {"train": {"shards": ["shard-000000.tar"]}}})
    with pytest.raises(FileNotFoundError, match="shard-000000.tar"):
        ShardDataset(tmp_path).shard_locations("train")


def test_keys_are_webdataset_safe_and_unique():
    assert make_key("a/b.c/d e.wav") == "a_b_c_d_e"
    assert make_key("x/y.wav", 1.5, 2.25) == "x_y__1500-2250ms"
    sources = [Source(make_key(p), p, ("l",), "train") for p in ("a/b.wav", "a_b.flac", "a/b.mp3")]
    keys = [s.key for s in dedupe_keys(sources)]
    assert len(set(keys)) == 3 and keys[0] == "a_b" and all("." not in k and "/" not in k for k in keys)


def test_split_by_path_hash_is_stable_and_near_the_fraction():
    assert split_for("speaker1/clip_0001.wav", 0.1) == split_for("speaker1/clip_0001.wav", 0.1)
    tests = sum(split_for(f"f{i}.wav", 0.1) == "test" for i in range(5000))
    assert 400 < tests < 600


def test_a_valid_split_comes_from_train_and_leaves_test_as_it_was():
    def reference(path: str) -> str:  # the first 8 bytes of SHA-1 as a fraction of 2**64
        fraction = int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big") / 2**64
        return "test" if fraction < 0.1 else "valid" if fraction < 0.25 else "train"

    paths = [f"speaker{i % 7}/clip_{i:04d}.wav" for i in range(4000)]
    splits = [split_for(p, 0.1, 0.15) for p in paths]
    assert splits == [reference(p) for p in paths]
    assert [s == "test" for s in splits] == [split_for(p, 0.1) == "test" for p in paths]
    assert 500 < splits.count("valid") < 700


def test_a_manifest_may_name_valid_and_unnamed_rows_are_hashed(tmp_path):
    rows = [{"path": "v.wav", "label": "a", "split": "valid"}] + [
        {"path": f"c{i}.wav", "label": "a", "split": ""} for i in range(300)
    ]
    sources, skipped = read_manifest(write_manifest(tmp_path / "m.csv", rows), test_fraction=0.2, valid_fraction=0.3)
    assert skipped == [] and sources[0].split == "valid"
    assert [s.split for s in sources[1:]] == [split_for(f"c{i}.wav", 0.2, 0.3) for i in range(300)]
    assert {"train", "valid", "test"} == {s.split for s in sources[1:]}


@settings(deadline=None, max_examples=60)
@given(
    lengths=st.lists(st.integers(1, 400_000), min_size=1, max_size=200),
    shard_bytes=st.integers(4096, 2_000_000),
    shard_samples=st.one_of(st.none(), st.integers(1, 50)),
    test_every=st.integers(2, 5),
)
def test_plan_puts_every_source_in_exactly_one_shard_within_target(lengths, shard_bytes, shard_samples, test_every):
    probed = [
        (Source(f"k{i}", f"/x/{i}.wav", ("a",), "test" if i % test_every == 0 else "train"), n)
        for i, n in enumerate(lengths)
    ]
    config = BuildConfig(out=Path("/out"), shard_bytes=shard_bytes, shard_samples=shard_samples)
    plans = plan_shards(probed, config)
    planned = [s["key"] for plan in plans for s in plan["sources"]]
    assert sorted(planned) == sorted(s.key for s, _ in probed)
    size = {s.key: 44 + 2 * n + SAMPLE_OVERHEAD_BYTES for s, n in probed}
    for plan in plans:
        keys = [s["key"] for s in plan["sources"]]
        assert keys and {s["split"] for s in plan["sources"]} == {plan["split"]}
        assert len(keys) == 1 or sum(size[k] for k in keys) <= shard_bytes
        assert shard_samples is None or len(keys) <= shard_samples
    names = [(p["split"], Path(p["path"]).name) for p in plans]
    for split in {p["split"] for p in plans}:
        numbers = [name for s, name in names if s == split]
        assert numbers == [f"shard-{i:06d}.tar" for i in range(len(numbers))]
    assert plan_shards(probed, config) == plans  # deterministic


def test_plan_order_depends_on_the_seed():
    probed = [(Source(f"k{i}", f"/x/{i}.wav", ("a",), "train"), 100) for i in range(50)]
    order = lambda seed: [
        s["key"] for p in plan_shards(probed, BuildConfig(out=Path("/o"), seed=seed)) for s in p["sources"]
    ]
    assert order(0) == order(0) != order(1)
    assert order(0) != sorted(order(0))


def test_written_manifest_reads_back_and_unknown_columns_are_refused(tmp_path):
    rows = [
        {"path": "a/x.wav", "label": "dog;bark", "split": "test"},
        {"path": "a/y.wav", "label": "cat", "start": "0.5", "end": "2"},
    ]
    sources, skipped = read_manifest(write_manifest(tmp_path / "m.csv", rows), test_fraction=0.0)
    assert skipped == []
    assert [(s.labels, s.split, s.start_s, s.end_s) for s in sources] == [
        (("dog", "bark"), "test", None, None),
        (("cat",), "train", 0.5, 2.0),
    ]
    with pytest.raises(ValueError, match=r"manifest columns \['speaker'\]"):
        write_manifest(tmp_path / "bad.csv", [{"path": "x.wav", "label": "a", "speaker": "s"}])

"""The stream's lean index (columns and integer ids, read from index.parquet; no Python object per
sample) against pyarrow's own reading of the file, and the cheap exactly-once check against the
per-key counts it replaces."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from elasticast.training.epoch_report import delivery_check, key_counts
from loaders.index import StreamIndex
from shards import ShardDataset


@pytest.fixture(scope="module")
def index(synthetic_shards) -> StreamIndex:
    return StreamIndex.read(ShardDataset(synthetic_shards), "train")


def test_columns_match_the_parquet_rows_with_shards_as_ids(index, synthetic_shards):
    dataset = ShardDataset(synthetic_shards)
    rows = dataset.index("train").to_pylist()
    assert index.shard_names == tuple(dataset.meta["splits"]["train"]["shards"])
    assert index.keys.to_pylist() == [r["key"] for r in rows]
    assert [index.shard_names[s] for s in index.shard] == [r["shard"] for r in rows]
    for name in ("offset", "nbytes", "num_samples", "sample_rate", "xxh3_64", "weight"):
        assert getattr(index, name).tolist() == [r[name] for r in rows], name
    assert [index.label_ids(i) for i in range(len(rows))] == [tuple(r["label_ids"]) for r in rows]
    assert list(index["key"]) == [r["key"] for r in rows] and list(index["shard"]) == [r["shard"] for r in rows]
    arrays = [value for value in vars(index).values() if isinstance(value, np.ndarray)]
    assert len(arrays) == 10 and all(a.dtype != object for a in arrays)


def test_only_the_columns_asked_for_are_read(synthetic_shards):
    table = ShardDataset(synthetic_shards).index("train", columns=["key", "num_samples"])
    assert table.column_names == ["key", "num_samples"]
    with pytest.raises(KeyError, match="no column"):
        ShardDataset(synthetic_shards).index("train", columns=["key", "speaker"])


def test_a_shard_the_dataset_does_not_list_is_named(synthetic_shards, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_shards, root)
    meta = json.loads((root / "dataset.json").read_text())
    dropped = meta["splits"]["train"]["shards"].pop()
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"index.parquet names shards .*'{dropped}'"):
        StreamIndex.read(ShardDataset(root), "train")


def test_delivery_check_agrees_with_per_key_counts(index):
    keys = index.keys.to_pylist()
    rng = random.Random(0)
    cases = {
        "shuffled": rng.sample(keys, len(keys)),
        "one lost": keys[1:],
        "one twice": keys + keys[:1],
        "a duplicate in place of a loss": keys[1:] + keys[2:3],
        "a stranger in place of a key": keys[1:] + ["nobody"],
    }
    for name, seen in cases.items():
        check, reference = delivery_check(index.keys, 4, seen, failed=1), key_counts(keys, 4, seen, failed=1)
        assert check["exactly_once"] == reference["exactly_once"] == (name == "shuffled"), name
        assert (check["duplicates"], check["missing"]) == (reference["duplicates"], reference["missing"]), name
        assert (check["expected"], check["delivered"], check["failed"]) == (len(keys), len(seen), 1)
        assert ("counts" in check) == (name != "shuffled"), name  # the per-key detail only on a mismatch
    assert (
        delivery_check(index.keys, 0, keys, 0)["delivered_digest"]
        == delivery_check(index.keys, 0, keys[::-1], 0)["expected_digest"]
    )

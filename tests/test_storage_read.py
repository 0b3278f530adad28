"""Reading shard sets from object storage (a real S3 server, moto, on 127.0.0.1): locations, ranged
reads coalesced per run of members, the stream equal to the local one, faults retried and counted;
an outage within the time budget costs nothing, a longer one (or a shard the store never serves,
or a deleted bucket) stops the stream naming the URL, never a hole."""

from __future__ import annotations

import itertools
import pickle
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from loaders import PackedStream
from shards import ShardDataset
from shards.location import Location
from shards.ranged import MAX_GAP, Span, read_spans
from shards.retry import PROCESS_RETRIES, StorageFailure, is_transient

from object_store import S3Server

STREAM = dict(rows_per_batch=2, max_tokens=256, buffer=16, scales=(1.0, 2.0), backend="local")
SMALL_BATCHES = dict(rows_per_batch=1, max_tokens=128)  # about 20 steps: room for a fault mid-epoch


_SETUPS = itertools.count()


@pytest.fixture(scope="module")
def remote_set(synthetic_shards, s3_server) -> str:
    """The synthetic shard set (25 clips, 4 a shard), uploaded as is to `s3://read-tests-N/set`, a
    new bucket each time the module's tests start (the suite may run them in two stretches)."""
    import s3fs

    bucket = f"read-tests-{next(_SETUPS)}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(bucket)
    fs.put(str(synthetic_shards), f"{bucket}/set", recursive=True)
    return f"s3://{bucket}/set"


def epoch_of(source, **changes) -> list:
    return list(PackedStream(source, **(STREAM | changes)).epoch(0))


def same(a: list, b: list) -> bool:
    """Bitwise the same batches: keys, labels and every tensor of the packed rows."""
    tensors = ("patches", "segment_ids", "freq_pos", "time_pos", "labels", "row", "slot", "n_tokens", "scale")
    return len(a) == len(b) and all(
        x.keys == y.keys and all(torch.equal(getattr(x, name), getattr(y, name)) for name in tensors)
        for x, y in zip(a, b)
    )


def requests_for(split: Path, keys: list[str]) -> tuple[int, int]:
    """(requests a batch should take, runs of adjacent members), from the index alone: each
    sample's tar header + bytes, merged per shard where less than MAX_GAP bytes lie between; and
    the runs of samples that lie next to each other in a tar (the most requests there may be)."""
    rows = pq.read_table(split / "index.parquet", columns=["key", "shard", "offset", "nbytes"]).to_pylist()
    order = {(r["shard"], r["offset"]): i for i, r in enumerate(sorted(rows, key=lambda r: (r["shard"], r["offset"])))}
    mine = sorted((r for r in rows if r["key"] in set(keys)), key=lambda r: (r["shard"], r["offset"]))
    requests = runs = 0
    for i, row in enumerate(mine):
        previous = mine[i - 1] if i else None
        same_shard = previous is not None and previous["shard"] == row["shard"]
        requests += not (same_shard and row["offset"] - 512 - (previous["offset"] + previous["nbytes"]) <= MAX_GAP)
        runs += not (
            same_shard and order[(row["shard"], row["offset"])] == order[(previous["shard"], previous["offset"])] + 1
        )
    return requests, runs


def halfway(shards: Path, epoch: list) -> int:
    """The shard request in the middle of an epoch's reads (from the index: see `requests_for`)."""
    return sum(requests_for(shards / "train", batch.keys)[0] for batch in epoch) // 2


def test_locations_name_local_paths_and_urls_one_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Location.of("runs/x").url == str(tmp_path / "runs" / "x")
    assert Location.of(f"file://{tmp_path}/a").local == tmp_path / "a"
    remote = Location.of("s3://bucket/prefix/")
    assert (remote.url, (remote / "a.tar").url, remote.name, remote.parent.url) == (
        "s3://bucket/prefix",
        "s3://bucket/prefix/a.tar",
        "prefix",
        "s3://bucket",
    )
    assert pickle.loads(pickle.dumps(remote / "x")) == Location("s3://bucket/prefix/x")
    with pytest.raises(ValueError, match="not a local path"):
        remote.local
    with pytest.raises(PermissionError, match="read-only"):
        Location.of("https://example.org/x").write_bytes(b"")
    target = Location.of("deep/er/file.bin")
    target.write_bytes(b"abc")
    assert (tmp_path / "deep/er/file.bin").read_bytes() == b"abc"
    assert target.parent.names() == ["file.bin"]  # no temporary file left beside it


def test_transient_and_permanent_errors_are_told_apart():
    class Answer(Exception):
        def __init__(self, status):
            self.status = status

    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(Answer(503))
    assert (
        not is_transient(FileNotFoundError()) and not is_transient(PermissionError()) and not is_transient(Answer(404))
    )
    wrapped = OSError(22, "range not satisfiable")
    wrapped.__cause__ = Answer(416)
    assert not is_transient(wrapped)  # the HTTP status under a backend's OSError decides
    assert not is_transient(ValueError("checksum mismatch"))


def test_ranges_merge_per_run_and_keep_each_span(s3_bucket):
    data = bytes(range(256)) * 64
    file = Location.of(s3_bucket) / "f.bin"
    file.write_bytes(data)
    spans = [Span(file, 0, 100), Span(file, 200, 300), Span(file, 9000, 9100), Span(file, 16000, 17000)]
    got, stats = read_spans(spans, max_gap=150)
    assert got == [data[s.start : s.end] for s in spans[:3]] + [data[16000:]]  # the last one: the file ends first
    assert (stats.requests, stats.retries, stats.failed) == (3, 0, 0)  # 0-300 merged; 9000-9100; 16000-
    got, _ = read_spans([Span(Location.of(s3_bucket) / "absent", 0, 10)])
    assert isinstance(got[0], FileNotFoundError)


def test_a_stream_from_s3_equals_the_local_one_and_counts_a_request_per_run(synthetic_shards, remote_set):
    local = epoch_of(synthetic_shards / "train")
    stream = PackedStream(f"{remote_set}/train", **STREAM)
    remote = list(stream.epoch(0))
    assert same(local, remote) and not any(b.failed for b in remote)
    assert same(local, epoch_of(f"{remote_set}/train", prefetch=0))  # no reader thread: the same batches
    assert Counter(k for b in remote for k in b.keys) == Counter(
        ShardDataset(remote_set).index("train")["key"].to_pylist()
    )
    expected, runs = zip(*(requests_for(synthetic_shards / "train", b.keys) for b in remote))
    assert [b.requests for b in remote] == list(expected)
    assert all(e <= r for e, r in zip(expected, runs)) and sum(runs) < sum(len(b.keys) for b in remote)
    assert stream.stats[0]["requests"] == sum(expected) and stream.stats[0]["retries"] == 0


def test_a_faulty_store_loses_nothing_and_every_retry_is_counted(synthetic_shards, remote_set, faulty_s3):
    local = epoch_of(synthetic_shards / "train")
    proxy = faulty_s3(fail_fraction=0.25, seed=3)
    before = PROCESS_RETRIES.retries
    stream = PackedStream(f"{remote_set}/train", **STREAM)
    remote = list(stream.epoch(0))
    faults = proxy.counts["503"] + proxy.counts["cut"]
    assert same(local, remote) and not any(b.failed for b in remote)
    assert faults > 5 and PROCESS_RETRIES.retries - before == faults  # every failed request was seen and retried
    assert stream.stats[0]["retries"] == sum(b.retries for b in remote) > 0


@pytest.mark.slow
def test_an_outage_of_20_s_mid_epoch_loses_nothing(synthetic_shards, remote_set, faulty_s3):
    """Every request dropped for 20 s from the middle of the epoch's reads on: the stream waits it out
    (retries within its 30 s budget) and the epoch is bitwise the fault-free one."""
    local = epoch_of(synthetic_shards / "train", **SMALL_BATCHES)
    proxy = faulty_s3()
    proxy.outage(20, after=halfway(synthetic_shards, local))
    started = time.monotonic()
    stream = PackedStream(f"{remote_set}/train", **(STREAM | SMALL_BATCHES), storage_timeout=30)
    remote = list(stream.epoch(0))
    assert time.monotonic() - started >= 20 and proxy.counts["outage"] > 3
    assert same(local, remote) and stream.stats[0]["failed"] == 0 and stream.stats[0]["retries"] > 0


def test_an_outage_past_the_budget_stops_naming_the_url_and_the_epoch_continues_exactly(
    synthetic_shards, remote_set, faulty_s3
):
    local = epoch_of(synthetic_shards / "train", **SMALL_BATCHES)
    proxy = faulty_s3()
    proxy.outage(600, after=halfway(synthetic_shards, local), kind="503")
    stream = PackedStream(f"{remote_set}/train", **(STREAM | SMALL_BATCHES), storage_timeout=1)
    delivered = []
    with pytest.raises(StorageFailure, match=rf"read {remote_set}/train/shard-\d{{6}}\.tar.* 1 s budget"):
        for batch in stream.epoch(0):
            delivered.append(batch)
    assert 0 < len(delivered) < len(local) and not any(b.failed for b in delivered)
    proxy.end_outage()  # the store is back: the epoch continues at the first step it lacks
    assert same(local, delivered + list(stream.epoch(0, start_step=len(delivered))))


def test_a_shard_the_store_never_serves_stops_the_stream_and_is_no_hole(remote_set, faulty_s3):
    faulty_s3(poisoned=("train/shard-000001.tar",))
    stream = PackedStream(f"{remote_set}/train", **(STREAM | SMALL_BATCHES), storage_timeout=0.5)
    with pytest.raises(StorageFailure, match=f"read {remote_set}/train/shard-000001.tar"):
        list(stream.epoch(0))


def test_a_bucket_deleted_mid_epoch_stops_the_stream_naming_it(synthetic_shards, s3_bucket, faulty_s3):
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).put(str(synthetic_shards), f"{s3_bucket[5:]}/set", recursive=True)
    proxy = faulty_s3()
    proxy.delete_bucket(
        s3_bucket[5:], after=halfway(synthetic_shards, epoch_of(synthetic_shards / "train", **SMALL_BATCHES))
    )
    stream = PackedStream(f"{s3_bucket}/set/train", **(STREAM | SMALL_BATCHES))
    started = time.monotonic()
    with pytest.raises(StorageFailure, match=f"cannot read {s3_bucket}/set/train/shard-.*bucket does not exist"):
        list(stream.epoch(0))
    assert time.monotonic() - started < 10  # a refusal is not waited out


def test_a_shard_set_served_over_plain_http_streams_the_same(synthetic_shards, s3_server):
    """Read-only http(s)://: the set as public objects, fetched by plain URL (no S3 protocol, no listing)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("public", acl="public-read")
    for path in sorted(synthetic_shards.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"public/set/{path.relative_to(synthetic_shards)}", path.read_bytes(), ACL="public-read")
    stream = PackedStream(f"{s3_server.endpoint}/public/set/train", **STREAM)
    remote = list(stream.epoch(0))
    assert same(epoch_of(synthetic_shards / "train"), remote)
    expected = sum(requests_for(synthetic_shards / "train", b.keys)[0] for b in remote)
    assert stream.stats[0]["failed"] == 0 and stream.stats[0]["requests"] == expected


def test_a_missing_bucket_is_one_clear_error(s3_server):
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/set/train"):
        PackedStream("s3://no-such-bucket/set/train", **STREAM)


def test_wrong_credentials_are_one_clear_error_naming_the_url(s3_server, monkeypatch):
    import s3fs

    strict = S3Server(check_credentials=True)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", strict.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(PermissionError, match=r"s3://some-bucket/set/train.*access denied.*credentials"):
            PackedStream("s3://some-bucket/set/train", **STREAM)
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
        strict.stop()

"""make_shards on object storage (moto's real S3 server): a set built to s3:// is the local build,
byte for byte; --overwrite never leaves a mix that looks complete; inputs read from s3:// give the
same index; a bad --out stops before any work; a stream reads the s3 set as it reads the local one."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from loaders import PackedStream
from shards import ShardDataset
from shards.inputs import write_manifest
from shards.location import Location
from shards.options import DATASET_FILE

from conftest import SYNTHETIC_LABELS, write_synthetic_manifest

CLIPS = 10
BUILD = ["--backend", "local", "--quiet", "--shard-samples", "3", "--seed", "3"]


def labels(count: int) -> list[str]:
    return [SYNTHETIC_LABELS[i % len(SYNTHETIC_LABELS)] for i in range(count)]


@pytest.fixture
def clips(tmp_path) -> Path:
    """The synthetic manifest of CLIPS clips (all in train), with its wavs beside it."""
    return write_synthetic_manifest(tmp_path / "audio", labels(CLIPS))


def build(make_shards, manifest, out, *flags: str) -> int:
    return make_shards.main(["--manifest", str(manifest), "--out", str(out), *BUILD, *flags])


def objects(url: str) -> list[str]:
    """Every object under `url`, relative to it, listed by the server."""
    return Location.of(url).find()


def upload_folder(folder: Path, url: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            (Location.of(url) / path.relative_to(folder).as_posix()).upload(path)


def test_a_set_built_on_s3_is_the_local_build(clips, tmp_path, s3_bucket, make_shards, monkeypatch, capsys):
    local, remote = tmp_path / "local", f"{s3_bucket}/set"
    assert build(make_shards, clips, local) == 0
    temporary = tmp_path / "tmp"  # where shard tars wait for their upload
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert build(make_shards, clips, remote) == 0
    assert not list(temporary.iterdir())
    on_disk = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert objects(remote) == on_disk  # no probe object, nothing else
    expected, actual = ShardDataset(local), ShardDataset(remote)
    assert actual.index("train").equals(expected.index("train"))
    assert actual.fbank_stats == expected.fbank_stats and actual.meta["splits"] == expected.meta["splits"]
    for shard in expected.shard_locations("train"):
        assert (actual.root / "train" / shard.name).read_bytes() == shard.local.read_bytes()
    capsys.readouterr()
    assert make_shards.main(["--verify", remote]) == 0
    assert f"{remote}: shard set consistent" in capsys.readouterr().out


def test_overwrite_leaves_no_stale_objects_and_a_crash_leaves_no_dataset_json(
    clips, tmp_path, s3_bucket, make_shards, faulty_s3, capsys
):
    remote = f"{s3_bucket}/set"
    rows = [{"path": f"clip{i:02d}.wav", "label": "hum", "split": "train" if i < 6 else "valid"} for i in range(CLIPS)]
    assert build(make_shards, write_manifest(clips.parent / "two.csv", rows), remote) == 0
    assert len([name for name in objects(remote) if name.endswith(".tar")]) == 2 + 2  # 6 train, 4 valid, 3 a shard
    assert build(make_shards, write_manifest(clips.parent / "few.csv", rows[:4]), remote) == 2
    assert "exists and is not empty (use --overwrite" in capsys.readouterr().err

    assert build(make_shards, write_manifest(clips.parent / "few.csv", rows[:4]), remote, "--overwrite") == 0
    assert objects(remote) == [DATASET_FILE, "train/index.parquet", "train/shard-000000.tar", "train/shard-000001.tar"]
    meta = ShardDataset(remote).meta
    assert meta["splits"]["train"]["samples"] == 4 and list(meta["splits"]) == ["train"]
    assert meta["splits"]["train"]["shards"] == ["shard-000000.tar", "shard-000001.tar"]

    gone = write_manifest(clips.parent / "gone.csv", [{"path": "gone.wav", "label": "hum"}])
    assert build(make_shards, gone, remote, "--overwrite") == 2  # fails before writing: the former set stays whole
    assert len(ShardDataset(remote).index("train")) == 4

    faulty_s3(poisoned=("shard-000001",))  # every request for that shard fails: its upload cannot succeed
    capsys.readouterr()
    assert build(make_shards, clips, remote, "--overwrite", "--storage-timeout", "1") == 2
    err = capsys.readouterr().err
    assert "shard-000001.tar" in err and f"{remote} is left without {DATASET_FILE}" in err
    assert DATASET_FILE not in objects(remote)
    with pytest.raises(FileNotFoundError, match="not a complete shard set"):
        ShardDataset(remote)


def test_inputs_on_s3_give_the_local_index(clips, tmp_path, s3_bucket, make_shards, capsys):
    folder = clips.parent
    upload_folder(folder, f"{s3_bucket}/audio")
    expected = build_index(make_shards, clips, tmp_path / "local")
    by_url = build_index(make_shards, f"{s3_bucket}/audio/manifest.csv", tmp_path / "url-manifest")
    in_s3 = [f"{s3_bucket}/audio/{Path(source).name}" for source in expected["source"]]
    assert_same_index(by_url, expected, in_s3)

    rows = [
        {"path": f"{s3_bucket}/audio/clip{i:02d}.wav", "label": label, "split": "train"}
        for i, label in enumerate(labels(CLIPS))
    ]
    urls = write_manifest(tmp_path / "urls.csv", rows + [{"path": f"{s3_bucket}/audio/gone.wav", "label": "hum"}])
    capsys.readouterr()
    assert_same_index(build_index(make_shards, urls, tmp_path / "url-rows"), expected, in_s3)
    assert f"skipped {s3_bucket}/audio/gone.wav: missing file" in capsys.readouterr().err

    tree = tmp_path / "tree"
    for i, label in enumerate(labels(CLIPS)):
        (tree / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / f"clip{i:02d}.wav", tree / label)
    upload_folder(tree, f"{s3_bucket}/tree")
    from_folder = build_index(make_shards, tree, tmp_path / "folder", "--input")
    assert_same_index(
        build_index(make_shards, f"{s3_bucket}/tree/", tmp_path / "url-folder", "--input"),
        from_folder,
        [f"{s3_bucket}/tree/{Path(s).parent.name}/{Path(s).name}" for s in from_folder["source"]],
    )


def build_index(make_shards, source, out: Path, option: str = "--manifest") -> dict:
    assert make_shards.main([option, str(source), "--out", str(out), *BUILD]) == 0
    return ShardDataset(out).index("train").to_pydict()


def assert_same_index(actual: dict, expected: dict, sources: list[str]) -> None:
    assert actual.pop("source") == sources
    assert actual == {name: values for name, values in expected.items() if name != "source"}


@pytest.mark.parametrize(
    "out, why",
    [("s3://no-such-bucket/x", "The specified bucket does not exist"), ("https://example.org/x", "read-only")],
)
def test_an_unwritable_out_stops_before_any_work(out, why, s3_server, tmp_path, make_shards, capsys):
    # the manifest does not exist: had the inputs been read first, it would be the error
    assert make_shards.main(["--manifest", str(tmp_path / "none.csv"), "--out", out, *BUILD]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"make_shards: error: cannot write to --out {out}: ") and why in line


def test_a_missing_input_prefix_is_named(s3_bucket, tmp_path, make_shards, capsys):
    assert make_shards.main(["--input", f"{s3_bucket}/nothing", "--out", str(tmp_path / "o"), *BUILD]) == 2
    assert f"--input {s3_bucket}/nothing is not a folder" in capsys.readouterr().err
    assert make_shards.main(["--manifest", f"{s3_bucket}/rows.csv", "--out", str(tmp_path / "o"), *BUILD]) == 2
    assert f"--manifest {s3_bucket}/rows.csv does not exist" in capsys.readouterr().err


STREAM = dict(rows_per_batch=1, max_tokens=128, buffer=16, scales=(1.0, 2.0))


def epoch_of(shards, **settings) -> list:
    return list(PackedStream(shards, **STREAM, **settings).epoch(0))


def test_a_stream_epoch_from_s3_is_the_local_epoch(clips, tmp_path, s3_bucket, make_shards):
    local, remote = tmp_path / "local", f"{s3_bucket}/set"
    assert build(make_shards, clips, local) == 0 and build(make_shards, clips, remote) == 0
    assert_same_epochs(epoch_of(f"{remote}/train", backend="local"), epoch_of(local / "train", backend="local"))


def test_a_ray_stream_epoch_from_s3_is_the_local_epoch(clips, tmp_path, s3_bucket, make_shards, ray_local):
    local, remote = tmp_path / "local", f"{s3_bucket}/set"
    assert build(make_shards, clips, local) == 0
    assert make_shards.main(["--manifest", str(clips), "--out", remote, *BUILD[2:], "--backend", "ray"]) == 0
    assert_same_epochs(epoch_of(f"{remote}/train", workers=1), epoch_of(local / "train", backend="local"))


def assert_same_epochs(actual: list, expected: list) -> None:
    keys = Counter(key for batch in actual for key in batch.keys)
    assert set(keys.values()) == {1} and len(keys) == CLIPS
    assert [b.keys for b in actual] == [b.keys for b in expected] and len(actual) > 1
    for a, b in zip(actual, expected):
        assert torch.equal(a.patches, b.patches) and torch.equal(a.segment_ids, b.segment_ids)

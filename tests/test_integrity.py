"""No silent damage: every read is checked against the index (XXH3-64 of the wav, tar header name),
mismatches are counted holes named by shard and key, and `make_shards --verify` finds the rest."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import xxhash

from loaders import PackedStream
from shards import ShardDataset, ShardError, ShardSample
from shards.inputs import write_manifest
from shards.tar import IntegrityError

CLIPS = 12


@pytest.fixture(scope="module")
def tone_shards(tmp_path_factory, make_shards) -> Path:
    """12 clips of the same length (so two members can trade places unnoticed by size), 3 shards."""
    work = tmp_path_factory.mktemp("tones")
    rows = []
    for i in range(CLIPS):
        t = np.arange(8000) / 16000
        sf.write(
            work / f"tone{i:02d}.wav",
            (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32),
            16000,
            subtype="PCM_16",
        )
        rows.append({"path": f"tone{i:02d}.wav", "label": f"c{i % 3}", "split": "train"})
    out = work / "shards"
    args = [
        "--manifest",
        str(write_manifest(work / "rows.csv", rows)),
        "--out",
        str(out),
        "--backend",
        "local",
        "--quiet",
        "--shard-samples",
        "4",
    ]
    assert make_shards.main(args) == 0
    return out


def damaged_copy(source: Path, target: Path) -> tuple[Path, list[dict]]:
    shutil.copytree(source, target)
    return target, sorted(ShardDataset(target).index("train").to_pylist(), key=lambda r: (r["shard"], r["offset"]))


def rewrite_tar(path: Path, drop: str | None, add: dict[str, bytes]) -> None:
    """The same tar without `drop`'s members and with `add` appended (offsets of the rest unchanged)."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar if info.name.partition(".")[0] != drop]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members + [(tarfile.TarInfo(name), data) for name, data in add.items()]:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def stream_failures(root: Path) -> tuple[list[dict], dict, set[str]]:
    stream = PackedStream(root / "train", rows_per_batch=2, max_tokens=256, buffer=8, backend="local")
    batches = list(stream.epoch(0))
    return [f for b in batches for f in b.failed], stream.stats[0], {k for b in batches for k in b.keys}


def test_the_index_holds_the_xxh3_64_of_each_wav_member_as_written(tone_shards):
    """Against xxhash itself over the tar's bytes, and the XXH3 reference vector of empty input."""
    index = ShardDataset(tone_shards).index("train")
    assert index.schema.field("xxh3_64").type == pa.uint64() and xxhash.xxh3_64_intdigest(b"") == 0x2D06800538D394C2
    expected = {}
    for shard in sorted((tone_shards / "train").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            expected |= {
                info.name[:-4]: xxhash.xxh3_64_intdigest(tar.extractfile(info).read())
                for info in tar
                if info.name.endswith(".wav")
            }
    assert dict(zip(index.column("key").to_pylist(), index.column("xxh3_64").to_pylist())) == expected
    assert len(expected) == CLIPS and any(
        value >= 2**63 for value in expected.values()
    )  # the full unsigned range round-trips


def test_flipped_bytes_in_pcm_data_are_a_named_hole_everywhere(tone_shards, tmp_path, capsys):
    root, index = damaged_copy(tone_shards, tmp_path / "flipped")
    victim = index[5]
    with open(root / "train" / victim["shard"], "r+b") as handle:  # 64 bytes inside the PCM data, past the header
        handle.seek(victim["offset"] + 1000)
        data = bytearray(handle.read(64))
        handle.seek(victim["offset"] + 1000)
        handle.write(bytes(b ^ 0xFF for b in data))
    failed, stats, delivered = stream_failures(root)
    assert [(f["shard"], f["key"]) for f in failed] == [(victim["shard"], victim["key"])]
    assert "checksum mismatch" in failed[0]["reason"] and stats["failed"] == 1
    assert delivered == {r["key"] for r in index} - {victim["key"]}
    assert f"{victim['shard']} {victim['key']}: checksum mismatch" in capsys.readouterr().err
    dataset = ShardDataset(root)
    with pytest.raises(IntegrityError, match=f"{victim['key']}: checksum mismatch"):
        dataset.read_sample("train", victim["key"])
    errors = [item for item in dataset.samples("train") if isinstance(item, ShardError)]
    assert [(Path(e.shard).name, e.key) for e in errors] == [(victim["shard"], victim["key"])]
    assert "checksum mismatch" in errors[0].reason


def test_an_offset_pointing_at_another_member_of_the_same_length_is_caught(tone_shards, tmp_path):
    root, index = damaged_copy(tone_shards, tmp_path / "swapped")
    a, b = next((x, y) for x, y in zip(index, index[1:]) if x["shard"] == y["shard"])
    assert a["nbytes"] == b["nbytes"]
    table = pq.read_table(root / "train" / "index.parquet")
    offsets = [
        b["offset"] if key == a["key"] else o
        for key, o in zip(table.column("key").to_pylist(), table.column("offset").to_pylist())
    ]
    pq.write_table(
        table.set_column(table.schema.get_field_index("offset"), "offset", [offsets]), root / "train" / "index.parquet"
    )
    failed, _, delivered = stream_failures(root)
    assert [f["key"] for f in failed] == [a["key"]]
    assert f"is '{b['key']}.wav', not '{a['key']}.wav'" in failed[0]["reason"]
    assert a["key"] not in delivered and b["key"] in delivered
    with pytest.raises(IntegrityError, match="index does not match"):
        ShardDataset(root).read_sample("train", a["key"])


def test_an_offset_past_the_end_says_so_without_object_reprs(tone_shards, tmp_path):
    root, index = damaged_copy(tone_shards, tmp_path / "past")
    table = pq.read_table(root / "train" / "index.parquet")
    victim = table.column("key")[0].as_py()
    offsets = [o + 10**9 if i == 0 else o for i, o in enumerate(table.column("offset").to_pylist())]
    pq.write_table(
        table.set_column(table.schema.get_field_index("offset"), "offset", [offsets]), root / "train" / "index.parquet"
    )
    failed, _, _ = stream_failures(root)
    assert [f["key"] for f in failed] == [victim]
    assert "past the end of the shard" in failed[0]["reason"] and "<" not in failed[0]["reason"]


def test_verify_finds_unindexed_members_missing_rows_bad_checksums_and_counts(
    tone_shards, tmp_path, make_shards, capsys
):
    assert make_shards.main(["--verify", str(tone_shards)]) == 0
    assert "consistent" in capsys.readouterr().out
    root, index = damaged_copy(tone_shards, tmp_path / "verify")
    first, lost = index[0], index[-1]
    stray = (root / "train" / first["shard"]).read_bytes()[first["offset"] :][: first["nbytes"]]
    rewrite_tar(root / "train" / first["shard"], drop=None, add={"stray.wav": stray, "stray.json": b"{}"})
    rewrite_tar(root / "train" / lost["shard"], drop=lost["key"], add={})  # the index keeps a row for it
    flipped = index[1]
    with open(root / "train" / flipped["shard"], "r+b") as handle:
        handle.seek(flipped["offset"] + 500)
        handle.write(b"\x00\x01" * 32)
    meta = json.loads((root / "dataset.json").read_text())
    meta["splits"]["train"]["samples"] += 1
    (root / "dataset.json").write_text(json.dumps(meta))
    assert make_shards.main(["--verify", str(root)]) == 1
    found = {line.split(": ")[0] + ": " + line.split(": ")[1] for line in capsys.readouterr().out.splitlines()[:-1]}
    expected = {
        f"not in index: train/{index[0]['shard']} stray",
        f"checksum: train/{flipped['shard']} {flipped['key']}",
        "counts: dataset.json splits.train.samples",
    }
    assert expected <= found and any(f.startswith("missing member: ") and lost["key"] in f for f in found)
    assert ShardError in {type(i) for i in ShardDataset(root).samples("train")}


def test_a_shard_set_from_before_checksums_still_streams_with_a_note(tone_shards, tmp_path, capsys):
    root, index = damaged_copy(tone_shards, tmp_path / "old")
    path = root / "train" / "index.parquet"
    pq.write_table(pq.read_table(path).drop(["xxh3_64"]), path)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(meta | {"format_version": 1}))
    failed, stats, delivered = stream_failures(root)
    assert failed == [] and delivered == {r["key"] for r in index}
    assert "before member checksums" in capsys.readouterr().err
    audio, _ = ShardDataset(root).read_sample("train", index[0]["key"])
    assert len(audio) == index[0]["num_samples"]
    assert all(isinstance(i, ShardSample) for i in ShardDataset(root).samples("train"))

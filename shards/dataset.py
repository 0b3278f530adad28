"""The reading side of a shard set: `dataset.json`, per-split `index.parquet`, shard paths.

Layout of a shard set (what `jobs/make_shards.py` writes):

    OUT/dataset.json            labels, counts, fbank stats, build parameters, skipped inputs
    OUT/<split>/index.parquet   one row per sample: lengths, labels, shard and byte offset
    OUT/<split>/shard-000000.tar ...

`dataset.json` is written last, so its presence marks a complete build. OUT may be a local path or
a URL (s3://, gs://, http(s)://, ...: `shards.location`); every read goes through `Location`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards.location import Location
from shards.options import DATASET_FILE
from shards.tar import Member, ShardError, ShardSample, read_member, read_shard

INDEX_FILE = "index.parquet"
FORMAT_VERSION = 3  # 2: index.parquet has an xxh3_64 column (XXH3-64 of each wav member); 3: a weight column
READABLE_VERSIONS = (1, 2, 3)
ADDED_IN = {"xxh3_64": 2, "weight": 3}  # index columns a shard set of an older format lacks (read as nulls)

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("offset", pa.int64()),
        ("nbytes", pa.int64()),
        ("num_samples", pa.int64()),
        ("sample_rate", pa.int32()),
        ("duration_s", pa.float64()),
        ("labels", pa.list_(pa.string())),
        ("label_ids", pa.list_(pa.int32())),
        ("source", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("xxh3_64", pa.uint64()),  # of the wav bytes (shards/checksum.py); null in format 1 (no checksums)
        ("weight", pa.float64()),  # class-balance weight (shards.weights); null before format 3
    ]
)


class InvalidShardSet(ValueError):
    """A shard set whose own files are damaged: a dataset.json that is not JSON or of an unknown
    format, an index that is not parquet. Names the file."""


class ShardDataset:
    """A complete shard set, local or remote: metadata, indexes and shard files of each split."""

    def __init__(self, root: str | Path | Location):
        self.root = Location.of(root)
        meta_path = self.root / DATASET_FILE
        try:
            text = meta_path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{meta_path} not found: {self.root} is not a complete shard set (or its bucket does not exist; "
                "build it with `python jobs/make_shards.py`; an interrupted build has no dataset.json)"
            ) from None
        except PermissionError as error:
            raise PermissionError(f"{meta_path}: access denied ({error}); check the storage credentials") from None
        try:
            self.meta = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidShardSet(
                f"{meta_path} is not valid JSON ({error}); rebuild the shard set with make_shards"
            ) from None
        if not isinstance(self.meta, dict):
            raise InvalidShardSet(f"{meta_path} holds {type(self.meta).__name__}, not a JSON object")
        if self.meta.get("format_version") not in READABLE_VERSIONS:
            raise InvalidShardSet(
                f"{meta_path}: format_version {self.meta.get('format_version')} is not one of {READABLE_VERSIONS}"
            )
        if not self.has_checksums:
            print(
                f"note: {self.root} was built before member checksums (format 1): its audio is read without "
                "integrity checks; rebuild it with make_shards to add them",
                file=sys.stderr,
            )

    @property
    def has_checksums(self) -> bool:
        return self.meta["format_version"] >= 2

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def sample_rate(self) -> int:
        return self.meta["sample_rate"]

    @property
    def splits(self) -> list[str]:
        return sorted(self.meta["splits"])

    @property
    def fbank_stats(self) -> dict | None:
        return self.meta.get("fbank")

    def index(self, split: str, columns: list[str] | None = None) -> pa.Table:
        """The split's index (only `columns`, if given: from a local file the others are not read;
        a remote one is fetched whole, in one retried request); a column its format predates
        (`ADDED_IN`: a format-1 index's `xxh3_64`, nothing to check; a format-2 index's `weight`)
        comes as nulls."""
        location = self._split_dir(split) / INDEX_FILE
        source = location.local if location.is_local else pa.BufferReader(location.read_bytes())
        wanted = INDEX_SCHEMA.names if columns is None else columns
        unknown = sorted(set(wanted) - set(INDEX_SCHEMA.names))
        if unknown:
            raise KeyError(f"{location} has no column(s) {unknown}")
        absent = [name for name, version in ADDED_IN.items() if self.meta["format_version"] < version]
        schema = pa.schema([f for f in INDEX_SCHEMA if f.name not in absent])
        try:
            table = pq.read_table(source, schema=schema, columns=[name for name in wanted if name in schema.names])
        except (pa.ArrowInvalid, OSError) as error:
            if isinstance(error, (FileNotFoundError, PermissionError)):
                raise
            raise InvalidShardSet(f"{location} is not a readable index ({error})") from None
        for name in (name for name in wanted if name in absent):
            table = table.append_column(
                INDEX_SCHEMA.field(name), pa.nulls(table.num_rows, INDEX_SCHEMA.field(name).type)
            )
        return table

    def shard_locations(self, split: str) -> list[Location]:
        """The split's shards, in order; a missing one is an error naming it (one listing of the
        split's folder, not a request per shard; over plain http(s), which cannot list, a missing
        shard shows only when read: the stream stops there, naming it)."""
        folder = self._split_dir(split)
        listed = self.meta["splits"][split]["shards"]
        missing = sorted(set(listed) - set(folder.names())) if folder.can_list else []
        if missing:
            raise FileNotFoundError(
                f"shard(s) listed in {self.root / DATASET_FILE} are missing from {folder}: {missing[:10]}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            )
        return [folder / name for name in listed]

    def samples(self, split: str) -> Iterator[ShardSample | ShardError]:
        """Every sample of a split, shard after shard, checked against the index (errors, including
        checksum mismatches and members the index lacks, come as `ShardError`s)."""
        index = self.index(split)
        checksums = dict(zip(index.column("key").to_pylist(), index.column("xxh3_64").to_pylist()))
        for location in self.shard_locations(split):
            yield from read_shard(location, checksums)

    def read_sample(self, split: str, key: str):
        """One sample's (audio, sample rate) by key, through the index's byte offset; its tar
        header and checksum are checked (`shards.tar.IntegrityError` otherwise)."""
        table = self.index(split).filter(pc.field("key") == key)
        if table.num_rows != 1:
            raise KeyError(f"{key!r} not in split {split!r} of {self.root}")
        row = table.to_pylist()[0]
        return read_member(
            self._split_dir(split) / row["shard"], key, Member(row["offset"], row["nbytes"], row["xxh3_64"])
        )

    def _split_dir(self, split: str) -> Location:
        if split not in self.meta["splits"]:
            raise KeyError(f"split {split!r} not in {self.root} (has {self.splits})")
        return self.root / split


def write_index(split_dir: str | Path | Location, rows: list[dict]) -> None:
    """The split's index.parquet, complete or absent (`Location.write_bytes`), locally or remote."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), buffer)
    (Location.of(split_dir) / INDEX_FILE).write_bytes(buffer.getvalue().to_pybytes())


def describe_split(rows: list[dict]) -> dict:
    """Counts of one split for dataset.json: samples, shards, duration, samples per label."""
    label_counts = Counter(label for row in rows for label in row["labels"])
    return {
        "samples": len(rows),
        "shards": sorted({row["shard"] for row in rows}),
        "duration_s": round(sum(row["duration_s"] for row in rows), 3),
        "label_counts": dict(sorted(label_counts.items())),
    }


def write_dataset_json(root: str | Path | Location, meta: dict) -> None:
    """Complete or absent (a local file by rename, an object in one PUT): its presence is what marks
    the shard set complete, so it is written last."""
    text = json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n"
    (Location.of(root) / DATASET_FILE).write_text(text)

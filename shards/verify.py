"""Walk a shard set and list everything that disagrees: what `make_shards --verify OUT` runs.

Checked per split: every tar member against the index (members the index lacks, index rows no
tar holds, byte ranges that differ, XXH3-64 of each wav), shards listed in dataset.json against
the files present, wav members without their json, and the counts dataset.json records
(samples, shards, labels, duration) against the index.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from shards.checksum import checksum_chunks, checksum_problem, read_chunks
from shards.dataset import DATASET_FILE, ShardDataset, describe_split
from shards.location import Location


@dataclass(frozen=True)
class Problem:
    kind: str  # "not in index", "missing member", "checksum", "byte range", "shard", "incomplete", "counts"
    where: str  # split/shard and key, or the dataset.json field
    detail: str


def verify_shard_set(root: str | Path | Location) -> list[Problem]:
    """Every problem found in the shard set at `root` (empty: all consistent)."""
    dataset = ShardDataset(root)
    problems = []
    for split in dataset.splits:
        problems += _verify_split(dataset, split)
    return problems


def _verify_split(dataset: ShardDataset, split: str) -> list[Problem]:
    index = dataset.index(split).to_pylist()
    rows = {(row["shard"], row["key"]): row for row in index}
    listed = dataset.meta["splits"][split]["shards"]
    present = [name for name in (dataset.root / split).names() if name.startswith("shard-") and name.endswith(".tar")]
    problems = [
        Problem("shard", f"{split}/{name}", f"listed in {DATASET_FILE} but absent")
        for name in listed
        if name not in present
    ]
    problems += [
        Problem("shard", f"{split}/{name}", f"present but not listed in {DATASET_FILE}")
        for name in present
        if name not in listed
    ]
    seen = set()
    for name in present:
        problems += _verify_shard(dataset.root / split / name, split, rows, seen)
    problems += [
        Problem("missing member", f"{split}/{shard} {key}", "index row with no such member in the tar")
        for shard, key in rows
        if (shard, key) not in seen
    ]
    recorded = dataset.meta["splits"][split]
    actual = describe_split(index)
    for field in ("samples", "shards", "label_counts"):
        if recorded.get(field) != actual[field]:
            problems.append(
                Problem(
                    "counts",
                    f"{DATASET_FILE} splits.{split}.{field}",
                    f"records {recorded.get(field)!r}, the index has {actual[field]!r}",
                )
            )
    if abs(recorded.get("duration_s", 0.0) - actual["duration_s"]) > 0.01:
        problems.append(
            Problem(
                "counts",
                f"{DATASET_FILE} splits.{split}.duration_s",
                f"records {recorded.get('duration_s')}, the index sums to {actual['duration_s']}",
            )
        )
    return problems


def _verify_shard(path: Location, split: str, rows: dict, seen: set) -> list[Problem]:
    """Stream one tar, checking each wav member against its index row; `seen` collects them."""
    problems, parts = [], {}
    where = f"{split}/{path.name}"
    try:
        with path.open("rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                parts.setdefault(key, set()).add(ext)
                if ext != "wav":
                    continue
                digest = checksum_chunks(read_chunks(tar.extractfile(info)))
                row = rows.get((path.name, key))
                if row is None:
                    problems.append(
                        Problem("not in index", f"{where} {key}", "tar member the index does not list (never read)")
                    )
                    continue
                seen.add((path.name, key))
                if (row["offset"], row["nbytes"]) != (info.offset_data, info.size):
                    problems.append(
                        Problem(
                            "byte range",
                            f"{where} {key}",
                            f"index has offset {row['offset']} and {row['nbytes']} "
                            f"bytes, the tar {info.offset_data} and {info.size}",
                        )
                    )
                elif problem := checksum_problem(digest, row["xxh3_64"]):
                    problems.append(Problem("checksum", f"{where} {key}", problem))
    except (tarfile.TarError, EOFError, OSError) as exc:
        problems.append(Problem("shard", where, f"unreadable: {exc}"))
    problems += [
        Problem("incomplete", f"{where} {key}", f"has {sorted(exts)}, needs json and wav")
        for key, exts in parts.items()
        if exts != {"json", "wav"}
    ]
    return problems

"""Scale benchmark (issue 15): what one rank pays for the index at 1 M and 5 M samples.

    .venv/bin/python bench/scale.py [--samples 1000000 5000000] [--baseline-up-to 1000000]

Writes a synthetic split as make_shards would (a real index.parquet with VoxCeleb2-like keys and
lengths, 500 samples a shard, and dataset.json; the shard files are empty, since nothing here reads
audio), then measures each way of holding the index in a fresh process of its own:
- lean: `PackedStream` as it is (Arrow keys, integer shard and label ids, only the needed columns),
  checked with `delivery_check`;
- objects (the baseline, before issue 15, measured in the same run): the whole index read into
  Python object arrays of keys, shards, label lists and checksums, checked with `key_counts`
  written whole as JSON, as jobs/train.py did.
Build: open the stream (read and convert the index, hash the keys). Plan: one epoch's plan
(after a first one). Memory: resident set (RSS) after build and plan, less RSS after the imports
and a warm-up on a tiny index (Numba kernels, Parquet reader); peak: the high-water mark less the same. Check: the exactly-once
check of one epoch on the full delivered key list (as gathered from all ranks) and its JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from a checkout

from loaders.config import StreamConfig  # noqa: E402
from loaders.plan import Index, plan_epoch  # noqa: E402
from loaders.tokens import SCALE_GRID  # noqa: E402
from shards.dataset import INDEX_SCHEMA, ShardDataset, write_dataset_json  # noqa: E402

SHARD_SAMPLES = 500
SPEAKERS = 5994  # VoxCeleb2 dev
WORLD = 64
CONFIG = dict(rows_per_batch=8, scales=SCALE_GRID, backend="local")
TARGET_SAMPLES = 1_000_000  # the targets are for this size
TARGETS = {"build_s": 2.0, "memory_mib": 200.0, "plan_s": 0.5, "check_s": 1.0, "check_mib": 1.0}


def write_split(root: Path, n: int) -> None:
    """A split of `n` samples: index.parquet with every column make_shards writes, and dataset.json."""
    rng = np.random.default_rng(0)
    split = root / "train"
    split.mkdir(parents=True)
    speaker = rng.integers(0, SPEAKERS, n)
    seconds = np.minimum(4.0 + rng.lognormal(np.log(2.6), 1.0, n), 30.0)
    num_samples = (seconds * 16000).astype(np.int64)
    nbytes = 44 + 2 * num_samples
    shard = np.arange(n) // SHARD_SAMPLES
    shard_names = [f"shard-{s:06d}.tar" for s in range(int(shard[-1]) + 1)]
    offset = 512 + np.cumsum(np.concatenate([[0], (nbytes[:-1] + 1023) // 512 * 512]))
    keys = [
        f"id{s:05d}/{v:011x}/{i:08d}" for s, v, i in zip(speaker.tolist(), rng.integers(0, 2**44, n).tolist(), range(n))
    ]
    names = pa.array([f"id{s:05d}" for s in range(SPEAKERS)])
    label_offsets = pa.array(np.arange(n + 1, dtype=np.int32))
    columns = {
        "key": pa.array(keys, pa.string()),
        "shard": pa.DictionaryArray.from_arrays(pa.array(shard.astype(np.int32)), pa.array(shard_names)).cast(
            pa.string()
        ),
        "offset": offset,
        "nbytes": nbytes,
        "num_samples": num_samples,
        "sample_rate": np.full(n, 16000, np.int32),
        "duration_s": seconds,
        "labels": pa.ListArray.from_arrays(label_offsets, names.take(pa.array(speaker))),
        "label_ids": pa.ListArray.from_arrays(label_offsets, pa.array(speaker.astype(np.int32))),
        "source": pa.DictionaryArray.from_arrays(pa.array(speaker.astype(np.int32)), names).cast(pa.string()),
        "start_s": np.zeros(n),
        "end_s": seconds,
        "xxh3_64": rng.integers(0, 2**63, n, dtype=np.uint64),
    }
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({name: columns[name] for name in INDEX_SCHEMA.names}, schema=INDEX_SCHEMA), split / "index.parquet"
    )
    for name in shard_names:
        (split / name).touch()
    write_dataset_json(
        root,
        {
            "labels": names.to_pylist(),
            "sample_rate": 16000,
            "multi_label": False,
            "fbank": {"mean": -5.0, "std": 4.0},
            "splits": {"train": {"samples": n, "shards": shard_names}},
        },
    )


def rss_mib(field: str = "VmRSS") -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def object_arrays(split: Path) -> tuple[dict, Index, np.ndarray]:
    """The stream's index before issue 15: the whole table as Python objects."""
    dataset = ShardDataset(split.parent)
    table = dataset.index("train")
    index = {
        name: np.asarray(table.column(name).to_pylist(), dtype=object)
        for name in ("key", "shard", "label_ids", "xxh3_64")
    }
    for name in ("offset", "nbytes", "num_samples", "sample_rate"):
        index[name] = table.column(name).to_numpy()
    shard_id = {name: i for i, name in enumerate(dataset.meta["splits"]["train"]["shards"])}
    plan_index = Index(
        index["key"].astype(str),
        np.array([shard_id[s] for s in index["shard"]], dtype=np.int64),
        index["num_samples"],
        index["sample_rate"],
    )
    return index, plan_index, plan_index.key_hash


def warm_up(split: Path) -> None:
    """Load what the first use loads whatever the index's size (Numba kernels, Parquet reader), so
    that the memory measured is the index's and the plan's."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.table({"key": ["a", "b"]}), Path(tmp) / "tiny.parquet")
        pq.read_table(Path(tmp) / "tiny.parquet")
    tiny = Index(np.array(["a", "b"]), np.zeros(2, np.int64), np.full(2, 16000), np.full(2, 16000))
    plan_epoch(tiny, StreamConfig(**CONFIG), 0)


def measure(kind: str, split: Path) -> dict:
    """One way of holding the index, in this (fresh) process."""
    from elasticast.training.epoch_report import delivery_check, key_counts
    from loaders import PackedStream

    warm_up(split)
    base = rss_mib()
    start = time.perf_counter()
    if kind == "lean":
        stream = PackedStream(split, rank=0, world=WORLD, **CONFIG)
        plan = lambda epoch: plan_epoch(stream._plan_index, stream.config, epoch, stream.index.key_hash)
    else:
        index, plan_index, key_hash = object_arrays(split)
        plan = lambda epoch: plan_epoch(plan_index, StreamConfig(**CONFIG), epoch, key_hash)
    build_s = time.perf_counter() - start
    build_mib = rss_mib() - base
    plan(0)
    start = time.perf_counter()
    held = plan(1)
    plan_s = time.perf_counter() - start
    memory_mib = rss_mib() - base
    keys = stream.index.keys.to_pylist() if kind == "lean" else index["key"].tolist()
    seen = [keys[i] for i in held.sample.tolist()]  # every key once, in delivery order, as gathered from the ranks
    del keys
    start = time.perf_counter()
    if kind == "lean":
        text = json.dumps(delivery_check(stream.index.keys, 1, seen, 0))
    else:
        text = json.dumps(key_counts(index["key"].tolist(), 1, seen, 0))
    check_s = time.perf_counter() - start
    return {
        "build_s": build_s,
        "build_mib": build_mib,
        "plan_s": plan_s,
        "memory_mib": memory_mib,
        "peak_mib": rss_mib("VmHWM") - base,
        "check_s": check_s,
        "check_mib": len(text) / 2**20,
    }


def run_measure(kind: str, split: Path) -> dict:
    command = [sys.executable, __file__, "--measure", kind, "--split", str(split)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def report(n: int, lean: dict, objects: dict | None) -> None:
    print(
        f"\n## {n:,} samples ({n // SHARD_SAMPLES:,} shards), rank 0 of {WORLD}, random C, rows_per_batch 8, buffer {StreamConfig.buffer}"
    )
    rows = (
        ("build the stream", "build_s", "s"),
        ("index held after build", "build_mib", "MiB"),
        ("plan one epoch", "plan_s", "s"),
        ("memory per rank (index + plan)", "memory_mib", "MiB"),
        ("peak during build and plan", "peak_mib", "MiB"),
        ("exactly-once check", "check_s", "s"),
        ("check written", "check_mib", "MiB"),
    )
    print(f"{'':32} {'lean':>10} {'objects':>10} {'objects/lean':>13}  target")
    for label, name, unit in rows:
        ratio = f"{objects[name] / lean[name]:12.1f}x" if objects and lean[name] else f"{'-':>13}"
        old = f"{objects[name]:10.2f}" if objects else f"{'-':>10}"
        judged = name in TARGETS and n == TARGET_SAMPLES
        target = f"<= {TARGETS[name]:g} {unit}: {'met' if lean[name] <= TARGETS[name] else 'NOT met'}" if judged else ""
        print(f"{label:32} {lean[name]:10.2f} {old} {ratio}  {unit:4} {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument(
        "--baseline-up-to", type=int, default=1_000_000, help="largest split also measured as object arrays"
    )
    parser.add_argument("--measure", choices=("lean", "objects"), help=argparse.SUPPRESS)
    parser.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.split)))
        return
    print("# Scale benchmark: rank-side cost of the index; each figure from a fresh process")
    for n in args.samples:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_split(Path(tmp), n)
            print(f"\n(synthetic split of {n:,} samples written in {time.perf_counter() - start:.1f} s)")
            split = Path(tmp) / "train"
            report(n, run_measure("lean", split), run_measure("objects", split) if n <= args.baseline_up_to else None)


if __name__ == "__main__":
    main()

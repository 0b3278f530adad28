"""Read-path cost of the member checksums: the local stream's audio s/s with and without them.

    .venv/bin/python bench/integrity.py [--clips 160] [--repeats 5]

One shard set (VoxCeleb-like lengths, made by bench/loader.py's corpus maker) is streamed as
built (XXH3-64 of every member checked, tar header checked) and as a format-1 copy whose index has
no checksums (tar header still checked), alternately, best of `--repeats` epochs each, one torch
thread. Also times the bare read path (`loaders.assemble.read_audio`, planning excluded) both ways.
Those differences are within the noise of a shared machine, so the checksum's own time is measured
too, against zlib's CRC32 (the format-2 checksum before XXH3-64): on 64 MiB (memory-bound), and on
every member of the set hashed right after its read, as the read path does (cache-hot), as a share
of the checked stream's epoch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from loaders import PackedStream
from shards.checksum import checksum

from loader import make_corpus  # bench/loader.py: this folder is on sys.path when run as a script


def without_checksums(split_dir: Path, target: Path) -> Path:
    """A copy of the shard set as format 1 (no xxh3_64 column): the same bytes, nothing to check."""
    shutil.copytree(split_dir.parent, target)
    index = target / split_dir.name / "index.parquet"
    pq.write_table(pq.read_table(index).drop(["xxh3_64"]), index)
    meta = json.loads((target / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps(meta | {"format_version": 1}))
    return target / split_dir.name


def best_seconds(work, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def hashing_seconds(stream: PackedStream, checksum_function) -> float:
    """Time spent hashing every member's bytes, each right after it is read as the read path reads
    it (seek, one read), so the bytes are in cache as they are there."""
    handles, seconds = {}, 0.0
    for shard, offset, nbytes in zip(stream.index["shard"], stream.index["offset"], stream.index["nbytes"]):
        if shard not in handles:
            handles[shard] = open(Path(stream.features.split_dir) / shard, "rb")
        handle = handles[shard]
        handle.seek(offset)
        data = handle.read(nbytes)
        started = time.perf_counter()
        checksum_function(data)
        seconds += time.perf_counter() - started
    for handle in handles.values():
        handle.close()
    return seconds


def epoch_seconds(stream: PackedStream, read_only: bool) -> float:
    """One epoch through the whole stream, or through the read path alone."""
    from loaders.assemble import read_audio

    specs = list(stream.specs(0)) if read_only else []
    started = time.perf_counter()
    if read_only:
        for spec in specs:
            read_audio(spec.samples, stream.features)
    else:
        for _ in stream.epoch(0):
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        checked = make_corpus(Path(tmp) / "corpus", args.clips)
        unchecked = without_checksums(checked, Path(tmp) / "old")
        streams = {
            name: PackedStream(path, rows_per_batch=2, backend="local")
            for name, path in (("with checksums", checked), ("without", unchecked))
        }
        audio_s = float(sum(streams["with checksums"].index["num_samples"])) / 16000
        print(
            f"# {args.clips} clips, {audio_s:.0f} s of audio; best of {args.repeats} epochs, alternating, one torch thread"
        )
        for stream in streams.values():
            epoch_seconds(stream, read_only=False)  # warm-up: compiles the packer, fills the page cache
        best_epoch = {}
        for read_only, label in ((False, "stream (read, decode, fbank, pack)"), (True, "read path only (read_audio)")):
            best = {name: float("inf") for name in streams}
            for _ in range(args.repeats):
                for name, stream in streams.items():
                    best[name] = min(best[name], epoch_seconds(stream, read_only))
            rates = {name: audio_s / seconds for name, seconds in best.items()}
            best_epoch[read_only] = best
            cost = 100 * (rates["without"] / rates["with checksums"] - 1)
            print(
                f"{label:36} with checksums {rates['with checksums']:9.0f} s/s   without {rates['without']:9.0f} s/s   "
                f"cost {cost:+5.1f} %"
            )
        checked_stream, data = streams["with checksums"], np.random.default_rng(0).bytes(64 * 2**20)
        for name, function in (("xxh3_64", checksum), ("zlib.crc32", zlib.crc32)):
            big = len(data) / best_seconds(lambda: function(data), args.repeats) / 2**30
            hashing = min(hashing_seconds(checked_stream, function) for _ in range(args.repeats))
            nbytes = float(sum(checked_stream.index["nbytes"]))
            print(
                f"{name:10} 64 MiB {big:6.2f} GiB/s   members after their read {nbytes / hashing / 2**30:6.2f} GiB/s, "
                f"{1e3 * hashing:5.1f} ms per epoch = {100 * hashing / best_epoch[False]['with checksums']:4.2f} % of the stream's"
            )


if __name__ == "__main__":
    main()

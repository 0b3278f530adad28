"""Read-path cost of the member checksums: the local stream's audio s/s with and without them.

    .venv/bin/python bench/integrity.py [--clips 160] [--repeats 5]

One shard set (VoxCeleb-like lengths, made by bench/loader.py's corpus maker) is streamed as
built (CRC32 of every member checked, tar header checked) and as a format-1 copy whose index has
no checksums (tar header still checked), alternately, best of `--repeats` epochs each, one torch
thread. Also times the bare read path (`loaders.assemble.read_audio`) both ways.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from loader import make_corpus  # bench/loader.py: this folder is on sys.path when run as a script
from loaders import PackedStream


def without_checksums(split_dir: Path, target: Path) -> Path:
    """A copy of the shard set as format 1 (no crc32 column): the same bytes, nothing to check."""
    shutil.copytree(split_dir.parent, target)
    index = target / split_dir.name / "index.parquet"
    pq.write_table(pq.read_table(index).drop(["crc32"]), index)
    meta = json.loads((target / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps(meta | {"format_version": 1}))
    return target / split_dir.name


def epoch_seconds(stream: PackedStream, read_only: bool) -> float:
    """One epoch through the whole stream, or through the read path alone."""
    from loaders.assemble import read_audio

    started = time.perf_counter()
    if read_only:
        for spec in stream.specs(0):
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
        streams = {name: PackedStream(path, rows_per_batch=2, backend="local") for name, path in
                   (("with checksums", checked), ("without", unchecked))}
        audio_s = float(sum(streams["with checksums"].index["num_samples"])) / 16000
        print(f"# {args.clips} clips, {audio_s:.0f} s of audio; best of {args.repeats} epochs, alternating, one torch thread")
        for read_only, label in ((False, "stream (read, decode, fbank, pack)"), (True, "read path only (read_audio)")):
            best = {name: float("inf") for name in streams}
            for _ in range(args.repeats):
                for name, stream in streams.items():
                    best[name] = min(best[name], epoch_seconds(stream, read_only))
            rates = {name: audio_s / seconds for name, seconds in best.items()}
            cost = 100 * (rates["without"] / rates["with checksums"] - 1)
            print(f"{label:36} with checksums {rates['with checksums']:9.0f} s/s   without {rates['without']:9.0f} s/s   "
                  f"cost {cost:+5.1f} %")


if __name__ == "__main__":
    main()

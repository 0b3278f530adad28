"""Streaming from object storage against local disk (issue 14), in one run on the same shards.

    .venv/bin/python bench/storage.py [--clips 120] [--latency-ms 20] [--prefetch 2]

Data: the VoxCeleb-like corpus of bench/loader.py, sharded once on local disk and uploaded as is to
moto's S3 server (a separate process on 127.0.0.1, started here). Each case runs one epoch of the
same `PackedStream` (local backend, in-process, one torch thread):
- disk: the shard set on local disk, the baseline;
- s3: the copy on the S3 server, straight;
- s3 + latency: through a proxy that waits `--latency-ms` before each answer (a remote store's
  time to first byte; 127.0.0.1 has none), with requests coalesced per run of members (as shipped),
  and with coalescing off (one request per sample) for comparison.
For each: audio seconds per second of the whole stream (read + featurize + pack), the read alone
(every batch's `read_audio`, no features), and requests per batch. `--prefetch 0` turns the reader
thread off (reads and featurizing take turns, as before it existed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]  # runnable as a plain script

import shards.ranged  # noqa: E402
from loaders import PackedStream  # noqa: E402
from loaders.assemble import read_audio  # noqa: E402
from loaders.tokens import SCALE_GRID  # noqa: E402

from loader import make_corpus  # noqa: E402
from object_store import FaultyProxy, S3Server  # noqa: E402

STREAM = dict(rows_per_batch=2, scales=SCALE_GRID, backend="local")
BUCKET = "bench"


def run_case(source: str, audio_s: float, prefetch: int) -> dict:
    """One epoch of the stream, then one of reads alone, from `source`."""
    stream = PackedStream(source, **STREAM, prefetch=prefetch)
    started = time.perf_counter()
    batches = list(stream.epoch(0))
    stream_s = time.perf_counter() - started
    started = time.perf_counter()
    requests = 0
    for spec in stream.specs(0):
        _, failed, reads = read_audio(spec.samples, stream.features)
        assert not failed, failed
        requests += reads.requests
    read_s = time.perf_counter() - started
    samples = sum(b.num_samples for b in batches)
    assert stream.stats[0]["failed"] == 0
    return {
        "stream": audio_s / stream_s,
        "read": audio_s / read_s,
        "requests_per_batch": requests / len(batches),
        "samples_per_batch": samples / len(batches),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--prefetch", type=int, default=2, help="batches the in-process reader reads ahead")
    args = parser.parse_args(argv)
    server = S3Server()
    os.environ.update(server.environment)
    import s3fs

    proxy = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            split = make_corpus(Path(tmp), args.clips)
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir(BUCKET)
            fs.put(str(split.parent), f"{BUCKET}/set", recursive=True)
            audio_s = sum(PackedStream(split, **STREAM).index.num_samples) / 16000
            remote = f"s3://{BUCKET}/set/train"
            cases = {
                "disk": run_case(str(split), audio_s, args.prefetch),
                "s3": run_case(remote, audio_s, args.prefetch),
            }
            proxy = FaultyProxy(server.port, latency_s=args.latency_ms / 1000)
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
            s3fs.S3FileSystem.clear_instance_cache()
            cases[f"s3 + {args.latency_ms:g} ms"] = run_case(remote, audio_s, args.prefetch)
            coalesce = shards.ranged.MAX_GAP
            shards.ranged.MAX_GAP = -1  # merge nothing: one request per sample
            cases[f"s3 + {args.latency_ms:g} ms, uncoalesced"] = run_case(remote, audio_s, args.prefetch)
            shards.ranged.MAX_GAP = coalesce
    finally:
        if proxy:
            proxy.stop()
        server.stop()
    base = cases["disk"]
    print(f"{args.clips} clips, {audio_s:.0f} s of audio; rows_per_batch 2 x 2048 tokens, random C; one torch thread")
    print(
        f"{'case':34s} {'stream audio s/s':>17s} {'ratio':>6s} {'read audio s/s':>15s} {'ratio':>6s} {'req/batch':>9s}"
    )
    for name, case in cases.items():
        print(
            f"{name:34s} {case['stream']:17.0f} {case['stream'] / base['stream']:5.2f}x {case['read']:15.0f} "
            f"{case['read'] / base['read']:5.2f}x {case['requests_per_batch']:9.2f}"
        )
    print(f"samples per batch: {base['samples_per_batch']:.2f}")


if __name__ == "__main__":
    main()

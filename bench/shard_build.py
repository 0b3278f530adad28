"""Throughput of make_shards: files/s and seconds of audio/s, Ray with 1 and 2 CPUs vs in-process.

    .venv/bin/python bench/shard_build.py [--fsdd DIR]

Baseline, measured in the same run: the `local` backend (same functions, no Ray). Each Ray
instance builds twice: `cold` includes starting its worker processes, `warm` is a second
build on the same instance (what a long job sees). Ray's own start-up is reported apart.
Datasets: FSDD (3,000 short 8 kHz files, resampled to 16 kHz) and the demo corpus (320 clips of
0.5-30 s at 16 kHz).

Two smaller tables explain the design: the write pass alone as plain Ray tasks vs through Ray
Data vs in-process (Ray Data's fixed cost per execution), and the decode speed of the storage
codecs against the fbank that follows them in the loader (why shards hold PCM16 WAV).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import soundfile as sf

from jobs import make_shards
from loaders.features import fbank
from shards.build import BuildConfig, _probe, plan_shards, write_shard
from shards.demo import write_demo_corpus
from shards.inputs import read_manifest
from shards.parallel import parallel_map

REPO = Path(__file__).resolve().parents[1]


def fsdd_manifest(recordings: Path, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for file in sorted(recordings.glob("*.wav")):
            digit, _, take = file.stem.split("_")
            writer.writerow([str(file), digit, "test" if int(take) < 5 else "train"])
    return path


def build(job, manifest: Path, out: Path, backend: str) -> tuple[float, int, float]:
    started = time.perf_counter()
    code = job.main(
        [
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
            "--backend",
            backend,
            "--shard-size",
            "8MiB",
        ]
    )
    seconds = time.perf_counter() - started
    assert code == 0, f"make_shards failed on {manifest}"
    meta = json.loads((out / "dataset.json").read_text())
    return seconds, meta["files_in"], meta["total_duration_s"]


def measure(job, name: str, manifest: Path, work: Path) -> list[dict]:
    rows = []
    seconds, files, audio = build(job, manifest, work / "local", "local")
    rows.append({"data": name, "backend": "local", "cpus": 1, "run": "-", "start_s": 0.0, "build_s": seconds})
    for cpus in (1, 2):
        started = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
        start_s = time.perf_counter() - started
        for run in ("cold", "warm"):
            seconds, _, _ = build(job, manifest, work / f"ray{cpus}", "ray")
            rows.append(
                {"data": name, "backend": "ray", "cpus": cpus, "run": run, "start_s": start_s, "build_s": seconds}
            )
        ray.shutdown()
    for row in rows:
        row.update(
            files=files,
            audio_s=audio,
            files_per_s=files / row["build_s"],
            audio_per_s=audio / row["build_s"],
            vs_local=rows[0]["build_s"] / row["build_s"],
        )
    return rows


def write_pass(manifest: Path, work: Path, repeats: int = 3) -> dict[str, float]:
    """Best-of-N seconds of the shard-writing pass alone, three ways, on one warm Ray instance."""
    sources, _ = read_manifest(manifest, 0.1)
    config = BuildConfig(out=work / "pass", shard_bytes=8 * 2**20, backend="local", progress=False)
    plans = plan_shards(_probe(sources, config)[0], config)
    remote_write = ray.remote(write_shard)
    ways = {
        "in-process": lambda: [write_shard(plan) for plan in plans],
        "plain Ray tasks": lambda: ray.get([remote_write.remote(plan) for plan in plans]),
        "Ray Data": lambda: list(parallel_map(write_shard, plans, "ray")),
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    best = {}
    for _ in range(repeats + 1):  # the first round warms the workers up
        for name, run in ways.items():
            shutil.rmtree(config.out, ignore_errors=True)
            for split in {plan["split"] for plan in plans}:
                (config.out / split).mkdir(parents=True)
            started = time.perf_counter()
            run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    ray.shutdown()
    return best | {"shards": len(plans)}


def codec_speeds(seconds: float = 10.0, repeats: int = 20) -> dict[str, float]:
    """Real-time factor of decoding PCM16 WAV and FLAC, and of the fbank, on one 16 kHz clip."""
    wave = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    speeds = {}
    for codec in ("WAV", "FLAC"):
        buffer = io.BytesIO()
        sf.write(buffer, wave, 16000, format=codec, subtype="PCM_16")
        data = buffer.getvalue()
        started = time.perf_counter()
        for _ in range(repeats):
            sf.read(io.BytesIO(data), dtype="float32")
        speeds[f"decode {codec}"] = seconds * repeats / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(repeats):
        fbank(wave, 16000)
    speeds["kaldi fbank (C=1)"] = seconds * repeats / (time.perf_counter() - started)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, default=REPO.parent / "shared" / "data" / "fsdd" / "recordings")
    args = parser.parse_args()
    job = make_shards
    rows, passes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.fsdd.is_dir():
            manifest = fsdd_manifest(args.fsdd, work / "fsdd.csv")
            rows += measure(job, "fsdd", manifest, work / "fsdd")
            passes = write_pass(manifest, work)
        else:
            print(f"FSDD not found at {args.fsdd}: skipping it")
        rows += measure(
            job, "demo", write_demo_corpus(work / "demo-src", clips=320, seed=0, min_s=0.5, max_s=30.0), work / "demo"
        )
    print(
        f"\n{'data':5} {'backend':7} {'cpus':>4} {'run':4} {'ray start s':>11} {'build s':>8} "
        f"{'files':>5} {'audio s':>8} {'files/s':>8} {'audio s/s':>9} {'vs local':>8}"
    )
    for r in rows:
        print(
            f"{r['data']:5} {r['backend']:7} {r['cpus']:>4} {r['run']:4} {r['start_s']:>11.1f} {r['build_s']:>8.1f} "
            f"{r['files']:>5} {r['audio_s']:>8.0f} {r['files_per_s']:>8.0f} {r['audio_per_s']:>9.0f} {r['vs_local']:>7.2f}x"
        )
    if passes:
        shards = passes.pop("shards")
        print(f"\nFSDD write pass alone ({shards} shards, Ray with 2 CPUs, warm, best of 3)")
        for name, seconds in passes.items():
            print(f"{name:16} {seconds:6.2f} s   {passes['in-process'] / seconds:5.2f}x in-process")
    print("\nDecode speed, 10 s of 16 kHz audio, one process (x real time)")
    for name, speed in codec_speeds().items():
        print(f"{name:18} {speed:8.0f}x")


if __name__ == "__main__":
    main()

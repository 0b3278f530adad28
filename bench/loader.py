"""Loader throughput: PackedStream vs bare kaldi.fbank, Ray scaling, DataLoader workers, torch
threads under load, useful tokens vs an AST loader.

    .venv/bin/python bench/loader.py [--clips 160]

Data: a VoxCeleb-like corpus made here (durations 4 s + lognormal(median 2.6 s, sigma 1.0),
capped at 30 s; synthetic sound events at 16 kHz), sharded with make_shards. Baselines are
measured in the same run on the same clips:
1. per core (one process, one torch thread): the whole stream (read, decode, fbank, patchify,
   place in packed rows) vs bare `torchaudio.compliance.kaldi.fbank` (and our faster fbank) on
   waveforms already in memory, at C=1 and at the stream's own random C per clip;
2. Ray: the stream on 1 and 2 Ray Data workers, two epochs each: time to the first batch (the
   first epoch starts Ray's worker processes; later ones reuse them), steady throughput after
   it, and the whole epoch;
3. the ways a trainer can take batches, whole epochs 0 and 1 in audio s/s: the in-process
   stream (`stream.epoch(e)`), `DataLoader(stream, batch_size=None, num_workers=0/1/2)` on the
   local backend, and the Ray backend with 2 workers (its rows from 2.);
4. featurizing threads under load: a local epoch in a process with torch's 2 threads, featurizing
   with them (`torch_threads=None`, as before issue 13) or with one (the default), on an idle
   machine and beside a process busy-looping on one core;
5. useful (non-padding) tokens/s: the stream at native length (max 3072 frames) vs a
   standard-AST loader that crops/pads every clip to 1024 frames (512 tokens), in two forms: the
   reference code's (fbank of the whole clip, then crop/pad) and a lean one (fbank of the first
   10.24 s only);
6. planning an epoch of 1,000,000 VoxCeleb-like samples from metadata alone;
7. featurizing on the trainer's device (issue 27), at C = 1 and at random C: the loader's CPU
   seconds per second of audio with `featurize="device"` (read, decode, ship int16 waveforms and
   the layout) against `"loader"` (fbanks too), one in-process epoch each, alternating, best of 3;
   the bytes per batch shipped to the trainer (waveforms + layout + ids, against patches + ids);
   and on the trainer's side, on this CPU (one torch thread), the time per batch to featurize
   (`DeviceFeaturizer`) against a training step of the tiny model (and, at random C, one step of
   the base ViT-B) on the batch with the most tokens.

`--only device` runs section 7 alone (its command in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from elasticast.model import loss
from elasticast.training import TrainConfig, build_model
from jobs import make_shards
from loaders import PackedStream
from loaders.batch import PackedBatch
from loaders.config import StreamConfig
from loaders.features import fbank, kaldi_fbank, patchify, spectrogram
from loaders.plan import Index, plan_epoch
from loaders.threads import torch_threads
from loaders.tokens import SCALE_GRID, shift_for_scale
from shards import ShardDataset, ShardSample
from shards.demo import DEMO_CLASSES, synthesize

REPO = Path(__file__).resolve().parents[1]
AST_FRAMES = 1024


def voxceleb_seconds(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.minimum(4.0 + rng.lognormal(np.log(2.6), 1.0, n), 30.0)


def make_corpus(work: Path, clips: int, test_every: int = 0) -> Path:
    """Synthetic clips with VoxCeleb-like lengths → shards; the train split's folder is returned.
    `test_every`: every that many-th clip goes to a `test` split (0: train only)."""
    rng = np.random.default_rng(0)
    (work / "wav").mkdir(parents=True)
    with (work / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for i, seconds in enumerate(voxceleb_seconds(clips, rng)):
            label = DEMO_CLASSES[i % len(DEMO_CLASSES)]
            sf.write(work / "wav" / f"{i:05d}.wav", synthesize(label, seconds, rng), 16000, subtype="PCM_16")
            split = "test" if test_every and i % test_every == test_every - 1 else "train"
            writer.writerow([f"wav/{i:05d}.wav", label, split])
    out = work / "shards"
    assert (
        make_shards.main(
            [
                "--manifest",
                str(work / "rows.csv"),
                "--out",
                str(out),
                "--backend",
                "local",
                "--quiet",
                "--shard-size",
                "16MiB",
            ]
        )
        == 0
    )
    return out / "train"


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def stream_epoch(stream: PackedStream, epoch: int = 0) -> tuple[list, float]:
    return timed(lambda: list(stream.epoch(epoch)))


def per_core(split_dir: Path, waves: dict[str, np.ndarray], audio_s: float) -> list[tuple]:
    """(label, kaldi.fbank s/s, our fbank s/s, stream s/s) at C=1 and at the stream's random C."""
    rows = []
    for name, scales in (("C = 1", (1.0,)), ("random C in 1.0..4.0", SCALE_GRID)):
        stream = PackedStream(split_dir, rows_per_batch=2, scales=scales, backend="local")
        plan = stream.plan(0)
        scale_of = dict(zip(stream.index["key"][plan.sample], plan.scale))
        bare = [
            timed(lambda: [f(w, 16000, float(shift_for_scale(scale_of[k]))) for k, w in waves.items()])[1]
            for f in (kaldi_fbank, fbank)
        ]
        _, full = stream_epoch(stream)
        rows.append((name, audio_s / bare[0], audio_s / bare[1], audio_s / full))
    return rows


def ray_scaling(split_dir: Path, audio_s: float) -> list[tuple]:
    """(workers, epoch, seconds to first batch, steady audio s/s after it, epoch seconds)."""
    rows = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    for workers in (1, 2):
        stream = PackedStream(split_dir, rows_per_batch=2, scales=SCALE_GRID, workers=workers)
        for epoch in (0, 1):
            started = time.perf_counter()
            batches = stream.epoch(epoch)
            next(batches)
            first = time.perf_counter() - started
            delivered = sum(1 for _ in batches)
            steady = time.perf_counter() - started - first
            rows.append((workers, epoch, first, audio_s * delivered / (delivered + 1) / steady, first + steady))
    ray.shutdown()
    return rows


def trainer_paths(split_dir: Path, audio_s: float) -> list[tuple]:
    """(path, epoch, audio s/s over the whole epoch) for the in-process stream and DataLoaders."""
    rows = []
    stream = PackedStream(split_dir, rows_per_batch=2, scales=SCALE_GRID, backend="local")
    for epoch in (0, 1):
        rows.append(("in-process stream.epoch(e)", epoch, audio_s / stream_epoch(stream, epoch)[1]))
    for workers in (0, 1, 2):
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        for epoch in (0, 1):
            stream.set_epoch(epoch)
            _, seconds = timed(lambda: sum(1 for _ in loader))
            rows.append((f"DataLoader, num_workers={workers}", epoch, audio_s / seconds))
    return rows


def busy_loop() -> None:
    while True:
        pass


def threads_under_load(split_dir: Path, audio_s: float) -> list[tuple]:
    """(background, threads while featurizing, audio s/s of a local epoch) in a process that keeps
    torch's 2 threads for itself, as a trainer does."""
    rows = []
    for busy in (False, True):
        hog = multiprocessing.Process(target=busy_loop, daemon=True)
        if busy:
            hog.start()
        with torch_threads(2):
            for threads in (None, 1):
                stream = PackedStream(
                    split_dir, rows_per_batch=2, scales=SCALE_GRID, backend="local", torch_threads=threads
                )
                _, seconds = stream_epoch(stream)
                rows.append(("1 busy core" if busy else "idle", threads or torch.get_num_threads(), audio_s / seconds))
        if busy:
            hog.terminate()
            hog.join()
    return rows


def ast_loader(waves: dict[str, np.ndarray], mean: float, std: float, whole_clip: bool) -> tuple[int, int, int]:
    """Standard AST input at C=1: the first 1024 frames, zero-padded when shorter. `whole_clip`
    computes the fbank of the whole clip first, as the AST reference code does.
    Returns (useful tokens, total tokens, tokens of the full clips cut away)."""
    useful = cut = 0
    need = (AST_FRAMES - 1) * 160 + 400  # samples that 1024 frames of 10 ms (25 ms window) read
    for wave in waves.values():
        spec = spectrogram(wave if whole_clip else wave[:need], 16000, mean=mean, std=std)[:AST_FRAMES]
        frames = spec.shape[0]
        patchify(torch.nn.functional.pad(spec, (0, 0, 0, AST_FRAMES - frames)))
        useful += frames // 16 * 8
        cut += max((len(wave) - 400) // 160 + 1 - AST_FRAMES, 0) // 16 * 8
    return useful, len(waves) * AST_FRAMES // 16 * 8, cut


def useful_tokens(split_dir: Path, waves: dict[str, np.ndarray]) -> dict:
    stats = ShardDataset(split_dir.parent).fbank_stats
    result = {}
    for name, whole in (("AST, reference-style", True), ("AST, lean", False)):
        (useful, total, cut), seconds = timed(lambda: ast_loader(waves, stats["mean"], stats["std"], whole))
        result[name] = (useful / seconds, 1 - useful / total, cut / (useful + cut))
    stream = PackedStream(split_dir, rows_per_batch=2, max_frames=3072, backend="local")
    _, seconds = stream_epoch(stream)
    s = stream.stats[0]
    result["ElasticAST stream"] = (s["tokens"] / seconds, s["pad_ratio"], s["cut_ratio"])
    return result


def shipped_bytes(batch: PackedBatch) -> int:
    """What a batch weighs from loader to trainer: its tensors (patches or waveforms, ids, positions)."""
    tensors = [batch.patches, batch.segment_ids, batch.freq_pos, batch.time_pos]
    if batch.audio is not None:
        tensors += [batch.audio.samples, batch.audio.layout]
    return sum(t.nbytes for t in tensors)


def device_featurizing(split_dir: Path, audio_s: float, repeats: int = 3) -> list[dict]:
    """Per C setting: loader CPU s per s of audio in both modes, bytes per batch, trainer-side
    featurize time per batch against a model step (tiny and base)."""
    rows = []
    for name, scales in (("C = 1", (1.0,)), ("random C", SCALE_GRID)):
        streams = {
            mode: PackedStream(split_dir, rows_per_batch=2, scales=scales, backend="local", featurize=mode)
            for mode in ("loader", "device")
        }
        cpu = {mode: [] for mode in streams}
        batches = {}
        for _ in range(repeats):
            for mode, stream in streams.items():
                started = time.process_time()
                batches[mode] = list(stream.epoch(0))
                cpu[mode].append(time.process_time() - started)
        row = {"name": name, **{f"cpu_{m}": min(c) / audio_s for m, c in cpu.items()}}
        for mode, delivered in batches.items():
            row[f"bytes_{mode}"] = np.mean([shipped_bytes(b) for b in delivered])
        featurizer = streams["device"].featurizer
        featurize_s = []
        for batch in batches["device"]:
            started = time.perf_counter()
            featurizer.featurize(batch)
            featurize_s.append(time.perf_counter() - started)
        row["featurize_s"] = float(np.median(featurize_s))
        full = max(batches["loader"], key=lambda b: b.real_tokens)
        presets = ("tiny", "base") if len(scales) > 1 else ("tiny",)  # one ViT-B step: minutes on a busy CPU
        for preset in presets:
            model = build_model(TrainConfig(preset=preset), len(streams["loader"].labels))
            optimizer = torch.optim.AdamW(model.parameters())
            for _ in range(2 if preset == "tiny" else 1):  # tiny: the first step warms up
                started = time.perf_counter()
                loss(model(full), full.labels).backward()
                optimizer.step()
                optimizer.zero_grad()
                row[f"step_{preset}_s"] = time.perf_counter() - started
        rows.append(row)
    return rows


def print_device_featurizing(split_dir: Path, audio_s: float) -> None:
    print("\n## Featurizing on the trainer's device (issue 27): one torch thread, in-process epochs, best of 3")
    for row in device_featurizing(split_dir, audio_s):
        loader, device = row["cpu_loader"], row["cpu_device"]
        print(
            f"{row['name']:9} loader CPU per s of audio: featurize=loader {1000 * loader:6.2f} ms, "
            f"device {1000 * device:6.2f} ms ({loader / device:5.1f}x less: {1 / loader:6.0f} -> {1 / device:6.0f} "
            f"s of audio per CPU-second)"
        )
        print(
            f"{'':9} bytes per batch shipped: patches {row['bytes_loader'] / 2**20:5.2f} MiB, waveforms "
            f"{row['bytes_device'] / 2**20:5.2f} MiB ({row['bytes_device'] / row['bytes_loader']:4.2f}x)"
        )
        steps = ", ".join(
            f"{preset} {1000 * row[f'step_{preset}_s']:6.0f} ms (featurize = {row['featurize_s'] / row[f'step_{preset}_s']:5.1%})"
            for preset in ("tiny", "base")
            if f"step_{preset}_s" in row
        )
        print(
            f"{'':9} trainer side on this CPU: featurize {1000 * row['featurize_s']:6.1f} ms per batch; training step {steps}"
        )


def plan_million() -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    n = 1_000_000
    index = Index(
        np.array([f"spk{i % 1251}/utt{i:07d}" for i in range(n)]),
        np.arange(n) // 500,
        (voxceleb_seconds(n, rng) * 16000).astype(np.int64),
        np.full(n, 16000),
    )
    key_hash, hash_s = timed(lambda: index.key_hash)
    config = StreamConfig(rows_per_batch=8, scales=SCALE_GRID)
    plan_epoch(index, config, 0, key_hash)  # loads the Numba kernels
    plan, plan_s = timed(lambda: plan_epoch(index, config, 1, key_hash))
    return hash_s, plan_s, plan.pad_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--only", choices=["device"], help="run one section: device (7, featurizing on the device)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# Loader benchmark: {os.cpu_count()} cores, torch {torch.__version__}, one torch thread per process")
    with tempfile.TemporaryDirectory() as tmp:
        split_dir = make_corpus(Path(tmp), args.clips)
        waves = {s.key: s.audio for s in ShardDataset(split_dir.parent).samples("train") if isinstance(s, ShardSample)}
        audio_s = sum(len(w) for w in waves.values()) / 16000
        print(f"{len(waves)} clips, {audio_s:.0f} s of audio (mean {audio_s / len(waves):.1f} s)\n")
        if args.only == "device":
            print_device_featurizing(split_dir, audio_s)
            return
        print("## Per core: seconds of audio per second (target: stream >= 80 % of bare kaldi.fbank)")
        for name, kaldi, ours, full in per_core(split_dir, waves, audio_s):
            print(
                f"{name:22} kaldi.fbank {kaldi:6.0f}   our fbank {ours:6.0f} ({ours / kaldi:4.2f}x)   "
                f"stream {full:6.0f}   stream/kaldi.fbank {full / kaldi:4.2f}"
            )
        print("\n## Useful (non-pad) tokens/s, C = 1 (target: ElasticAST >= 1.5x AST)")
        result = useful_tokens(split_dir, waves)
        elastic = result["ElasticAST stream"]
        for name, (rate, pad, cut) in result.items():
            print(
                f"{name:21} {rate:8.0f} tokens/s ({elastic[0] / rate:4.2f}x)   pad {100 * pad:5.1f} %   cut {100 * cut:5.1f} %"
            )
        print(
            f"useful share of the tokens a model computes on: ElasticAST {1 - elastic[1]:.3f}, "
            f"AST {1 - result['AST, lean'][1]:.3f} ({(1 - elastic[1]) / (1 - result['AST, lean'][1]):.2f}x)"
        )
        print("\n## Ray Data workers (Ray with 2 CPUs), random C")
        scaling = ray_scaling(split_dir, audio_s)
        for workers, epoch, first, steady, whole in scaling:
            print(
                f"workers {workers} epoch {epoch}: first batch after {first:4.1f} s, then {steady:6.0f} s of audio/s "
                f"({steady / scaling[0][3]:4.2f}x 1 worker, epoch 0); epoch {whole:4.1f} s"
            )
        print("\n## Taking batches in a trainer: whole epochs, seconds of audio per second, random C")
        paths = trainer_paths(split_dir, audio_s)
        paths += [
            ("Ray backend, 2 workers", epoch, audio_s / whole)
            for workers, epoch, _, _, whole in scaling
            if workers == 2
        ]
        for name, epoch, rate in paths:
            print(f"{name:28} epoch {epoch}: {rate:6.0f} s of audio/s ({rate / paths[0][2]:4.2f}x in-process, epoch 0)")
        print("\n## Featurizing threads, local epoch in a process with 2 torch threads, random C")
        for background, threads, rate in threads_under_load(split_dir, audio_s):
            print(f"{background:11} featurizing on {threads} thread(s): {rate:6.0f} s of audio/s")
        print_device_featurizing(split_dir, audio_s)
    hash_s, plan_s, pad = plan_million()
    print(
        f"\n## Planning 1,000,000 samples (random C, first_fit, buffer 1024): key hash {hash_s:.2f} s once per stream, "
        f"plan {plan_s:.2f} s per epoch, pad {100 * pad:.2f} %"
    )


if __name__ == "__main__":
    main()

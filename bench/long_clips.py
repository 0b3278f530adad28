"""The claim to beat (issue 24, item 6): on long clips, does ElasticAST keep up with an AST at
256 frames for the same wall-clock, from the first epoch on?

    .venv/bin/python bench/long_clips.py [--budget 240] [--every 40] [--arms elasticast elasticast-cut ast-256]

Clips: FSDD recordings of one speaker concatenated into clips of 5-60 s (uniform), label = the
speaker (6 classes); train clips from takes 5-49, valid clips from takes 0-4, so no recording
is in both. Built once into --work (8 kHz, as the recordings) and sharded by make_shards.

Arms (`ARMS`), tiny preset, each trained in this process (plain-PyTorch loop, loader in-process,
1 torch thread) for the same --budget seconds of training wall-clock, data loading included:
- elasticast: native length (capped at 3072 frames = 30 s), 2 rows of 2048 tokens a step;
- elasticast-cut: the same with `--random-cut 384` (a random window of at least 384 frames
  per sample and epoch), the paper's Epic-Sounds recipe;
- ast-256: the standard AST, every clip cropped to its first 256 frames (the loader decodes only
  those), 12 clips a step as in the paper.
An arm whose flags this checkout does not have is left out, named. Every --every seconds of
training (and at the end) the clock stops and the valid split is scored: the ElasticAST arms at
native length, the AST at its 256 frames. The arms take turns between checkpoints (`Turns`), so
the load of a shared machine falls on all of them alike. Prints accuracy against training seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from a checkout

from elasticast.metrics import score  # noqa: E402
from elasticast.predict import predict  # noqa: E402
from elasticast.training.config import TrainConfig, parse_args  # noqa: E402
from elasticast.training.loop import build_model, train_epoch  # noqa: E402
from elasticast.training.schedule import make_optimizer, make_scheduler  # noqa: E402
from loaders import PackedStream  # noqa: E402
from loaders.batch import PackedBatch  # noqa: E402
from shards.inputs import write_manifest  # noqa: E402

COMMON = ["--preset", "tiny", "--lr", "1e-3", "--warmup-epochs", "0.5", "--schedule", "constant", "--loader", "local"]
ARMS = {
    "elasticast": ["--max-tokens", "2048", "--rows-per-batch", "2", "--max-frames", "3072"],
    "elasticast-cut": ["--max-tokens", "2048", "--rows-per-batch", "2", "--max-frames", "3072", "--random-cut", "384"],
    "ast-256": ["--model", "ast", "--target-frames", "256", "--max-frames", "256", "--max-tokens", "1536"]
    + ["--rows-per-batch", "1"],
}
VALID_TAKES = range(5)


def build_clips(recordings: Path, work: Path, train_clips: int, valid_clips: int, seed: int = 0) -> Path:
    """Concatenated one-speaker clips of 5-60 s and their shard set (reused when present)."""
    shards = work / "shards"
    if (shards / "dataset.json").is_file():
        return shards
    pools: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for file in sorted(recordings.glob("*.wav")):
        _digit, speaker, take = file.stem.split("_")
        pools["valid" if int(take) in VALID_TAKES else "train", speaker].append(file)
    if not pools:
        raise FileNotFoundError(f"no FSDD recordings (DIGIT_SPEAKER_TAKE.wav) in {recordings}")
    speakers = sorted({speaker for _, speaker in pools})
    rng, audio, rows = np.random.default_rng(seed), work / "audio", []
    audio.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_clips), ("valid", valid_clips)):
        for n in range(count):
            speaker = speakers[n % len(speakers)]
            pool, target, pieces, rate = pools[split, speaker], rng.uniform(5.0, 60.0), [], 8000
            while sum(map(len, pieces)) < target * rate:  # a random order of the pool, again when used up
                for file in rng.permutation(pool):
                    wave, rate = soundfile.read(file, dtype="int16")
                    pieces.append(wave)
                    if sum(map(len, pieces)) >= target * rate:
                        break
            path = audio / f"{split}_{speaker}_{n:04d}.wav"
            soundfile.write(path, np.concatenate(pieces), rate, subtype="PCM_16")
            rows.append({"path": str(path.resolve()), "label": speaker, "split": split})
    manifest = write_manifest(work / "manifest.csv", rows)
    from jobs import make_shards

    flags = ["--manifest", str(manifest), "--out", str(shards), "--sample-rate", "8000", "--backend", "local"]
    if make_shards.main([*flags, "--quiet", "--overwrite"]) != 0:
        raise RuntimeError(f"make_shards failed on {manifest}")
    return shards


def unknown_flags(flags: list[str]) -> list[str]:
    """Flags of `flags` that this checkout's TrainConfig does not have."""
    known = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
    return [flag for flag in flags if flag.startswith("--") and flag not in known]


class Turns:
    """The arms take turns: each trains up to its next checkpoint and hands on to the next, so
    a shared machine whose load changes during the run weighs on every arm alike."""

    def __init__(self, names: list[str]):
        self.order, self.turn, self.changed = list(names), 0, threading.Condition()

    def wait(self, name: str) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.order[self.turn] == name)

    def hand_on(self, name: str, finished: bool = False) -> None:
        with self.changed:
            at = self.order.index(name)
            if finished:
                self.order.pop(at)
            self.turn = (at if finished else at + 1) % max(len(self.order), 1)
            self.changed.notify_all()


def run_arm(name: str, shards: Path, args: argparse.Namespace, turns: Turns, curves: dict) -> None:
    """Train one arm for `args.budget` seconds of training wall-clock (reads, featurizing and
    steps; no reading ahead, so nothing runs while the arm waits its turn), scoring the valid
    split every `args.every` seconds (clock stopped) into `curves[name]`."""
    config = parse_args([*COMMON, *ARMS[name], "--seed", str(args.seed), "--shards", str(shards)])
    turns.wait(name)
    try:
        train_arm(name, config, shards, args, turns, curves.setdefault(name, []))
    finally:
        turns.hand_on(name, finished=True)


def train_arm(
    name: str, config: TrainConfig, shards: Path, args: argparse.Namespace, turns: Turns, curve: list
) -> None:
    torch.manual_seed(config.seed)
    train = PackedStream(shards / "train", config.stream(prefetch=0))
    valid = PackedStream(shards / "valid", config.valid_stream(), labels=train.labels, features=train.features.spec)
    model = build_model(config, len(train.labels))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, train.steps(0), config)
    clock = {"trained": 0.0, "next": args.every, "epoch": 0.0}

    def evaluate() -> None:
        _, logits, labels = predict(model, valid.epoch(0), torch.device("cpu"))
        accuracy = score(logits, labels)["accuracy"]
        curve.append({"seconds": clock["trained"], "accuracy": accuracy, "epoch": clock["epoch"]})
        print(f"{name:>15} {clock['trained']:7.1f} s  epoch {clock['epoch']:5.2f}  acc {accuracy:.3f}", flush=True)
        model.train()

    def timed(epoch: int) -> Iterator[PackedBatch]:
        """The epoch's batches; between steps the clock is read, the valid split scored at each
        checkpoint (then the turn passes on) and the epoch abandoned once the budget is spent."""
        steps, started = train.steps(epoch), time.perf_counter()
        for step, batch in enumerate(train.epoch(epoch)):
            yield batch
            clock["trained"] += time.perf_counter() - started
            clock["epoch"] = epoch + (step + 1) / steps
            if clock["trained"] >= min(clock["next"], args.budget):
                evaluate()
                clock["next"] += args.every
                if clock["trained"] >= args.budget:
                    return
                turns.hand_on(name)
                turns.wait(name)
            started = time.perf_counter()

    epoch = 0
    while clock["trained"] < args.budget:
        train_epoch(model, timed(epoch), optimizer, scheduler, torch.device("cpu"), config.clip_grad)
        epoch += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=Path, default=ROOT.parent / "shared" / "data" / "fsdd" / "recordings")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "long_clips")
    parser.add_argument("--train-clips", type=int, default=240)
    parser.add_argument("--valid-clips", type=int, default=60)
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds per arm")
    parser.add_argument("--every", type=float, default=40.0, help="seconds of training between evaluations")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shards = build_clips(args.recordings, args.work, args.train_clips, args.valid_clips)
    print(f"# long clips: {args.train_clips} train / {args.valid_clips} valid clips of 5-60 s, 6 speakers")
    print(f"# budget {args.budget:g} s of training per arm, load average {os.getloadavg()[0]:.1f} at the start")
    arms = [name for name in args.arms if not unknown_flags(ARMS[name])]
    for name in sorted(set(args.arms) - set(arms), key=args.arms.index):
        print(f"{name}: left out, this checkout has no {' '.join(unknown_flags(ARMS[name]))}")
    for name in arms:
        print(f"{name}: {' '.join(ARMS[name])}", flush=True)
    turns, curves = Turns(arms), {}
    threads = [threading.Thread(target=run_arm, args=(name, shards, args, turns, curves)) for name in arms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    curves = {name: curves.get(name, []) for name in arms}
    print("\nvalid accuracy (training seconds, epochs) at each checkpoint")
    print(f"| checkpoint | {' | '.join(curves)} |\n|---:|{'---:|' * len(curves)}")
    for i in range(max(map(len, curves.values()), default=0)):
        cell = lambda p: f"{p['accuracy']:.3f} ({p['seconds']:.0f} s, ep {p['epoch']:.2f})"
        print(f"| {i + 1} | {' | '.join(cell(c[i]) if i < len(c) else '' for c in curves.values())} |")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Token dropout (issue 24): samples per step and useful tokens/s at P = 0.1 against P = 0.

    .venv/bin/python bench/recipe.py [--clips 96] [--repeats 3]

1. Plans (metadata only) of 20,000 VoxCeleb-like clips (bench/packing.py's lengths) in the paper's
   step of 3 rows x 2048 tokens, first_fit and greedy: samples per step, steps per epoch, pad.
2. Training, measured: a tiny ElasticAST (dim 192, depth 6) trained on CPU from the local stream
   (read, decode, fbank, drop, pack: all in the step's time) over a VoxCeleb-like corpus made here
   (bench/loader.py's), 2 rows x 2048 tokens, one torch thread; P = 0 and P = 0.1 alternate in the
   same run, `--repeats` epochs each. Useful tokens: the real (non-padding) tokens the model
   computed; audio s/s: seconds of audio whose (kept) tokens a step trained on. Medians over the
   epochs, per wall-clock second and per CPU second of the process (robust to a shared machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from a checkout

from bench.loader import make_corpus  # noqa: E402
from bench.packing import N_SAMPLES, SAMPLE_RATE, machine, print_table, voxceleb_samples  # noqa: E402
from elasticast.config import preset  # noqa: E402
from elasticast.model import ElasticAST  # noqa: E402
from elasticast.training.loop import train_epoch  # noqa: E402
from loaders import PackedStream  # noqa: E402
from loaders.config import StreamConfig  # noqa: E402
from loaders.plan import Index, plan_epoch  # noqa: E402

RATES = (0.0, 0.1)


def planned(rows: list[tuple[str, ...]]) -> None:
    """Part 1: samples per step from the plans alone."""
    n = N_SAMPLES
    index = Index(
        keys=np.array([f"clip-{i}" for i in range(n)]),
        shard=np.arange(n) // 100,
        num_samples=voxceleb_samples(n, np.random.default_rng(0)),
        sample_rate=np.full(n, SAMPLE_RATE),
    )
    for packing in ("first_fit", "greedy"):
        base = None
        for rate in RATES:
            plan = plan_epoch(index, StreamConfig(rows_per_batch=3, packing=packing, token_dropout=rate), 0)
            per_step = n / plan.n_batches
            base = base or per_step
            rows.append(
                (
                    packing,
                    f"{rate:g}",
                    f"{plan.n_batches}",
                    f"{per_step:.2f}",
                    f"{plan.pad_ratio:.2%}",
                    f"{per_step / base:.3f}x",
                )
            )


def trained(split: Path, repeats: int) -> dict[float, list[tuple[float, float, float, int]]]:
    """Part 2: per rate, per epoch (samples/step, useful tokens/s, audio s/s, steps, and both per
    CPU second of this process: a machine shared with other jobs slows the wall clock, not these)."""
    seconds_of = None
    results: dict[float, list] = {rate: [] for rate in RATES}
    for epoch in range(-1, repeats):  # epoch -1: a warm-up (first fbanks, kernels), not reported
        for rate in RATES:  # alternating, so load on the machine hits both alike
            stream = PackedStream(split, rows_per_batch=2, token_dropout=rate, backend="local", seed=max(epoch, 0))
            if seconds_of is None:
                keys = stream.index.keys.to_pylist()
                seconds_of = dict(zip(keys, (stream.index.num_samples / stream.index.sample_rate).tolist()))
            torch.manual_seed(0)
            model = ElasticAST(preset("tiny", len(stream.labels)))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0)
            started, cpu = time.perf_counter(), time.process_time()
            result = train_epoch(model, stream.epoch(max(epoch, 0)), optimizer, scheduler, torch.device("cpu"))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            audio = sum(seconds_of[key] for key in result.keys)
            if epoch >= 0:
                results[rate].append(
                    (result.samples / result.steps, result.tokens / elapsed, audio / elapsed, result.steps)
                    + (result.tokens / cpu, audio / cpu)
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# Token dropout benchmark: {machine()}, torch {torch.__version__}")
    rows: list[tuple[str, ...]] = []
    planned(rows)
    print(f"\n## Plans: {N_SAMPLES:,} VoxCeleb-like clips, 3 rows x 2048 tokens per step (the paper's step)")
    print_table(("packing", "P", "steps", "samples/step", "pad", "vs P=0"), rows)
    with tempfile.TemporaryDirectory() as work:
        split = make_corpus(Path(work), args.clips)
        results = trained(split, args.repeats)
    print(f"\n## Training tiny ElasticAST on CPU, {args.clips} VoxCeleb-like clips, 2 rows x 2048 tokens, first_fit")
    table = []
    for rate, runs in results.items():
        per_step, tokens, audio, steps, cpu_tokens, cpu_audio = (np.median([r[i] for r in runs]) for i in range(6))
        table.append(
            (f"{rate:g}", f"{steps:.1f}", f"{per_step:.2f}", f"{tokens:,.0f}", f"{audio:.1f}")
            + (f"{cpu_tokens:,.0f}", f"{cpu_audio:.1f}")
        )
    header = ("P", "steps/epoch", "samples/step", "useful tokens/s", "audio s/s", "per CPU s: tokens", "audio s")
    print_table(header, table)
    for i, name in ((1, "useful tokens/s"), (2, "audio s/s"), (4, "useful tokens per CPU s"), (5, "audio s per CPU s")):
        base, dropped = (np.median([r[i] for r in results[rate]]) for rate in RATES)
        print(f"P = 0.1 vs 0 (medians of {len(results[0.0])} epochs each): {name} {dropped / base:.2f}x")


if __name__ == "__main__":
    main()

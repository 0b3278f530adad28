"""Packing benchmark (issue 3): padding of greedy vs first_fit, packer speed, JIT time; the
stream's epoch plan over shards (issue 15).

Run from the repository root: .venv/bin/python bench/packing.py
Baselines are measured in the same run: first_fit against greedy at the same buffer,
Numba against the pure-Python reference on the same lengths, the plan's carried-over packing
against packing each shard group on its own (the plan before issue 15).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from a checkout

from loaders import Packing, pack, shift_for_scale, token_counts  # noqa: E402
from loaders.config import StreamConfig  # noqa: E402
from loaders.plan import plan_tokens  # noqa: E402
from loaders.tokens import SCALE_GRID  # noqa: E402

CAPACITY = 2048
SAMPLE_RATE = 16_000
N_SAMPLES = 20_000
SPEED_SAMPLES = 1_000_000
SCALES = np.asarray(SCALE_GRID)
BUFFERS = (12, 64, 128, 256, 1024)
SPEED_CASES = (("greedy", 128), ("first_fit", 12), ("first_fit", 256), ("first_fit", 1024))
PAPER_GREEDY_PAD = {12: 19.2, 64: 14.4, 128: 13.9}  # Table 1, VoxCeleb, % pad
PAPER_AST = (31.1, 15.2)  # Table 1: AST at a fixed 1024 frames, % pad and % cut
PAD_TARGET = 0.02  # first_fit at buffer 256
SPEED_TARGET = 5e6  # Numba samples/s on one core
GAIN_TARGET = 50  # Numba vs reference
PLAN_ROWS = 2  # rows per batch, TrainConfig's default
PLAN_BUFFERS = (64, 256, 1024)  # 256: the default of StreamConfig, TrainConfig, PackingSampler and pack()
SHARD_SAMPLES = (250, 1000)
PLAN_PAD_TARGETS = {N_SAMPLES: 0.003, SPEED_SAMPLES: 0.001}


def voxceleb_samples(n: int, rng: np.random.Generator) -> np.ndarray:
    """VoxCeleb1-like lengths at 16 kHz: min 4 s, mean ~8.2 s, capped at 30 s as in the paper."""
    seconds = np.minimum(4.0 + rng.lognormal(np.log(2.6), 1.0, n), 30.0)
    return np.round(seconds * SAMPLE_RATE).astype(np.int64)


def random_shifts(n: int, rng: np.random.Generator) -> np.ndarray:
    return shift_for_scale(rng.choice(SCALES, n))


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    for cells in (header, *rows):
        print(" | ".join(cell.rjust(width) for cell, width in zip(cells, widths)))


def layout(counts: np.ndarray, mode: str, buffer: int) -> Packing:
    return Packing.from_rows(counts, pack(counts, CAPACITY, mode, buffer), CAPACITY)


def pad_vs_longest_row_per_call(greedy: Packing, call: int) -> float:
    """Pad ratio when each call's rows are padded to its longest row, as the paper's batches are."""
    first_rows = greedy.row[::call]  # every call starts a new row
    rows_per_call = np.diff(np.append(first_rows, greedy.n_rows))
    longest = np.maximum.reduceat(greedy.row_fill, first_rows)
    return 1.0 - greedy.row_fill.sum() / (rows_per_call * longest).sum()


def lower_bound(counts: np.ndarray) -> float:
    total = int(counts.sum())
    return 1.0 - total / (-(-total // CAPACITY) * CAPACITY)


def print_padding(name: str, counts: np.ndarray, paper: dict[int, float]) -> float:
    """Print one data set's pad table; returns first_fit's pad ratio at buffer 256."""
    print(f"\n## {name}\n{counts.size:,} samples, mean {counts.mean():.0f} tokens, rows of {CAPACITY} tokens")
    rows, at_256 = [], 1.0
    for buffer in BUFFERS:
        greedy = layout(counts, "greedy", buffer)
        first_fit = layout(counts, "first_fit", buffer).pad_ratio
        at_256 = first_fit if buffer == 256 else at_256
        rows.append(
            (
                str(buffer),
                f"{greedy.pad_ratio:.2%}",
                f"{pad_vs_longest_row_per_call(greedy, buffer):.2%}",
                f"{paper[buffer]:.1f}%" if buffer in paper else "-",
                f"{first_fit:.2%}",
                f"{greedy.pad_ratio / first_fit:.0f}x" if first_fit else "inf",
            )
        )
    print_table(("buffer", "greedy", "greedy, longest row/call", "paper", "first_fit", "greedy/first_fit"), rows)
    print(f"trivial lower bound (all tokens in whole rows): {lower_bound(counts):.3%}")
    return at_256


def print_ast_calibration(frames: np.ndarray) -> None:
    """AST's fixed 1024 frames on the same lengths: checks the synthetic set against Table 1."""
    kept = np.minimum(frames, 1024)
    pad, cut = 1 - kept.sum() / (1024 * frames.size), 1 - kept.sum() / frames.sum()
    print(f"AST at a fixed 1024 frames: pad {pad:.1%}, cut {cut:.1%} (paper: {PAPER_AST[0]} %, {PAPER_AST[1]} %)")


def samples_per_second(counts: np.ndarray, mode: str, buffer: int, engine: str, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        pack(counts, CAPACITY, mode, buffer, engine=engine)
        best = min(best, time.perf_counter() - start)
    return counts.size / best


def print_speed(counts: np.ndarray) -> tuple[float, float]:
    """Print Numba vs reference speed; returns (slowest Numba first_fit speed, lowest speed-up)."""
    reference_counts = counts[:N_SAMPLES]
    print(
        f"\n## Speed, VoxCeleb-like, one core: Numba on {counts.size:,} samples (best of 3), "
        f"reference on the first {reference_counts.size:,} (one run)"
    )
    rows, slowest, lowest_gain = [], np.inf, np.inf
    for mode, buffer in SPEED_CASES:
        pack(counts[:100], CAPACITY, mode, buffer)  # load the kernel before timing
        fast = samples_per_second(counts, mode, buffer, "numba", repeats=3)
        slow = samples_per_second(reference_counts, mode, buffer, "python", repeats=1)
        slowest = min(slowest, fast) if mode == "first_fit" else slowest
        lowest_gain = min(lowest_gain, fast / slow)
        rows.append((mode, str(buffer), f"{fast / 1e6:.1f} M/s", f"{slow / 1e3:.1f} k/s", f"{fast / slow:.0f}x"))
    print_table(("mode", "buffer", "numba", "reference", "speed-up"), rows)
    return slowest, lowest_gain


def print_epoch_plan(samples: np.ndarray, shifts: np.ndarray) -> None:
    """Token counts, packing and layout of a whole epoch, as the stream plans it."""
    start = time.perf_counter()
    counts = token_counts(samples, SAMPLE_RATE, shifts, capacity=CAPACITY).tokens
    packing = Packing.from_rows(counts, pack(counts, CAPACITY), CAPACITY)
    seconds = time.perf_counter() - start
    print(
        f"\nEpoch plan, {samples.size:,} VoxCeleb-like samples with C drawn per sample "
        f"(token counts + first_fit@256 + layout): {seconds:.2f} s, pad {packing.pad_ratio:.3%}"
    )


def per_group_pad(counts: np.ndarray, shard_samples: int, buffer: int) -> float:
    """The plan before issue 15: groups of whole shards (>= buffer samples) packed each on its
    own, rows cut into batches of PLAN_ROWS (lengths are i.i.d., so the shard order does not matter)."""
    group = -(-buffer // shard_samples) * shard_samples
    rows = sum(
        int(pack(counts[start : start + group], CAPACITY, "first_fit", buffer).max()) + 1
        for start in range(0, counts.size, group)
    )
    return 1.0 - counts.sum() / (-(-rows // PLAN_ROWS) * PLAN_ROWS * CAPACITY)


def print_stream_plan(name: str, counts: np.ndarray) -> float:
    """Epoch-plan pad of the stream (`plan_tokens`) over shards; returns the pad at the default buffer."""
    print(
        f"\n## Stream epoch plan, {name}: {counts.size:,} samples in shards, {PLAN_ROWS} rows of {CAPACITY} tokens a batch"
    )
    rows, at_default = [], 0.0
    for shard_samples in SHARD_SAMPLES:
        shard = np.arange(counts.size) // shard_samples
        for buffer in PLAN_BUFFERS:
            plan = plan_tokens(counts, shard, StreamConfig(rows_per_batch=PLAN_ROWS, buffer=buffer), epoch=0)
            before = per_group_pad(counts, shard_samples, buffer)
            at_default = max(at_default, plan.pad_ratio) if buffer == StreamConfig.buffer else at_default
            rows.append(
                (
                    f"{shard_samples} x {-(-counts.size // shard_samples)}",
                    str(buffer),
                    f"{before:.3%}",
                    f"{plan.pad_ratio:.3%}",
                    f"{before / plan.pad_ratio:.1f}x" if plan.pad_ratio else "inf",
                )
            )
    print_table(("samples x shards", "buffer", "each group alone", "carried over", "ratio"), rows)
    whole = -(-counts.sum() // CAPACITY)
    print(
        f"lower bound (whole rows, whole batches): {1 - counts.sum() / (-(-whole // PLAN_ROWS) * PLAN_ROWS * CAPACITY):.3%}"
    )
    return at_default


def print_first_call() -> None:
    """Import + first pack/layout calls in fresh processes: cold compile, then cache load."""
    script = (
        "import time; start = time.perf_counter(); import numpy as np, loaders; c = np.array([3, 5, 2]);"
        "loaders.Packing.from_rows(c, loaders.pack(c, 8, 'greedy'), 8); loaders.pack(c, 8, 'first_fit');"
        "print(time.perf_counter() - start)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        runs = [
            subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)
        ]
    cold, cached = (float(run.stdout) for run in runs)
    print(
        f"\nFirst call in a fresh process (import numba + all kernels): compile {cold:.2f} s, from cache {cached:.2f} s"
    )


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":")[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
    cpu = models[0] if models else platform.processor()
    return (
        f"{cpu}, {os.cpu_count()} cores, no GPU used, Python {platform.python_version()}, "
        f"numba {numba.__version__}, numpy {np.__version__}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"# Packing benchmark: {machine()}")
    print("pad = share of row tokens that are padding; greedy = the paper's next-fit, one call per `buffer` samples")
    vox = token_counts(voxceleb_samples(N_SAMPLES, rng), SAMPLE_RATE, capacity=CAPACITY)
    clips = token_counts(np.full(N_SAMPLES, 10 * SAMPLE_RATE), SAMPLE_RATE, random_shifts(N_SAMPLES, rng))
    vox_pad = print_padding(
        "VoxCeleb-like: 4 s + lognormal(median 2.6 s, sigma 1), <= 30 s, C = 1", vox.tokens, PAPER_GREEDY_PAD
    )
    print_ast_calibration(vox.frames)
    clips_pad = print_padding("10-s clips, C drawn from {1.0, 1.2, ..., 4.0}", clips.tokens, {})
    speed_counts = token_counts(voxceleb_samples(SPEED_SAMPLES, rng), SAMPLE_RATE, capacity=CAPACITY).tokens
    speed, gain = print_speed(speed_counts)
    print_epoch_plan(voxceleb_samples(SPEED_SAMPLES, rng), random_shifts(SPEED_SAMPLES, rng))
    plan_pads = [
        print_stream_plan("VoxCeleb-like, C = 1", vox.tokens),
        print_stream_plan("VoxCeleb-like, C = 1", speed_counts),
        print_stream_plan(
            "VoxCeleb-like, C drawn from {1.0, 1.2, ..., 4.0}",
            token_counts(
                voxceleb_samples(SPEED_SAMPLES, rng), SAMPLE_RATE, random_shifts(SPEED_SAMPLES, rng), capacity=CAPACITY
            ).tokens,
        ),
    ]
    print_first_call()
    print(
        f"\nTargets (issue 15), epoch-plan pad at the default buffer {StreamConfig.buffer}: "
        f"<= 0.3 % on {N_SAMPLES:,} samples: {verdict(plan_pads[0] <= PLAN_PAD_TARGETS[N_SAMPLES])} ({plan_pads[0]:.3%}); "
        f"<= 0.1 % on {SPEED_SAMPLES:,}: C = 1 {verdict(plan_pads[1] <= PLAN_PAD_TARGETS[SPEED_SAMPLES])} ({plan_pads[1]:.3%}), "
        f"random C {verdict(plan_pads[2] <= PLAN_PAD_TARGETS[SPEED_SAMPLES])} ({plan_pads[2]:.3%})"
    )
    print(
        f"Targets (issue 3): first_fit pad <= 2 % at buffer 256: {verdict(max(vox_pad, clips_pad) <= PAD_TARGET)} "
        f"({vox_pad:.2%}, {clips_pad:.2%}); Numba first_fit >= 5 M samples/s: {verdict(speed >= SPEED_TARGET)} "
        f"(slowest {speed / 1e6:.1f} M/s); >= {GAIN_TARGET}x the reference: {verdict(gain >= GAIN_TARGET)} "
        f"(lowest {gain:.0f}x)"
    )


if __name__ == "__main__":
    main()

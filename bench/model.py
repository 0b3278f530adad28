"""Training-step throughput: packed ElasticAST vs the padded AST baseline, in useful tokens/s.

    .venv/bin/python bench/model.py [--steps 3]

Same VoxCeleb-like sample mix for both (4 s + lognormal(median 2.6 s, sigma 1), <= 30 s, C=1):
- ElasticAST: samples packed first-fit into rows of 2048 tokens, 2 rows a step, `split`
  attention; useful tokens = the real (non-padding) tokens;
- AST (baseline, measured in the same run): every sample cropped/padded to 1024 frames (512
  tokens + [cls]), 8 samples a step (the same 4,096 patch tokens); useful = min(tokens, 512).
Useful tokens per step are the means over the whole 4,000-sample pool, divided by the measured
step time. AST's step cost does not depend on its content; a packed step's does, through its
attention spans, so the timed packed steps are rows drawn at random (seeded) from the whole packed
pool, as the loader shuffles rows after packing. Packing emits rows seeded with the largest pending
samples, so the first rows in emission order are far longer-spanned than the epoch's average.
`span` (the token-weighted mean attention span, sum n^2 / sum n) shows how representative the
timed steps are: timed / whole pool. One step = forward, loss, backward, AdamW update, fp32, all
torch threads. Each configuration runs in a fresh process, so its peak resident memory
(ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from elasticast import ElasticAST, loss, preset
from elasticast.ast_baseline import ASTBaseline
from loaders import Packing, pack, token_counts
from loaders.batch import PackedBatch, from_features
from loaders.tokens import shift_for_scale

ROWS, LENGTH, AST_FRAMES, AST_SAMPLES = 2, 2048, 1024, 8


def sample_tokens(n: int, seed: int = 0, length: int = LENGTH, scales: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """VoxCeleb-like token counts, each clip at a temporal resolution C drawn from `scales`."""
    rng = np.random.default_rng(seed)
    seconds = np.minimum(4.0 + rng.lognormal(np.log(2.6), 1.0, n), 30.0)
    shift = shift_for_scale(rng.choice(np.asarray(scales, dtype=np.float64), n))
    return token_counts((seconds * 16000).astype(np.int64), 16000, shift, max_frames=3072, capacity=length).tokens


def random_batch(tokens: np.ndarray, rows: np.ndarray, offsets: np.ndarray, length: int, generator) -> PackedBatch:
    """Random patches laid out as planned (content does not matter for speed)."""
    features = [
        (
            torch.randn(int(n), 256, generator=generator),
            torch.arange(8).repeat(int(n) // 8),
            torch.arange(int(n) // 8).repeat_interleave(8),
        )
        for n in tokens
    ]
    labels = torch.randint(0, 10, (len(tokens),), generator=generator)
    return from_features(
        features, rows, offsets, np.ones(len(tokens)), [str(i) for i in range(len(tokens))], labels, length
    )


def span(tokens: np.ndarray) -> float:
    """Token-weighted mean attention span (sum n^2 / sum n): attention work per token."""
    return float((tokens.astype(np.float64) ** 2).sum() / tokens.sum())


def elastic_steps(
    steps: int,
    generator,
    rows_per_step: int = ROWS,
    length: int = LENGTH,
    scales: tuple[float, ...] = (1.0,),
    seed: int = 0,
) -> tuple[list[PackedBatch], float, tuple[float, float]]:
    """Batches of `rows_per_step` packed rows drawn at random (by `seed`) from the packed pool, the
    pool's mean useful tokens per step, and the attention span of (the timed steps, the whole pool)."""
    tokens = sample_tokens(4000, length=length, scales=scales)
    layout = Packing.from_rows(tokens, pack(tokens, length, "first_fit", 256), length)
    order, starts = layout.members()
    shuffled = np.random.default_rng(seed).permutation(layout.n_rows)
    if steps * rows_per_step > layout.n_rows:
        raise ValueError(f"{steps} steps of {rows_per_step} rows need more than the pool's {layout.n_rows} rows")
    batches, timed = [], []
    for step in range(steps):
        rows = shuffled[step * rows_per_step : (step + 1) * rows_per_step]
        members = np.concatenate([order[starts[r] : starts[r + 1]] for r in rows])
        in_batch = (layout.row[members][:, None] == rows).argmax(axis=1)
        batches.append(random_batch(tokens[members], in_batch, layout.offset[members], length, generator))
        timed.append(tokens[members])
    return (
        batches,
        rows_per_step * length * (1 - layout.pad_ratio),
        (span(np.concatenate(timed[1:] or timed)), span(tokens)),
    )


def ast_steps(
    steps: int, generator, samples: int = AST_SAMPLES, frames: int = AST_FRAMES
) -> tuple[list[PackedBatch], float, tuple[float, float]]:
    """Batches of `samples` fixed-size samples of `frames` frames, the pool's mean useful tokens
    per step, and the attention span (always the full grid plus [cls])."""
    kept = np.minimum(sample_tokens(4000), frames // 16 * 8)
    batches = [
        random_batch(kept[i : i + samples], np.arange(samples), np.zeros(samples, np.int64), frames // 2, generator)
        for i in range(0, steps * samples, samples)
    ]
    grid = frames // 16 * 8 + 1
    return batches, samples * float(kept.mean()), (grid, grid)


def run_one(model_name: str, preset_name: str, steps: int) -> dict:
    """One configuration: a warm-up step, then `steps` timed steps."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    config = preset(preset_name, num_classes=10, max_frames=3072)
    if model_name == "elasticast":
        model, (batches, useful, spans) = ElasticAST(config), elastic_steps(steps + 1, generator)
    else:
        model, (batches, useful, spans) = ASTBaseline(config, target_frames=AST_FRAMES), ast_steps(steps + 1, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timings = []
    for batch in batches:
        started = time.perf_counter()
        loss(model(batch), batch.labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - started)
    step_s = float(np.mean(timings[1:]))  # the first step warms up allocators and kernels
    return {
        "step_s": step_s,
        "useful_per_step": useful,
        "useful_per_s": useful / step_s,
        "span": spans,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"], choices=["tiny", "small", "base"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate AST and ElasticAST processes this many times and keep each one's fastest step "
        "time, so a slow spell of a shared machine does not land on one model only",
    )
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps)))
        return
    print(
        f"# Model training-step benchmark: {torch.get_num_threads()} torch threads, torch {torch.__version__}, fp32 CPU"
    )
    print(
        f"{'preset':6} {'model':18} {'step s':>7} {'useful/step':>11} {'useful tokens/s':>16} {'peak RSS MB':>12} "
        f"{'vs AST':>7} {'span timed/pool':>16}"
    )
    for preset_name in args.presets:
        results = {}
        steps = args.steps if preset_name == "tiny" else max(1, args.steps // 2)
        for _ in range(args.repeats):
            for model_name in ("ast", "elasticast"):
                out = subprocess.run(
                    [sys.executable, str(Path(__file__)), "--one", model_name, preset_name, "--steps", str(steps)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                if model_name not in results or result["step_s"] < results[model_name]["step_s"]:
                    results[model_name] = result
        for model_name, label in (("ast", "AST 1024 frames"), ("elasticast", "ElasticAST packed")):
            r = results[model_name]
            print(
                f"{preset_name:6} {label:18} {r['step_s']:7.2f} {r['useful_per_step']:11.0f} {r['useful_per_s']:16.0f} {r['peak_rss_mb']:12.0f} "
                f"{r['useful_per_s'] / results['ast']['useful_per_s']:6.2f}x {r['span'][0]:7.0f} /{r['span'][1]:5.0f}"
            )


if __name__ == "__main__":
    main()

"""Evaluate trained checkpoints across maximum lengths and temporal resolutions.

    elasticast-evaluate --checkpoint runs/demo --shards data/demo        # its test split
    elasticast-evaluate --checkpoint runs/elastic runs/ast-256 --shards OUT/test --out runs/eval \
        --lengths 128 256 512 1024 --scales 1 2 3 4 --loader ray

(or `python jobs/evaluate.py ...`). A checkpoint is a training run folder (its best.pt) or a
checkpoint file. Each point featurizes the split once and scores every checkpoint on the same
batches; what each model sees at a point is described in `elasticast.evaluation.points`. Writes `results.csv`,
`usage.csv` (training-token pad/cut, from the sibling `train` split), `results.md`,
`length.png` and `scale.png` to `--out` (default: `eval/` in the first run folder).
Checkpoints, shards and `--out` may be local paths or URLs (`s3://bucket/runs/x`, `gs://...`;
`https://...` for reading only); see docs/evaluation.md for credentials and endpoints.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from elasticast.evaluation.points import SWEEPS, sweep_points
from loaders.config import FEATURIZE
from loaders.tokens import COMPRESSIONS, PATCH, SCALE_GRID, token_counts
from shards.location import Location
from shards.options import DATASET_FILE
from shards.parallel import BACKENDS

SHORTEST_CAP = 64
DEFAULT_SPLIT = "test"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", nargs="+", required=True, help="training run folders (their best.pt) or checkpoint files"
    )
    parser.add_argument(
        "--shards", required=True, help="the split to evaluate on, e.g. OUT/test, or a shard set OUT: its test split"
    )
    parser.add_argument("--out", help="output folder (default: eval/ in the first run folder)")
    parser.add_argument("--names", nargs="+", help="display names, one per checkpoint (default: run folder names)")
    parser.add_argument(
        "--sweeps",
        nargs="+",
        default=list(SWEEPS),
        choices=SWEEPS,
        help="length: accuracy at caps of N frames; scale: at temporal resolutions C (default: both)",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        help="caps in frames (default: 64, 128, ... doubling, the data's longest clip, and each AST's trained length)",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        type=float,
        default=list(SCALE_GRID),
        help="resolutions C of the scale sweep (frame shift 10*C ms; default 1.0, 1.2, ..., 4.0)",
    )
    parser.add_argument(
        "--compressions",
        nargs="+",
        default=list(COMPRESSIONS),
        choices=COMPRESSIONS,
        help="how C is made in the scale sweep: frame shift, or average-pooling whole C frames (default: both)",
    )
    parser.add_argument(
        "--loader",
        default="local",
        choices=BACKENDS,
        help="featurize in-process (local, default) or in Ray Data tasks (ray)",
    )
    parser.add_argument(
        "--loader-workers", type=int, default=1, help="concurrent Ray Data tasks with --loader ray (default 1)"
    )
    parser.add_argument("--rows-per-batch", type=int, default=4, help="packed rows per model call (default 4)")
    parser.add_argument(
        "--featurize",
        default="loader",
        choices=FEATURIZE,
        help="make fbanks in the loader (default) or from its waveforms on the model's device (docs/stream.md)",
    )
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.checkpoint):
        parser.error(f"--names gives {len(args.names)} names for {len(args.checkpoint)} checkpoints")
    return args


def default_lengths(dataset, split: str, candidates, native_frames: int) -> list[int]:
    """64, 128, 256, ... below the split's longest clip, that clip's length (whole patches,
    at most `native_frames`), and every AST's trained length."""
    table = dataset.index(split)
    longest = int(
        token_counts(table.column("num_samples").to_numpy(), table.column("sample_rate").to_numpy()).frames.max()
    )
    top = min(-(-longest // PATCH) * PATCH, native_frames)
    lengths = {top} | {c.target_frames for c in candidates if c.kind == "ast" and c.target_frames <= native_frames}
    cap = SHORTEST_CAP
    while cap < top:
        lengths.add(cap)
        cap *= 2
    return sorted(lengths)


def check_compatible(candidates, dataset) -> str | None:
    """The split's labels must be among every checkpoint's classes (the same for all), and the
    checkpoints must featurize alike: the split is featurized once, as their checkpoints say."""
    first = candidates[0]
    for c in candidates:
        missing = sorted(set(dataset.labels) - set(c.labels))
        if missing or list(c.labels) != list(first.labels):
            return f"{c.name}: its labels {c.labels[:5]}... differ from {dataset.root}'s {dataset.labels[:5]}..."
        if c.features.sample_rate != dataset.sample_rate:
            return (
                f"{c.name}: trained on {c.features.sample_rate} Hz audio, {dataset.root} holds {dataset.sample_rate} Hz"
            )
        if replace(c.features, compression="shift", max_frames=PATCH) != replace(
            first.features, compression="shift", max_frames=PATCH
        ):
            return (
                f"{c.name}: its features {c.features} differ from {first.name}'s {first.features}: "
                "evaluate checkpoints featurized alike together"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from elasticast.evaluation import evaluate_point, is_run_folder, load_candidate, training_usage, write_report
    from elasticast.metrics import NothingToScore
    from shards.dataset import ShardDataset
    from shards.retry import StorageFailure

    split = Location.of(args.shards)
    if (split / DATASET_FILE).is_file():
        split = split / DEFAULT_SPLIT  # a whole shard set: report on test, never on the split that chose best.pt
    dataset = ShardDataset(str(split.parent))
    if split.name not in dataset.meta.get("splits", {}):
        print(
            f"error: {split} is not a split of {split.parent} (splits: {sorted(dataset.meta.get('splits', {}))})",
            file=sys.stderr,
        )
        return 2
    names = args.names or [None] * len(args.checkpoint)
    candidates = [load_candidate(path, name) for path, name in zip(args.checkpoint, names)]
    problem = check_compatible(candidates, dataset)
    native_frames = min(c.max_frames for c in candidates)
    lengths = args.lengths or default_lengths(dataset, split.name, candidates, native_frames)
    too_long = [length for length in lengths if length > native_frames]
    if too_long:
        problem = problem or f"lengths {too_long} exceed the models' max_frames {native_frames}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    points = sweep_points(tuple(args.sweeps), tuple(lengths), tuple(args.scales), tuple(args.compressions))
    if args.loader == "ray":
        from jobs.ray_session import connect

        connect()  # RAY_ADDRESS, else a local instance of our own
    first = Location.of(args.checkpoint[0])
    out = Location.of(args.out) if args.out else (first if is_run_folder(first) else first.parent) / "eval"
    if out.is_read_only:
        print(f"error: cannot write the results to {out} ({out.protocol}:// is read-only): pass --out", file=sys.stderr)
        return 2
    print(
        f"evaluating {len(candidates)} checkpoint(s) on {split} ({len(dataset.index(split.name))} clips) at {len(points)} points -> {out}",
        flush=True,
    )
    results = []
    progress = tqdm(points, desc="evaluating", unit="point", file=sys.stderr)
    for point in progress:
        stream = dict(
            backend=args.loader,
            workers=args.loader_workers,
            rows_per_batch=args.rows_per_batch,
            featurize=args.featurize,
        )
        try:
            rows = evaluate_point(point, str(split), candidates, native_frames, **stream)
        except (StorageFailure, NothingToScore) as error:  # the store is gone, or there is nothing to score
            print(f"error: {split} at {point.name}: {error}", file=sys.stderr)
            return 2
        results += rows
        progress.set_postfix_str(f"{point.name}: " + ", ".join(f"{r['checkpoint']} {r['metric']:.3f}" for r in rows))
    failed = max((r["failed"] for r in results), default=0)
    if failed:
        print(
            f"WARNING: {failed} clips could not be read at some points (named above); they are not scored",
            file=sys.stderr,
        )
    train_split = split.parent / "train"  # the shard set's own list of splits: a web server cannot list folders
    usage = training_usage(str(train_split), candidates) if "train" in dataset.meta.get("splits", {}) else []
    unrecorded = [c.name for c in candidates if c.stream is None]
    if unrecorded:
        print(
            f"note: {', '.join(unrecorded)} record no training stream settings: left out of usage.csv", file=sys.stderr
        )
    write_report(out, results, usage)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, usage.csv, results.md and the plots", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

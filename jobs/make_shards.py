"""Audio files -> WebDataset shards with precomputed lengths, an index and dataset.json.

    elasticast-make-shards                                   # built-in demo corpus -> data/demo
    elasticast-make-shards --input DIR --out OUT             # label = parent folder name
    elasticast-make-shards --manifest rows.csv --out OUT     # path,label[,split,start,end]
    elasticast-make-shards --input DIR --out OUT --valid-fraction 0.1   # train / valid / test by a stable hash
    elasticast-make-shards --verify OUT                      # check a shard set: index, tars, checksums, counts
    elasticast-make-shards --input s3://bucket/audio --out s3://bucket/shards   # any of them may be a URL

Paths may be URLs (s3://, gs://, file://; http(s):// for inputs only): credentials and endpoints come
from each backend's standard configuration (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ..., profiles).

(or `python jobs/make_shards.py ...`). Runs on Ray Data when a cluster is given (--address or
RAY_ADDRESS) or the input is large, else in-process; --backend chooses explicitly.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

from shards.options import DATASET_FILE, DEFAULT_MAX_DURATION_S, LONG_CLIP_POLICIES, SMALL_INPUT
from shards.parallel import BACKENDS
from shards.retry import DEFAULT_TIMEOUT_S

DEMO_OUT = Path("data/demo")
DEMO_SHARD_SIZE = "8MiB"
DEFAULT_SHARD_SIZE = "128MiB"
SHOWN_SKIPS = 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|B|[KMG]i?B)\s*$")
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(text: str) -> int:
    """Bytes: '4096', '128MiB' (binary, 2**20) or '128MB' (decimal, 10**6), as the units say."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"--shard-size {text!r} is not a size: a number of bytes with an optional unit, "
            "KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000), e.g. 128MiB"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="folder (or URL prefix) searched recursively for .wav/.flac/.ogg/.mp3")
    source.add_argument("--manifest", help=".csv or .jsonl (a path or URL) with path,label[,split,start,end]")
    source.add_argument(
        "--verify",
        metavar="OUT",
        help="check the shard set in OUT and exit: 1 for problems in the data, 2 if OUT is no shard set",
    )
    parser.add_argument("--out", help=f"output folder or URL prefix (default for the demo: {DEMO_OUT})")
    parser.add_argument("--label-regex", help="with --input: regex on the file name with a (?P<label>...) group")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of the test split (hash of path)")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.0,
        help="share of a valid split (hash of path; taken from train, test unchanged; default 0: none)",
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="all audio is resampled to this rate")
    parser.add_argument(
        "--shard-size",
        type=parse_size,
        help=f"target bytes per shard: KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000 (default {DEFAULT_SHARD_SIZE}; demo {DEMO_SHARD_SIZE})",
    )
    parser.add_argument("--shard-samples", type=int, help="also close a shard after this many samples")
    parser.add_argument("--seed", type=int, default=0, help="order of samples across shards (and the demo corpus)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing shard set in --out")
    parser.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help=f"ray: Ray Data tasks; local: in-process; auto (default): ray with a cluster (--address or "
        f"RAY_ADDRESS) or more than {SMALL_INPUT} inputs, else local",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--stats-samples", type=int, default=1000, help="train clips used for fbank mean/std")
    parser.add_argument(
        "--max-duration",
        type=float,
        default=DEFAULT_MAX_DURATION_S,
        help=f"seconds; longer sources are cut into equal segments (or skipped, --long-clips) "
        f"(default {DEFAULT_MAX_DURATION_S:g}; 0: no limit)",
    )
    parser.add_argument(
        "--long-clips",
        choices=LONG_CLIP_POLICIES,
        default="segment",
        help="what happens to sources over --max-duration (default: segment)",
    )
    parser.add_argument(
        "--keep-duplicates", action="store_true", help="keep manifest rows naming the same file and segment twice"
    )
    parser.add_argument(
        "--storage-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds an object store may stay unreachable (retried with backoff) before the build fails "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="build without remote inputs whose store did not answer in time (listed in dataset.json); "
        "default: the build fails naming them",
    )
    parser.add_argument("--demo-clips", type=int, default=320, help="size of the built-in demo corpus")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads for decoding, resampling and fbank stats (default 1)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.test_fraction < 1:
        parser.error(f"--test-fraction {args.test_fraction} must be in [0, 1)")
    if not 0 <= args.valid_fraction < 1 - args.test_fraction:
        parser.error(
            f"--valid-fraction {args.valid_fraction} must be in [0, 1 - --test-fraction) (some data must stay in train)"
        )
    if args.max_duration < 0 or 0 < args.max_duration < 1:
        parser.error(f"--max-duration {args.max_duration} must be 0 (no limit) or >= 1 second")
    if args.torch_threads < 1:
        parser.error(f"--torch-threads {args.torch_threads} must be >= 1")
    if args.storage_timeout < 0:
        parser.error(f"--storage-timeout {args.storage_timeout} must be >= 0 seconds")
    if (args.input or args.manifest) and args.out is None:
        parser.error("--out is required with --input or --manifest")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verify:
        return verify(args.verify)
    from loaders.threads import torch_threads

    with torch_threads(args.torch_threads):  # the caller's count comes back when run in-process
        return run(args)


def choose_backend(args: argparse.Namespace, inputs: int) -> str:
    """`--backend auto`: Ray when there is a cluster to use or enough work to pay for starting one."""
    if args.backend != "auto":
        return args.backend
    return "ray" if args.address or os.environ.get("RAY_ADDRESS") or inputs > SMALL_INPUT else "local"


def run(args: argparse.Namespace) -> int:
    from jobs.ray_session import connect
    from loaders.stats import fbank_stats, source_frame_cap
    from shards.build import BuildConfig, build_shards, write_metadata
    from shards.demo import write_demo_corpus
    from shards.inputs import list_folder, read_manifest
    from shards.location import Location
    from shards.output import OutputError, check_output, discard, prepare_output, publish
    from shards.retry import StorageFailure, set_storage_timeout

    set_storage_timeout(args.storage_timeout)
    demo = args.input is None and args.manifest is None
    started = time.perf_counter()
    out, created = Location.of(args.out or DEMO_OUT), None
    try:
        check_output(out, args.overwrite)  # a remote --out: before any input is read
        with tempfile.TemporaryDirectory(prefix="elasticast-demo-") if demo else nullcontext() as demo_dir:
            if demo:
                print(f"building the built-in demo corpus ({args.demo_clips} clips, seed {args.seed})")
                args.manifest = write_demo_corpus(demo_dir, clips=args.demo_clips, seed=args.seed)
            sources, skipped = (
                list_folder(args.input, args.test_fraction, args.label_regex, args.valid_fraction)
                if args.input
                else read_manifest(args.manifest, args.test_fraction, args.keep_duplicates, args.valid_fraction)
            )
            if not sources:
                raise ValueError(f"no valid input: {len(skipped)} input(s) listed, all skipped")
            created = not out.exists()
            config = BuildConfig(
                out=prepare_output(out, args.overwrite),
                sample_rate=args.sample_rate,
                shard_bytes=args.shard_size or parse_size(DEMO_SHARD_SIZE if demo else DEFAULT_SHARD_SIZE),
                shard_samples=args.shard_samples,
                seed=args.seed,
                backend=choose_backend(args, len(sources)),
                progress=not args.quiet,
                max_duration_s=args.max_duration or None,
                long_clips=args.long_clips,
                storage_timeout_s=args.storage_timeout,
                allow_missing=args.allow_missing,
            )
            if args.backend == "auto":  # a backend given by flag needs no echo
                print(f"backend: {config.backend} (--backend auto)", flush=True)
            if config.backend == "ray":
                connect(args.address, num_cpus=args.num_cpus)  # --address, RAY_ADDRESS, else a local instance
            result = build_shards(sources, skipped, config)
            stats_split = "train" if "train" in result.rows else min(result.rows)
            parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            parameters["input_kind"] = "demo" if demo else "folder" if args.input else "manifest"
            stats = fbank_stats(
                train_clips(config, result.rows[stats_split], stats_split),
                max_samples=args.stats_samples,
                frames_per_source=source_frame_cap(
                    [r["num_samples"] for r in result.rows[stats_split]], config.sample_rate
                ),
            )
            write_metadata(result, config, parameters, {**stats, "split": stats_split})
            publish(out)
    except (OSError, OutputError, ValueError) as exc:
        if created is not None:  # this run staged output: leave nothing half-built behind
            discard(out, created)
        if (
            created is not None
            and isinstance(exc, OSError)
            and not isinstance(exc, (FileNotFoundError, FileExistsError, StorageFailure))
        ):
            exc = f"cannot write to --out {out}: {exc.strerror or exc}"
        print(f"make_shards: error: {exc}", file=sys.stderr)
        if created is False and not out.is_local:
            note_incomplete(out)
        return 2
    report(result, out, time.perf_counter() - started)
    return 0


def note_incomplete(out) -> None:
    """After a failed remote --overwrite: say whether the former set is still whole."""
    try:
        whole = (out / DATASET_FILE).exists()
    except Exception as exc:  # the store itself may be what failed
        print(f"make_shards: could not check whether {out} still has its {DATASET_FILE}: {exc}", file=sys.stderr)
        return
    if not whole:
        print(
            f"make_shards: {out} is left without {DATASET_FILE} (incomplete, readers refuse it); "
            "run again with --overwrite",
            file=sys.stderr,
        )


def verify(root: str) -> int:
    """`--verify OUT`: print every problem found in the data; 0 when none, 1 when any (a damaged
    dataset.json or index included), 2 when OUT is no shard set or cannot be read."""
    from shards.dataset import InvalidShardSet
    from shards.verify import verify_shard_set

    try:
        problems = verify_shard_set(root)
    except InvalidShardSet as exc:
        print(f"damaged: {exc}")
        print(f"{root}: 1 problem(s)")
        return 1
    except (OSError, ValueError) as exc:
        print(f"make_shards: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"{problem.kind}: {problem.where}: {problem.detail}")
    print(f"{root}: {len(problems)} problem(s)" if problems else f"{root}: shard set consistent")
    return 1 if problems else 0


def train_clips(config, rows: list[dict], split: str):
    """(waveform, rate, source file) of the split's clips as written, each checked against its XXH3-64."""
    from shards.tar import ShardSample, read_shard

    checksums = {row["key"]: row["xxh3_64"] for row in rows}
    for shard in sorted({row["shard"] for row in rows}):
        for item in read_shard(config.out / split / shard, checksums):
            if isinstance(item, ShardSample):
                yield item.audio, item.sample_rate, item.meta["source"]


def report(result, out, seconds: float) -> None:
    from shards.build import summary, warnings

    for skip in islice(result.skipped, SHOWN_SKIPS):
        print(f"skipped {skip.path}: {skip.reason} ({skip.detail})", file=sys.stderr)
    if len(result.skipped) > SHOWN_SKIPS:
        print(f"... and {len(result.skipped) - SHOWN_SKIPS} more, all listed in {out}/dataset.json", file=sys.stderr)
    for line in warnings(result, SHOWN_SKIPS):
        print(line, file=sys.stderr)
    print(summary(result))
    print(f"wrote {out} in {seconds:.1f} s")


if __name__ == "__main__":
    sys.exit(main())

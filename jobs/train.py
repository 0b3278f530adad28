"""Train ElasticAST (or the AST baseline) on a shard set with Ray Train.

    elasticast-train                                   # tiny preset on the demo shards, local Ray
    elasticast-train --shards OUT --out runs/x --workers 2 --epochs 20 --config my.yaml
    elasticast-train --shards A B --weights 0.7 0.3 --weight-by tokens --out runs/mix   # a mix of two sets
    ray job submit --working-dir . -- python jobs/train.py --shards /shared/OUT --out /shared/runs/x

(`python jobs/train.py ...` is the same command.) Each Ray Train worker is one DDP rank fed by its
own `PackedStream` split (`jobs.train_worker`). Every epoch: train, validate on `valid` (else `test`, with a warning) at
native length, checkpoint, log; with `--checkpoint-every N` also checkpoint every N steps. The run
folder `--out` gets `config.yaml`, `history.json`, `keys/epoch-NNN.json` (how often each training
key was seen), `best.pt` and `last.pt` (inference checkpoints for `elasticast.Classifier`),
`metrics.json`, `checkpoints/` (the two latest full training states: `--resume` and retries after a
failure continue from the latest at its exact step), `wandb/` and `ray/`. Every file is complete or
absent (a local one written under a temporary name, then renamed; an object in one PUT). A failure
of the storage itself (no space, no permission, no such bucket, a store unreachable for longer than
`--storage-timeout`) and more bad samples than `--max-failed` stop the run with exit status 2
instead of being retried; `--resume` verifies the latest checkpoint and falls back to the one
before it. On a multi-node cluster `--out` must be storage every node sees: a shared
folder, or an object-store URL (`--out s3://bucket/runs/x`, `--shards s3://bucket/shards`) with
the same credentials configured on every node. wandb writes locally: for a URL `--out` its files
go to `--wandb-dir` (default `~/.cache/elasticast/wandb/<scheme>/<bucket>/<prefix>` on rank 0's node).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from elasticast.training.config import TrainConfig, parse_args
from jobs import make_shards
from jobs.console import CONSOLE, relay
from shards.location import Location
from shards.options import DATASET_FILE

DEMO_SHARDS = TrainConfig.shards
RAY_DIR = "ray"
WANDB_CACHE = Path("~/.cache/elasticast/wandb")  # wandb's files for runs whose folder is a URL
CAUSE_CHARS = 160  # a failed rank's part of the line telling a retried attempt (gloo's one-liners run to 300)


def absolute(value: str) -> Location:
    """A local path resolved (workers run elsewhere), a URL as it is."""
    location = Location.of(value)
    return Location.of(location.local.resolve()) if location.is_local else location


def wandb_folder(config: TrainConfig, out: Location) -> str:
    """wandb writes local files only: `--wandb-dir`, else the run folder, else (a URL run) a
    folder named after the URL under WANDB_CACHE."""
    if config.wandb_dir:
        return str(Path(config.wandb_dir).expanduser().resolve())
    if out.is_local:
        return str(out.local)
    return str((WANDB_CACHE / out.protocol / out.url.split("://", 1)[1]).expanduser())


def prepare_run(config: TrainConfig) -> TrainConfig | str:
    """Absolute paths (workers run elsewhere), demo shards built if missing, the validation split
    chosen, the run folder checked against `--resume` and for writing. A string is the reason to stop."""
    from elasticast.checkpoint import CHECKPOINTS, CheckpointStore, write_text
    from shards.retry import set_storage_timeout

    set_storage_timeout(config.storage_timeout)
    sources, out = [absolute(shards) for shards in config.shards], absolute(config.out)
    if out.is_read_only:
        return f"cannot write to --out {out}: {out.protocol}:// locations are read-only"
    found = [source_splits(shards, config.shards == DEMO_SHARDS) for shards in sources]
    problems = [splits for splits in found if isinstance(splits, str)]
    if problems:
        return problems[0]
    every_valid = all("valid" in splits for splits in found)
    valid_split = config.valid_split if config.valid_split != "auto" else "valid" if every_valid else "test"
    for shards, splits in zip(sources, found):
        if not {"train", valid_split} <= set(splits):
            return f"{shards} has splits {sorted(splits)}; training needs 'train' and '{valid_split}' (to validate on)"
    if config.valid_split == "auto" and valid_split == "test":
        lacking = ", ".join(str(shards) for shards, splits in zip(sources, found) if "valid" not in splits)
        print(
            f"WARNING: {lacking} has no 'valid' split: validating on 'test' and choosing best.pt there, so results on test "
            "are optimistic (make_shards --valid-fraction makes a valid split)",
            file=sys.stderr,
            flush=True,
        )
    try:
        store = CheckpointStore(out / CHECKPOINTS)
        complete = store.complete()
        latest = store.usable() if config.resume else None  # verified: a damaged one is moved aside
        holds_run = (out / CHECKPOINTS).exists() or (out / "history.json").exists()
        configured = (out / "config.yaml").exists()
    except Exception as error:
        return f"cannot read --out {out}: {reason(error)}"
    if not config.resume and holds_run:
        return f"{out} already holds a run: pass --resume to continue it, or choose another --out"
    if config.resume and latest is None:
        if complete:
            return (
                f"--resume: none of the {len(complete)} checkpoint(s) in {out / CHECKPOINTS} loads (each moved aside "
                "as *.unreadable, named above), so there is nothing to continue from"
            )
        if not configured:
            return f"--resume: {out} holds no run to resume"
        return (
            f"--resume: {out / CHECKPOINTS} holds no complete checkpoint, so there is nothing to continue from; "
            "remove the run folder to start afresh, or choose another --out"
        )
    init = absolute(config.init) if config.init else None
    if init is not None and not init.is_file():
        return f"--init {init} does not exist (weights are never downloaded)"
    if init is not None:
        from elasticast.training.init import read_start

        try:  # a file no format reads stops here, not in every worker
            read_start(init.url)
        except (KeyError, ValueError) as error:
            return f"--init {init}: {error}"
    wandb_dir = wandb_folder(config, out) if config.wandb != "disabled" else config.wandb_dir
    changes = {
        "shards": [shards.url for shards in sources],
        "out": out.url,
        "valid_split": valid_split,
        "wandb_dir": wandb_dir,
        "init": init.url if init is not None else "",
    }
    config = TrainConfig(**(config.to_dict() | changes))
    if config.resume and configured:
        try:
            changed = config.changed_on_resume(yaml.safe_load((out / "config.yaml").read_text()) or {})
        except Exception as error:
            return f"cannot read {out / 'config.yaml'}: {reason(error)}"
        if changed:
            return (
                f"--resume: {out} was started with other settings, which decide what it learns: {', '.join(changed)}. "
                f"Resume with the run's own (its config.yaml), or start a new run in another --out"
            )
    try:
        out.check_writable()
        write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    except Exception as error:
        return f"cannot write to --out {out}: {reason(error)}"
    return config


def source_splits(shards: Location, demo: bool) -> dict | str:
    """The splits of a shard set (the demo set built first if it is missing); a string is the reason to stop."""
    from shards.dataset import ShardDataset

    try:
        built = (shards / DATASET_FILE).is_file()
        if not built and demo and shards.is_local:
            print(f"building the demo shard set in {shards} ...", flush=True)
            if make_shards.main(["--out", str(shards), "--overwrite", "--quiet", "--backend", "local"]) != 0:
                return "building the demo shards failed"
        elif not built:
            return f"{shards} is not a make_shards output (no {DATASET_FILE}); run elasticast-make-shards first"
        return ShardDataset(shards).splits
    except Exception as error:  # no permission, no such bucket, an unreachable endpoint
        return f"cannot read --shards {shards}: {reason(error)}"


def reason(error: BaseException) -> str:
    """Why a storage call failed, in a few words (the storage failure behind it if there is one)."""
    from elasticast.checkpoint import storage_cause

    cause = storage_cause(error) or error
    return str(getattr(cause, "strerror", None) or cause)


def check_resources(config: TrainConfig, use_gpu: bool, available: dict) -> str | None:
    """A request the cluster can never grant would wait forever: refuse it now."""
    loader = config.loader_workers * config.loader_cpus if config.loader == "ray" else 0.0
    cpus = config.workers * (config.cpus_per_worker + loader)
    if cpus > available.get("CPU", 0) + 1e-9:
        return (
            f"{config.workers} workers x ({config.cpus_per_worker} trainer CPUs + {loader:g} loader CPUs) = {cpus:g} CPUs, "
            f"but the Ray cluster has {available.get('CPU', 0):g}: lower --workers, --cpus-per-worker or --loader-cpus"
        )
    if use_gpu and config.workers > available.get("GPU", 0):
        return f"{config.workers} GPU workers, but the Ray cluster has {available.get('GPU', 0):g} GPUs"
    return None


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv, __doc__)  # before the heavy imports: --help and bad flags answer at once
    import ray
    from ray.train import TrainingFailedError

    from elasticast.checkpoint import RunStorageError
    from jobs.ray_session import connect

    prepared = prepare_run(config)
    if isinstance(prepared, str):
        print(f"error: {prepared}", file=sys.stderr)
        return 2
    config, out = prepared, Location.of(prepared.out)
    connect(verbose=config.verbose, dashboard=True)  # RAY_ADDRESS, else a local instance of our own
    available = ray.cluster_resources()
    use_gpu = config.device == "cuda" or (config.device == "auto" and available.get("GPU", 0) > 0)
    problem = check_resources(config, use_gpu, available)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    local_wandb = f"; wandb files in {config.wandb_dir}" if config.wandb != "disabled" and not out.is_local else ""
    print(
        f"training {config.model} ({config.preset}) on {' + '.join(config.shards)}: {config.workers} worker(s), "
        f"{'GPU' if use_gpu else 'CPU'}, {config.epochs} epochs -> {out}{local_wandb}",
        flush=True,
    )
    for attempt in range(1, config.max_failures + 2):
        try:
            with relay() as console:  # the workers' lines (progress, warnings) printed here
                trainer(config, use_gpu, console).fit()
            break
        except TrainingFailedError as error:
            stop = final_failure(error)
            if stop:
                print(f"error: {stop}; stopped (a retry would fail the same way)", file=sys.stderr)
                return 2
            if attempt > config.max_failures:
                print(f"error: training failed after {attempt} attempt(s): {failure_cause(error)}", file=sys.stderr)
                return 1
            print(
                f"attempt {attempt} failed ({failure_cause(error)}); restarting from the latest checkpoint "
                f"(retry {attempt} of --max-failures {config.max_failures})",
                flush=True,
            )
    try:
        return summarise(config, out)
    except RunStorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def trainer(config: TrainConfig, use_gpu: bool, console=None):
    """One attempt at the run. Ray Train does not retry it: `main` does, after telling failures
    of the run folder's storage (not worth a retry) from the rest. The workers print through
    `console` (a `jobs.console.relay` queue)."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train_worker import train_worker

    return TorchTrainer(
        train_worker,
        train_loop_config=config.to_dict() | {CONSOLE: console},
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=RAY_DIR,
            storage_path=config.out,  # a URL too: Ray Train writes through pyarrow.fs (which reads AWS_*)
            failure_config=FailureConfig(max_failures=0),
            logging_config=LoggingConfig(log_level="INFO" if config.verbose else "WARNING"),
        ),  # main reports a failure, in one line
    )


def final_failure(error: Exception) -> str | None:
    """The message of a worker's failure that no retry can fix, within a failed `fit()`, if any: a
    `StorageFailure` (the run folder or the shards' store; `RunStorageError` is one), a refusal
    (no such file or bucket, access denied), more holes than `--max-failed` allows, or a checkpoint
    whose label ids are not the data's (`LabelMismatch`), wherever it lies in the chain of causes
    (a Ray Data task's error arrives wrapped). Ray Train's `WorkerGroupError.worker_failures` holds
    each failed rank's own exception."""
    from ray.train import WorkerGroupError

    from elasticast.checkpoint import LabelMismatch
    from loaders import FailureBudgetExceeded
    from shards.retry import StorageFailure, causes

    final = (StorageFailure, FailureBudgetExceeded, LabelMismatch, FileNotFoundError, PermissionError)
    failures = error.worker_failures.values() if isinstance(error, WorkerGroupError) else ()
    for failure in failures:
        for cause in causes(failure):
            if isinstance(cause, final):
                return str(cause)
    return None


def failure_cause(error: Exception) -> str:
    """A failed `fit()` in one line: each failed rank's (or the controller's) exception and the first
    line of its message."""
    from ray.train import ControllerError, WorkerGroupError

    def first_line(failure: BaseException) -> str:
        message = str(failure).strip()
        line = f"{type(failure).__name__}: {message.splitlines()[0]}" if message else type(failure).__name__
        return line if len(line) <= CAUSE_CHARS else line[: CAUSE_CHARS - 3] + "..."

    if isinstance(error, WorkerGroupError) and error.worker_failures:
        return "; ".join(f"rank {rank}: {first_line(f)}" for rank, f in sorted(error.worker_failures.items()))
    if isinstance(error, ControllerError):
        return f"controller: {first_line(error.controller_failure)}"
    return first_line(error)


def summarise(config: TrainConfig, out: Location) -> int:
    """metrics.json (final and best epochs) and the closing line."""
    from elasticast.checkpoint import write_text

    history = json.loads((out / "history.json").read_text())
    summary = {
        "final": history[-1],
        "best": max(history, key=lambda m: m["val_metric"]),
        "epochs_run": len(history),
        "valid_split": config.valid_split,
        "config": config.to_dict(),
    }
    summary["holes"] = {
        "train": sum(m.get("failed_samples", 0) for m in history),
        f"validation ({config.valid_split})": sum(m.get("val_failed_samples", 0) for m in history),
    }
    write_text(out / "metrics.json", json.dumps(summary, indent=1))
    print(
        f"done: best val_metric {summary['best']['val_metric']:.4f} ({config.valid_split}) at epoch {summary['best']['epoch']}; "
        f"final {summary['final']['val_metric']:.4f}; inference checkpoint {out / 'best.pt'}",
        flush=True,
    )
    holes = ", ".join(f"{split} {count}" for split, count in summary["holes"].items())
    print(f"failed samples (holes left as padding, over {len(history)} epoch(s)): {holes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
